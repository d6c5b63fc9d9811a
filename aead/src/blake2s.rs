//! Keyed BLAKE2s (RFC 7693) MACs of up to [`MAX_LANES`] independent inputs at once, one input per
//! 32-bit SIMD lane, with keyed states that can be computed once and reused.
//!
//! A keyed BLAKE2s MAC compresses the key, padded to a 64-byte block, before the input. When many
//! MACs share a key (WireGuard's MAC1 key is fixed per device key, the cookie secret between two
//! rotations), that first compression is the same for all of them: [`KeyedState::new`] does it
//! once, and a job that starts from it compresses only its input blocks. A job may instead start
//! from a raw key ([`Start::Key`]); its key block is then compressed in the lanes, as its first
//! block.
//!
//! [`Lanes::mac_lanes`] runs the jobs of one call together: vector `v[i]` holds state word `i` of
//! every lane. Lanes may have different block counts: each has its own counter `t` and final
//! flag, and a lane past its last block is masked (keeps its state) while longer ones go on.
//! Backends ([`Backend`]): AVX-512F (16 lanes of `u32` in a zmm register, `vprord` rotations,
//! mask-register merges), AVX2 (8 lanes; two passes for more than 8 jobs), and the portable code
//! of this module (plain Rust, one job at a time), picked as for the AEAD.
//!
//! Constant time per job: what the code does depends on the jobs' lengths and key lengths (public
//! in WireGuard), never on key, state or input bytes. The call's copies of keys and states are
//! wiped before it returns (registers and spilled temporaries of the kernels are not); a MAC's
//! input is not treated as secret (message words holding only input are not wiped).

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Backend, Lanes, MAX_LANES};

/// The BLAKE2s block length in bytes.
pub const BLOCK_LEN: usize = 64;
/// The longest key and the longest output, in bytes.
pub const MAX_LEN: usize = 32;

/// The initialisation vector (RFC 7693 §2.6, the SHA-256 one).
pub(crate) const IV: [u32; 8] =
    [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];

/// The message schedule of the ten rounds (RFC 7693 §2.7).
pub(crate) const SIGMA: [[usize; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

/// A call [`Lanes::mac_lanes`] or [`KeyedState::new`] cannot take. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More than [`MAX_LANES`] jobs in one call.
    #[error("{count} BLAKE2s jobs in one call (at most {MAX_LANES})")]
    TooManyJobs {
        /// The number of jobs passed.
        count: usize,
    },
    /// A key of more than [`MAX_LEN`] bytes, or an empty one for a [`KeyedState`].
    #[error("BLAKE2s key of {len} bytes (at most {MAX_LEN}; 1 or more for a keyed state)")]
    KeyLength {
        /// The key's length.
        len: usize,
    },
    /// An output length of 0 or more than [`MAX_LEN`] bytes.
    #[error("BLAKE2s output of {len} bytes (1 to {MAX_LEN})")]
    OutputLength {
        /// The requested length.
        len: usize,
    },
}

fn check_lengths(key_len: usize, out_len: usize) -> Result<(), Error> {
    if key_len > MAX_LEN {
        return Err(Error::KeyLength { len: key_len });
    }
    if out_len == 0 || out_len > MAX_LEN {
        return Err(Error::OutputLength { len: out_len });
    }
    Ok(())
}

/// The state words after the parameter block (sequential mode, no salt or personalisation).
fn param_state(key_len: usize, out_len: usize) -> [u32; 8] {
    let mut h = IV;
    h[0] ^= 0x0101_0000 ^ ((key_len as u32) << 8) ^ out_len as u32;
    h
}

/// The key padded with zeros to a block.
fn key_block(key: &[u8]) -> [u8; BLOCK_LEN] {
    let mut b = [0u8; BLOCK_LEN];
    b[..key.len()].copy_from_slice(key);
    b
}

/// The BLAKE2s state of a key: the parameter block and the key block compressed (counter 64, not
/// final), the start of every MAC under that key and output length over a non-empty input.
/// Holds the key too, for the one input it cannot start (the empty one, whose MAC compresses
/// the key block as the final block). Wiped on drop.
#[derive(Clone)]
pub struct KeyedState {
    h: [u32; 8],
    key: [u8; MAX_LEN],
    key_len: u8,
    out_len: u8,
}

/// Wiping leaves a state of all-zero words and key: MACs started from it are wrong (but safe).
impl Zeroize for KeyedState {
    fn zeroize(&mut self) {
        self.h.zeroize();
        self.key.zeroize();
    }
}

impl Drop for KeyedState {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for KeyedState {}

impl core::fmt::Debug for KeyedState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyedState(out_len {}, ..)", self.out_len)
    }
}

