//! The Poly1305 work of a burst, laid out for the SIMD kernels: which 16-byte block each 64-bit
//! SIMD lane ("sub-lane") absorbs at each step, and with which power of its `r`.
//!
//! A message is a chain `h = (h + m_i) r`, so a sub-lane follows one message. A message of `n`
//! blocks may be spread over `k` sub-lanes: sub-lane `j` takes every `k`-th block, multiplies by
//! `r^k` at each step and by `r^(k - j)` at its last step, and the message's accumulator is the sum
//! of its sub-lanes' (`sum_i m_i r^(n - i + 1)` regrouped). [`split`] picks `k` per message so that
//! a long message among short ones fills the sub-lanes the short ones leave idle, instead of
//! making every sub-lane wait for it.
//!
//! Sub-lanes are aligned at the *end*: all finish at the last step. A sub-lane with `c` blocks in a
//! plan of `steps` steps starts absorbing at step `steps - c` and before that absorbs zero blocks
//! without the 2^128 bit, which leave its accumulator at zero (`(0 + 0) * r = 0`). So no sub-lane
//! is masked, and the last step is the same for all (the one with `r^(k - j)`). The plan is read
//! as [`Epoch`]s: stretches of steps in which every sub-lane reads a run of blocks at a fixed
//! stride (`16 k` bytes) or the zero block (stride 0).

use std::marker::PhantomData;

use crate::MAX_LANES;

/// Most sub-lanes of a plan: four 8-lane IFMA vectors, or eight 4-lane AVX2 vectors.
pub(crate) const MAX_SUBLANES: usize = 32;

/// Most pieces a lane's input has (the AEAD's five).
pub(crate) const MAX_PIECES: usize = 5;

/// One zero block: what a sub-lane reads before its input starts.
static ZERO_BLOCK: [u8; 16] = [0; 16];

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
pub(crate) fn aead_pieces<'a>(aad: &'a [u8], ct: &'a [u8], tails: &'a mut [[u8; 16]; 3]) -> [Piece<'a>; MAX_PIECES] {
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

/// Blocks of the AEAD's Poly1305 input for `aad` and `ct` lengths.
pub(crate) fn aead_blocks(aad: usize, ct: usize) -> usize {
    aad.div_ceil(16) + ct.div_ceil(16) + 1
}

/// How a burst's messages are spread over sub-lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    /// Vectors of sub-lanes the kernel runs.
    pub groups: usize,
    /// Steps of the plan.
    pub steps: usize,
    /// Sub-lanes of each message.
    pub k: [usize; MAX_LANES],
}

