//! The codes of `lns4`, as slices: the step search, encoding a row, decoding a code, and the
//! table mode's blocks of rows. The kernels read these.
//!
//! Per weight a sign bit and a 3-bit log code, packed two to a byte, against an
//! `f16` offset per group of [`GROUP`] (4.5 bits per weight). Seven magnitudes are too few
//! for a fixed step, so the step is chosen per tensor (`choose_step`: the least squared error in
//! value over the tensor), and each group's offset puts its largest magnitude at the top code or
//! up to half a step above it, whichever leaves the group the least squared error. Error per
//! weight, with `s` the tensor's step: relative at most `e^(s/2) − 1` down to `v₁`, the smallest
//! code's value (`M·e^(−6.5s)` to `M·e^(−6s)`), the rest to the nearer of zero and `v₁`. Seven
//! magnitudes are coarse for a trained model: SmolLM2's mean KL against stock is ≈0.4
//! (`docs/performance.md`); `lns4` is the dial's far end, not a faithful format.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use half::f16;
use rayon::prelude::*;

use crate::cpu::isa::Isa;
use crate::format::lns::group_offset_for;

/// `lns4`'s group: weights per offset along `K`, and the 16 bytes that hold their codes (byte
/// `i` holds weight `i` in its low nibble and weight `16 + i` in its high one, so that a SIMD
/// lane `l` reads weight `l` of the group without a shuffle).
pub const GROUP: usize = 32;
const GROUP_BYTES: usize = GROUP / 2;
/// The largest `lns4` magnitude code (3 bits; 0 is zero).
const MAX_Q: f64 = 7.0;

/// Offsets per row of `k` weights.
pub(crate) fn groups_per_row(k: usize) -> usize {
    k.div_ceil(GROUP)
}

/// Code bytes per row of `k` weights (whole groups: a partial last one is padded with zeros).
pub(crate) fn bytes_per_row(k: usize) -> usize {
    groups_per_row(k) * GROUP_BYTES
}

