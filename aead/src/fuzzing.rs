//! The fuzz bodies and the hooks the tests use to reach the kernels directly. Behind the
//! `fuzzing` feature: for the fuzz crate and the tests only.
//!
//! [`lanes`] turns fuzz input into a burst (lane count, keys, nonces, additional data, lengths,
//! contents, corruptions) and checks every backend this CPU runs against the portable reference
//! and against ring. [`blake2s_lanes`] turns it into a call of 1 to 16 BLAKE2s MACs (raw keys,
//! precomputed keyed states, some shared, the unkeyed hash, output and input lengths) and checks
//! every backend against the `blake2` crate. They panic on any disagreement: that is what a
//! fuzzer looks for.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

use crate::blake2s::{self, KeyedState, MacJob};
use crate::portable::{self, Poly1305};
use crate::{Backend, Lane, Lanes, MAX_LANES, NONCE_LEN, TAG_LEN};

/// ChaCha20 blocks (RFC 8439 §2.3) on `backend`'s kernel: one per `(key, nonce, counter)`, at
/// most [`MAX_LANES`] in one call. `None` if the CPU cannot run the backend or there are too many.
pub fn chacha20_blocks(backend: Backend, blocks: &[([u8; 32], [u8; 12], u32)]) -> Option<Vec<[u8; 64]>> {
    if blocks.len() > MAX_LANES || !backend.is_supported() {
        return None;
    }
    let mut out = vec![[0u8; 64]; blocks.len()];
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = crate::burst::Simd::new(backend) {
        let mut table = crate::sched::KeyTable::zeroed();
        table.fill(blocks.iter().map(|(k, n, _)| (k, n)));
        let jobs = out.iter_mut().zip(blocks).enumerate().map(|(i, (dst, b))| crate::sched::Job {
            lane: i as u32,
            counter: b.2,
            dst: &mut dst[..],
        });
        simd.chacha(&table, jobs);
        return Some(out);
    }
    for (o, (k, n, c)) in out.iter_mut().zip(blocks) {
        *o = portable::chacha20_block(k, *c, n);
    }
    Some(out)
}

/// Poly1305 (RFC 8439 §2.5, any message length) on `backend`'s kernel: one tag per
/// `(r || s, message)`, at most [`MAX_LANES`] in one call. `None` if the CPU cannot run the
/// backend or there are too many.
pub fn poly1305(backend: Backend, macs: &[([u8; 32], &[u8])]) -> Option<Vec<[u8; TAG_LEN]>> {
    if macs.len() > MAX_LANES || !backend.is_supported() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = crate::burst::Simd::new(backend) {
        use crate::plan::{split, Piece, PolyPlan};
        let mut tails = [[0u8; 16]; MAX_LANES];
        let mut otk = [[0u8; 64]; MAX_LANES];
        let mut blocks = [0usize; MAX_LANES];
        for (b, (_, msg)) in blocks.iter_mut().zip(macs) {
            *b = msg.len().div_ceil(16);
        }
        let (width, groups) = simd.poly_shape();
        let split = split(&blocks[..macs.len()], width, groups);
        let mut plan = PolyPlan::new(split.steps);
        for (((t, o), (key, msg)), k) in tails.iter_mut().zip(otk.iter_mut()).zip(macs).zip(split.k) {
            // Full blocks with the 2^128 bit, then the rest with a 1 byte appended and no 2^128 bit.
            let (full, rest) = msg.split_at(msg.len() & !15);
            t[..rest.len()].copy_from_slice(rest);
            if !rest.is_empty() {
                t[rest.len()] = 1;
            }
            let last = Piece { data: if rest.is_empty() { &[] } else { &t[..] }, hibit: false };
            assert!(plan.push(&[Piece { data: full, hibit: true }, last], k), "split sized the plan");
            o[..32].copy_from_slice(key);
        }
        return Some(simd.poly1305(&plan, split.groups, &otk, macs.len())[..macs.len()].to_vec());
    }
    Some(
        macs.iter()
            .map(|(key, msg)| {
                let mut mac = Poly1305::new(key);
                mac.update(msg);
                mac.finish()
            })
            .collect(),
    )
}