/// The cheapest split of messages of `blocks` blocks each (at most [`MAX_LANES`]) over vectors of
/// `width` sub-lanes, with a vector count from `groups`.
///
/// Cost, in vector steps: `groups * (steps + k_max - 1)` (the main steps, and the steps that raise
/// `r` to the powers up to `r^k_max`), plus a little for a split. Uniform bursts come out unsplit
/// (`k = 1`): splitting would only add power steps.
pub(crate) fn split(blocks: &[usize], width: usize, groups: &[usize]) -> Split {
    let blocks = &blocks[..blocks.len().min(MAX_LANES)];
    let total: usize = blocks.iter().sum();
    let longest = blocks.iter().copied().max().unwrap_or(0);
    // Sub-lanes needed to finish in `steps` steps, and the largest k.
    let need = |steps: usize| {
        let (mut used, mut k_max) = (0, 1);
        for &n in blocks {
            // Most messages fit one sub-lane: no division for them.
            let k = if n <= steps { 1 } else { n.div_ceil(steps) };
            used += k;
            k_max = k_max.max(k);
        }
        (used, k_max)
    };
    // Unsplit, in the fewest vectors: the answer unless a split could beat it. A split in g
    // vectors costs at least g * (total / (g * width) + 1) + 4 (all sub-lanes busy, one power).
    let fewest = groups.iter().copied().find(|&g| g * width >= blocks.len() && g * width <= MAX_SUBLANES);
    let unsplit = fewest.map(|g| (g * longest, Split { groups: g, steps: longest, k: [1; MAX_LANES] }));
    let bound = groups
        .iter()
        .filter(|&&g| g * width >= blocks.len() && g * width <= MAX_SUBLANES)
        .map(|&g| g * (total.div_ceil(g * width) + 1) + 4)
        .min();
    if let (Some(u), Some(bound)) = (&unsplit, bound) {
        if u.0 <= bound {
            return u.1;
        }
    }
    let mut best: Option<(usize, Split)> = unsplit;
    for &g in groups {
        let lanes = g * width;
        if lanes < blocks.len() || lanes > MAX_SUBLANES {
            continue;
        }
        // The fewest steps that fit, from about sqrt(longest) on (fewer steps need more powers
        // of r than they save): at most `longest` (one sub-lane per message fits).
        let (mut lo, mut hi) = (total.div_ceil(lanes).max(longest.isqrt()).clamp(1, longest.max(1)), longest.max(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if need(mid).0 <= lanes {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        // A few more steps may still cost less (fewer powers of r); stop once the steps alone
        // cost more than the best so far.
        let mut steps = lo;
        while steps <= longest.max(1) && steps < lo + 4 && best.as_ref().is_none_or(|b| g * steps < b.0) {
            let (used, k_max) = need(steps);
            let cost = g * (steps + k_max - 1) + if k_max > 1 { 4 } else { 0 };
            if used <= lanes && best.as_ref().is_none_or(|b| cost < b.0) {
                let mut k = [1; MAX_LANES];
                for (k, &n) in k.iter_mut().zip(blocks) {
                    *k = if n <= steps { 1 } else { n.div_ceil(steps) };
                }
                best = Some((cost, Split { groups: g, steps: if longest == 0 { 0 } else { steps }, k }));
            }
            if k_max == 1 {
                break; // more steps cannot lower the cost any further
            }
            steps += 1;
        }
    }
    best.map(|b| b.1).unwrap_or(Split {
        groups: groups.last().copied().unwrap_or(1),
        steps: longest,
        k: [1; MAX_LANES],
    })
}

/// The sub-lanes of a burst's Poly1305 and what each reads at each step (see the module doc).
///
/// Invariant the kernels rely on: for every [`Epoch`] it yields, `ptr[l] + stride[l] * i` for
/// `i < end - start` points at 16 readable bytes, borrowed for `'a`.
pub(crate) struct PolyPlan<'a> {
    steps: usize,
    /// Sub-lanes pushed.
    sublanes: usize,
    /// Messages pushed.
    messages: usize,
    /// Per sub-lane: its message.
    owner: [u8; MAX_SUBLANES],
    /// Per sub-lane: `k` (the power of `r` of every step but the last) and `k - j` (of the last).
    powers: [[u8; 2]; MAX_SUBLANES],
    /// Per sub-lane and segment (0: the zero blocks before its input; s + 1: piece s): the step it
    /// ends at, and a base such that the block of step `t` is `base + stride * t`.
    ends: [[usize; MAX_PIECES + 1]; MAX_SUBLANES],
    bases: [[*const u8; MAX_PIECES + 1]; MAX_SUBLANES],
    /// Per sub-lane: the stride in bytes of its real segments (`16 k`).
    stride: [usize; MAX_SUBLANES],
    /// Per sub-lane: bit `s` set when segment `s` has the 2^128 bit.
    hibits: [u8; MAX_SUBLANES],
    _input: PhantomData<&'a [u8]>,
}

/// A stretch of steps `start..end` in which sub-lane `l` reads the block at
/// `ptr[l] + stride[l] * (step - start)`, with the 2^128 bit if bit `l` of `hibit` is set.
pub(crate) struct Epoch {
    pub start: usize,
    pub end: usize,
    pub ptr: [*const u8; MAX_SUBLANES],
    pub stride: [usize; MAX_SUBLANES],
    pub hibit: u32,
}

impl<'a> PolyPlan<'a> {
    /// A plan of `steps` steps with no message yet; sub-lanes never pushed
    /// read zero blocks throughout.
    #[inline]
    pub fn new(steps: usize) -> Self {
        PolyPlan {
            steps,
            sublanes: 0,
            messages: 0,
            owner: [0; MAX_SUBLANES],
            powers: [[1, 1]; MAX_SUBLANES],
            ends: [[steps; MAX_PIECES + 1]; MAX_SUBLANES],
            bases: [[ZERO_BLOCK.as_ptr(); MAX_PIECES + 1]; MAX_SUBLANES],
            stride: [0; MAX_SUBLANES],
            hibits: [0; MAX_SUBLANES],
            _input: PhantomData,
        }
    }

    /// Adds the next message, its input as pieces in order, over `k` sub-lanes (clamped to
    /// `1..=255`, to its block count, and to the sub-lanes left). Returns false, adding nothing, if
    /// its blocks do not fit the plan's steps at that `k` or no sub-lane is left.
    pub fn push(&mut self, pieces: &[Piece<'a>], k: usize) -> bool {
        let pieces = &pieces[..pieces.len().min(MAX_PIECES)];
        let n: usize = pieces.iter().map(|p| p.data.len() / 16).sum();
        let steps = self.steps;
        if self.messages >= MAX_LANES || self.sublanes >= MAX_SUBLANES {
            return false;
        }
        if k <= 1 || n <= 1 {
            if n > steps {
                return false;
            }
            // One sub-lane: its segments are the pieces, back to back, ending at the last step.
            // (Built in locals and stored once: read-modify-writes of the plan's bytes would
            // chain through store forwarding.)
            let l = self.sublanes;
            let mut t = steps - n;
            let mut ends = [t; MAX_PIECES + 1];
            let mut bases = [ZERO_BLOCK.as_ptr(); MAX_PIECES + 1];
            let mut hibits = 0u8;
            for (s, p) in pieces.iter().enumerate() {
                bases[s + 1] = p.data.as_ptr().wrapping_sub(16 * t);
                t += p.data.len() / 16;
                hibits |= u8::from(p.hibit) << (s + 1);
                ends[s + 1] = t;
            }
            for e in ends.iter_mut().skip(pieces.len() + 1) {
                *e = t;
            }
            self.owner[l] = self.messages as u8;
            self.powers[l] = [1, 1];
            self.stride[l] = 16;
            self.ends[l] = ends;
            self.bases[l] = bases;
            self.hibits[l] = hibits;
            self.sublanes += 1;
            self.messages += 1;
            return true;
        }
        let k = k.min(n).min(255).min(MAX_SUBLANES - self.sublanes);
        if n.div_ceil(k) > steps {
            return false;
        }
        // Sub-lane j takes the blocks i = i0, i0 + k, ... (i0 = (n + j) mod k), block n - k + j at
        // the last step. Its blocks before a block index x number x / k + (x mod k > i0): so the
        // piece boundaries, divided by k once, give every sub-lane's segments.
        let mut bound = [0usize; MAX_PIECES + 1];
        for (s, p) in pieces.iter().enumerate() {
            bound[s + 1] = bound[s] + p.data.len() / 16;
        }
        let quot = bound.map(|x| x / k);
        let rem = bound.map(|x| x % k);
        let last = pieces.len();
        for j in 0..k {
            let l = self.sublanes + j;
            self.owner[l] = self.messages as u8;
            self.powers[l] = [k as u8, (k - j) as u8];
            self.stride[l] = 16 * k;
            let i0 = if rem[last] + j < k { rem[last] + j } else { rem[last] + j - k };
            let before = |s: usize| quot[s] + usize::from(rem[s] > i0);
            let first_step = steps - before(last);
            self.ends[l][0] = first_step;
            for (s, p) in pieces.iter().enumerate() {
                let (b0, b1) = (before(s), before(s + 1));
                self.ends[l][s + 1] = first_step + b1;
                if b1 > b0 {
                    // Its first block in this piece is i0 + k * b0, absorbed at step first + b0.
                    let f = i0 + k * b0;
                    self.bases[l][s + 1] =
                        p.data.as_ptr().wrapping_add(16 * (f - bound[s])).wrapping_sub(16 * k * (first_step + b0));
                    self.hibits[l] |= u8::from(p.hibit) << (s + 1);
                }
            }
            for s in last + 1..=MAX_PIECES {
                self.ends[l][s] = self.ends[l][last];
            }
        }
        self.sublanes += k;
        self.messages += 1;
        true
    }

    /// The message of sub-lane `l`.
    pub fn owner(&self, l: usize) -> usize {
        usize::from(self.owner[l % MAX_SUBLANES])
    }

    /// The powers of `r` sub-lane `l` multiplies by: at every step but the last, and at the last.
    pub fn powers(&self, l: usize) -> [u8; 2] {
        self.powers[l % MAX_SUBLANES]
    }

    /// Number of steps.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The largest power of `r` any sub-lane needs.
    pub fn max_power(&self) -> u8 {
        self.powers.iter().map(|p| p[0]).max().unwrap_or(1)
    }

    /// A cursor over the epochs, in order, covering every step.
    #[inline]
    pub fn epochs(&self) -> Epochs<'_, 'a> {
        Epochs { plan: self, cur: [0; MAX_SUBLANES], start: 0 }
    }

    /// Sums the accumulators of each message's sub-lanes (limbs of 44, 44 and 42 bits plus
    /// carries, as the kernels leave them; the sum stays far below 2^64 per limb).
    pub fn combine(&self, h: &[[u64; 3]; MAX_SUBLANES]) -> [[u64; 3]; MAX_LANES] {
        let mut out = [[0u64; 3]; MAX_LANES];
        for (l, h) in h.iter().enumerate().take(self.sublanes) {
            let o = &mut out[self.owner(l) % MAX_LANES];
            for (o, h) in o.iter_mut().zip(h) {
                *o += h;
            }
        }
        out
    }
}

/// The epochs of a [`PolyPlan`], written one at a time into the caller's [`Epoch`].
pub(crate) struct Epochs<'p, 'a> {
    plan: &'p PolyPlan<'a>,
    /// Per sub-lane: the segment it is in.
    cur: [usize; MAX_SUBLANES],
    start: usize,
}

impl Epochs<'_, '_> {
    /// An empty epoch, to be filled by [`Epochs::next_into`].
    pub fn empty() -> Epoch {
        Epoch { start: 0, end: 0, ptr: [ZERO_BLOCK.as_ptr(); MAX_SUBLANES], stride: [0; MAX_SUBLANES], hibit: 0 }
    }

    /// Writes the next epoch into `ep` for the first `lanes` sub-lanes (the others keep reading
    /// the zero block); false when every step is covered (then `ep` is unchanged).
    #[inline]
    pub fn next_into(&mut self, ep: &mut Epoch, lanes: usize) -> bool {
        let plan = self.plan;
        let start = self.start;
        if start >= plan.steps {
            return false;
        }
        ep.start = start;
        let mut end = plan.steps;
        let mut hibit = 0u32;
        for l in 0..plan.sublanes.min(lanes).min(MAX_SUBLANES) {
            let ends = &plan.ends[l];
            // Skip the segments that end at or before `start` (empty ones included). The last
            // one ends at `steps`, past `start`, so `seg` stays at most `MAX_PIECES`.
            let mut seg = self.cur[l];
            while seg < MAX_PIECES && ends[seg] <= start {
                seg += 1;
            }
            self.cur[l] = seg;
            end = end.min(ends[seg]);
            let real = seg > 0;
            let stride = plan.stride[l] * usize::from(real);
            ep.stride[l] = stride;
            ep.ptr[l] = plan.bases[l][seg].wrapping_add(stride * start);
            hibit |= u32::from(plan.hibits[l] >> seg & 1) << l;
        }
        ep.end = end;
        ep.hibit = hibit;
        self.start = end;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full vectors of equal messages: splitting would only add power steps.
    #[test]
    fn uniform_bursts_are_not_split() {
        for n in [1, 5, 33, 90, 4097] {
            for lanes in [8, 16] {
                let s = split(&vec![n; lanes], 8, &[1, 2, 3, 4]);
                assert_eq!((s.groups, s.steps), (lanes.div_ceil(8), n), "n {n} lanes {lanes}");
                assert!(s.k.iter().all(|&k| k == 1));
            }
        }
    }

    /// A lone message uses the idle sub-lanes of its vector.
    #[test]
    fn a_lone_message_is_spread() {
        let s = split(&[90], 8, &[1, 2, 3, 4]);
        assert_eq!((s.groups, s.k[0]), (1, 8));
        assert_eq!(s.steps, 12);
    }

    #[test]
    fn a_long_message_among_short_ones_is_spread() {
        let mut blocks = vec![5; 16];
        blocks[3] = 90;
        let s = split(&blocks, 8, &[1, 2, 3, 4]);
        assert!(s.steps < 20 && s.k[3] > 4, "{s:?}");
        let used: usize = s.k[..16].iter().sum();
        assert!(used <= 8 * s.groups);
        assert!(blocks.iter().zip(s.k).all(|(&n, k)| n.div_ceil(k) <= s.steps));
    }

    /// Every block of every message is read exactly once, by the right sub-lane at the right
    /// step, with the right 2^128 bit; other steps read the zero block.
    #[test]
    fn plans_read_every_block_once() {
        let data: Vec<u8> = (0..16 * 40).map(|i| (i / 16) as u8).collect();
        for (lens, k) in [([7usize, 0, 1, 13, 1], 3), ([0, 0, 0, 0, 1], 1), ([3, 1, 20, 0, 1], 7), ([1, 1, 1, 1, 1], 5)]
        {
            let n: usize = lens.iter().sum();
            let mut off = 0;
            let pieces: Vec<Piece<'_>> = lens
                .iter()
                .enumerate()
                .map(|(s, &len)| {
                    let p = Piece { data: &data[16 * off..16 * (off + len)], hibit: s != 1 };
                    off += len;
                    p
                })
                .collect();
            let steps = n.div_ceil(k) + 2;
            let mut plan = PolyPlan::new(steps);
            assert!(plan.push(&pieces, k));
            let mut seen = vec![0usize; n];
            let mut epochs = plan.epochs();
            let mut ep = Epochs::empty();
            while epochs.next_into(&mut ep, MAX_SUBLANES) {
                for t in ep.start..ep.end {
                    for j in 0..k {
                        let p = ep.ptr[j].wrapping_add(ep.stride[j] * (t - ep.start));
                        if p == ZERO_BLOCK.as_ptr() {
                            assert_eq!(ep.hibit >> j & 1, 0);
                            continue;
                        }
                        let i = (p as usize - data.as_ptr() as usize) / 16;
                        seen[i] += 1;
                        // Block i belongs to sub-lane j and is absorbed q steps before the end.
                        let q = steps - 1 - t;
                        assert_eq!(i + q * k, n - k + j, "lens {lens:?} k {k}: block {i} at step {t} in sub-lane {j}");
                        let piece = (0..5).find(|&s| i < lens[..=s].iter().sum()).unwrap();
                        assert_eq!(ep.hibit >> j & 1 == 1, piece != 1);
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "lens {lens:?} k {k}: {seen:?}");
        }
    }
}