/// The code of weight `i` of a row of `lns4` bytes: sign in bit 3, magnitude in bits 0–2.
#[inline(always)]
pub(crate) fn code_at(bytes: &[u8], i: usize) -> u8 {
    let (g, l) = (i / GROUP, i % GROUP);
    let byte = bytes[g * GROUP_BYTES + l % GROUP_BYTES];
    if l < GROUP_BYTES {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

/// `ln|w|` of an `lns4` code, as the tile conversion computes it (unfused): `-inf` for zero.
#[inline(always)]
pub(crate) fn decode_log(code: u8, offset: f32, step: f32) -> f32 {
    let q = code & 7;
    if q == 0 {
        f32::NEG_INFINITY
    } else {
        q as f32 * step + offset
    }
}

/// The weight an `lns4` code stands for, in `f64`.
pub(crate) fn decode_value(code: u8, offset: f16, step: f32) -> f64 {
    let q = code & 7;
    let magnitude = if q == 0 {
        0.0
    } else {
        (f64::from(q) * f64::from(step) + offset.to_f64()).exp()
    };
    if code & 8 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The tensor's step for `lns4`, in natural-log units: of the candidates 0.05, 0.075, …, 1.2,
/// the one whose codes have the least squared error in value, `Σ(|w| − |ŵ|)²`, over `values`
/// (all of a tensor, or a sample of its rows, as `row`-long runs), each group's offset chosen
/// among the [`SHIFTS`] by the least error (`group_offset` in the tests' reference, the
/// definition this search computes bit for bit). The first of equal errors wins; a step whose
/// error is infinite or NaN never does (0.25 when none is finite).
///
/// Why value and not log error: what a matmul adds up is the weights' values, so a small
/// weight's error costs little and a large one's much. The least *log* error (every weight
/// alike, a zeroed one counted as the smallest code) spends the codes on range the small
/// weights need and the sums do not: on SmolLM2 (`emilio eval`, 2 chunks of 512 tokens) its
/// median KL against stock was 1.39 and the same top-1 41.6%; with this objective and the
/// offset search, 0.37 and 66.7%, at steps of 0.325–0.375. This objective is the log error
/// weighted by `w²` to first order.
///
/// How it is fast (a 0.5B model's sample is 52M weights, each tried against 47 steps × 5
/// offsets): `ln|w|` is taken once per weight, each code's value once per (step, offset) seen
/// ([`StepCodes`]), a weight's code found by comparisons instead of a division and a rounding,
/// eight groups are tried side by side ([`block_errors`]), the candidates run in parallel, and a
/// candidate stops once its running sum exceeds a finished candidate's error (a sum of
/// non-negative terms only grows, so it could not win). Each candidate's sum still adds every
/// group's error, in group order, as the definition does; the choice is the definition's.
pub(crate) fn choose_step(values: &[f64], row: usize) -> f32 {
    let groups: Vec<&[f64]> = values
        .chunks(row.max(1))
        .flat_map(|r| r.chunks(GROUP))
        .collect();
    let blocks: Vec<Block> = groups
        .par_chunks(LANES)
        .map(|gs| {
            let mut block = Block::empty();
            block.fill(gs.iter().copied());
            block
        })
        .collect();
    let steps: Vec<f32> = (2..=48).map(|i| (i as f64 * 0.025) as f32).collect();

    // A cheap estimate on every 8th block orders the candidates, so that the best ones finish
    // first and bound the others early. Only the order depends on it, not the choice.
    let sample: Vec<&Block> = blocks.iter().step_by(8).collect();
    let estimates: Vec<f64> = steps
        .par_iter()
        .map_init(StepCodes::new, |codes, &step| {
            codes.set_step(step);
            step_error(sample.iter().copied(), codes, None).unwrap_or(f64::INFINITY)
        })
        .collect();
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by(|&a, &b| estimates[a].total_cmp(&estimates[b]).then(a.cmp(&b)));

    // Each worker takes the next candidate in that order; `bound` is the least error finished
    // so far, as bits (a non-negative f64's bits order as its value does).
    let next = AtomicUsize::new(0);
    let bound = AtomicU64::new(f64::INFINITY.to_bits());
    let workers = rayon::current_num_threads().min(steps.len()).max(1);
    let mut errors = vec![None; steps.len()];
    let results: Vec<(usize, Option<f64>)> = (0..workers)
        .into_par_iter()
        .flat_map_iter(|_| {
            let mut codes = StepCodes::new();
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&c) = order.get(i) else { break };
                codes.set_step(steps[c]);
                let err = step_error(blocks.iter(), &mut codes, Some(&bound));
                if let Some(e) = err.filter(|e| *e >= 0.0) {
                    bound.fetch_min(e.to_bits(), Ordering::Relaxed);
                }
                done.push((c, err));
            }
            done
        })
        .collect();
    for (c, err) in results {
        errors[c] = err;
    }
    // The definition's choice: the first candidate with an error below every earlier one's. A
    // candidate stopped early has an error above a finished one's, so it is not that one.
    let mut best = (f64::INFINITY, 0.25);
    for (&step, err) in steps.iter().zip(errors) {
        let err = err.unwrap_or(f64::INFINITY);
        if err < best.0 {
            best = (err, step);
        }
    }
    best.1
}

/// The group offsets' shifts below the one that puts a group's largest magnitude at the top
/// code, in steps: each group takes, of the offsets they give, the one with the least
/// `Σ(|w| − |ŵ|)²` (the first of equal ones), among those that leave its largest magnitude
/// within half a step above the top code (the stated bound; the `f16` rounding of the offset
/// may break it for a shift). Moving the codes down a little trades the few largest weights'
/// precision for the many small ones'.
const SHIFTS: [f64; 5] = [0.0, 0.125, 0.25, 0.375, 0.5];

/// Groups tried side by side, one per SIMD lane: eight `f64`s, one AVX-512 register.
const LANES: usize = 8;
type Lanes = [f64; LANES];

/// `step_error` over `blocks` in order: the sum of each group's least error, in group order
/// (`err += group error`, from zero, as the definition adds them), or `None` once the running
/// sum exceeds `bound`'s value.
fn step_error<'a>(
    blocks: impl Iterator<Item = &'a Block>,
    codes: &mut StepCodes,
    bound: Option<&AtomicU64>,
) -> Option<f64> {
    let mut err = 0.0;
    for block in blocks {
        let best = codes.best_offsets(block);
        for (_, e) in &best[..block.groups] {
            err += e;
        }
        if let Some(bound) = bound {
            if err > f64::from_bits(bound.load(Ordering::Relaxed)) {
                return None;
            }
        }
    }
    Some(err)
}

/// What a group adds to a step's error besides its weights' terms.
#[derive(Debug, Clone, Copy)]
enum Fit {
    /// Finite non-zero weights, no NaN: its offset is searched around its largest `ln|w|`.
    Search { max_log: f64 },
    /// No offset to search, the error fixed, the offset zero: 0 for a group with no finite
    /// largest log (all zero, or an infinite weight), infinite for a NaN among finite weights
    /// (every offset's sum is NaN, so none is below the initial infinity).
    Fixed(f64),
}

/// [`LANES`] groups laid out for the search: weight `i` of every group side by side. A group
/// shorter than [`GROUP`], a zero weight and a lane without a searched group hold a weight whose
/// term is `+0`: `ln|w| = −∞` (no code's lower bound), `|w| = 0`, and a NaN compared against
/// the smallest code's threshold (never at or above it), so its code is zero.
#[derive(Clone)]
struct Block {
    /// `ln|w|`, `−∞` for a zero.
    logs: [Lanes; GROUP],
    /// `|w|`.
    mags: [Lanes; GROUP],
    /// `|w|` where non-zero, NaN elsewhere: what `quantize` compares with half the smallest
    /// code's value when a weight rounds below it (it returns zero for a zero first).
    cmps: [Lanes; GROUP],
    fits: [Fit; LANES],
    /// Groups in the block (the last block of a run may have fewer than `LANES`).
    groups: usize,
    /// The longest group's length: weights past it are padding in every lane.
    len: usize,
}