/// A small deterministic generator (SplitMix64) for the contents the fuzz input does not spell out.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// One lane of a fuzz burst.
struct Case {
    key: [u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: Vec<u8>,
    plain: Vec<u8>,
    /// Flip a bit of the tag (`Some(bit)`) before opening.
    bad_tag: Option<u8>,
    /// Flip a bit of the ciphertext (`Some(bit index)`) before opening.
    bad_ct: Option<usize>,
}

/// Reads a burst from fuzz input: one byte for the lane count (its top bit: every lane of the
/// first lane's length, none with additional data, WireGuard's shape), then per lane 12 header
/// bytes (key seed, nonce counter, lengths, corruption). Contents come from a generator seeded by
/// the header, so short inputs still make long messages.
fn cases(data: &[u8]) -> Vec<Case> {
    let mut it = data.iter().copied();
    let mut byte = || it.next().unwrap_or(0);
    let first = byte();
    let n = usize::from(first & 0x0f) % MAX_LANES + 1;
    let uniform = first & 0x80 != 0;
    let mut first_len = None;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let h: [u8; 12] = core::array::from_fn(|_| byte());
        let mut mix = Mix(u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) ^ 0x5eed);
        let mut key = [0u8; 32];
        mix.fill(&mut key);
        // Keys from a small set, so that lanes often share one (as a WireGuard peer's burst does).
        if h[8] & 0x80 != 0 {
            key = [h[8] & 3; 32];
        }
        let nonce = match h[8] & 0x40 {
            0 => crate::wireguard_nonce(mix.next() >> (h[9] % 64)),
            _ => {
                let mut n = [0u8; NONCE_LEN];
                mix.fill(&mut n);
                n
            }
        };
        let aad_len = if h[8] & 0x20 != 0 && !uniform { usize::from(h[9] % 40) } else { 0 };
        let own_len = usize::from(u16::from_le_bytes([h[10], h[11]])) % 1537;
        let len = if uniform { *first_len.get_or_insert(own_len) } else { own_len };
        let mut aad = vec![0u8; aad_len];
        mix.fill(&mut aad);
        let mut plain = vec![0u8; len];
        mix.fill(&mut plain);
        let bad_tag = (h[8] & 0x10 != 0).then_some(h[9] % 128);
        let bad_ct = (h[8] & 0x08 != 0 && len > 0).then(|| (mix.next() as usize) % (len * 8));
        out.push(Case { key, nonce, aad, plain, bad_tag, bad_ct });
    }
    out
}

/// ring's seal of one case: (ciphertext, tag).
fn ring_seal(c: &Case) -> (Vec<u8>, [u8; TAG_LEN]) {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &c.key).expect("32-byte key"));
    let mut buf = c.plain.clone();
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(c.nonce), Aad::from(&c.aad[..]), &mut buf)
        .expect("ring seals any length used here");
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag.as_ref());
    (buf, t)
}

/// Whether ring opens `ct` with `tag`.
fn ring_opens(c: &Case, ct: &[u8], tag: [u8; TAG_LEN]) -> bool {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &c.key).expect("32-byte key"));
    let mut buf = ct.to_vec();
    key.open_in_place_separate_tag(
        Nonce::assume_unique_for_key(c.nonce),
        Aad::from(&c.aad[..]),
        Tag::from(tag),
        &mut buf,
        0..,
    )
    .is_ok()
}

