//! The references `wgpmd bench` reports the pipeline against, timed on the calling thread's
//! CPU clock: raw ring ChaCha20-Poly1305 seal and open ([`wgpmd_proto::crypto::AeadKey`]), our
//! multi-lane AEAD alone (`wgpmd_aead`, bursts of 16 messages under 16 keys, what the data path
//! runs without the rest of the pipeline) and boringtun 0.7.1 `encapsulate` / `decapsulate` on
//! an established session (the bodies of `benches/crypto.rs`, without criterion).
//!
//! Open and decapsulate need a fresh counter per message: a batch is sealed untimed, then
//! opening it is timed, batch after batch.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::cpu::ThreadClock;
use wgpmd_proto::crypto::AeadKey;
use wgpmd_proto::messages::TAG_LEN;

/// Messages per timed batch (the clock is read around each batch).
const BATCH: usize = 1024;

/// One reference: messages processed and the CPU time they took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// Messages.
    pub messages: u64,
    /// CPU nanoseconds of the thread that processed them.
    pub cpu_ns: u64,
}

impl Rate {
    /// Messages per CPU second, in millions.
    pub fn mpps(&self) -> f64 {
        if self.cpu_ns == 0 {
            return 0.0;
        }
        self.messages as f64 * 1e3 / self.cpu_ns as f64
    }
}

/// The references for one packet size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct References {
    /// ring ChaCha20-Poly1305 `seal_in_place`.
    pub ring_seal: Rate,
    /// ring ChaCha20-Poly1305 `open_in_place`.
    pub ring_open: Rate,
    /// The multi-lane AEAD (`wgpmd_aead::Lanes::seal_lanes`), bursts of 16, per message.
    pub lanes_seal: Rate,
    /// The multi-lane AEAD (`open_lanes`), bursts of 16, per message.
    pub lanes_open: Rate,
    /// boringtun `Tunn::encapsulate` (`None` without the `bench-boringtun` feature).
    pub boringtun_encap: Option<Rate>,
    /// boringtun `Tunn::decapsulate`.
    pub boringtun_decap: Option<Rate>,
}

