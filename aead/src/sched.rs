//! What the SIMD kernels share: the work of a burst cut into pieces that fit SIMD lanes.
//!
//! ChaCha20: every 64-byte block of every message is a [`Job`] (lane, block counter, destination).
//! Jobs are independent, so a kernel fills each of its 16 (or 8) 32-bit SIMD lanes with any job,
//! of any message: a burst of uneven messages wastes at most one partly filled vector per phase.
//! The [`KeyTable`] holds every lane's key and nonce words, transposed, so a kernel builds the
//! state of a vector of jobs with one permute per word.
//!
//! Poly1305: a message is a chain, so one 64-bit SIMD lane follows one message. A [`PolyPlan`]
//! says which 16-byte block each lane absorbs at each step. Lanes are aligned at the *end*:
//! a message of `n` blocks in a plan of `steps` steps starts absorbing at step `steps - n`, and
//! before that absorbs zero blocks without the 2^128 bit, which leave its accumulator at zero
//! (`(0 + 0) * r = 0`). So no lane is ever masked, and every lane is done at the last step. The
//! plan is a short list of [`Epoch`]s, stretches of steps in which every lane reads from one
//! contiguous run (a stride of 16 bytes) or one fixed block (stride 0).

use std::marker::PhantomData;

use zeroize::Zeroize;

use crate::{Lane, MAX_LANES};

/// One ChaCha20 block to compute: key and nonce of lane `lane`, block counter `counter`, key
/// stream XORed into `dst` (1 to 64 bytes; the first `dst.len()` bytes of the block).
pub(crate) struct Job<'a> {
    pub lane: u32,
    pub counter: u32,
    pub dst: &'a mut [u8],
}

/// The ChaCha20 blocks of `lanes` selected by `mask`, lane after lane, counters from 1.
///
/// The caller has checked the lengths ([`crate::MAX_MESSAGE_LEN`]), so counters fit in 32 bits.
pub(crate) fn data_jobs<'a, 'l: 'a>(
    lanes: &'a mut [Lane<'l>],
    mask: u16,
) -> impl Iterator<Item = Job<'a>> + use<'a, 'l> {
    lanes.iter_mut().enumerate().filter(move |(i, _)| mask & (1 << i) != 0).flat_map(|(i, lane)| {
        lane.buf.chunks_mut(64).enumerate().map(move |(b, dst)| Job { lane: i as u32, counter: b as u32 + 1, dst })
    })
}

/// Block 0 of the first `out.len()` lanes, XORed into `out` (zeroed by the caller, so it receives
/// the key stream: the one-time Poly1305 keys in the first 32 bytes).
pub(crate) fn key_jobs(out: &mut [[u8; 64]]) -> impl Iterator<Item = Job<'_>> {
    out.iter_mut().enumerate().map(|(i, dst)| Job { lane: i as u32, counter: 0, dst: &mut dst[..] })
}

/// The key and nonce words of up to [`MAX_LANES`] lanes, transposed: `words[w][lane]` is word
/// `w` (key words 0 to 7, then nonce words 0 to 2) of lane `lane`. Wiped on drop.
pub(crate) struct KeyTable {
    pub words: [[u32; MAX_LANES]; 11],
}

impl KeyTable {
    /// The table of `(key, nonce)` pairs, at most [`MAX_LANES`] (more are ignored).
    #[inline]
    pub fn new<'k>(lanes: impl Iterator<Item = (&'k [u8; 32], &'k [u8; 12])>) -> Self {
        let mut words = [[0u32; MAX_LANES]; 11];
        for (l, (key, nonce)) in lanes.take(MAX_LANES).enumerate() {
            for (w, c) in key.chunks_exact(4).chain(nonce.chunks_exact(4)).enumerate() {
                words[w][l] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        KeyTable { words }
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        self.words.as_flattened_mut().zeroize();
    }
}

/// A run of whole 16-byte Poly1305 blocks of one lane's input, with or without the 2^128 bit.
#[derive(Clone, Copy)]
pub(crate) struct Piece<'a> {
    /// The blocks: a multiple of 16 bytes (a shorter remainder is not absorbed).
    pub data: &'a [u8],
    /// Whether each block gets the 2^128 bit.
    pub hibit: bool,
}