impl Block {
    fn empty() -> Block {
        Block {
            logs: [[f64::NEG_INFINITY; LANES]; GROUP],
            mags: [[0.0; LANES]; GROUP],
            cmps: [[f64::NAN; LANES]; GROUP],
            fits: [Fit::Fixed(0.0); LANES],
            groups: 0,
            len: 0,
        }
    }

    /// Lays out up to [`LANES`] groups, each at most [`GROUP`] weights.
    fn fill<'a>(&mut self, groups: impl IntoIterator<Item = &'a [f64]>) {
        // Clear what the previous fill wrote.
        for i in 0..self.len {
            self.logs[i] = [f64::NEG_INFINITY; LANES];
            self.mags[i] = [0.0; LANES];
            self.cmps[i] = [f64::NAN; LANES];
        }
        self.fits = [Fit::Fixed(0.0); LANES];
        self.groups = 0;
        self.len = 0;
        for (l, group) in groups.into_iter().enumerate() {
            self.groups = l + 1;
            // `group_max_log`'s fold, over the same logs in the same order.
            let mut max_log = f64::NEG_INFINITY;
            let mut nan = false;
            for (i, &w) in group.iter().enumerate() {
                nan |= w.is_nan();
                if w != 0.0 {
                    let log = w.abs().ln();
                    max_log = max_log.max(log);
                    self.logs[i][l] = log;
                    self.cmps[i][l] = w.abs();
                }
                self.mags[i][l] = w.abs();
            }
            self.fits[l] = if !max_log.is_finite() {
                Fit::Fixed(0.0)
            } else if nan {
                Fit::Fixed(f64::INFINITY)
            } else {
                Fit::Search { max_log }
            };
            self.len = self.len.max(group.len());
            if !matches!(self.fits[l], Fit::Search { .. }) {
                // Not searched: its lane holds padding.
                for i in 0..group.len() {
                    self.logs[i][l] = f64::NEG_INFINITY;
                    self.mags[i][l] = 0.0;
                    self.cmps[i][l] = f64::NAN;
                }
            }
        }
    }
}

/// One step's constants: where each code starts, and each code's value per group offset, kept
/// for every offset met since the step was set (a tensor's groups share a few hundred offsets).
struct StepCodes {
    step: f64,
    /// `x_min[k − 1]`: the least `x = ln|w| − offset` whose `(x / step).round()` is at least
    /// `k` (`1..=7`). `x / step` rounds to nearest, so it does not decrease as `x` grows, and
    /// `t.round() ≥ k` (ties away from zero) exactly when `t ≥ k − ½`: a weight's code is the
    /// number of these it reaches, up to the top code, with no division.
    x_min: [f64; 7],
    /// Per `f16` offset (by its bits) an index into `values`, `u32::MAX` when not computed yet.
    slots: Vec<u32>,
    /// `exp(q·step + offset)` for `q = 1..=7`, then `½·exp(offset + step)` (below which a
    /// weight under the smallest code becomes zero), computed as `quantize` and `group_offset`
    /// compute them.
    values: Vec<[f64; 8]>,
    /// The offsets in `values`, to clear their slots for the next step.
    offsets: Vec<u16>,
}

impl StepCodes {
    fn new() -> StepCodes {
        StepCodes {
            step: f64::NAN,
            x_min: [0.0; 7],
            slots: vec![u32::MAX; 1 << 16],
            values: Vec::new(),
            offsets: Vec::new(),
        }
    }

    fn set_step(&mut self, step: f32) {
        let step = f64::from(step);
        if step.to_bits() == self.step.to_bits() {
            return;
        }
        self.step = step;
        for (k, x) in self.x_min.iter_mut().enumerate() {
            *x = least_x_rounding_to(k as f64 + 0.5, step);
        }
        for &o in &self.offsets {
            self.slots[usize::from(o)] = u32::MAX;
        }
        self.offsets.clear();
        self.values.clear();
    }

    /// The code values for `offset` at this step.
    fn values(&mut self, offset: f16) -> &[f64; 8] {
        let slot = &mut self.slots[usize::from(offset.to_bits())];
        if *slot == u32::MAX {
            let (off, step) = (offset.to_f64(), self.step);
            let mut v = [0.0; 8];
            for (q, v) in v[..7].iter_mut().enumerate() {
                *v = ((q + 1) as f64 * step + off).exp();
            }
            v[7] = 0.5 * (off + step).exp();
            *slot = self.values.len() as u32;
            self.values.push(v);
            self.offsets.push(offset.to_bits());
        }
        &self.values[*slot as usize]
    }

    /// The lanes' constants for their groups' offsets (`None`: a lane not tried).
    fn lane_codes(&mut self, offsets: &[Option<f16>; LANES]) -> LaneCodes {
        let mut lc = LaneCodes {
            off: [0.0; LANES],
            thr: [0.0; LANES],
            vals: [[0.0; LANES]; 7],
        };
        for (l, offset) in offsets.iter().enumerate() {
            if let Some(offset) = *offset {
                let v = *self.values(offset);
                lc.off[l] = offset.to_f64();
                lc.thr[l] = v[7];
                for (vals, v) in lc.vals.iter_mut().zip(v) {
                    vals[l] = v;
                }
            }
        }
        lc
    }