/// The fuzz body: a burst from `data`, sealed and opened (with the corruptions it asks for) on
/// every backend this CPU runs, checked against the portable reference and ring. Returns the
/// number of lanes checked (lanes times backends).
///
/// # Panics
/// On any disagreement, or when an open releases a buffer it should not.
pub fn lanes(data: &[u8]) -> usize {
    let cases = cases(data);
    let expected: Vec<(Vec<u8>, [u8; TAG_LEN])> = cases.iter().map(ring_seal).collect();
    for (c, (ct, tag)) in cases.iter().zip(&expected) {
        let mut buf = c.plain.clone();
        let t = portable::seal(&c.key, &c.nonce, &c.aad, &mut buf);
        assert_eq!((&buf, &t), (ct, tag), "portable seal differs from ring");
    }
    let mut checked = 0;
    for backend in Backend::ALL {
        let Some(engine) = Lanes::with_backend(backend) else { continue };
        // Seal.
        let mut bufs: Vec<Vec<u8>> = cases.iter().map(|c| c.plain.clone()).collect();
        let mut lanes: Vec<Lane<'_>> =
            cases.iter().zip(bufs.iter_mut()).map(|(c, b)| Lane::new(&c.key, c.nonce, &c.aad, b)).collect();
        engine.seal_lanes(&mut lanes).expect("a burst of at most 16 short lanes");
        let tags: Vec<[u8; TAG_LEN]> = lanes.iter().map(|l| l.tag).collect();
        drop(lanes);
        for (i, ((b, t), (ct, tag))) in bufs.iter().zip(&tags).zip(&expected).enumerate() {
            assert_eq!((b, t), (ct, tag), "{} seal differs from ring in lane {i}", backend.name());
        }
        // Open, some lanes corrupted.
        let mut want_ok = 0u16;
        let mut sent: Vec<(Vec<u8>, [u8; TAG_LEN])> = Vec::with_capacity(cases.len());
        for (i, (c, (ct, tag))) in cases.iter().zip(&expected).enumerate() {
            let (mut ct, mut tag) = (ct.clone(), *tag);
            if let Some(bit) = c.bad_tag {
                tag[usize::from(bit / 8)] ^= 1 << (bit % 8);
            }
            if let Some(bit) = c.bad_ct {
                ct[bit / 8] ^= 1 << (bit % 8);
            }
            let ok = c.bad_tag.is_none() && c.bad_ct.is_none();
            assert_eq!(ring_opens(c, &ct, tag), ok, "ring disagrees on lane {i}");
            want_ok |= u16::from(ok) << i;
            sent.push((ct, tag));
        }
        let mut bufs: Vec<Vec<u8>> = sent.iter().map(|(ct, _)| ct.clone()).collect();
        let mut lanes: Vec<Lane<'_>> = cases
            .iter()
            .zip(bufs.iter_mut())
            .zip(&sent)
            .map(|((c, b), (_, tag))| Lane { tag: *tag, ..Lane::new(&c.key, c.nonce, &c.aad, b) })
            .collect();
        let ok = engine.open_lanes(&mut lanes).expect("a burst of at most 16 short lanes");
        drop(lanes);
        assert_eq!(ok, want_ok, "{} open verdicts", backend.name());
        for (i, ((b, c), (ct, _))) in bufs.iter().zip(&cases).zip(&sent).enumerate() {
            if ok & (1 << i) != 0 {
                assert_eq!(b, &c.plain, "{} open of lane {i} is not the plaintext", backend.name());
            } else {
                assert_eq!(b, ct, "{} released (changed) the buffer of failed lane {i}", backend.name());
            }
        }
        checked += cases.len();
    }
    checked
}

/// One MAC of a BLAKE2s fuzz call.
struct MacCase {
    /// The raw key (empty: the unkeyed hash).
    key: Vec<u8>,
    out_len: usize,
    input: Vec<u8>,
    /// The keyed state it starts from (an index into the call's states), if any.
    state: Option<usize>,
}

/// A key several jobs of a BLAKE2s fuzz call share.
struct Slot {
    key: Vec<u8>,
    out_len: usize,
    /// Its keyed state (an index into the call's states), once a job asked for one.
    state: Option<usize>,
}

/// Input lengths at and around BLAKE2s block boundaries (64 bytes), and the longest.
const BOUNDARY_LENS: [usize; 19] =
    [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 191, 192, 193, 255, 256, 257, 300];