/// The AEAD's Poly1305 input for one lane (RFC 8439 §2.8): the additional data and the
/// ciphertext, each zero-padded to 16 bytes, then their lengths. `tails` is the lane's scratch for
/// the padded last blocks and the length block.
#[inline]
pub(crate) fn aead_pieces<'a>(aad: &'a [u8], ct: &'a [u8], tails: &'a mut [[u8; 16]; 3]) -> [Piece<'a>; 5] {
    let (a_full, a_rest) = aad.split_at(aad.len() & !15);
    let (c_full, c_rest) = ct.split_at(ct.len() & !15);
    if !a_rest.is_empty() {
        tails[0] = [0; 16];
        tails[0][..a_rest.len()].copy_from_slice(a_rest);
    }
    if !c_rest.is_empty() {
        tails[1] = [0; 16];
        tails[1][..c_rest.len()].copy_from_slice(c_rest);
    }
    tails[2][..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    tails[2][8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    let [t0, t1, t2] = tails;
    let tail = |t: &'a [u8; 16], used: bool| Piece { data: if used { &t[..] } else { &[] }, hibit: true };
    [
        Piece { data: a_full, hibit: true },
        tail(t0, !a_rest.is_empty()),
        Piece { data: c_full, hibit: true },
        tail(t1, !c_rest.is_empty()),
        tail(t2, true),
    ]
}

/// Most pieces a lane's input has (the AEAD's five).
pub(crate) const MAX_PIECES: usize = 5;

/// One zero block: what a lane reads before its input starts.
static ZERO_BLOCK: [u8; 16] = [0; 16];

/// Which block each of up to [`MAX_LANES`] lanes absorbs at each step (see the module doc).
///
/// Invariant the kernels rely on: for every [`Epoch`] it yields, `ptr[l] + stride[l] * k` for
/// `k < end - start` points at 16 readable bytes, borrowed for `'a`.
pub(crate) struct PolyPlan<'a> {
    /// Steps: the most blocks of any lane.
    steps: usize,
    /// Lanes pushed.
    lanes: usize,
    /// Blocks of each lane.
    blocks: [usize; MAX_LANES],
    /// Per lane and piece: the block count up to the end of the piece.
    ends: [[usize; MAX_PIECES]; MAX_LANES],
    /// Per lane and piece: the first block.
    ptrs: [[*const u8; MAX_PIECES]; MAX_LANES],
    /// Per lane: bit `s` set when piece `s` has the 2^128 bit.
    hibits: [u8; MAX_LANES],
    _input: PhantomData<&'a [u8]>,
}

/// A stretch of steps `start..end` in which lane `l` reads the block at
/// `ptr[l] + stride[l] * (step - start)`, with the 2^128 bit if bit `l` of `hibit` is set.
pub(crate) struct Epoch {
    pub start: usize,
    pub end: usize,
    pub ptr: [*const u8; MAX_LANES],
    pub stride: [usize; MAX_LANES],
    pub hibit: u16,
}

impl<'a> PolyPlan<'a> {
    /// A plan with no lane yet.
    #[inline]
    pub fn new() -> Self {
        PolyPlan {
            steps: 0,
            lanes: 0,
            blocks: [0; MAX_LANES],
            ends: [[0; MAX_PIECES]; MAX_LANES],
            ptrs: [[ZERO_BLOCK.as_ptr(); MAX_PIECES]; MAX_LANES],
            hibits: [0; MAX_LANES],
            _input: PhantomData,
        }
    }

    /// Adds the next lane, its input as pieces in order (at most [`MAX_LANES`] lanes; more are
    /// ignored). Lanes never pushed read zero blocks throughout.
    #[inline]
    pub fn push(&mut self, pieces: &[Piece<'a>]) {
        let Some(l) = (self.lanes < MAX_LANES).then_some(self.lanes) else { return };
        let mut blocks = 0;
        for (s, p) in pieces.iter().take(MAX_PIECES).enumerate() {
            blocks += p.data.len() / 16;
            self.ends[l][s] = blocks;
            self.ptrs[l][s] = p.data.as_ptr();
            self.hibits[l] |= u8::from(p.hibit) << s;
        }
        // Pieces not given are empty, ending where the last one did.
        for s in pieces.len().min(MAX_PIECES)..MAX_PIECES {
            self.ends[l][s] = blocks;
        }
        self.blocks[l] = blocks;
        self.steps = self.steps.max(blocks);
        self.lanes += 1;
    }

    /// A cursor over the epochs, in order, covering every step.
    #[inline]
    pub fn epochs(&self) -> Epochs<'_, 'a> {
        // Per lane and segment (0: the zero blocks before its input; s + 1: piece s): the step it
        // ends at, and a base such that the block of step t is `base + stride * t`.
        let mut ends = [[self.steps; MAX_PIECES + 1]; MAX_LANES];
        let mut bases = [[ZERO_BLOCK.as_ptr(); MAX_PIECES + 1]; MAX_LANES];
        for l in 0..self.lanes {
            let first = self.steps - self.blocks[l];
            ends[l][0] = first;
            let mut seg_start = first;
            for s in 0..MAX_PIECES {
                ends[l][s + 1] = first + self.ends[l][s];
                bases[l][s + 1] = self.ptrs[l][s].wrapping_sub(16 * seg_start);
                seg_start = ends[l][s + 1];
            }
        }
        Epochs { plan: self, ends, bases, cur: [0; MAX_LANES], start: 0, _plan: PhantomData }
    }
}

/// The epochs of a [`PolyPlan`], written one at a time into the caller's [`Epoch`] (no copy of
/// the pointer arrays per epoch).
pub(crate) struct Epochs<'p, 'a> {
    plan: &'p PolyPlan<'a>,
    ends: [[usize; MAX_PIECES + 1]; MAX_LANES],
    bases: [[*const u8; MAX_PIECES + 1]; MAX_LANES],
    /// Per lane: the segment it is in.
    cur: [usize; MAX_LANES],
    start: usize,
    _plan: PhantomData<&'p PolyPlan<'a>>,
}

impl Epochs<'_, '_> {
    /// An empty epoch, to be filled by [`Epochs::next_into`].
    pub fn empty() -> Epoch {
        Epoch { start: 0, end: 0, ptr: [ZERO_BLOCK.as_ptr(); MAX_LANES], stride: [0; MAX_LANES], hibit: 0 }
    }

    /// Writes the next epoch into `ep`; false when every step is covered (then `ep` is
    /// unchanged).
    #[inline]
    pub fn next_into(&mut self, ep: &mut Epoch) -> bool {
        let plan = self.plan;
        let start = self.start;
        if start >= plan.steps {
            return false;
        }
        ep.start = start;
        let mut end = plan.steps;
        let mut hibit = 0u16;
        for l in 0..plan.lanes.min(MAX_LANES) {
            let ends = &self.ends[l];
            // Skip the segments that end at or before `start` (empty ones included). The last one
            // ends at `steps`, past `start`, so `seg` stays below `MAX_PIECES + 1`.
            let mut seg = self.cur[l];
            while seg < MAX_PIECES && ends[seg] <= start {
                seg += 1;
            }
            self.cur[l] = seg;
            end = end.min(ends[seg]);
            let real = seg > 0;
            let stride = 16 * usize::from(real);
            ep.stride[l] = stride;
            ep.ptr[l] = self.bases[l][seg].wrapping_add(stride * start);
            hibit |= u16::from(real && plan.hibits[l] >> (seg.max(1) - 1) & 1 != 0) << l;
        }
        ep.end = end;
        ep.hibit = hibit;
        self.start = end;
        true
    }
}
