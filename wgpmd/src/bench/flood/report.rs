//! What a flood run measured, and its report.

use super::*;

/// Counter deltas over a phase, summed over the workers (from the daemon's own counters).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Handshake messages processed after the queue (DH work done or tried).
    pub processed: u64,
    /// Variable-base X25519 operations.
    pub dh_operations: u64,
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// Handshake responses sent.
    pub responses_sent: u64,
    /// `hs_dropped_*` by name.
    pub dropped: Vec<(&'static str, u64)>,
}

impl Counters {
    pub(super) fn between(a: &[HsSnapshot], b: &[HsSnapshot]) -> Counters {
        let mut c = Counters::default();
        for (a, b) in a.iter().zip(b) {
            c.processed += b.processed - a.processed;
            c.dh_operations += b.dh_operations - a.dh_operations;
            c.cookies_sent += b.cookies_sent - a.cookies_sent;
            c.responses_sent += b.responses_sent - a.responses_sent;
            for (i, ((name, x), (_, y))) in a.dropped.iter().zip(&b.dropped).enumerate() {
                if c.dropped.len() <= i {
                    c.dropped.push((*name, 0));
                }
                c.dropped[i].1 += y - x;
            }
        }
        c
    }
}

/// The storm phase.
#[derive(Debug, Clone, Default)]
pub struct Storm {
    /// Initiations sent.
    pub sent: u64,
    /// Responses received, each answering an initiation sent (none twice).
    pub answered: u64,
    /// Responses that answered nothing we sent, or twice.
    pub bad_responses: u64,
    /// Cookie replies received instead of a response (the device went under load).
    pub cookies: u64,
    /// Per worker: responses, CPU ns from the first initiation to its last response.
    pub per_worker: Vec<(u64, u64)>,
    /// Wall time of the phase.
    pub wall_ns: u64,
    /// The daemon's counters over the phase.
    pub counters: Counters,
}

impl Storm {
    /// Responder handshakes per second of CPU time, per worker.
    pub fn per_core(&self) -> Vec<f64> {
        self.per_worker.iter().map(|&(n, ns)| if ns == 0 { 0.0 } else { n as f64 * 1e9 / ns as f64 }).collect()
    }
    /// The workers' rates summed: handshakes per second the workers do together, each on a core.
    pub fn total(&self) -> f64 {
        self.per_core().iter().sum()
    }
    /// Handshakes per second of wall time (the generator and the machine's other load included).
    pub fn wall(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.answered as f64 * 1e9 / self.wall_ns as f64
    }
}

/// A data phase (alone or under the flood).
#[derive(Debug, Clone, Default)]
pub struct DataPhase {
    /// Data packets delivered, counted chunks only.
    pub packets: u64,
    /// Data packets that never came out (all chunks).
    pub lost: u64,
    /// Delivered packets that were not what was sent, or out of order (all chunks).
    pub damaged: u64,
    /// Workers' CPU ns over the counted chunks (summed), from release to the last packet out.
    pub cpu_ns: u64,
    /// Workers' CPU ns while they had a backlog (summed; see `drain`).
    pub busy_cpu_ns: u64,
    /// Data packets the workers took in those stretches.
    pub busy_data: f64,
    /// Valid-MAC1 initiations the workers took in those stretches.
    pub busy_flood: f64,
    /// Wall ns over the counted chunks.
    pub wall_ns: u64,
    /// Valid-MAC1 initiations with random bodies sent (all chunks).
    pub flood_initiations: u64,
    /// Junk messages sent (all chunks).
    pub junk: u64,
    /// Valid-MAC1 initiations in the counted chunks.
    pub counted_flood: u64,
    /// Cookie replies received, by who they went to: flood sources, retry peers, established.
    pub cookies_received: [u64; 3],
    /// Retry peers: initiations sent with a MAC2, and handshakes they completed.
    pub retries_with_mac2: u64,
    /// Handshakes the retry peers completed.
    pub retry_handshakes: u64,
    /// Established peers whose rekey completed (of `peers`).
    pub rekeys_completed: usize,
    /// Established peers' rekey initiations sent (first tries and retries).
    pub rekey_initiations: u64,
    /// Responses to flood or junk sources (must be none).
    pub unexpected_responses: u64,
    /// Chunks (counted and not).
    pub chunks: u32,
    /// Chunks before the flood settled at its rate (not counted), and their wall ns.
    pub warmup_chunks: u32,
    /// Wall ns of those.
    pub warmup_ns: u64,
    /// DH operations during those.
    pub warmup_dh: u64,
    /// The daemon's counters over the phase (under the flood: over the counted chunks and the
    /// data-alone chunks paired with them).
    pub counters: Counters,
    /// Under the flood: counted chunks, and those of them in which the device was not under
    /// load (fewer than half of the chunk's valid-MAC1 initiations got a cookie reply).
    pub counted_chunks: u32,
    /// See `counted_chunks`.
    pub not_under_load: u32,
    /// Under the flood: a chunk of data alone after each counted chunk, measured the same way
    /// (workers' CPU ns while they had a backlog, data packets taken meanwhile), so that the
    /// flood's cost is also read against data measured at the same moments.
    pub paired_busy_cpu_ns: u64,
    /// See `paired_busy_cpu_ns`.
    pub paired_busy_data: f64,
}