/// Reads a BLAKE2s call from fuzz input: byte 0 (bits 0–3: job count − 1; bit 4: also make a call
/// the engine must refuse, bits 5–7 which), then 4 header bytes per job:
/// - `h0`: bits 0–4 key length − 1; bit 5 unkeyed (a raw start with an empty key); bit 6 start
///   from a precomputed [`KeyedState`]; bit 7 the key of a shared slot (`h1 >> 6`), whose key,
///   output length and state every job naming it uses (fixed by the first);
/// - `h1`: bit 5 set: output length `(h1 & 31) + 1`; else 32 if bit 0, 16 if not;
/// - `h2`, `h3`: the input length: `h3 & 0x80` set, `BOUNDARY_LENS[h2 % 19]`; else the 15-bit
///   number modulo 301.
///
/// Keys and inputs come from a generator seeded by the header. Returns the cases and the keyed
/// states they name.
fn mac_cases(data: &[u8]) -> (Vec<MacCase>, Vec<KeyedState>, u8) {
    let mut it = data.iter().copied();
    let mut byte = || it.next().unwrap_or(0);
    let head = byte();
    let n = usize::from(head & 15) + 1;
    let mut cases = Vec::with_capacity(n);
    let mut states: Vec<KeyedState> = Vec::new();
    let mut slots: [Option<Slot>; 4] = Default::default();
    for j in 0..n {
        let h: [u8; 4] = core::array::from_fn(|_| byte());
        let mut mix = Mix(u64::from_le_bytes([h[0], h[1], h[2], h[3], j as u8, 0, 0, 0]) ^ 0xb1a2);
        let len = if h[3] & 0x80 != 0 {
            BOUNDARY_LENS[usize::from(h[2]) % BOUNDARY_LENS.len()]
        } else {
            usize::from(u16::from_le_bytes([h[2], h[3] & 0x7f])) % 301
        };
        let mut input = vec![0u8; len];
        mix.fill(&mut input);
        let mut out_len = if h[1] & 0x20 != 0 { usize::from(h[1] & 31) + 1 } else { [16, 32][usize::from(h[1] & 1)] };
        let mut key = vec![0u8; usize::from(h[0] & 31) + 1];
        mix.fill(&mut key);
        let keyed_state = h[0] & 0x40 != 0;
        let state = if h[0] & 0x20 != 0 {
            key.clear();
            None
        } else if h[0] & 0x80 != 0 {
            let slot =
                slots[usize::from(h[1] >> 6)].get_or_insert_with(|| Slot { key: key.clone(), out_len, state: None });
            (key, out_len) = (slot.key.clone(), slot.out_len);
            keyed_state.then(|| {
                *slot.state.get_or_insert_with(|| {
                    states.push(
                        KeyedState::new(&slot.key, slot.out_len).expect("a key of 1 to 32 bytes, an output of 1 to 32"),
                    );
                    states.len() - 1
                })
            })
        } else {
            keyed_state.then(|| {
                states.push(KeyedState::new(&key, out_len).expect("a key of 1 to 32 bytes, an output of 1 to 32"));
                states.len() - 1
            })
        };
        cases.push(MacCase { key, out_len, input, state });
    }
    (cases, states, head)
}

/// The `blake2` crate's BLAKE2s of `input` under `key` (the unkeyed hash if empty), `out_len`
/// bytes (1 to 32).
fn reference_blake2s(key: &[u8], out_len: usize, input: &[u8]) -> Vec<u8> {
    use blake2::digest::consts::*;
    use blake2::digest::generic_array::ArrayLength;
    use blake2::digest::typenum::{IsLessOrEqual, LeEq, NonZero};
    use blake2::digest::{FixedOutput, KeyInit, Update, VariableOutput};

    fn keyed<N>(key: &[u8], input: &[u8]) -> Vec<u8>
    where
        N: ArrayLength<u8> + IsLessOrEqual<U32>,
        LeEq<N, U32>: NonZero,
    {
        let mut m = <blake2::Blake2sMac<N> as KeyInit>::new_from_slice(key).expect("a key of 1 to 32 bytes");
        Update::update(&mut m, input);
        m.finalize_fixed().to_vec()
    }
    if key.is_empty() {
        // (`Blake2sMac` with an empty key is not the unkeyed hash: it compresses a zero block.)
        let mut h = blake2::Blake2sVar::new(out_len).expect("an output of 1 to 32 bytes");
        h.update(input);
        let mut out = vec![0u8; out_len];
        h.finalize_variable(&mut out).expect("the length it was made with");
        return out;
    }
    macro_rules! by_len {
        ($($n:literal $t:ident)*) => {
            match out_len {
                $($n => keyed::<$t>(key, input),)*
                _ => unreachable!("output lengths are 1 to 32"),
            }
        };
    }
    by_len!(1 U1 2 U2 3 U3 4 U4 5 U5 6 U6 7 U7 8 U8 9 U9 10 U10 11 U11 12 U12 13 U13 14 U14 15 U15 16 U16
        17 U17 18 U18 19 U19 20 U20 21 U21 22 U22 23 U23 24 U24 25 U25 26 U26 27 U27 28 U28 29 U29 30 U30
        31 U31 32 U32)
}

/// What one [`blake2s_lanes`] input checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blake2sReached {
    /// MACs checked against the `blake2` crate (jobs times backends).
    pub macs: usize,
    /// Jobs of the call started from a precomputed keyed state.
    pub keyed_states: usize,
    /// Jobs of the call that are the unkeyed hash.
    pub unkeyed: usize,
    /// Calls refused as they had to be (one per backend when the input asks for one).
    pub refused: usize,
}