impl KeyedState {
    /// The state for MACs of `out_len` bytes under `key`.
    ///
    /// # Errors
    /// [`Error::KeyLength`] unless `key` has 1 to 32 bytes, [`Error::OutputLength`] unless
    /// `out_len` is 1 to 32.
    pub fn new(key: &[u8], out_len: usize) -> Result<Self, Error> {
        if key.is_empty() {
            return Err(Error::KeyLength { len: 0 });
        }
        check_lengths(key.len(), out_len)?;
        let mut st = KeyedState {
            h: param_state(key.len(), out_len),
            key: [0; MAX_LEN],
            key_len: key.len() as u8,
            out_len: out_len as u8,
        };
        st.key[..key.len()].copy_from_slice(key);
        let mut block = key_block(key);
        let mut m = words(&block);
        compress(&mut st.h, &m, BLOCK_LEN as u64, false);
        block.zeroize();
        m.zeroize();
        Ok(st)
    }

    /// The output length its MACs have.
    pub fn out_len(&self) -> usize {
        self.out_len as usize
    }
}

/// Where a job starts. (`Debug` shows lengths, not keys.)
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// A precomputed keyed state: only the input's blocks are compressed. For an empty input
    /// the job falls back to its key (as [`Start::Key`]).
    Keyed(&'a KeyedState),
    /// A raw key of up to 32 bytes and the output length (1 to 32): the key block is compressed
    /// first, in the lanes. An empty key is the unkeyed hash (no key block).
    Key {
        /// The key.
        key: &'a [u8],
        /// The MAC's length in bytes.
        out_len: usize,
    },
}

/// One MAC of a [`Lanes::mac_lanes`] call: `out[..out_len]` receives `BLAKE2s(key, input)`.
/// (`Debug` shows the start and lengths, not the key or the MAC.)
pub struct MacJob<'a> {
    /// The key or its precomputed state.
    pub start: Start<'a>,
    /// The input, any length (the empty one included).
    pub input: &'a [u8],
    /// The MAC in its first `out_len` bytes, zeros after them, once the call returned.
    pub out: [u8; MAX_LEN],
}

impl core::fmt::Debug for Start<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Start::Keyed(s) => write!(f, "{s:?}"),
            Start::Key { key, out_len } => write!(f, "Key(key_len {}, out_len {out_len})", key.len()),
        }
    }
}

impl core::fmt::Debug for MacJob<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MacJob({:?}, input_len {})", self.start, self.input.len())
    }
}

impl<'a> MacJob<'a> {
    /// A job from a precomputed state.
    pub fn keyed(state: &'a KeyedState, input: &'a [u8]) -> Self {
        MacJob { start: Start::Keyed(state), input, out: [0; MAX_LEN] }
    }

    /// A job from a raw key (`out_len` bytes of output).
    pub fn key(key: &'a [u8], out_len: usize, input: &'a [u8]) -> Self {
        MacJob { start: Start::Key { key, out_len }, input, out: [0; MAX_LEN] }
    }