impl DataPhase {
    /// Data packets per second of worker CPU time while the workers had a backlog (per worker
    /// core).
    pub fn pps_per_core(&self) -> f64 {
        if self.busy_cpu_ns == 0 {
            return 0.0;
        }
        self.busy_data * 1e9 / self.busy_cpu_ns as f64
    }
    /// Under the flood: the data-alone chunks interleaved with the counted ones, in data packets
    /// per second of worker CPU time while the workers had a backlog (per worker core).
    pub fn paired_pps_per_core(&self) -> f64 {
        if self.paired_busy_cpu_ns == 0 {
            return 0.0;
        }
        self.paired_busy_data * 1e9 / self.paired_busy_cpu_ns as f64
    }
    /// Data packets per second of worker CPU time from each chunk's release to its last packet
    /// out (idle polling at the ends included).
    pub fn pps_per_core_drain(&self) -> f64 {
        if self.cpu_ns == 0 {
            return 0.0;
        }
        self.packets as f64 * 1e9 / self.cpu_ns as f64
    }
    /// Data packets per second of wall time (all workers).
    pub fn pps_wall(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.packets as f64 * 1e9 / self.wall_ns as f64
    }
    /// Valid-MAC1 initiations per second of a worker's CPU time in the counted chunks (the
    /// rate each of `workers` workers saw, as if on a core of its own).
    pub fn flood_rate(&self, workers: usize) -> f64 {
        if self.busy_cpu_ns == 0 {
            return 0.0;
        }
        self.busy_flood * 1e9 / (self.busy_cpu_ns as f64 / workers.max(1) as f64)
    }
    /// Valid-MAC1 initiations per second of wall time in the counted chunks.
    pub fn flood_rate_wall(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.counted_flood as f64 * 1e9 / self.wall_ns as f64
    }
}

/// One worker count's results.
#[derive(Debug, Clone)]
pub struct FloodRun {
    /// Where it ran.
    pub plan: CorePlan,
    /// Responder handshakes.
    pub storm: Storm,
    /// Data alone.
    pub alone: DataPhase,
    /// Data under the flood.
    pub flood: DataPhase,
    /// Data alone after the flood, on the rekeyed sessions (measured as `alone`).
    pub after: DataPhase,
}

