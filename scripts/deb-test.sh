#!/usr/bin/env bash
# The Debian package, installed and removed for real (scripts/test.sh runs this; as root, on a
# machine where no other wgpmd package is installed):
#   - scripts/package.sh builds it;
#   - `dpkg -i` installs it; `systemd-analyze verify` accepts the installed unit (an instance of
#     the template); `wgpmd --version` names the backends; `man wgpmd` and `man wgpmd-run` render;
#     the completions are where bash-completion and zsh look;
#   - `dpkg -r` then `dpkg -P` remove it, and no file of it is left.
set -euo pipefail
cd "$(dirname "$0")/.."

if dpkg-query -W -f='${Status}' wgpmd 2>/dev/null | grep -q installed; then
    echo "FAIL: a wgpmd package is already installed here; this test installs and purges its own" >&2
    exit 1
fi
scripts/package.sh
deb="$(ls -t target/debian/wgpmd_*.deb | head -1)"
echo "== $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
files="$(dpkg-deb --contents "$deb" | awk '{print $NF}' | sed 's|^\./|/|' | grep -v '/$')"
echo "$files"
for want in /usr/bin/wgpmd /lib/systemd/system/wgpmd@.service /usr/share/bash-completion/completions/wgpmd \
    /usr/share/zsh/vendor-completions/_wgpmd /usr/share/doc/wgpmd/examples/wg0.conf; do
    grep -qx "$want" <<<"$files" || { echo "FAIL: $want is not in the package" >&2; exit 1; }
done
grep -q '^/usr/share/man/man1/wgpmd\.1' <<<"$files" || { echo "FAIL: no wgpmd(1) man page" >&2; exit 1; }

# Some images exclude /usr/share/man from dpkg; the man page test needs it installed.
dpkg --path-include='/usr/share/man/man1/wgpmd*' -i "$deb"
cleanup() { dpkg -P wgpmd >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== systemd-analyze verify (the installed unit, as instance wgpmd@wg0)"
verify_dir="$(mktemp -d)"
cp /lib/systemd/system/wgpmd@.service "$verify_dir/wgpmd@wg0.service"
out="$(systemd-analyze verify "$verify_dir/wgpmd@wg0.service" 2>&1 || echo "exit status $?")"
rm -rf "$verify_dir"
echo "${out:-(no complaint)}"
# Only complaints about this unit count (the host's own units may have theirs).
if grep -i 'wgpmd' <<<"$out"; then
    echo "FAIL: systemd-analyze verify complains about the unit" >&2
    exit 1
fi

echo "== wgpmd --version"
v="$(/usr/bin/wgpmd --version)"
echo "$v"
# Every backend a default build has (dpdk is a build feature the package leaves out).
for b in af_packet af_xdp tun tap vhost-user mem vfio; do
    grep -Eq "^backends: (.*, )?$b( |,|$)" <<<"$v" || { echo "FAIL: --version does not list the backend $b" >&2; exit 1; }
done
if grep -Eq '^backends: .*dpdk' <<<"$v"; then echo "FAIL: the package lists dpdk (not a default feature)" >&2; exit 1; fi
grep -q '^features: none' <<<"$v" || { echo "FAIL: the package is not built with the default features" >&2; exit 1; }
for hook in WGPMD_VFIO_TEST_BAD_IOVA WGPMD_TEST_PANIC_WORKER; do
    if grep -q "$hook" /usr/bin/wgpmd; then echo "FAIL: the packaged binary has the test hook $hook" >&2; exit 1; fi
done

echo "== man wgpmd, man wgpmd-run"
for page in wgpmd wgpmd-run; do
    text="$(MANWIDTH=100 man -P cat "$page" 2>&1)" || { echo "FAIL: man $page: $text" >&2; exit 1; }
    grep -q -- '--port' <<<"$text" || [[ "$page" == wgpmd ]] || { echo "FAIL: man $page lacks --port" >&2; exit 1; }
    grep -qi 'wgpmd' <<<"$text" || { echo "FAIL: man $page is empty" >&2; exit 1; }
    echo "man $page: $(wc -l <<<"$text") lines"
done

echo "== bash completion"
bash -c 'source /usr/share/bash-completion/completions/wgpmd && complete -p wgpmd' \
    || { echo "FAIL: the bash completion does not register" >&2; exit 1; }

echo "== dpkg -r, then dpkg -P: nothing left"
dpkg -r wgpmd
# The package has no conffiles, so -r leaves nothing to purge; -P when dpkg still lists it.
if dpkg-query -W wgpmd >/dev/null 2>&1; then dpkg -P wgpmd; fi
trap - EXIT
left=""
while read -r f; do
    [[ -e "$f" || -L "$f" ]] && left+=" $f"
done <<<"$files"
[[ -e /usr/share/doc/wgpmd ]] && left+=" /usr/share/doc/wgpmd"
if [[ -n "$left" ]]; then
    echo "FAIL: left after dpkg -P:$left" >&2
    exit 1
fi
if dpkg-query -W wgpmd >/dev/null 2>&1; then
    echo "FAIL: dpkg still knows wgpmd: $(dpkg-query -W -f='${Status}' wgpmd)" >&2
    exit 1
fi
echo "deb: installed, verified and purged cleanly"