    /// The output length of this job.
    pub fn out_len(&self) -> usize {
        match self.start {
            Start::Keyed(s) => s.out_len(),
            Start::Key { out_len, .. } => out_len,
        }
    }
}

/// How one job runs in the lanes: its starting state, whether its key block is compressed in
/// the lanes (first), and its block count.
struct Plan<'a> {
    /// The precomputed state it starts from, if any (else `param`).
    state: Option<&'a [u32; 8]>,
    /// The parameter block's state words (public: they depend only on the lengths).
    param: [u32; 8],
    /// Whether the input's blocks come after a key block (compressed already or in `key`).
    keyed: bool,
    key: Option<&'a [u8]>,
    input: &'a [u8],
    blocks: usize,
    out_len: usize,
}

impl<'a> Plan<'a> {
    fn new(job: &MacJob<'a>) -> Self {
        let (key, out_len) = match job.start {
            Start::Keyed(s) if !job.input.is_empty() => {
                return Plan {
                    state: Some(&s.h),
                    param: IV,
                    keyed: true,
                    key: None,
                    input: job.input,
                    blocks: job.input.len().div_ceil(BLOCK_LEN),
                    out_len: s.out_len(),
                };
            }
            Start::Keyed(s) => (&s.key[..s.key_len as usize], s.out_len()),
            Start::Key { key, out_len } => (key, out_len),
        };
        let param = param_state(key.len(), out_len);
        let key = Some(key).filter(|k| !k.is_empty());
        // The unkeyed hash of the empty input compresses one zero block.
        let blocks = (usize::from(key.is_some()) + job.input.len().div_ceil(BLOCK_LEN)).max(1);
        Plan { state: None, param, keyed: key.is_some(), key, input: job.input, blocks, out_len }
    }

    /// The state words the job starts from.
    fn start(&self) -> &[u32; 8] {
        self.state.unwrap_or(&self.param)
    }

    /// Block `i` of the job if it is 64 bytes of the input (not the key block, not a padded
    /// last block), and the counter after it: what [`Plan::block`] gives, read as one array.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn whole_block(&self, i: usize) -> Option<(&'a [u8; BLOCK_LEN], u64)> {
        let at = i.checked_sub(usize::from(self.key.is_some()))? * BLOCK_LEN;
        let end = at.checked_add(BLOCK_LEN)?;
        let b = self.input.get(at..end)?.try_into().ok()?;
        Some((b, (usize::from(self.keyed) * BLOCK_LEN + end) as u64))
    }

    /// Block `i` of the job (zero-padded), word by word into `put(word index, word)`, and the
    /// counter after it. `i` must be below `blocks`.
    fn block(&self, i: usize, mut put: impl FnMut(usize, u32)) -> u64 {
        let (bytes, t) = match self.key {
            Some(key) if i == 0 => (key, BLOCK_LEN),
            _ => {
                let at = (i - usize::from(self.key.is_some())) * BLOCK_LEN;
                let end = (at + BLOCK_LEN).min(self.input.len());
                (&self.input[at..end], usize::from(self.keyed) * BLOCK_LEN + end)
            }
        };
        let mut chunks = bytes.chunks_exact(4);
        let mut w = 0;
        for c in &mut chunks {
            put(w, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            w += 1;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 4];
            b[..rest.len()].copy_from_slice(rest);
            put(w, u32::from_le_bytes(b));
            b.zeroize();
            w += 1;
        }
        for w in w..16 {
            put(w, 0);
        }
        t as u64
    }
}

/// One compression step of `L` lanes: lane `l` compresses block `m[..][l]` with counter
/// `t_lo[l] | t_hi[l] << 32` and final-block word `f[l]` (0 or all ones) if `active[l]` is all
/// ones, and keeps its state if it is 0.
pub(crate) struct Step<const L: usize> {
    pub m: [[u32; L]; 16],
    pub t_lo: [u32; L],
    pub t_hi: [u32; L],
    pub f: [u32; L],
    pub active: [u32; L],
}