impl FloodRun {
    /// What went wrong, if anything: the invariants `--quick` fails on (never speed).
    pub fn broken(&self, peers: usize, retry_peers: usize) -> Vec<String> {
        let mut v = Vec::new();
        let s = &self.storm;
        if s.answered == 0 {
            v.push("no storm handshake was answered".into());
        }
        if s.answered + s.cookies < s.sent {
            v.push(format!("storm: {} of {} initiations got no answer", s.sent - s.answered - s.cookies, s.sent));
        }
        if s.bad_responses > 0 {
            v.push(format!("storm: {} responses answered nothing sent", s.bad_responses));
        }
        for (name, p) in
            [("data alone", &self.alone), ("data under the flood", &self.flood), ("data after", &self.after)]
        {
            if p.lost > 0 || p.damaged > 0 {
                v.push(format!("{name}: {} lost, {} damaged or out of order", p.lost, p.damaged));
            }
            if p.unexpected_responses > 0 {
                v.push(format!("{name}: {} responses to junk", p.unexpected_responses));
            }
        }
        if self.flood.rekeys_completed < peers {
            v.push(format!("only {} of {peers} established peers completed their rekey", self.flood.rekeys_completed));
        }
        if (self.flood.retry_handshakes as usize) < retry_peers {
            v.push(format!(
                "only {} of {retry_peers} retry peers completed a handshake under the flood",
                self.flood.retry_handshakes
            ));
        }
        if self.flood.flood_initiations == 0 || self.flood.junk == 0 {
            v.push("no flood was sent".into());
        }
        v
    }
}

/// Everything `wgpmd bench --flood` measured.
#[derive(Debug, Clone)]
pub struct FloodReport {
    /// What was asked.
    pub options: FloodOptions,
    /// CPU model and load.
    pub machine: String,
    /// One per worker count.
    pub runs: Vec<FloodRun>,
}

impl FloodReport {
    /// Every broken invariant of every run.
    pub fn broken(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                let w = r.plan.workers.len();
                r.broken(self.options.peers, self.options.retry_peers)
                    .into_iter()
                    .map(move |m| format!("{w} worker(s): {m}"))
            })
            .collect()
    }
}