    /// Each of the block's groups' offset and error at this step: of the [`SHIFTS`]' offsets
    /// within the bound, the first with the least error, starting from `(0, ∞)` as the
    /// definition does (so a group whose every error is infinite keeps offset zero).
    fn best_offsets(&mut self, block: &Block) -> [(f16, f64); LANES] {
        let step = self.step;
        let mut best = [(f16::ZERO, f64::INFINITY); LANES];
        for shift in SHIFTS {
            let mut offsets = [None; LANES];
            for (offset, fit) in offsets.iter_mut().zip(&block.fits) {
                if let Fit::Search { max_log } = *fit {
                    let o = group_offset_for(max_log - shift * step, step, MAX_Q);
                    // The f16 rounding of the offset may not leave the largest weight above
                    // the top code by more than half a step.
                    if (max_log - o.to_f64()) / step <= MAX_Q + 0.5 {
                        *offset = Some(o);
                    }
                }
            }
            if offsets.iter().all(Option::is_none) {
                continue;
            }
            let lc = self.lane_codes(&offsets);
            let errs = block_errors(block, &lc, &self.x_min);
            for ((best, offset), err) in best.iter_mut().zip(offsets).zip(errs) {
                if let Some(offset) = offset {
                    if err < best.1 {
                        *best = (offset, err);
                    }
                }
            }
        }
        for (best, fit) in best.iter_mut().zip(&block.fits) {
            if let Fit::Fixed(err) = *fit {
                *best = (f16::ZERO, err);
            }
        }
        best
    }
}

/// The least `x` with `x / step ≥ t` (rounded to nearest, as `quantize` divides), `t, step > 0`:
/// `t·step` moved by ulps to the boundary, which `x / step`'s monotony in `x` makes exact.
fn least_x_rounding_to(t: f64, step: f64) -> f64 {
    let (up, down) = (
        |x: f64| f64::from_bits(x.to_bits() + 1),
        |x: f64| f64::from_bits(x.to_bits() - 1),
    );
    let mut x = t * step;
    if x / step >= t {
        while down(x) / step >= t {
            x = down(x);
        }
    } else {
        while x / step < t {
            x = up(x);
        }
    }
    x
}

/// Per lane, one group offset's constants ([`StepCodes::lane_codes`]).
struct LaneCodes {
    off: Lanes,
    /// Half the smallest code's value: a weight rounding below it is that code from here up.
    thr: Lanes,
    /// `vals[q − 1]`: code `q`'s value.
    vals: [Lanes; 7],
}

/// Per lane, `Σ(|w| − |ŵ|)²` over its group, added in weight order from zero. A padding
/// weight's term is `+0`, which leaves a non-negative sum as it is.
fn block_errors(block: &Block, lc: &LaneCodes, x_min: &[f64; 7]) -> Lanes {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F.
        Isa::Avx512 => unsafe { x86::errors_avx512(block, lc, x_min) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2.
        Isa::Avx2 => unsafe { x86::errors_avx2(block, lc, x_min) },
        _ => errors_lanes(block, lc, x_min),
    }
}

/// Per lane and weight, the code ([`quantize`](crate::format::lns::quantize)'s, sign aside).
fn block_codes(block: &Block, lc: &LaneCodes, x_min: &[f64; 7]) -> [[u8; LANES]; GROUP] {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only detected on CPUs with AVX-512F.
        Isa::Avx512 => unsafe { x86::codes_avx512(block, lc, x_min) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected on CPUs with AVX2.
        Isa::Avx2 => unsafe { x86::codes_avx2(block, lc, x_min) },
        _ => codes_lanes(block, lc, x_min),
    }
}

/// The portable body of [`block_errors`], written lane-wise for the compiler to vectorize: only
/// IEEE operations per lane (no fused multiply-add, no reordered sum), so every build computes
/// the same bits. A code is the count of `x_min` it reaches, or, reaching none, 1 when `|w|` is
/// at least the threshold: `vals` picked by comparisons instead of an index.
#[inline(always)]
fn errors_lanes(block: &Block, lc: &LaneCodes, x_min: &[f64; 7]) -> Lanes {
    let mut acc = [0.0f64; LANES];
    for i in 0..block.len {
        let (logs, mags, cmps) = (&block.logs[i], &block.mags[i], &block.cmps[i]);
        for l in 0..LANES {
            let x = logs[l] - lc.off[l];
            let mut got = if (x >= x_min[0]) | (cmps[l] >= lc.thr[l]) {
                lc.vals[0][l]
            } else {
                0.0
            };
            for (x_min, vals) in x_min.iter().zip(&lc.vals).skip(1) {
                if x >= *x_min {
                    got = vals[l];
                }
            }
            let d = mags[l] - got;
            acc[l] += d * d;
        }
    }
    acc
}

