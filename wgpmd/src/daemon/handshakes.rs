//! A worker's handshake stage: every handshake-stage message (types 1, 2, 3) is screened on the
//! worker that received it, and the ones worth a Diffie-Hellman wait in that worker's own
//! bounded queue, processed a budget per poll iteration.
//!
//! On arrival ([`Stage::arrive`] holds the message; [`Stage::screen_when_ready`], after each WAN
//! burst, screens what is held once [`SCREEN_BATCH`] messages are there, the WAN queue is
//! drained, or the oldest was held [`HOLD_MAX`], with [`Device::screen_handshakes`], which
//! computes their MACs several at once): type and exact length
//! (initiation 148 bytes, response 92, cookie reply 64), mac1, and under load mac2 (no valid
//! mac2: a cookie reply instead) and the source's token bucket. A cookie reply is consumed there
//! and then (one XChaCha20, no DH). What fails costs one MAC at most and a counted drop
//! (`hs_dropped_*`, [`HsDrop`]), never a queue slot.
//!
//! Processing ([`Stage::process`], [`Device::receive_screened_batch`]): at most [`BUDGET`]
//! messages per poll iteration, so that the data path keeps flowing, taken as one batch: with
//! AVX-512 IFMA, the responder's X25519 operations of the batch's initiations are computed
//! together in lanes (two rounds of kernel calls instead of three DHs each). A message admitted while the device was
//! not under load, and processed when it is, is held to its mac2 then (the kernel decides at
//! dequeue time): a backlog that built up before the load was noticed costs cookie replies, not
//! DH work.
//!
//! The data path comes first ([`Share`]): while a worker has a backlog of data, its DH work
//! takes at most one part in [`SHARE_DIV`] of its time, as the kernel's packet processing runs
//! before its handshake work queue; with no backlog, handshakes get all the time they need.
//!
//! Under load (the kernel's rule, [`wgpmd_proto::ratelimit::LoadDetector`]): while the
//! handshakes waiting in all workers' queues together ([`Load`]) are at least
//! [`UNDER_LOAD_QUEUE_DEPTH`], one eighth of the kernel's [`MAX_QUEUED_INCOMING_HANDSHAKES`], and
//! for a second after. The queue of a worker with a backlog of data counts [`SHARE_DIV`]
//! times: it drains that many times slower, so the depth is counted in the time an idle
//! worker would take to work through it. The workers share that bound: each queue holds
//! `MAX_QUEUED_INCOMING_HANDSHAKES / workers`, but never fewer than twice the under-load depth,
//! so that one worker's queue can alone put the device under load (a flood from one source
//! lands on one worker).
//!
//! One difference follows from screening first: under load, what the kernel would queue and
//! then answer with a cookie reply is answered on arrival and never waits, so a flood that keeps
//! the kernel's queue deep leaves ours shallow, and the load would lapse a second after it was
//! noticed, letting the next [`UNDER_LOAD_QUEUE_DEPTH`] valid-mac1 messages cost their DH before
//! it is noticed again. So a message turned away on arrival counts as one that waited: every
//! [`UNDER_LOAD_QUEUE_DEPTH`] of them, across the workers, renew the load as a queue that deep
//! would. The load holds while such messages keep arriving at that many per second or more.
//!
//! A peer's handshakes are processed where its packets land (the WAN port's flow hash), and
//! the replies leave from that worker's WAN queue. The events they produce (a session is ready,
//! a timer moved) go to the control core through the notifications (`notify.rs`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use nic_backends::buffer::Buffer;
use wgpmd_proto::device::{recycle, Device, DropReason, HandshakeOutcome, Output, Screened};
use wgpmd_proto::messages::{INITIATION_LEN, MAX_QUEUED_INCOMING_HANDSHAKES, UNDER_LOAD_QUEUE_DEPTH};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::wire::wireguard::classify;
use wgpmd_proto::wire::Error as WireError;

use super::rng::CoreRng;

/// DH-bearing messages a worker processes per poll iteration: a quarter of a receive burst, so
/// that a burst of handshakes beyond what the worker can do shows in its queue (the under-load
/// input), and the data path pauses for a few DHs at most (each message costs up to three).
pub const BUDGET: usize = 8;

