//! A peer's endpoint in 40 bytes, read without locks or allocation on every packet.
//!
//! [`EndpointCell`] is a sequence lock over four atomic words (the encoded `SocketAddr`),
//! written with safe atomics only (crossbeam's `AtomicCell` fallback and the kernel's `seqcount`
//! are the same pattern):
//! - a writer takes the sequence from even to odd with a compare-and-swap (so writers exclude
//!   each other), stores the words, and makes the sequence even again;
//! - a reader loads the sequence, the words, and the sequence again, and keeps the words only if
//!   the sequence was even and did not move; otherwise it retries.
//!
//! Readers never write shared memory, so cores reading one peer's endpoint do not bounce its
//! cache line; writes are rare (configuration, and roaming, which only stores when the address
//! changed). A reader that meets a write in progress spins for the few stores it takes.
//!
//! It replaces an `ArcSwapOption<SocketAddr>` (8 bytes inline plus a 48-byte heap block per
//! peer, and a debt-list protocol on each load).

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// `words[0]` low byte: which family, or none.
const NONE: u64 = 0;
const V4: u64 = 4;
const V6: u64 = 6;

/// A `SocketAddr` as four words:
/// `[family | port << 16 | IPv4 address << 32, IPv6 address high, IPv6 address low,
/// flowinfo | scope_id << 32]`.
fn encode(ep: Option<SocketAddr>) -> [u64; 4] {
    match ep {
        None => [NONE, 0, 0, 0],
        Some(SocketAddr::V4(a)) => [V4 | u64::from(a.port()) << 16 | u64::from(u32::from(*a.ip())) << 32, 0, 0, 0],
        Some(SocketAddr::V6(a)) => {
            let ip = u128::from(*a.ip());
            [
                V6 | u64::from(a.port()) << 16,
                (ip >> 64) as u64,
                ip as u64,
                u64::from(a.flowinfo()) | u64::from(a.scope_id()) << 32,
            ]
        }
    }
}

fn decode(w: [u64; 4]) -> Option<SocketAddr> {
    let port = (w[0] >> 16) as u16;
    match w[0] & 0xff {
        V4 => Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from((w[0] >> 32) as u32), port))),
        V6 => {
            let ip = Ipv6Addr::from(u128::from(w[1]) << 64 | u128::from(w[2]));
            Some(SocketAddr::V6(SocketAddrV6::new(ip, port, w[3] as u32, (w[3] >> 32) as u32)))
        }
        _ => None,
    }
}

/// An optional `SocketAddr` shared between threads: lock-free reads, rare writes.
pub(crate) struct EndpointCell {
    /// Even: stable; odd: a write is in progress.
    seq: AtomicU32,
    words: [AtomicU64; 4],
}

impl EndpointCell {
    /// No endpoint.
    pub(crate) const fn new() -> Self {
        EndpointCell { seq: AtomicU32::new(0), words: [const { AtomicU64::new(0) }; 4] }
    }

    /// The endpoint as last written.
    #[inline]
    pub(crate) fn load(&self) -> Option<SocketAddr> {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let w = [
                    self.words[0].load(Ordering::Relaxed),
                    self.words[1].load(Ordering::Relaxed),
                    self.words[2].load(Ordering::Relaxed),
                    self.words[3].load(Ordering::Relaxed),
                ];
                // Orders the word loads before the second sequence load.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return decode(w);
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Replace the endpoint.
    pub(crate) fn store(&self, ep: Option<SocketAddr>) {
        let w = encode(ep);
        let s = loop {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self.seq.compare_exchange_weak(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                break s;
            }
            core::hint::spin_loop();
        };
        // Orders the odd sequence before the word stores (for readers that see a new word).
        fence(Ordering::Release);
        for (slot, v) in self.words.iter().zip(w) {
            slot.store(v, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

impl Default for EndpointCell {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for EndpointCell {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&self.load(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_address_round_trips() {
        let c = EndpointCell::new();
        assert_eq!(c.load(), None);
        for s in ["192.0.2.1:51820", "0.0.0.0:0", "255.255.255.255:65535", "[2001:db8::1]:443", "[::]:0"] {
            let a: SocketAddr = s.parse().unwrap();
            c.store(Some(a));
            assert_eq!(c.load(), Some(a), "{s}");
        }
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 1, 2, 3, 4), 9, 0xabcdef, 7));
        c.store(Some(v6));
        assert_eq!(c.load(), Some(v6), "flowinfo and scope id are kept");
        c.store(None);
        assert_eq!(c.load(), None);
        assert_eq!(core::mem::size_of::<EndpointCell>(), 40);
    }

    /// Two writers alternate between two addresses of different families while two readers
    /// load: a reader only ever sees one of the addresses written, never a mix of the two.
    #[test]
    fn readers_never_see_a_torn_address() {
        let a: SocketAddr = "198.51.100.7:1234".parse().unwrap();
        let b: SocketAddr = "[2001:db8:ffff::9]:65000".parse().unwrap();
        let c = EndpointCell::new();
        c.store(Some(a));
        let stop = core::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in [a, b] {
                let (c, stop) = (&c, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        c.store(Some(w));
                    }
                });
            }
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut seen = [0u32; 2];
                        for _ in 0..200_000 {
                            match c.load() {
                                Some(x) if x == a => seen[0] += 1,
                                Some(x) if x == b => seen[1] += 1,
                                other => panic!("torn read: {other:?}"),
                            }
                        }
                        seen
                    })
                })
                .collect();
            for r in readers {
                let seen = r.join().unwrap();
                assert_eq!(seen[0] + seen[1], 200_000);
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
