#!/usr/bin/env python3
"""Plot `wgpmd bench` output: Mpps per core of the worker pipeline next to the references measured
in the same run (ring's raw AEAD, libipsec-mb's if measured, boringtun), per packet size and direction.

    python3 scripts/plot-bench.py docs/bench/wgpmd-bench.txt docs/bench/wgpmd-bench.png

The input is what `wgpmd bench` printed (its table lines `| peers | size | dir | Mpps/core | ...`), kept
as it was; the machine line of the same output goes into the title. Needs matplotlib (Debian:
python3-matplotlib).
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def number(cell):
    cell = cell.strip().strip("*").strip()
    try:
        return float(cell)
    except ValueError:
        return None  # "—": not measured (e.g. built without the bench-boringtun feature)


def parse(text):
    header, rows, machine = None, [], ""
    for line in text.splitlines():
        if line.startswith("machine:"):
            machine = line.split(":", 1)[1].strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("size", "peers"):
            # The rates table (older output has no peers column); the setup and scale tables
            # that follow it are not plotted.
            header = cells if "Mpps/core" in cells else None
            continue
        if header is None or not cells[0].isdigit():
            continue
        rows.append(dict(zip(header, cells)))
    if not rows:
        sys.exit("no `wgpmd bench` table rows in the input")
    return rows, machine


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        rows, machine = parse(f.read())
    counts = {r.get("peers") for r in rows}
    labels = [(f"{r['peers']} peers, " if len(counts) > 1 else "") + f"{r['size']} B {r['dir']}" for r in rows]
    series = [
        ("wgpmd pipeline (per worker core)", "Mpps/core", "#1f77b4"),
        ("ring AEAD only (open / seal)", "ring AEAD Mpps", "#bbbbbb"),
        ("libipsec-mb AEAD only (open / seal)", "ipsec-mb Mpps", "#2ca02c"),
        ("boringtun 0.7.1 (decap / encap)", "boringtun Mpps", "#ff7f0e"),
    ]
    series = [s for s in series if any(number(r.get(s[1], "")) is not None for r in rows)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for i, (name, col, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ys = [number(r.get(col, "")) or 0.0 for r in rows]
        bars = ax.bar(xs, ys, width, label=name, color=color)
        if col == "Mpps/core":
            for b, r in zip(bars, rows):
                ratio = number(r.get("/ boringtun", ""))
                note = f"{b.get_height():.2f}" + (f"\n{ratio:.2f}x bt" if ratio is not None else "")
                ax.annotate(note, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("million packets per second, one core")
    ax.set_title("wgpmd bench: worker pipeline vs references measured in the same run\n" + machine, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out} ({len(rows)} rows from {src})")


if __name__ == "__main__":
    main()