/// The portable body of [`block_codes`] (see [`errors_lanes`]).
#[inline(always)]
fn codes_lanes(block: &Block, lc: &LaneCodes, x_min: &[f64; 7]) -> [[u8; LANES]; GROUP] {
    let mut codes = [[0u8; LANES]; GROUP];
    for (i, codes) in codes.iter_mut().enumerate().take(block.len) {
        let (logs, cmps) = (&block.logs[i], &block.cmps[i]);
        for l in 0..LANES {
            let x = logs[l] - lc.off[l];
            let mut q = ((x >= x_min[0]) | (cmps[l] >= lc.thr[l])) as u8;
            for x_min in &x_min[1..] {
                q += (x >= *x_min) as u8;
            }
            codes[l] = q;
        }
    }
    codes
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{codes_lanes, errors_lanes, Block, LaneCodes, Lanes, GROUP, LANES};

    #[target_feature(enable = "avx512f")]
    pub(super) fn errors_avx512(block: &Block, lc: &LaneCodes, x_min: &[f64; 7]) -> Lanes {
        errors_lanes(block, lc, x_min)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn errors_avx2(block: &Block, lc: &LaneCodes, x_min: &[f64; 7]) -> Lanes {
        errors_lanes(block, lc, x_min)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn codes_avx512(
        block: &Block,
        lc: &LaneCodes,
        x_min: &[f64; 7],
    ) -> [[u8; LANES]; GROUP] {
        codes_lanes(block, lc, x_min)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn codes_avx2(
        block: &Block,
        lc: &LaneCodes,
        x_min: &[f64; 7],
    ) -> [[u8; LANES]; GROUP] {
        codes_lanes(block, lc, x_min)
    }
}

/// Encodes the rows of one tensor at its step, keeping each group offset's code values from
/// row to row ([`StepCodes`]): the search of [`choose_step`] at one step, then the codes.
pub(crate) struct RowEncoder {
    codes: StepCodes,
    block: Box<Block>,
}

impl RowEncoder {
    pub(crate) fn new(step: f32) -> RowEncoder {
        let mut codes = StepCodes::new();
        codes.set_step(step);
        RowEncoder {
            codes,
            block: Box::new(Block::empty()),
        }
    }

    /// Encodes one row into `lns4` bytes (`bytes_per_row`) and one offset per group: each
    /// group's offset the least-error one of the [`SHIFTS`] ([`choose_step`]), each weight the
    /// nearest code to it ([`quantize`](crate::format::lns::quantize)) and its sign. Returns the index of the first
    /// non-finite weight.
    pub(crate) fn encode(
        &mut self,
        row: &[f64],
        bytes: &mut [u8],
        offsets: &mut [f16],
    ) -> Result<(), usize> {
        if let Some(i) = row.iter().position(|w| !w.is_finite()) {
            return Err(i);
        }
        bytes.fill(0);
        for (b, span) in row.chunks(GROUP * LANES).enumerate() {
            self.block.fill(span.chunks(GROUP));
            let best = self.codes.best_offsets(&self.block);
            let chosen = best.map(|(offset, _)| Some(offset));
            let lc = self.codes.lane_codes(&chosen);
            let codes = block_codes(&self.block, &lc, &self.codes.x_min);
            for (l, group) in span.chunks(GROUP).enumerate() {
                let g = b * LANES + l;
                offsets[g] = best[l].0;
                for (i, &w) in group.iter().enumerate() {
                    let code = codes[i][l] | if w.is_sign_negative() { 8 } else { 0 };
                    let byte = &mut bytes[g * GROUP_BYTES + i % GROUP_BYTES];
                    *byte |= if i < GROUP_BYTES { code } else { code << 4 };
                }
            }
        }
        Ok(())
    }
}

/// Encodes one row into `lns4` bytes (`bytes_per_row`) and one offset per group
/// ([`RowEncoder::encode`]; a tensor's rows share one encoder instead).
/// Returns the index of the first non-finite weight.
#[cfg(test)]
pub(crate) fn encode_row(
    row: &[f64],
    bytes: &mut [u8],
    offsets: &mut [f16],
    step: f32,
) -> Result<(), usize> {
    RowEncoder::new(step).encode(row, bytes, offsets)
}

/// Rows per block of the table mode's layout ([`crate::ExpMode::Table`]).
pub(crate) const TABLE_ROWS: usize = 16;

/// Rearranges row-major `lns4` bytes and offsets (`n` rows of `k`) into the table mode's
/// blocks of [`TABLE_ROWS`] rows: per block and pair of columns `(2p, 2p+1)` 16 bytes, byte
/// `r` holding row `r`'s code of `2p` (low nibble) and `2p+1` (high); offsets per block,
/// group, row. Rows past `n` are zero codes.
pub(crate) fn table_blocks(
    bytes: &[u8],
    offsets: &[f16],
    n: usize,
    k: usize,
) -> (Vec<u8>, Vec<f16>) {
    let (groups, per_row) = (groups_per_row(k), bytes_per_row(k));
    let k_pad = groups * GROUP;
    let blocks = n.div_ceil(TABLE_ROWS);
    let mut out = vec![0u8; blocks * TABLE_ROWS * k_pad / 2];
    let mut out_offsets = vec![f16::ZERO; blocks * groups * TABLE_ROWS];
    for j in 0..n {
        let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
        let row = &bytes[j * per_row..(j + 1) * per_row];
        for p in 0..k_pad / 2 {
            let (c0, c1) = (code_at(row, 2 * p), code_at(row, 2 * p + 1));
            out[b * TABLE_ROWS * k_pad / 2 + p * TABLE_ROWS + r] = c0 | (c1 << 4);
        }
        for g in 0..groups {
            out_offsets[(b * groups + g) * TABLE_ROWS + r] = offsets[j * groups + g];
        }
    }
    (out, out_offsets)
}

/// The code of weight `(j, i)` in the table mode's blocks (see [`table_blocks`]).
pub(crate) fn table_code(blocks: &[u8], k: usize, j: usize, i: usize) -> u8 {
    let k_pad = groups_per_row(k) * GROUP;
    let (b, r) = (j / TABLE_ROWS, j % TABLE_ROWS);
    let byte = blocks[b * TABLE_ROWS * k_pad / 2 + (i / 2) * TABLE_ROWS + r];
    if i.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::lns::{group_max_log, quantize};
    use rand::{Rng, SeedableRng};

    /// The straightforward definitions the fast search and encoder must match bit for bit (the
    /// implementation before they were made fast, kept verbatim).
    mod reference {
        use super::super::{GROUP, GROUP_BYTES, MAX_Q};
        use crate::format::lns::{group_max_log, group_offset_for, quantize};
        use half::f16;

        pub(super) fn choose_step(values: &[f64], row: usize) -> f32 {
            let candidates = (2..=48).map(|i| i as f64 * 0.025);
            let mut best = (f64::INFINITY, 0.25);
            for step in candidates {
                let step = step as f32;
                let mut err = 0.0;
                for group in values.chunks(row.max(1)).flat_map(|r| r.chunks(GROUP)) {
                    err += group_offset(group, f64::from(step)).1;
                }
                if err < best.0 {
                    best = (err, step);
                }
            }
            best.1
        }

        pub(super) fn group_offset(group: &[f64], step: f64) -> (f16, f64) {
            let max_log = group_max_log(group);
            if !max_log.is_finite() {
                return (f16::ZERO, 0.0);
            }
            let mut best = (f16::ZERO, f64::INFINITY);
            for shift in [0.0, 0.125, 0.25, 0.375, 0.5] {
                let offset = group_offset_for(max_log - shift * step, step, MAX_Q);
                if (max_log - offset.to_f64()) / step > MAX_Q + 0.5 {
                    continue;
                }
                let off = offset.to_f64();
                let err: f64 = group
                    .iter()
                    .map(|&w| {
                        let q = quantize(w, off, step, MAX_Q);
                        let got = if q == 0 {
                            0.0
                        } else {
                            (f64::from(q) * step + off).exp()
                        };
                        (w.abs() - got).powi(2)
                    })
                    .sum();
                if err < best.1 {
                    best = (offset, err);
                }
            }
            best
        }

        pub(super) fn encode_row(
            row: &[f64],
            bytes: &mut [u8],
            offsets: &mut [f16],
            step: f32,
        ) -> Result<(), usize> {
            if let Some(i) = row.iter().position(|w| !w.is_finite()) {
                return Err(i);
            }
            let step = f64::from(step);
            bytes.fill(0);
            for (g, (group, offset)) in row.chunks(GROUP).zip(offsets.iter_mut()).enumerate() {
                *offset = group_offset(group, step).0;
                let off = offset.to_f64();
                for (l, &w) in group.iter().enumerate() {
                    let q = quantize(w, off, step, MAX_Q);
                    let code = q | if w.is_sign_negative() { 8 } else { 0 };
                    let byte = &mut bytes[g * GROUP_BYTES + l % GROUP_BYTES];
                    *byte |= if l < GROUP_BYTES { code } else { code << 4 };
                }
            }
            Ok(())
        }
    }

    /// A weight of one of the kinds the search must treat as the definition does: trained-like
    /// magnitudes, exact zeros of both signs, and the far ends of `f64` (subnormals, whose
    /// smallest code's threshold underflows, and magnitudes whose code values overflow).
    fn weight(rng: &mut rand::rngs::StdRng, scale: f64) -> f64 {
        let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        match rng.random_range(0..100) {
            0..=3 => 0.0,
            4..=6 => -0.0,
            7 => sign * 5e-324 * f64::from(rng.random_range(1..1000)),
            8 => sign * 1e-300 * rng.random_range(0.5..2.0),
            9 => sign * 1e300 * rng.random_range(0.5..2.0),
            10 => sign * 1.7e308,
            11 => sign * f64::from(rng.random_range(-1.0..1.0f32) * 1e-30),
            _ => {
                let g: f64 = (0..4).map(|_| rng.random_range(-1.0..1.0f64)).sum();
                // As a converter sees f32 weights: widened exactly.
                f64::from((g * scale) as f32)
            }
        }
    }

    /// The fast search and encoder against the definitions, on seeded random tensors of many
    /// shapes and value mixes: the same step, and at it (and at other steps) every offset and
    /// every code byte the same.
    #[test]
    fn the_fast_search_and_encoder_match_the_definition_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(44);
        let shapes: [(usize, usize); 12] = [
            (1, 1),
            (3, 7),
            (5, 31),
            (4, 32),
            (6, 33),
            (3, 100),
            (2, 255),
            (9, 256),
            (2, 257),
            (40, 96),
            (64, 200),
            (130, 160),
        ];
        for (case, &(rows, k)) in shapes.iter().cycle().take(36).enumerate() {
            // Mixes: plain trained-like weights, all kinds together, each row its own scale,
            // and the rare kinds (zeros, extremes) dense enough to fill whole groups.
            let kind = case / shapes.len();
            let values: Vec<f64> = (0..rows)
                .flat_map(|r| {
                    let scale = match kind {
                        0 => 0.02,
                        _ => 10f64.powi((r % 7) as i32 - 4),
                    };
                    (0..k)
                        .map(|i| match kind {
                            0 => weight(&mut rng, scale).clamp(-1.0, 1.0),
                            1 => weight(&mut rng, scale),
                            _ if (r + i / GROUP).is_multiple_of(3) => [0.0, -0.0, 1e-310][r % 3],
                            _ => weight(&mut rng, scale),
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let want = reference::choose_step(&values, k);
            let got = choose_step(&values, k);
            assert_eq!(got.to_bits(), want.to_bits(), "case {case} ({rows}×{k})");
            for step in [want, 0.05, 0.3, 1.2] {
                for row in values.chunks(k) {
                    let (mut b0, mut b1) = (
                        vec![0xaau8; bytes_per_row(k)],
                        vec![0x55u8; bytes_per_row(k)],
                    );
                    let (mut o0, mut o1) = (
                        vec![f16::NAN; groups_per_row(k)],
                        vec![f16::ONE; groups_per_row(k)],
                    );
                    let r0 = reference::encode_row(row, &mut b0, &mut o0, step);
                    let r1 = encode_row(row, &mut b1, &mut o1, step);
                    assert_eq!(r1, r0);
                    let bits = |o: &[f16]| o.iter().map(|o| o.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&o1), bits(&o0), "case {case} step {step}: offsets");
                    assert_eq!(b1, b0, "case {case} step {step}: codes");
                }
            }
        }
    }

    /// The same where the definition has its edges: ties between candidates (all zero, empty),
    /// samples whose length is not a multiple of the row, non-finite sample values (the step is
    /// chosen before the encoder refuses them), and one encoder reused over rows.
    #[test]
    fn the_fast_search_matches_the_definition_at_its_edges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(45);
        let mut cases: Vec<(Vec<f64>, usize)> = vec![
            (vec![], 32),
            (vec![0.0; 100], 50),
            (vec![-0.0; 64], 32),
            (vec![0.5; 64], 32),
            ((0..77).map(|_| weight(&mut rng, 0.02)).collect(), 20),
        ];
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for at in [0usize, 5, 40] {
                let mut v: Vec<f64> = (0..96).map(|_| weight(&mut rng, 0.02)).collect();
                v[at] = bad;
                cases.push((v, 48));
                // A NaN alone in its group, and with an infinity.
                let mut v = vec![0.0; 64];
                v[at % 32] = bad;
                v[32 + at % 32] = bad;
                v[33] = f64::INFINITY;
                cases.push((v, 64));
            }
        }
        for (values, row) in &cases {
            let want = reference::choose_step(values, *row);
            assert_eq!(
                choose_step(values, *row).to_bits(),
                want.to_bits(),
                "{values:?}"
            );
            let k = *row;
            let mut enc = RowEncoder::new(want);
            for r in values.chunks(k) {
                let (mut b0, mut b1) = (vec![0u8; bytes_per_row(k)], vec![0u8; bytes_per_row(k)]);
                let (mut o0, mut o1) = (
                    vec![f16::ZERO; groups_per_row(k)],
                    vec![f16::ZERO; groups_per_row(k)],
                );
                assert_eq!(
                    enc.encode(r, &mut b1, &mut o1),
                    reference::encode_row(r, &mut b0, &mut o0, want)
                );
                assert_eq!((b1, o1), (b0, o0));
            }
        }
    }

    /// A sample large enough for the candidates' early stop and their estimated order to
    /// matter (2048 groups), with the search on every ISA this CPU runs the same.
    #[test]
    fn the_fast_search_matches_the_definition_on_a_large_sample() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(46);
        for (rows, k, scale) in [(64usize, 1024usize, 0.02), (256, 250, 0.5)] {
            let values: Vec<f64> = (0..rows * k).map(|_| weight(&mut rng, scale)).collect();
            let want = reference::choose_step(&values, k);
            assert_eq!(
                choose_step(&values, k).to_bits(),
                want.to_bits(),
                "{rows}×{k}"
            );
        }
    }

    #[test]
    fn lns4_encoding_is_within_the_stated_error_for_its_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for k in [1usize, 7, 31, 32, 33, 96, 200] {
            let rows: Vec<f64> = (0..8 * k)
                .map(|_| {
                    let v: f64 = rng.random_range(-1.0..1.0);
                    if rng.random_bool(0.03) {
                        0.0
                    } else {
                        v * 0.05
                    }
                })
                .collect();
            let step = choose_step(&rows, k);
            assert!((0.05..=1.2).contains(&step), "{step}");
            let rel_bound = (f64::from(step) / 2.0).exp() - 1.0;
            for row in rows.chunks(k) {
                let mut bytes = vec![0xffu8; bytes_per_row(k)];
                let mut offsets = vec![f16::ZERO; groups_per_row(k)];
                encode_row(row, &mut bytes, &mut offsets, step).unwrap();
                for (i, &w) in row.iter().enumerate() {
                    let (g, c) = (i / GROUP, code_at(&bytes, i));
                    let got = decode_value(c, offsets[g], step);
                    assert_eq!(got.is_sign_negative(), w.is_sign_negative(), "{w} → {got}");
                    let v1 = decode_value(1, offsets[g], step);
                    let err = (got - w).abs();
                    let ok = if w.abs() >= v1 * (-f64::from(step) / 2.0).exp() {
                        err <= w.abs() * (rel_bound + 1e-6)
                    } else {
                        err <= v1 * (0.5 + 1e-6)
                    };
                    assert!(ok, "k {k} step {step}: {w:e} → {got:e}");
                }
                // Padding nibbles past the row are zero codes.
                for i in k..groups_per_row(k) * GROUP {
                    assert_eq!(code_at(&bytes, i), 0);
                }
            }
        }
    }

    #[test]
    fn lns4_nibbles_are_laid_out_for_the_lanes() {
        // Weight i of a group in byte i's low nibble, weight 16 + i in its high one.
        let row: Vec<f64> = (0..32)
            .map(|i| {
                if i == 3 {
                    -1.0
                } else if i == 19 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mut bytes = vec![0u8; 16];
        let mut offsets = vec![f16::ZERO; 1];
        encode_row(&row, &mut bytes, &mut offsets, 0.5).unwrap();
        assert_eq!(
            bytes[3], 0x7f,
            "weight 3: −, code 7 (0xf); weight 19: +, code 7 (0x7)"
        );
        assert!(bytes.iter().enumerate().all(|(i, &b)| i == 3 || b == 0));
    }

    #[test]
    fn the_lns4_step_is_the_least_error_candidate() {
        // Gaussian-like weights (a sum of uniforms), as trained layers have, and uniform ones.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let values: Vec<f64> = (0..4096)
            .map(|i| {
                if i < 2048 {
                    (0..4).map(|_| rng.random_range(-1.0..1.0f64)).sum::<f64>() * 0.02
                } else {
                    rng.random_range(-1.0..1.0f64) * 0.1
                }
            })
            .collect();
        let chosen = choose_step(&values, 256);
        let err = |step: f32| {
            let mut e = 0.0;
            for row in values.chunks(256) {
                let mut bytes = vec![0u8; bytes_per_row(256)];
                let mut offsets = vec![f16::ZERO; groups_per_row(256)];
                encode_row(row, &mut bytes, &mut offsets, step).unwrap();
                for (i, &w) in row.iter().enumerate() {
                    let c = code_at(&bytes, i);
                    let got = decode_value(c, offsets[i / GROUP], step);
                    e += (got - w).powi(2);
                }
            }
            e
        };
        for other in [0.1f32, 0.2, 0.3, 0.5, 0.8, 1.1] {
            assert!(err(chosen) <= err(other) * 1.0001, "{chosen} vs {other}");
        }
        // Each group's offset is the best of those its bound allows: no shift of it by a
        // fraction of a step within half a step of the largest weight does better.
        let step = f64::from(chosen);
        for group in values.chunks(GROUP) {
            let (offset, err) = reference::group_offset(group, step);
            let mut bytes = vec![0u8; GROUP_BYTES];
            let mut offsets = [f16::ZERO];
            encode_row(group, &mut bytes, &mut offsets, chosen).unwrap();
            assert_eq!(offsets[0], offset);
            let max_log = group_max_log(group);
            for t in 0..=20 {
                let off = f16::from_f64(max_log - 7.0 * step - 0.5 * step * f64::from(t) / 20.0);
                if (max_log - off.to_f64()) / step > MAX_Q + 0.5 {
                    continue;
                }
                let e: f64 = group
                    .iter()
                    .map(|&w| {
                        let q = quantize(w, off.to_f64(), step, MAX_Q);
                        let got = if q == 0 {
                            0.0
                        } else {
                            (f64::from(q) * step + off.to_f64()).exp()
                        };
                        (w.abs() - got).powi(2)
                    })
                    .sum();
                // The search tries five shifts; a finer one may gain a little, not much.
                assert!(err <= e * 1.25 + 1e-300, "shift {t}/20: {err:e} vs {e:e}");
            }
        }
    }
}