impl<const L: usize> Zeroize for Step<L> {
    fn zeroize(&mut self) {
        self.m.zeroize();
    }
}

/// The little-endian words of a block.
fn words(b: &[u8; BLOCK_LEN]) -> [u32; 16] {
    core::array::from_fn(|i| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]))
}

/// RFC 7693 §3.2 compression `F` of one block, the portable reference.
pub(crate) fn compress(h: &mut [u32; 8], m: &[u32; 16], t: u64, last: bool) {
    let mut v = [0u32; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= t as u32;
    v[13] ^= (t >> 32) as u32;
    if last {
        v[14] = !v[14];
    }
    #[inline(always)]
    fn g(v: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize, x: u32, y: u32) {
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
        v[d] = (v[d] ^ v[a]).rotate_right(16);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(12);
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
        v[d] = (v[d] ^ v[a]).rotate_right(8);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(7);
    }
    // The ten rounds written out, so that every message index is a constant (a loop over
    // `SIGMA` is not unrolled by the compiler, and then loads each index from the table).
    macro_rules! round {
        ($r:expr) => {{
            const S: [usize; 16] = SIGMA[$r];
            g(&mut v, 0, 4, 8, 12, m[S[0]], m[S[1]]);
            g(&mut v, 1, 5, 9, 13, m[S[2]], m[S[3]]);
            g(&mut v, 2, 6, 10, 14, m[S[4]], m[S[5]]);
            g(&mut v, 3, 7, 11, 15, m[S[6]], m[S[7]]);
            g(&mut v, 0, 5, 10, 15, m[S[8]], m[S[9]]);
            g(&mut v, 1, 6, 11, 12, m[S[10]], m[S[11]]);
            g(&mut v, 2, 7, 8, 13, m[S[12]], m[S[13]]);
            g(&mut v, 3, 4, 9, 14, m[S[14]], m[S[15]]);
        }};
    }
    round!(0);
    round!(1);
    round!(2);
    round!(3);
    round!(4);
    round!(5);
    round!(6);
    round!(7);
    round!(8);
    round!(9);
    for i in 0..8 {
        h[i] ^= v[i] ^ v[i + 8];
    }
    v.zeroize();
}

/// The portable backend: each job on its own.
fn mac_portable(job: &mut MacJob<'_>) {
    let plan = Plan::new(job);
    let mut h = *plan.start();
    let mut m = [0u32; 16];
    for i in 0..plan.blocks {
        let t = plan.block(i, |w, x| m[w] = x);
        compress(&mut h, &m, t, i + 1 == plan.blocks);
    }
    write_out(plan.out_len, &mut job.out, |w| h[w]);
    m.zeroize();
    h.zeroize();
}

/// The keyed BLAKE2s MAC of one job into its `out`, in plain Rust (the portable backend): for a
/// message checked on its own, where the lanes' per-call setup would cost more than they share.
/// The same bytes as [`Lanes::mac_lanes`] on every backend.
///
/// # Errors
/// [`Error`] if a raw key or output length is out of range; then `job` was not written.
pub fn mac_one(job: &mut MacJob<'_>) -> Result<(), Error> {
    if let Start::Key { key, out_len } = job.start {
        check_lengths(key.len(), out_len)?;
    }
    mac_portable(job);
    Ok(())
}

/// The first `out_len` bytes of the state words `h(0)..h(7)` (little-endian) into `out`, zeros
/// after them.
fn write_out(out_len: usize, out: &mut [u8; MAX_LEN], h: impl Fn(usize) -> u32) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = if i < out_len { (h(i / 4) >> (8 * (i % 4))) as u8 } else { 0 };
    }
}

