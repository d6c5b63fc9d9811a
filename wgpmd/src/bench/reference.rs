//! The references `wgpmd bench` reports the pipeline against, timed on the calling thread's
//! CPU clock: raw ring ChaCha20-Poly1305 seal and open ([`wgpmd_proto::crypto::AeadKey`]),
//! libipsec-mb's ChaCha20-Poly1305 timed the same way (feature `bench-ipsec-mb`, x86-64:
//! `wgpmd_aead::ipsec_mb`, one job per message through the library's job API), our multi-lane
//! AEAD alone (`wgpmd_aead`, bursts of 16 messages under 16 keys, what the data path runs
//! without the rest of the pipeline) and boringtun 0.7.1 `encapsulate` / `decapsulate` on an
//! established session (the bodies of `benches/crypto.rs`, without criterion).
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

/// The one-message references' key.
const KEY: [u8; 32] = [7; 32];

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
    /// libipsec-mb's ChaCha20-Poly1305, one message at a time (`None` without the
    /// `bench-ipsec-mb` feature, off x86-64, or if the library could not make a manager).
    pub ipsec_mb: Option<IpsecMbRates>,
    /// The multi-lane AEAD (`wgpmd_aead::Lanes::seal_lanes`), bursts of 16, per message.
    pub lanes_seal: Rate,
    /// The multi-lane AEAD (`open_lanes`), bursts of 16, per message.
    pub lanes_open: Rate,
    /// boringtun `Tunn::encapsulate` (`None` without the `bench-boringtun` feature).
    pub boringtun_encap: Option<Rate>,
    /// boringtun `Tunn::decapsulate`.
    pub boringtun_decap: Option<Rate>,
}

/// libipsec-mb's one-message ChaCha20-Poly1305.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpsecMbRates {
    /// Seal (encrypt and tag).
    pub seal: Rate,
    /// Open (decrypt, tag compared).
    pub open: Rate,
    /// The code path the library chose for this CPU ("avx512", "avx2", "avx", "sse").
    pub arch: &'static str,
}

impl References {
    /// The fastest one-message AEAD's open rate: ring's or libipsec-mb's, whichever is higher.
    pub fn fastest_open(&self) -> f64 {
        self.ring_open.mpps().max(self.ipsec_mb.map_or(0.0, |i| i.open.mpps()))
    }
    /// The fastest one-message AEAD's seal rate.
    pub fn fastest_seal(&self) -> f64 {
        self.ring_seal.mpps().max(self.ipsec_mb.map_or(0.0, |i| i.seal.mpps()))
    }
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
    let key = AeadKey::new(&KEY);

    let (ring_seal, ring_open) = one_message_refs(&clock, &plain, budget, &mut RingOne(&key));
    let ipsec_mb = ipsec_mb_refs(&clock, &plain, budget);
    let (lanes_seal, lanes_open) = lanes_refs(&clock, &plain, budget);
    let (boringtun_encap, boringtun_decap) = boringtun_refs(&clock, &plain, budget);
    References { ring_seal, ring_open, ipsec_mb, lanes_seal, lanes_open, boringtun_encap, boringtun_decap }
}

/// A one-message AEAD under one key set up once, WireGuard nonces, no additional data.
trait OneMessage {
    /// Seal `buf` in place with the nonce of `counter`; the tag.
    fn seal(&mut self, counter: u64, buf: &mut [u8]) -> [u8; TAG_LEN];
    /// Open `msg` (ciphertext, then the tag) in place; whether the tag verified.
    fn open(&mut self, counter: u64, msg: &mut [u8]) -> bool;
}

/// ring through [`AeadKey`], the data path's former cipher.
struct RingOne<'a>(&'a AeadKey);

impl OneMessage for RingOne<'_> {
    fn seal(&mut self, counter: u64, buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.0.seal_in_place(counter, &[], buf)
    }
    fn open(&mut self, counter: u64, msg: &mut [u8]) -> bool {
        self.0.open_in_place(counter, &[], msg) == Ok(msg.len() - TAG_LEN)
    }
}

/// Seal: the same buffer sealed again and again (fresh counters). Open: a batch sealed untimed
/// (fresh counters), then opened timed, batch after batch; every tag must verify.
fn one_message_refs(clock: &ThreadClock, plain: &[u8], budget: Duration, aead: &mut impl OneMessage) -> (Rate, Rate) {
    let len = plain.len();
    let mut buf = plain.to_vec();
    let mut counter = 0u64;
    let seal = until(budget, || {
        timed(clock, BATCH, || {
            for _ in 0..BATCH {
                counter += 1;
                black_box(aead.seal(counter, black_box(&mut buf[..])));
            }
        })
    });

    let stride = len + TAG_LEN;
    let mut sealed = vec![0u8; stride * BATCH];
    let mut counter = 0u64;
    let open = until(budget, || {
        let first = counter + 1;
        for m in sealed.chunks_exact_mut(stride) {
            counter += 1;
            m[..len].copy_from_slice(plain);
            let tag = aead.seal(counter, &mut m[..len]);
            m[len..].copy_from_slice(&tag);
        }
        timed(clock, BATCH, || {
            for (i, m) in sealed.chunks_exact_mut(stride).enumerate() {
                let ok = aead.open(first + i as u64, black_box(m));
                assert!(ok, "reference open failed");
            }
        })
    });
    (seal, open)
}

/// libipsec-mb's ChaCha20-Poly1305 (`wgpmd_aead::ipsec_mb`), one message at a time, timed as
/// ring is: the same key bytes, plaintext and nonces.
#[cfg(all(feature = "bench-ipsec-mb", target_arch = "x86_64"))]
fn ipsec_mb_refs(clock: &ThreadClock, plain: &[u8], budget: Duration) -> Option<IpsecMbRates> {
    use wgpmd_aead::{ipsec_mb::IpsecMb, wireguard_nonce};

    struct Imb<'a>(IpsecMb, &'a [u8; 32]);
    impl OneMessage for Imb<'_> {
        fn seal(&mut self, counter: u64, buf: &mut [u8]) -> [u8; TAG_LEN] {
            self.0.seal(self.1, &wireguard_nonce(counter), &[], buf)
        }
        fn open(&mut self, counter: u64, msg: &mut [u8]) -> bool {
            let (buf, tag) = msg.split_at_mut(msg.len() - TAG_LEN);
            let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("a 16-byte tag");
            self.0.open(self.1, &wireguard_nonce(counter), &[], buf, tag)
        }
    }

    // `None` only if the library cannot make a manager on this CPU: the column is then absent.
    let mut imb = Imb(IpsecMb::new()?, &KEY);
    let arch = imb.0.arch();
    let (seal, open) = one_message_refs(clock, plain, budget, &mut imb);
    Some(IpsecMbRates { seal, open, arch })
}

#[cfg(not(all(feature = "bench-ipsec-mb", target_arch = "x86_64")))]
fn ipsec_mb_refs(_: &ThreadClock, _: &[u8], _: Duration) -> Option<IpsecMbRates> {
    None
}

/// The multi-lane AEAD alone: bursts of [`wgpmd_aead::MAX_LANES`] messages of the packet's size, each lane its
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
