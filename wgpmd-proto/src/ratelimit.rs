//! Handshake DoS defences that need state: the per-source token bucket ([`RateLimiter`]) and the
//! device-wide "under load" decision ([`LoadDetector`]).
//!
//! Follows the Linux kernel's `drivers/net/wireguard/ratelimiter.c` and the under-load rule of
//! `receive.c` (`wg_receive_handshake_packet`).
//!
//! # Rate limiter
//! State: one token bucket per source, keyed by the IPv4 address or the IPv6 /64 prefix (the low
//! 64 bits are masked so that one host cannot escape by rotating its interface identifier).
//! Rules, in nanoseconds, as in the kernel:
//! - `PACKET_COST` = 10⁹ / [`RATELIMIT_PACKETS_PER_SECOND`] (50 ms), `TOKEN_MAX` = `PACKET_COST`
//!   × [`RATELIMIT_PACKETS_BURSTABLE`] (250 ms: a burst of 5);
//! - a source seen for the first time is allowed and starts with `TOKEN_MAX − PACKET_COST`;
//! - a known source gains the nanoseconds elapsed since its last packet (capped at `TOKEN_MAX`)
//!   and is allowed if it then holds at least `PACKET_COST`, which the packet spends;
//! - an entry idle for more than [`RATELIMIT_GC_INTERVAL`] (1 s) is forgotten. Forgetting is
//!   invisible: after 1 s a bucket is full anyway (1 s ≥ `TOKEN_MAX`), which is exactly the state
//!   of a newly created one.
//!
//! The limiter is consulted only for handshakes that carried a valid mac1 *and* a valid mac2
//! while under load (see [`crate::cookie`]), so every source in the table has proven with a
//! cookie round trip that it receives at its address.
//!
//! # Memory bound
//! The kernel sizes its hash table from RAM (`table_size` = 8192 buckets on hosts with more than
//! 1 GiB, else RAM / 16 KiB / 8 rounded up to a power of two, at least 16) and tracks at most
//! `max_entries` = 8 × `table_size` sources (65,536 on a normal server); a new source beyond that
//! is refused, never admitted by evicting another. We keep that rule with a bound the caller
//! passes to [`RateLimiter::new`]; [`RATELIMIT_MAX_ENTRIES`] is the kernel's server value. An
//! entry costs about 33 bytes of table (16-byte key, 16-byte bucket, 1 control byte), so the
//! default bound is a few MiB at most. The kernel collects idle entries from a work item every
//! second; a sans-IO core has no such thread, so [`RateLimiter::allow`] collects the shard it
//! touches when that shard was last collected over a second ago, and [`RateLimiter::gc`] lets a
//! caller's timer collect everything.
//!
//! # Concurrency and hashing
//! All methods take `&self`: the table is split into [`SHARDS`] mutex-protected `HashMap`s, and
//! the entry count is an atomic. Source addresses are attacker-chosen, so the maps hash with
//! SipHash-1-3 keyed from the injected RNG at construction (the kernel keys `hsiphash` from
//! `get_random_bytes`); `std`'s `RandomState` would read the OS RNG, which the core never does.
//!
//! # Under load
//! [`LoadDetector`] follows `receive.c`: the device is under load while at least
//! [`UNDER_LOAD_QUEUE_DEPTH`] handshakes are queued (the kernel's `MAX_QUEUED_INCOMING_HANDSHAKES
//! / 8` = 4096 / 8 = 512), and stays so for [`UNDER_LOAD_PERSIST`] (1 s) after the last time the
//! queue was that deep. Other implementations: wireguard-go uses the same rule with a smaller
//! queue (≥ 128 of 1024, held 1 s); VPP counts handshakes per interface (≥ 40 × peers per 0.5 s,
//! held 1 s); boringtun declares load above a fixed 100 handshakes per second per device, with
//! no queue at all. We take the kernel's: its trigger measures what load actually costs
//! (handshakes waiting for a DH) rather than a rate picked in advance.

use core::hash::{BuildHasher, Hash};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use siphasher::sip::SipHasher13;

#[cfg(doc)]
use crate::messages::RATELIMIT_MAX_ENTRIES;
use crate::messages::{
    RATELIMIT_GC_INTERVAL, RATELIMIT_PACKETS_BURSTABLE, RATELIMIT_PACKETS_PER_SECOND, UNDER_LOAD_PERSIST,
    UNDER_LOAD_QUEUE_DEPTH,
};
use crate::time::{duration_nanos, Timestamp};