/// An IPv4/UDP packet of `len` bytes (boringtun checks the inner IP header on decapsulate).
pub(crate) fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Run `batch` (which returns the messages it timed, with its own clock reads around the timed
/// part) until `budget` of CPU time is spent, at least once.
fn until(budget: Duration, mut batch: impl FnMut() -> Rate) -> Rate {
    let mut total = Rate::default();
    let wall = Instant::now();
    while total.messages == 0 || (total.cpu_ns < budget.as_nanos() as u64 && wall.elapsed() < budget * 4) {
        let r = batch();
        total.messages += r.messages;
        total.cpu_ns += r.cpu_ns;
    }
    total
}

fn timed(clock: &ThreadClock, n: usize, f: impl FnOnce()) -> Rate {
    let t0 = clock.now_ns().unwrap_or(0);
    f();
    let t1 = clock.now_ns().unwrap_or(0);
    Rate { messages: n as u64, cpu_ns: t1.saturating_sub(t0) }
}

/// Measure every reference at `len` bytes, each for about `budget` of CPU time.
pub fn measure(len: usize, budget: Duration) -> References {
    let clock = ThreadClock::current();
    let plain = ipv4_packet(len);
    let key = AeadKey::new(&[7u8; 32]);

    let mut buf = plain.clone();
    let mut counter = 0u64;
    let ring_seal = until(budget, || {
        timed(&clock, BATCH, || {
            for _ in 0..BATCH {
                counter += 1;
                black_box(key.seal_in_place(counter, &[], black_box(&mut buf[..])));
            }
        })
    });

    let stride = len + TAG_LEN;
    let mut sealed = vec![0u8; stride * BATCH];
    let mut counter = 0u64;
    let ring_open = until(budget, || {
        let first = counter + 1;
        for m in sealed.chunks_exact_mut(stride) {
            counter += 1;
            m[..len].copy_from_slice(&plain);
            let tag = key.seal_in_place(counter, &[], &mut m[..len]);
            m[len..].copy_from_slice(&tag);
        }
        timed(&clock, BATCH, || {
            for (i, m) in sealed.chunks_exact_mut(stride).enumerate() {
                let n = key.open_in_place(first + i as u64, &[], black_box(m));
                assert_eq!(n, Ok(len), "reference open failed");
            }
        })
    });

    let (lanes_seal, lanes_open) = lanes_refs(&clock, &plain, budget);
    let (boringtun_encap, boringtun_decap) = boringtun_refs(&clock, &plain, budget);
    References { ring_seal, ring_open, lanes_seal, lanes_open, boringtun_encap, boringtun_decap }
}

/// The multi-lane AEAD alone: bursts of [`LANES`] messages of the packet's size, each lane its
/// own key, WireGuard nonces, no additional data (the data path's shape). The `Lane` list is
/// built per burst (one small allocation per burst, as the caller of a library would).
fn lanes_refs(clock: &ThreadClock, plain: &[u8], budget: Duration) -> (Rate, Rate) {
    use wgpmd_aead::{Lane, Lanes, MAX_LANES as LANES};
    let engine = Lanes::new();
    let keys: Vec<[u8; 32]> = (0..LANES).map(|i| [i as u8 + 9; 32]).collect();
    let mut bufs: Vec<Vec<u8>> = (0..LANES).map(|_| plain.to_vec()).collect();
    let mut counter = 0u64;
    let seal = until(budget, || {
        timed(clock, BATCH, || {
            for _ in 0..BATCH / LANES {
                counter += 1;
                let mut lanes: Vec<Lane<'_>> =
                    keys.iter().zip(bufs.iter_mut()).map(|(k, b)| Lane::wireguard(k, counter, &mut b[..])).collect();
                engine.seal_lanes(black_box(&mut lanes)).expect("16 lanes are within the limits");
                black_box(lanes[0].tag);
            }
        })
    });

    // Open: a batch sealed untimed (fresh counters), then opened timed; every tag must verify.
    let mut sealed: Vec<(Vec<u8>, [u8; 16])> = (0..BATCH).map(|_| (plain.to_vec(), [0; 16])).collect();
    let mut counter = 0u64;
    let open = until(budget, || {
        let first = counter + 1;
        for chunk in sealed.chunks_mut(LANES) {
            counter += 1;
            let mut lanes: Vec<Lane<'_>> = keys
                .iter()
                .zip(chunk.iter_mut())
                .map(|(k, (b, _))| {
                    b.copy_from_slice(plain);
                    Lane::wireguard(k, counter, &mut b[..])
                })
                .collect();
            engine.seal_lanes(&mut lanes).expect("16 lanes are within the limits");
            let tags: Vec<[u8; 16]> = lanes.iter().map(|l| l.tag).collect();
            drop(lanes);
            for ((_, t), tag) in chunk.iter_mut().zip(tags) {
                *t = tag;
            }
        }
        timed(clock, BATCH, || {
            for (n, chunk) in sealed.chunks_mut(LANES).enumerate() {
                let c = first + n as u64;
                let mut lanes: Vec<Lane<'_>> = keys
                    .iter()
                    .zip(chunk.iter_mut())
                    .map(|(k, (b, t))| {
                        let mut l = Lane::wireguard(k, c, &mut b[..]);
                        l.tag = *t;
                        l
                    })
                    .collect();
                let ok = engine.open_lanes(black_box(&mut lanes)).expect("16 lanes are within the limits");
                assert_eq!(ok, u16::MAX, "reference multi-lane open failed");
            }
        })
    });
    (seal, open)
}

#[cfg(feature = "bench-boringtun")]
fn boringtun_refs(clock: &ThreadClock, plain: &[u8], budget: Duration) -> (Option<Rate>, Option<Rate>) {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    // Two tunnels with a completed handshake (the initiator confirmed by its keepalive).
    let sa = StaticSecret::from([3u8; 32]);
    let sb = StaticSecret::from([4u8; 32]);
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1, None);
    let mut b = Tunn::new(sb, pa, None, None, 2, None);
    let mut scratch = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut scratch, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("boringtun: no initiation"),
    };
    let resp = match b.decapsulate(None, &init, &mut scratch) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("boringtun: no response"),
    };
    let keepalive = match a.decapsulate(None, &resp, &mut scratch) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("boringtun: no keepalive"),
    };
    assert!(matches!(b.decapsulate(None, &keepalive, &mut scratch), TunnResult::Done));

    let mut dst = vec![0u8; plain.len() + 64];
    let encap = until(budget, || {
        timed(clock, BATCH, || {
            for _ in 0..BATCH {
                match a.encapsulate(black_box(plain), &mut dst) {
                    TunnResult::WriteToNetwork(p) => {
                        black_box(p.len());
                    }
                    _ => panic!("boringtun encapsulate failed"),
                }
            }
        })
    });

    let mut msgs: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let decap = until(budget, || {
        msgs.clear();
        for _ in 0..BATCH {
            match a.encapsulate(plain, &mut dst) {
                TunnResult::WriteToNetwork(p) => msgs.push(p.to_vec()),
                _ => panic!("boringtun encapsulate failed"),
            }
        }
        timed(clock, BATCH, || {
            for m in &msgs {
                match b.decapsulate(None, black_box(m), &mut scratch) {
                    TunnResult::WriteToTunnelV4(p, _) => {
                        black_box(p.len());
                    }
                    _ => panic!("boringtun decapsulate failed"),
                }
            }
        })
    });
    (Some(encap), Some(decap))
}

#[cfg(not(feature = "bench-boringtun"))]
fn boringtun_refs(_: &ThreadClock, _: &[u8], _: Duration) -> (Option<Rate>, Option<Rate>) {
    (None, None)
}