/// The BLAKE2s fuzz body: a call of 1 to 16 MACs from `data` (see `mac_cases`), made on every
/// backend this CPU runs (each forced in turn), every MAC compared with the `blake2` crate's and
/// the bytes after it checked to be zero; when the input asks for it, a call the engine must
/// refuse (17 jobs, a 33-byte key, an output length of 0 or 33), which must leave every output as
/// it was.
///
/// # Panics
/// On any disagreement, or when a refused call wrote an output.
pub fn blake2s_lanes(data: &[u8]) -> Blake2sReached {
    const POISON: [u8; blake2s::MAX_LEN] = [0xa5; blake2s::MAX_LEN];
    let (cases, states, head) = mac_cases(data);
    let expected: Vec<Vec<u8>> = cases.iter().map(|c| reference_blake2s(&c.key, c.out_len, &c.input)).collect();
    let jobs = || -> Vec<MacJob<'_>> {
        cases
            .iter()
            .map(|c| {
                let mut j = match c.state {
                    Some(s) => MacJob::keyed(&states[s], &c.input),
                    None => MacJob::key(&c.key, c.out_len, &c.input),
                };
                j.out = POISON;
                j
            })
            .collect()
    };
    let mut reached = Blake2sReached {
        keyed_states: cases.iter().filter(|c| c.state.is_some()).count(),
        unkeyed: cases.iter().filter(|c| c.key.is_empty()).count(),
        ..Blake2sReached::default()
    };
    for backend in Backend::ALL {
        let Some(engine) = Lanes::with_backend(backend) else { continue };
        let mut js = jobs();
        engine.mac_lanes(&mut js).expect("1 to 16 jobs of valid lengths");
        for (i, ((j, c), want)) in js.iter().zip(&cases).zip(&expected).enumerate() {
            let ctx = format!(
                "{} job {i} of {}: key {} bytes{}, output {}, input {}",
                backend.name(),
                cases.len(),
                c.key.len(),
                if c.state.is_some() { " (keyed state)" } else { "" },
                c.out_len,
                c.input.len()
            );
            assert_eq!(j.out_len(), c.out_len, "{ctx}");
            assert_eq!(&j.out[..c.out_len], &want[..], "{ctx}: differs from the blake2 crate");
            assert!(j.out[c.out_len..].iter().all(|&b| b == 0), "{ctx}: bytes after the MAC not zero");
        }
        reached.macs += cases.len();
        if head & 0x10 != 0 {
            // A call the engine must refuse, before writing anything.
            static BAD_KEY: [u8; blake2s::MAX_LEN + 1] = [0x5a; blake2s::MAX_LEN + 1];
            let mut js = jobs();
            // A bad job among the others (in place of one in a full call, which 17 jobs would
            // make a call of too many).
            let put = |js: &mut Vec<MacJob<'_>>, bad| {
                let at = js.len() / 2;
                if js.len() == MAX_LANES {
                    js[at] = bad;
                } else {
                    js.insert(at, bad);
                }
            };
            let want = match (head >> 5) % 3 {
                0 => {
                    while js.len() <= MAX_LANES {
                        let c = &cases[js.len() % cases.len()];
                        js.push(MacJob { out: POISON, ..MacJob::key(&c.key, c.out_len, &c.input) });
                    }
                    blake2s::Error::TooManyJobs { count: MAX_LANES + 1 }
                }
                1 => {
                    put(&mut js, MacJob { out: POISON, ..MacJob::key(&BAD_KEY, 16, b"x") });
                    blake2s::Error::KeyLength { len: BAD_KEY.len() }
                }
                _ => {
                    let len = if head & 0x80 != 0 { 0 } else { blake2s::MAX_LEN + 1 };
                    put(&mut js, MacJob { out: POISON, ..MacJob::key(&BAD_KEY[..16], len, b"") });
                    blake2s::Error::OutputLength { len }
                }
            };
            assert_eq!(engine.mac_lanes(&mut js), Err(want), "{}: a call to refuse", backend.name());
            assert!(js.iter().all(|j| j.out == POISON), "{}: a refused call wrote an output", backend.name());
            reached.refused += 1;
        }
    }
    reached
}