/// While a worker has a backlog of data (a full inner burst, or a full WAN burst at least half
/// data messages), its DH work takes at most one part in `SHARE_DIV` of its time ([`Share`]);
/// otherwise all the time it needs.
pub const SHARE_DIV: u64 = 4;

/// Whether a poll iteration found a backlog of data ([`Share`]): a full inner burst, or a full
/// WAN burst (`wan_n` frames) of which at least half were data messages that authenticated
/// (`wan_data`). A burst of handshake messages is the handshake stage's own backlog, paced by the
/// under-load rule, and forged data messages do not make a worker busy.
pub fn data_backlog(wan_n: usize, wan_data: usize, inner_n: usize, burst: usize) -> bool {
    inner_n >= burst || (wan_n >= burst && 2 * wan_data >= wan_n)
}

/// The data path first, as the kernel's packet processing (softirq) comes before its handshake
/// work queue: while a worker has a backlog of data, a batch of DH work is followed by
/// `SHARE_DIV - 1` times its duration of everything else before the next batch. Without that
/// bound, a flood of valid-mac1 initiations too thin to fill the queue to the under-load depth
/// (a few per receive burst) would be answered one DH each, [`BUDGET`] per iteration, and the
/// established peers' traffic would get what is left; with it, such a flood fills the queue
/// (the device goes under load and answers it with cookie replies) while the data keeps at
/// least the rest of the time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Share {
    /// Nanoseconds of other work still owed before the next batch (0: a batch may run).
    owed_ns: u64,
}

impl Share {
    /// Whether DH work may run in this iteration (`backlog`: a backlog of data).
    pub fn may_process(&self, backlog: bool) -> bool {
        !backlog || self.owed_ns == 0
    }
    /// Account an iteration: `hs_ns` of DH work and `other_ns` of everything else. Without a
    /// backlog nothing is owed.
    pub fn account(&mut self, backlog: bool, hs_ns: u64, other_ns: u64) {
        self.owed_ns = if backlog {
            self.owed_ns.saturating_sub(other_ns).saturating_add(hs_ns.saturating_mul(SHARE_DIV - 1))
        } else {
            0
        };
    }
}

/// Each worker's queue capacity: the kernel's bound shared out, at least twice the under-load
/// depth (see the module doc).
pub fn queue_capacity(workers: usize) -> usize {
    (MAX_QUEUED_INCOMING_HANDSHAKES / workers.max(1)).max(2 * UNDER_LOAD_QUEUE_DEPTH)
}

/// Why the stage dropped a message (the `hs_dropped_*` counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HsDrop {
    /// Not a handshake-stage type: an unknown type code or non-zero reserved bytes.
    BadType,
    /// A handshake-stage type with the wrong length, or shorter than the 4-byte header.
    BadLength,
    /// An initiation or response whose mac1 is wrong.
    BadMac1,
    /// Under load, an initiation or response without a valid mac2: answered with a cookie reply
    /// instead of being processed (also in `cookies_sent`).
    BadMac2,
    /// Under load, a valid mac2 from a source over its rate (the token bucket).
    Ratelimited,
    /// A cookie reply for no handshake of ours, or one that does not decrypt.
    BadCookieReply,
    /// This worker's handshake queue was full.
    QueueFull,
}

impl HsDrop {
    /// Number of reasons.
    pub const COUNT: usize = HsDrop::QueueFull as usize + 1;
    /// Every reason, in counter order.
    pub const ALL: [HsDrop; Self::COUNT] = [
        HsDrop::BadType,
        HsDrop::BadLength,
        HsDrop::BadMac1,
        HsDrop::BadMac2,
        HsDrop::Ratelimited,
        HsDrop::BadCookieReply,
        HsDrop::QueueFull,
    ];

    /// The counter's name after `hs_dropped_`.
    pub fn name(self) -> &'static str {
        match self {
            HsDrop::BadType => "bad_type",
            HsDrop::BadLength => "bad_length",
            HsDrop::BadMac1 => "bad_mac1",
            HsDrop::BadMac2 => "bad_mac2",
            HsDrop::Ratelimited => "ratelimited",
            HsDrop::BadCookieReply => "bad_cookie_reply",
            HsDrop::QueueFull => "queue_full",
        }
    }

    /// The class of a drop the device reported while screening `msg`.
    fn of(r: DropReason, msg: &[u8]) -> HsDrop {
        match r {
            DropReason::InvalidMac1 => HsDrop::BadMac1,
            DropReason::RateLimited => HsDrop::Ratelimited,
            DropReason::InvalidCookie | DropReason::UnknownIndex => HsDrop::BadCookieReply,
            // Malformed: which part of the header or length is wrong.
            _ => match classify(msg) {
                Err(WireError::Unsupported) => HsDrop::BadType,
                // A known type byte: the reserved bytes, or the length.
                Err(WireError::Malformed) if msg.get(1..4) != Some(&[0, 0, 0]) => HsDrop::BadType,
                _ => HsDrop::BadLength,
            },
        }
    }
}