pub(super) fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{:.0}", r)
    }
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "wgpmd bench --flood: {} established peers ({FLOOD_DATA_SIZE}-byte inner packets, WAN to inner), {} storm peers, {} cookie-retry peers, flood target {} valid-MAC1 initiations/s plus a quarter as much junk, {} s per data phase",
            o.peers, o.storm_peers, o.retry_peers, o.rate, o.seconds
        )?;
        writeln!(f, "machine: {}", self.machine)?;
        for r in &self.runs {
            let p = &r.plan;
            writeln!(
                f,
                "- {} worker(s) on core(s) {:?}, control on core {}, generator {}",
                p.workers.len(),
                p.workers,
                p.control,
                p.generator.map_or("unpinned".into(), |g| format!("on core {g}"))
            )?;
        }
        writeln!(f)?;
        writeln!(f, "Responder handshakes (storm: real initiations prepared ahead, released through a window below the under-load depth; per core = per second of that worker's CPU time until its last response)")?;
        writeln!(f, "| workers | answered | of sent | per worker core /s | workers together /s | × 1 worker | wall /s | DH per handshake | cookies |")?;
        writeln!(f, "|---:|---:|---:|---|---:|---:|---:|---:|---:|")?;
        let one = self.runs.iter().find(|r| r.plan.workers.len() == 1).map(|r| r.storm.total());
        for r in &self.runs {
            let s = &r.storm;
            let per: Vec<String> = s.per_core().iter().map(|x| fmt_rate(*x)).collect();
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                r.plan.workers.len(),
                s.answered,
                s.sent,
                per.join(", "),
                fmt_rate(s.total()),
                one.filter(|x| *x > 0.0).map_or("—".into(), |o| format!("{:.2}", s.total() / o)),
                fmt_rate(s.wall()),
                if s.answered > 0 { s.counters.dh_operations as f64 / s.answered as f64 } else { 0.0 },
                s.cookies,
            )?;
        }
        writeln!(f)?;
        writeln!(f, "Established peers' data, alone and under the flood (per core = per second of the workers' CPU time while they had a backlog; paired = a chunk of data alone after each counted flood chunk, measured the same way; after = data alone again after the flood phase, on the rekeyed sessions; bracketed ratio = flood against the mean of alone and after, the phases around it; flood rate = valid-MAC1 initiations reaching the device per second of a worker's CPU time, i.e. as if each worker had a core of its own; the warm-up chunks, until the flood settles at its rate and the device is under load, not counted)")?;
        writeln!(f, "| workers | alone Mpps/core | flood Mpps/core | ratio | paired alone Mpps/core | paired ratio | after Mpps/core | bracketed ratio | alone wall Mpps | flood wall Mpps | ratio | flood /s of worker CPU | flood /s wall | counted chunks not under load | junk | cookies sent | DH | retries with MAC2 | retry handshakes | rekeys | lost | damaged |")?;
        writeln!(
            f,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for r in &self.runs {
            let (a, x, z) = (&r.alone, &r.flood, &r.after);
            let ratio = |a: f64, b: f64| if a > 0.0 { format!("{:.2}", b / a) } else { "—".into() };
            // Both phases around the flood, or none (a phase without a busy stretch reads 0).
            let (before_pps, after_pps) = (a.pps_per_core(), z.pps_per_core());
            let bracket = if before_pps > 0.0 && after_pps > 0.0 { (before_pps + after_pps) / 2.0 } else { 0.0 };
            writeln!(
                f,
                "| {} | {:.3} | {:.3} | {} | {:.3} | {} | {:.3} | {} | {:.3} | {:.3} | {} | {} | {} | {} of {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
                r.plan.workers.len(),
                a.pps_per_core() / 1e6,
                x.pps_per_core() / 1e6,
                ratio(a.pps_per_core(), x.pps_per_core()),
                x.paired_pps_per_core() / 1e6,
                ratio(x.paired_pps_per_core(), x.pps_per_core()),
                z.pps_per_core() / 1e6,
                ratio(bracket, x.pps_per_core()),
                a.pps_wall() / 1e6,
                x.pps_wall() / 1e6,
                ratio(a.pps_wall(), x.pps_wall()),
                fmt_rate(x.flood_rate(r.plan.workers.len())),
                fmt_rate(x.flood_rate_wall()),
                x.not_under_load,
                x.counted_chunks,
                x.junk,
                x.counters.cookies_sent,
                x.counters.dh_operations,
                x.retries_with_mac2,
                x.retry_handshakes,
                x.rekeys_completed,
                o.peers,
                a.lost + x.lost + z.lost,
                a.damaged + x.damaged + z.damaged,
            )?;
        }
        writeln!(f)?;
        for r in &self.runs {
            let x = &r.flood;
            let drops: Vec<String> =
                x.counters.dropped.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
            writeln!(
                f,
                "{} worker(s), under the flood: over whole drains (idle polling at the ends included) alone {:.3} and flood {:.3} Mpps/core; {} warm-up chunk(s), {:.0} ms, {} DH, before the rate settled with the device under load (not counted); counted chunks: hs_dropped {}; processed {}; cookie replies received by flood sources {}, retry peers {}, established peers {}; rekey initiations {}; data after the flood on the new sessions: {} packets, {} lost",
                r.plan.workers.len(),
                r.alone.pps_per_core_drain() / 1e6,
                x.pps_per_core_drain() / 1e6,
                x.warmup_chunks,
                x.warmup_ns as f64 / 1e6,
                x.warmup_dh,
                if drops.is_empty() { "none".into() } else { drops.join(" ") },
                x.counters.processed,
                x.cookies_received[0],
                x.cookies_received[1],
                x.cookies_received[2],
                x.rekey_initiations,
                r.after.packets,
                r.after.lost,
            )?;
        }
        let broken = self.broken();
        writeln!(f)?;
        if broken.is_empty() {
            writeln!(f, "invariants: every data packet delivered intact and in order, every storm initiation answered, every rekey completed")
        } else {
            writeln!(f, "BROKEN: {}", broken.join("; "))
        }
    }
}