const NSEC_PER_SEC: u64 = Duration::from_secs(1).as_nanos() as u64;
/// Tokens (nanoseconds) one packet costs (kernel `PACKET_COST`).
pub const PACKET_COST: u64 = NSEC_PER_SEC / RATELIMIT_PACKETS_PER_SECOND;
/// Tokens a bucket holds at most (kernel `TOKEN_MAX`).
pub const TOKEN_MAX: u64 = PACKET_COST * RATELIMIT_PACKETS_BURSTABLE;
/// Number of independently locked parts of the table (a power of two).
pub const SHARDS: usize = 16;

/// A source as the limiter sees it: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => SourceKey::V4(u32::from(a)),
            // The high 64 bits: the /64 prefix.
            IpAddr::V6(a) => SourceKey::V6Prefix((u128::from(a) >> 64) as u64),
        }
    }
}

/// SipHash-1-3 with keys drawn from the injected RNG.
#[derive(Clone)]
struct KeyedSip {
    k0: u64,
    k1: u64,
}

impl BuildHasher for KeyedSip {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// One token bucket (kernel `struct ratelimiter_entry`).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    last_time_ns: u64,
    tokens: u64,
}

struct Shard {
    map: HashMap<SourceKey, Bucket, KeyedSip>,
    last_gc: Timestamp,
}

impl Shard {
    /// Drop entries idle for more than a second (kernel: `now - last_time_ns > NSEC_PER_SEC`);
    /// returns how many went.
    fn collect(&mut self, now: Timestamp) -> usize {
        let idle = duration_nanos(RATELIMIT_GC_INTERVAL);
        let before = self.map.len();
        self.map.retain(|_, b| now.as_nanos().saturating_sub(b.last_time_ns) <= idle);
        let removed = before - self.map.len();
        // Give memory back after a flood has passed (the kernel frees entries one by one).
        if self.map.capacity() > 64 && self.map.capacity() > 4 * self.map.len() {
            self.map.shrink_to(2 * self.map.len());
        }
        self.last_gc = now;
        removed
    }
}

/// Per-source token bucket for handshake messages (kernel `ratelimiter.c`). See the module doc.
pub struct RateLimiter {
    shards: [Mutex<Shard>; SHARDS],
    hasher: KeyedSip,
    entries: AtomicUsize,
    max_entries: usize,
}