/// Runs up to `L` jobs in the lanes of `kernel` (one compression step of all lanes per call).
///
/// Wiped before it returns: the lanes' states, and the message words if a key block was among
/// them. Message words of inputs alone are not: a MAC's input is not treated as secret.
#[cfg(target_arch = "x86_64")]
fn mac_simd<const L: usize>(jobs: &mut [MacJob<'_>], mut kernel: impl FnMut(&mut [[u32; L]; 8], &Step<L>)) {
    debug_assert!(jobs.len() <= L);
    let plans: [Option<Plan<'_>>; L] = core::array::from_fn(|l| jobs.get(l).map(Plan::new));
    let plans = &plans[..jobs.len().min(L)];
    let plans = || plans.iter().flatten();
    let mut h = [[0u32; L]; 8];
    for (l, p) in plans().enumerate() {
        for (w, hw) in h.iter_mut().zip(p.start()) {
            w[l] = *hw;
        }
    }
    let steps = plans().map(|p| p.blocks).max().unwrap_or(0);
    let mut step = Step { m: [[0u32; L]; 16], t_lo: [0; L], t_hi: [0; L], f: [0; L], active: [0; L] };
    for i in 0..steps {
        for (l, p) in plans().enumerate() {
            if let Some((b, t)) = p.whole_block(i) {
                // A whole input block: its 16 words read at once, then one column of `m`.
                for (w, x) in step.m.iter_mut().zip(words(b)) {
                    w[l] = x;
                }
                step.t_lo[l] = t as u32;
                step.t_hi[l] = (t >> 32) as u32;
                step.f[l] = if i + 1 == p.blocks { u32::MAX } else { 0 };
                step.active[l] = u32::MAX;
            } else if i < p.blocks {
                let t = p.block(i, |w, x| step.m[w][l] = x);
                step.t_lo[l] = t as u32;
                step.t_hi[l] = (t >> 32) as u32;
                step.f[l] = if i + 1 == p.blocks { u32::MAX } else { 0 };
                step.active[l] = u32::MAX;
            } else {
                step.active[l] = 0;
            }
        }
        kernel(&mut h, &step);
    }
    for (l, (job, p)) in jobs.iter_mut().zip(plans()).enumerate() {
        write_out(p.out_len, &mut job.out, |w| h[w][l]);
    }
    if plans().any(|p| p.key.is_some()) {
        step.zeroize();
    }
    h.zeroize();
}

impl Lanes {
    /// The keyed BLAKE2s MAC of every job, at most [`MAX_LANES`] at once, into each job's `out`.
    /// The same bytes on every backend and as any RFC 7693 implementation.
    ///
    /// # Errors
    /// [`Error`] if there are more than [`MAX_LANES`] jobs or a raw key or output length is out
    /// of range; then no job was written.
    pub fn mac_lanes(&self, jobs: &mut [MacJob<'_>]) -> Result<(), Error> {
        if jobs.len() > MAX_LANES {
            return Err(Error::TooManyJobs { count: jobs.len() });
        }
        for j in jobs.iter() {
            if let Start::Key { key, out_len } = j.start {
                check_lengths(key.len(), out_len)?;
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            use crate::x86::{Avx2, Avx512};
            // The tokens exist here: a `Lanes` is made only on a backend this CPU supports.
            match (self.backend(), Avx512::new(), Avx2::new()) {
                (Backend::Avx512, Some(cpu), _) if jobs.len() <= 8 => {
                    mac_simd::<8>(jobs, |h, s| crate::x86::blake2s_avx512_8(cpu, h, s));
                    return Ok(());
                }
                (Backend::Avx512, Some(cpu), _) => {
                    mac_simd::<16>(jobs, |h, s| crate::x86::blake2s_avx512(cpu, h, s));
                    return Ok(());
                }
                (Backend::Avx2, _, Some(cpu)) => {
                    for chunk in jobs.chunks_mut(8) {
                        mac_simd::<8>(chunk, |h, s| crate::x86::blake2s_avx2(cpu, h, s));
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        jobs.iter_mut().for_each(mac_portable);
        Ok(())
    }
}