// `ALL` is in counter order.
const _: () = {
    let mut i = 0;
    while i < HsDrop::COUNT {
        assert!(HsDrop::ALL[i] as usize == i);
        i += 1;
    }
};

/// A worker's handshake counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HsCounters {
    /// Messages that passed the screen and were queued.
    pub queued: u64,
    /// Queued messages processed (whatever came of them).
    pub processed: u64,
    /// Processed messages that failed (unknown peer, replay, Noise failure...: `drop.*` says
    /// which).
    pub failed: u64,
    /// Cookie replies accepted (stored for our next initiation to that peer).
    pub cookie_replies: u64,
    /// Drops by [`HsDrop`].
    pub dropped: [u64; HsDrop::COUNT],
    /// How long each queued message's processing took (the DH work and what goes with it): its
    /// equal share of the time of the batch it was processed in ([`Stage::process`]).
    pub times: HsTimes,
}

/// Upper bounds (nanoseconds) of the handshake processing time histogram's buckets; one more
/// bucket holds what is longer.
pub(crate) const HS_TIME_BOUNDS_NS: [u64; 10] =
    [10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000];

/// A worker's own histogram of handshake processing times: plain counters, published with
/// the worker's others (no atomics, no lock per handshake).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HsTimes {
    /// Messages per bucket (not cumulative): `buckets[i]` took at most `HS_TIME_BOUNDS_NS[i]`
    /// and more than the bound before it; the last one took longer than every bound.
    pub buckets: [u64; HS_TIME_BOUNDS_NS.len() + 1],
    /// The sum of the times, in nanoseconds.
    pub sum_ns: u64,
}

impl HsTimes {
    /// Count one message that took `ns` nanoseconds.
    pub fn observe(&mut self, ns: u64) {
        let i = HS_TIME_BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(HS_TIME_BOUNDS_NS.len());
        self.buckets[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }
    /// Messages observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Each worker's handshake queue depth, for the device-wide under-load decision and the stats;
/// and the messages turned away on arrival under load since the load was last renewed by them.
pub(crate) struct Load {
    depths: Box<[Gauge]>,
    /// Each worker had a backlog of data in its last iteration (1) or not (0): its queue then
    /// drains at most at one part in [`SHARE_DIV`] of its speed ([`Share`]), and counts that
    /// many times towards the load.
    busy: Box<[Gauge]>,
    turned_away: Gauge,
}

/// One worker's gauge, on a cache line of its own (written by that worker only).
#[repr(align(64))]
#[derive(Default)]
struct Gauge(AtomicUsize);

impl Load {
    /// Gauges for `workers` workers, all zero.
    pub fn new(workers: usize) -> Load {
        let gauges = || (0..workers).map(|_| Gauge::default()).collect();
        Load { depths: gauges(), busy: gauges(), turned_away: Gauge::default() }
    }
    /// Handshakes waiting in every worker's queues together (the `handshake_queue_depth` gauge).
    pub fn queued(&self) -> usize {
        self.depths.iter().map(|g| g.0.load(Ordering::Relaxed)).fold(0, usize::saturating_add)
    }
    /// The under-load input: [`Load::queued`] with each busy worker's queue counted
    /// [`SHARE_DIV`] times (in time, that is: what an idle worker would take to process that many).
    pub fn total(&self) -> usize {
        self.depths
            .iter()
            .zip(self.busy.iter())
            .map(|(d, b)| {
                let w = if b.0.load(Ordering::Relaxed) != 0 { SHARE_DIV as usize } else { 1 };
                d.0.load(Ordering::Relaxed).saturating_mul(w)
            })
            .fold(0, usize::saturating_add)
    }
    /// Worker `i` had a backlog of data in its last iteration, or not (written when it changes).
    pub fn set_busy(&self, i: usize, busy: bool) {
        if let Some(g) = self.busy.get(i) {
            g.0.store(usize::from(busy), Ordering::Relaxed);
        }
    }
    /// Handshakes waiting in worker `i`'s queue.
    pub fn depth(&self, i: usize) -> usize {
        self.depths.get(i).map_or(0, |g| g.0.load(Ordering::Relaxed))
    }
    fn set(&self, i: usize, depth: usize) {
        if let Some(g) = self.depths.get(i) {
            g.0.store(depth, Ordering::Relaxed);
        }
    }
    /// Whether the device is under load now (and feed the detector the depth).
    pub fn under_load(&self, dev: &Device, now: Timestamp) -> bool {
        dev.update_load(now, self.total())
    }
    /// Under load, `n` messages were answered with a cookie reply on arrival instead of waiting
    /// (counted once per screen: the counter is shared by the workers): every
    /// [`UNDER_LOAD_QUEUE_DEPTH`] of them renew the load (see the module doc).
    fn turned_away(&self, dev: &Device, now: Timestamp, n: usize) {
        if n == 0 {
            return;
        }
        // What passes the depth counts towards the next renewal (a screen adds up to `INBOX`).
        let mut cur = self.turned_away.0.load(Ordering::Relaxed);
        loop {
            let sum = cur.saturating_add(n);
            let (next, renew) =
                if sum >= UNDER_LOAD_QUEUE_DEPTH { (sum - UNDER_LOAD_QUEUE_DEPTH, true) } else { (sum, false) };
            match self.turned_away.0.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if renew {
                        dev.update_load(now, UNDER_LOAD_QUEUE_DEPTH);
                    }
                    return;
                }
                Err(now_there) => cur = now_there,
            }
        }
    }
}