impl core::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("entries", &self.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex whose data stays consistent even if a holder panicked (none of ours can).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RateLimiter {
    /// A limiter that tracks at most `max_entries` sources (the kernel's is
    /// [`RATELIMIT_MAX_ENTRIES`]), its hash keys drawn from `rng`.
    pub fn new<R: rand_core::RngCore + rand_core::CryptoRng>(max_entries: usize, rng: &mut R) -> Self {
        let hasher = KeyedSip { k0: rng.next_u64(), k1: rng.next_u64() };
        RateLimiter {
            shards: core::array::from_fn(|_| {
                Mutex::new(Shard { map: HashMap::with_hasher(hasher.clone()), last_gc: Timestamp::ZERO })
            }),
            hasher,
            entries: AtomicUsize::new(0),
            max_entries,
        }
    }

    /// Whether a handshake from `ip` may be processed now, spending a token if so (kernel
    /// `wg_ratelimiter_allow`). A new source is refused only when the table is full.
    pub fn allow(&self, now: Timestamp, ip: IpAddr) -> bool {
        let key = SourceKey::from(ip);
        // Bits 32..36 pick the shard: hashbrown uses the low bits for the bucket and the top 7
        // for its tags, so these leave both evenly spread inside a shard.
        let shard = &self.shards[(self.hasher.hash_one(key) >> 32) as usize % SHARDS];
        let mut shard = lock(shard);
        if now.saturating_since(shard.last_gc) >= RATELIMIT_GC_INTERVAL {
            let removed = shard.collect(now);
            self.entries.fetch_sub(removed, Ordering::Relaxed);
        }
        let now_ns = now.as_nanos();
        if let Some(b) = shard.map.get_mut(&key) {
            // Cores may hand in slightly different clocks: never go back in time.
            let elapsed = now_ns.saturating_sub(b.last_time_ns);
            let tokens = TOKEN_MAX.min(b.tokens.saturating_add(elapsed));
            b.last_time_ns = b.last_time_ns.max(now_ns);
            let allowed = tokens >= PACKET_COST;
            b.tokens = if allowed { tokens - PACKET_COST } else { tokens };
            return allowed;
        }
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max_entries {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        shard.map.insert(key, Bucket { last_time_ns: now_ns, tokens: TOKEN_MAX - PACKET_COST });
        true
    }

    /// Forget every source idle for more than [`RATELIMIT_GC_INTERVAL`] (the kernel's
    /// once-a-second `wg_ratelimiter_gc_entries`). Optional: [`allow`](Self::allow) also
    /// collects as it goes.
    pub fn gc(&self, now: Timestamp) {
        for shard in &self.shards {
            let removed = lock(shard).collect(now);
            self.entries.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Number of sources currently tracked.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound given to [`new`](Self::new).
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

/// The device-wide "under load" decision of the kernel's `wg_receive_handshake_packet`.
///
/// Under load while at least [`UNDER_LOAD_QUEUE_DEPTH`] handshakes are queued, and for
/// [`UNDER_LOAD_PERSIST`] after the last time they were. Lock-free; `&self` from any core.
#[derive(Debug, Default)]
pub struct LoadDetector {
    /// When the queue was last at least `UNDER_LOAD_QUEUE_DEPTH` deep, in ns; 0 = not recently.
    last_under_load: AtomicU64,
}

impl LoadDetector {
    /// A detector that is not under load.
    pub const fn new() -> Self {
        LoadDetector { last_under_load: AtomicU64::new(0) }
    }

    /// Report the handshake queue depth at `now`; returns whether the device is under load.
    pub fn update(&self, now: Timestamp, queued_handshakes: usize) -> bool {
        if queued_handshakes >= UNDER_LOAD_QUEUE_DEPTH {
            // 0 means "not recently", so an event at the epoch is recorded 1 ns late.
            self.last_under_load.fetch_max(now.as_nanos().max(1), Ordering::Relaxed);
            return true;
        }
        let last = self.last_under_load.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let under_load = !Timestamp::from_nanos(last).has_expired(UNDER_LOAD_PERSIST, now);
        if !under_load {
            // Only if no core has seen a deep queue since.
            let _ = self.last_under_load.compare_exchange(last, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        under_load
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::RATELIMIT_MAX_ENTRIES;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limiter(max: usize) -> RateLimiter {
        RateLimiter::new(max, &mut ChaCha20Rng::seed_from_u64(7))
    }
    fn ms(n: u64) -> Timestamp {
        Timestamp::from_nanos(n * 1_000_000)
    }
    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn kernel_constants() {
        assert_eq!(PACKET_COST, 50_000_000);
        assert_eq!(TOKEN_MAX, 250_000_000);
        assert_eq!(RATELIMIT_MAX_ENTRIES, 65_536);
        assert!(SHARDS.is_power_of_two());
    }

    /// The kernel selftest's shape: a burst of 5, then refusals, then one more per 50 ms.
    #[test]
    fn burst_of_five_then_refill_at_twenty_per_second() {
        let rl = limiter(16);
        let t0 = Timestamp::from_secs(10);
        for i in 0..5 {
            assert!(rl.allow(t0, A), "packet {i} of the burst");
        }
        assert!(!rl.allow(t0, A));
        assert!(!rl.allow(t0 + Duration::from_nanos(PACKET_COST - 1), A));
        // The refused packet above still moved `last_time`, so tokens kept accruing: 50 ms
        // after t0 there is exactly one packet's worth.
        assert!(rl.allow(t0 + Duration::from_nanos(PACKET_COST), A));
        assert!(!rl.allow(t0 + Duration::from_nanos(PACKET_COST), A));
        // Steady 20/s is sustained for a long time; 40/s gets half through.
        let mut t = t0 + Duration::from_nanos(PACKET_COST);
        for _ in 0..100 {
            t = t + Duration::from_millis(50);
            assert!(rl.allow(t, A));
        }
        let mut allowed = 0;
        for _ in 0..100 {
            t = t + Duration::from_millis(25);
            allowed += rl.allow(t, A) as u32;
        }
        assert_eq!(allowed, 50);
        // A long pause refills to the burst, not beyond.
        t = t + Duration::from_secs(30);
        let burst = (0..10).filter(|_| rl.allow(t, A)).count();
        assert_eq!(burst, 5);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let rl = limiter(16);
        let t = ms(1000);
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        for _ in 0..5 {
            assert!(rl.allow(t, v6("2001:db8:1:2::1")));
        }
        // Same /64, other interface identifier: same bucket, already empty.
        assert!(!rl.allow(t, v6("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert!(!rl.allow(t, v6("2001:db8:1:2::2")));
        // Neighbouring /64s have their own buckets.
        assert!(rl.allow(t, v6("2001:db8:1:3::1")));
        assert!(rl.allow(t, v6("2001:db8:1:1::1")));
        // IPv4 addresses are not aggregated, and never collide with IPv6 prefixes.
        for _ in 0..5 {
            assert!(rl.allow(t, A));
        }
        assert!(!rl.allow(t, A));
        assert!(rl.allow(t, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))));
        assert!(rl.allow(t, v6("::")), "IPv6 prefixes and IPv4 addresses are separate keys");
        assert_eq!(rl.len(), 6);
    }

    #[test]
    fn table_is_bounded_and_refuses_new_sources_when_full() {
        let rl = limiter(3);
        let t = ms(1000);
        let ip = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        for i in 0..3 {
            assert!(rl.allow(t, ip(i)));
        }
        assert!(!rl.allow(t, ip(3)), "full: a new source is refused (kernel err_oom)");
        assert_eq!(rl.len(), 3);
        assert!(rl.allow(t, ip(0)), "known sources keep their buckets");
        // Once the others are idle for over a second they are collected and room returns.
        rl.gc(t + Duration::from_millis(1001));
        assert!(rl.is_empty());
        assert!(rl.allow(t + Duration::from_millis(1001), ip(3)));
        assert_eq!(rl.len(), 1);

        let none = limiter(0);
        assert!(!none.allow(t, A));
        assert!(none.is_empty());
    }

    #[test]
    fn gc_frees_entries_idle_for_more_than_one_second() {
        let rl = limiter(RATELIMIT_MAX_ENTRIES);
        let b = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        assert!(rl.allow(ms(1000), A));
        assert!(rl.allow(ms(1500), b));
        // Idle exactly 1 s is kept (kernel: `> NSEC_PER_SEC`).
        rl.gc(ms(2000));
        assert_eq!(rl.len(), 2);
        rl.gc(Timestamp::from_nanos(2_000_000_001));
        assert_eq!(rl.len(), 1);
        rl.gc(ms(2501));
        assert!(rl.is_empty());
        // A collected source starts over with a full burst, as it would have had anyway.
        assert_eq!((0..10).filter(|_| rl.allow(ms(2600), A)).count(), 5);
    }

    #[test]
    fn allow_collects_idle_entries_without_a_gc_call() {
        let rl = limiter(RATELIMIT_MAX_ENTRIES);
        for i in 0..200u32 {
            assert!(rl.allow(ms(1000), IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))));
        }
        assert_eq!(rl.len(), 200);
        // Two seconds later, new sources touch every shard; each collects its idle entries.
        for i in 0..200u32 {
            assert!(rl.allow(ms(3000), IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))));
        }
        assert_eq!(rl.len(), 200);
    }

    #[test]
    fn hash_keys_come_from_the_injected_rng() {
        let a = RateLimiter::new(1, &mut ChaCha20Rng::seed_from_u64(1));
        let b = RateLimiter::new(1, &mut ChaCha20Rng::seed_from_u64(2));
        let c = RateLimiter::new(1, &mut ChaCha20Rng::seed_from_u64(1));
        let k = SourceKey::from(A);
        assert_ne!(a.hasher.hash_one(k), b.hasher.hash_one(k));
        assert_eq!(a.hasher.hash_one(k), c.hasher.hash_one(k));
    }

    #[test]
    fn two_cores_share_one_bucket() {
        let rl = limiter(16);
        let t = ms(1000);
        let allowed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..50 {
                        if rl.allow(t, A) {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 5);
        assert_eq!(rl.len(), 1);
    }

    #[test]
    fn load_detector_threshold_and_one_second_persistence() {
        let d = LoadDetector::new();
        let t0 = Timestamp::from_secs(5);
        assert!(!d.update(t0, 0));
        assert!(!d.update(t0, UNDER_LOAD_QUEUE_DEPTH - 1));
        assert_eq!(UNDER_LOAD_QUEUE_DEPTH, 512);
        assert!(d.update(t0, UNDER_LOAD_QUEUE_DEPTH));
        // The queue drains, load persists for a second after the last deep reading.
        assert!(d.update(t0 + Duration::from_millis(500), 0));
        assert!(d.update(t0 + Duration::from_nanos(999_999_999), 3));
        assert!(!d.update(t0 + Duration::from_secs(1), 0), "kernel: expired at exactly 1 s");
        assert!(!d.update(t0 + Duration::from_secs(2), 0));
        // A deep reading restarts the second from that reading.
        let t1 = t0 + Duration::from_secs(10);
        assert!(d.update(t1, 4096));
        assert!(d.update(t1 + Duration::from_millis(600), 0));
        assert!(d.update(t1 + Duration::from_millis(700), 600));
        assert!(d.update(t1 + Duration::from_millis(1600), 0));
        assert!(!d.update(t1 + Duration::from_millis(1700), 0));
        // At the epoch too.
        let e = LoadDetector::default();
        assert!(e.update(Timestamp::ZERO, 512));
        assert!(e.update(Timestamp::from_nanos(10), 0));
    }
}