/// Handshake-stage messages held for one screen ([`Stage::screen_arrivals`]) at most.
const INBOX: usize = 32;

/// Held messages the worker waits for before it screens them ([`Stage::screen_when_ready`]):
/// the MACs of this many are computed together (`wgpmd_proto::cookie::BATCH`).
pub const SCREEN_BATCH: usize = wgpmd_proto::cookie::BATCH;

/// How long the worker holds a message at most before screening it, while its WAN queue stays
/// full ([`Stage::screen_when_ready`]).
pub const HOLD_MAX: std::time::Duration = std::time::Duration::from_micros(50);

/// Screened messages' buffers kept for the worker's next transmits ([`Stage::take_spare`]), at
/// most.
const SPARE: usize = INBOX;

/// A message that arrived and waits for the burst's screen: its frame's buffer, trimmed to the
/// WireGuard message (not copied out of it).
struct Held {
    src: SocketAddr,
    buf: Buffer,
}

/// A message waiting for its DH work.
struct Job {
    src: SocketAddr,
    len: u8,
    /// Screened under load: mac2 and rate already checked.
    cookie_checked: bool,
    msg: [u8; INITIATION_LEN],
}

/// One worker's handshake stage: its queue, its random generator, its counters.
pub(crate) struct Stage {
    /// The worker's index (its gauge in [`Load`]).
    id: usize,
    queue: VecDeque<Job>,
    capacity: usize,
    /// The load decision for this poll iteration's arrivals (`now` it was made at).
    arrival_load: Option<(Timestamp, bool)>,
    /// Arrivals waiting for [`Stage::screen_arrivals`] (at most [`INBOX`]).
    inbox: Vec<Held>,
    /// Buffers of screened messages, for the replies (at most [`SPARE`]).
    spare: Vec<Buffer>,
    /// When the oldest of them arrived (the poll iteration's time).
    held_since: Timestamp,
    /// The screen's list of `(source, message)` borrows and its results, kept for their
    /// allocations.
    screen_items: Vec<(SocketAddr, &'static [u8])>,
    screen_results: Vec<Result<Screened, DropReason>>,
    /// The messages [`Stage::process`] takes from the queue, the batch's list of borrows and
    /// its results, kept for their allocations.
    taken: Vec<Job>,
    jobs: Vec<(SocketAddr, &'static [u8], bool)>,
    results: Vec<Result<HandshakeOutcome, DropReason>>,
    /// Ephemeral keys, indices and cookie nonces.
    pub rng: CoreRng,
    /// Counters, published with the worker's.
    pub c: HsCounters,
}

impl Stage {
    /// The stage of worker `id`, its queue holding `capacity` messages.
    pub fn new(id: usize, capacity: usize, rng: CoreRng) -> Stage {
        Stage {
            id,
            queue: VecDeque::with_capacity(capacity),
            capacity,
            arrival_load: None,
            inbox: Vec::with_capacity(INBOX),
            spare: Vec::with_capacity(SPARE),
            held_since: Timestamp::ZERO,
            screen_items: Vec::with_capacity(INBOX),
            screen_results: Vec::with_capacity(INBOX),
            taken: Vec::with_capacity(BUDGET),
            jobs: Vec::with_capacity(BUDGET),
            results: Vec::with_capacity(BUDGET),
            rng,
            c: HsCounters::default(),
        }
    }

    /// Messages waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// A handshake-stage message arrived from `src` in `buf` (trimmed to the WireGuard
    /// message): held for the burst's screen ([`Stage::screen_arrivals`], which the worker calls
    /// after each WAN burst and which runs here when [`INBOX`] messages are held). A message
    /// longer than any handshake message is screened (and dropped) at once.
    pub fn arrive(
        &mut self,
        dev: &Device,
        load: &Load,
        now: Timestamp,
        src: SocketAddr,
        buf: Buffer,
        out: &mut Output,
    ) {
        if buf.len() > INITIATION_LEN {
            let under_load = self.arrival_load(dev, load, now);
            let r = dev.screen_handshake(now, &mut self.rng, src, buf.data(), under_load, out);
            let turned = self.screened(src, buf.data(), r, load);
            load.turned_away(dev, now, usize::from(turned));
            self.keep_spare(buf);
            return;
        }
        if self.inbox.is_empty() {
            self.held_since = now;
        }
        self.inbox.push(Held { src, buf });
        if self.inbox.len() >= INBOX {
            self.screen_arrivals(dev, load, now, out);
        }
    }

    /// A screened message's buffer: kept for a reply while fewer than [`SPARE`] are, else
    /// returned to its pool.
    fn keep_spare(&mut self, buf: Buffer) {
        if self.spare.len() < SPARE {
            self.spare.push(buf);
        }
    }

    /// An empty buffer for a transmit, from the screened messages' (just read on this core: a
    /// reply written into one costs no allocation, and its own bytes land on lines in cache).
    pub fn take_spare(&mut self) -> Option<Buffer> {
        let mut b = self.spare.pop()?;
        b.reset();
        Some(b)
    }

    /// Give the kept buffers back to their pools (an idle worker holds none).
    pub fn release_spare(&mut self) {
        self.spare.clear();
    }

    /// After a WAN burst: screen the held messages once [`SCREEN_BATCH`] of them are there, the
    /// WAN queue is `drained` (the burst was not full), or the oldest was held [`HOLD_MAX`]. Under
    /// a flood interleaved with data a burst carries a few handshake messages; holding them
    /// over a few bursts lets their MACs be computed together.
    pub fn screen_when_ready(&mut self, dev: &Device, load: &Load, now: Timestamp, drained: bool, out: &mut Output) {
        if self.inbox.len() >= SCREEN_BATCH
            || (!self.inbox.is_empty() && (drained || now - self.held_since >= HOLD_MAX))
        {
            self.screen_arrivals(dev, load, now, out);
        }
    }

    /// Screen the messages held since the last screen, together
    /// ([`Device::screen_handshakes`]: their MACs computed several at once), and queue those
    /// worth DH work (see the module doc). Replies (cookie replies) go to `out.transmits`.
    pub fn screen_arrivals(&mut self, dev: &Device, load: &Load, now: Timestamp, out: &mut Output) {
        if self.inbox.is_empty() {
            return;
        }
        let under_load = self.arrival_load(dev, load, now);
        let mut inbox = std::mem::take(&mut self.inbox);
        let mut items: Vec<(SocketAddr, &[u8])> = recycle(std::mem::take(&mut self.screen_items));
        items.extend(inbox.iter().map(|h| (h.src, h.buf.data())));
        let mut results = std::mem::take(&mut self.screen_results);
        dev.screen_handshakes(now, &mut self.rng, &items, under_load, out, &mut results);
        let mut turned = 0;
        for (&(src, msg), r) in items.iter().zip(results.drain(..)) {
            turned += usize::from(self.screened(src, msg, r, load));
        }
        load.turned_away(dev, now, turned);
        self.screen_items = recycle(items);
        self.screen_results = results;
        for h in inbox.drain(..) {
            self.keep_spare(h.buf);
        }
        self.inbox = inbox;
    }

    /// One load decision per poll iteration for what arrives in it.
    fn arrival_load(&mut self, dev: &Device, load: &Load, now: Timestamp) -> bool {
        match self.arrival_load {
            Some((t, l)) if t == now => l,
            _ => {
                let l = load.under_load(dev, now);
                if !l {
                    // Turned-away messages count from the start of a load.
                    load.turned_away.0.store(0, Ordering::Relaxed);
                }
                self.arrival_load = Some((now, l));
                l
            }
        }
    }

    /// What the screen decided about `msg`: queue it, or count it. True when it was turned
    /// away under load (answered with a cookie reply), for [`Load::turned_away`].
    fn screened(&mut self, src: SocketAddr, msg: &[u8], r: Result<Screened, DropReason>, load: &Load) -> bool {
        match r {
            Ok(Screened::Admitted { cookie_checked }) => {
                if self.queue.len() >= self.capacity {
                    self.count(HsDrop::QueueFull);
                    return false;
                }
                let mut job = Job { src, len: msg.len() as u8, cookie_checked, msg: [0; INITIATION_LEN] };
                // Admitted messages are 148 or 92 bytes.
                job.msg[..msg.len()].copy_from_slice(msg);
                self.queue.push_back(job);
                self.c.queued += 1;
                load.set(self.id, self.queue.len());
            }
            Ok(Screened::Handled(HandshakeOutcome::CookieSent)) => {
                self.count(HsDrop::BadMac2);
                return true;
            }
            Ok(Screened::Handled(HandshakeOutcome::CookieStored(_))) => self.c.cookie_replies += 1,
            // No other outcome comes out of the screen.
            Ok(_) => {}
            Err(r) => self.count(HsDrop::of(r, msg)),
        }
        false
    }

    /// Whether messages wait for DH work.
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Do the DH work for up to `budget` queued messages; returns how many were taken and how
    /// long their batch took (nanoseconds: what [`Share`] accounts).
    pub fn process(
        &mut self,
        dev: &Device,
        load: &Load,
        now: Timestamp,
        budget: usize,
        out: &mut Output,
    ) -> (usize, u64) {
        if self.queue.is_empty() {
            return (0, 0);
        }
        let under_load = load.under_load(dev, now);
        let n = budget.min(self.queue.len());
        let mut taken = std::mem::take(&mut self.taken);
        taken.extend(self.queue.drain(..n));
        let mut jobs: Vec<(SocketAddr, &[u8], bool)> = recycle(std::mem::take(&mut self.jobs));
        jobs.extend(taken.iter().map(|j| (j.src, &j.msg[..usize::from(j.len)], j.cookie_checked)));
        let mut results = std::mem::take(&mut self.results);
        // Two clock reads (vDSO) next to the batch's X25519 operations (up to three per
        // message); each message is counted with an equal share of the batch's time.
        let started = Instant::now();
        dev.receive_screened_batch(now, &mut self.rng, &jobs, under_load, out, &mut results);
        let batch_ns = started.elapsed().as_nanos() as u64;
        let share = batch_ns / n.max(1) as u64;
        for r in results.drain(..) {
            self.c.times.observe(share);
            match r {
                Ok(HandshakeOutcome::CookieSent) => self.count(HsDrop::BadMac2),
                Ok(_) => self.c.processed += 1,
                Err(DropReason::RateLimited) => self.count(HsDrop::Ratelimited),
                Err(_) => {
                    self.c.processed += 1;
                    self.c.failed += 1;
                }
            }
        }
        self.jobs = recycle(jobs);
        self.results = results;
        taken.clear();
        self.taken = taken;
        load.set(self.id, self.queue.len());
        (n, batch_ns)
    }

    fn count(&mut self, r: HsDrop) {
        self.c.dropped[r as usize] += 1;
    }
}

#[cfg(test)]
#[path = "handshakes_tests.rs"]
mod tests;
