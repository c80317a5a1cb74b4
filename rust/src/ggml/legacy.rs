//! The 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: ggml's
//! `quantize_row_*_ref` (no importance matrix), `quantize_row_*_impl` (with
//! one) and `dequantize_row_*`, one row at a time.

use crate::kernel::fast::isa_dispatch;
use crate::kernel::Isa;

use super::GgmlType;

use super::lanes::{imatrix_weights, qkx_lanes, qx_lanes, transpose, untranspose, Col, LANES};
use super::search::{c_max, c_min, fp32_to_fp16, get_f16, put_f16, signed_absmax, QkxSearch};
use crate::kernel::fast::{min_max_keys, Lane};

pub(crate) const QK: usize = 32;

// Each row quantizer is compiled for the CPU's best instruction set (the
// affine kernel's dispatch): the block loops are written to vectorize there.
isa_dispatch!(fn q4_0_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = quantize_q4_0_impl);
isa_dispatch!(fn q4_1_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = quantize_q4_1_impl);
isa_dispatch!(fn q5_0_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = quantize_q5_0_impl);
isa_dispatch!(fn q5_1_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = quantize_q5_1_impl);
isa_dispatch!(fn q8_0_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = quantize_q8_0_impl);

pub fn quantize_q4_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q4_0_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q4_1(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q4_1_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q5_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q5_0_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q5_1(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q5_1_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q8_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q8_0_isa(Isa::detect(), x, imatrix, out);
}

// The block statistics without the C's loops: min, max and abs-max are
// order-free except for the sign of a zero and, for the signed value of
// largest magnitude, a tie between +a and -a (the C keeps the first). They
// are reduced on integer order keys (which vectorize, like the affine
// kernel's), and the blocks where order could matter run the C's loop.
// Each also says whether its block is finite, from the reduced keys (before
// any C loop, which skips NaN): a NaN's or an infinity's key lies at or
// beyond those of +-inf, so the block's min or max is then not finite.

/// A block's statistics, from the first pass for the second: `(min, max)`
/// (Q4_0/Q5_0 on a tie or zeros: twice the C's signed abs-max), Q8_0
/// `(amax, 0)`.
pub(crate) type Stat = [f32; 2];

/// Whether a block whose key-reduced min and max are `min` and `max` holds
/// only finite values.
#[inline(always)]
fn finite_range(min: f32, max: f32) -> bool {
    min >= -f32::MAX && max <= f32::MAX
}

/// Q4_1/Q5_1's `min` and `max` (`if (v < min) min = v` from `MAX` / `-MAX`):
/// a zero result has the sign of the block's first zero, so only a block
/// whose min or max is zero runs the C's loop.
#[inline(always)]
fn block_min_max(xb: &[f32; QK]) -> (Stat, bool) {
    let (lo, hi) = min_max_keys(&xb[..]);
    let (min, max) = (f32::unkey(lo), f32::unkey(hi));
    let finite = finite_range(min, max);
    if min != 0.0 && max != 0.0 {
        return ([min, max], finite);
    }
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in xb {
        min = c_min(v, min);
        max = c_max(v, max);
    }
    ([min, max], finite)
}

/// For Q4_0/Q5_0's signed value of largest magnitude (the first one on
/// ties): the block's `(min, max)`, of which [`larger_magnitude`] picks it;
/// on a tie (and for zeros) both are the C loop's answer.
#[inline(always)]
fn block_signed_absmax(xb: &[f32; QK]) -> (Stat, bool) {
    let (lo, hi) = min_max_keys(&xb[..]);
    let (min, max) = (f32::unkey(lo), f32::unkey(hi));
    let finite = finite_range(min, max);
    if max == -min {
        let s = signed_absmax(xb).1;
        return ([s, s], finite);
    }
    ([min, max], finite)
}

/// `max` or `min`, whichever is larger in magnitude (`max` on a tie), as
/// a select in the run's lanes: a branch on the sign mispredicted half the
/// time.
#[inline(always)]
fn larger_magnitude(min: f32, max: f32) -> f32 {
    if max > -min {
        max
    } else {
        min
    }
}

/// Q8_0's `amax = MAX(amax, fabsf(v))` from 0: the largest magnitude, on
/// the bits (non-negative floats order as integers).
#[inline(always)]
fn block_abs_max(xb: &[f32; QK]) -> (Stat, bool) {
    let amax = f32::from_bits(xb.iter().fold(0, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF)));
    ([amax, 0.0], amax <= f32::MAX)
}

/// [`super::search::c_float_to_int`] (`cvttss2si`: `INT_MIN` out of the
/// i32 range and for NaN), written so that it vectorizes: Rust's saturating
/// `as i32` was compiled to a scalar conversion with branches per value.
#[inline(always)]
fn cvtt(f: f32) -> i32 {
    let (t, in_range) = trunc_in_range(f);
    if in_range {
        t
    } else {
        i32::MIN
    }
}

/// `(f truncated, true)` for `f` in the i32 range, `(0, false)` outside it
/// and for NaN.
#[inline(always)]
fn trunc_in_range(f: f32) -> (i32, bool) {
    let in_range = (-2_147_483_648.0..2_147_483_648.0).contains(&f);
    // SAFETY: the value converted is `f` inside the i32 range, or 0.
    let t: i32 = unsafe { (if in_range { f } else { 0.0 }).to_int_unchecked() };
    (t, in_range)
}

/// `(int8_t)f` / `(uint8_t)f` as x86-64 gcc compiles them: the low byte of
/// `cvttss2si` (0 out of the i32 range and for NaN).
#[inline(always)]
fn low_byte(f: f32) -> u8 {
    cvtt(f) as u8
}

/// The low byte of `(int)roundf(v)` (C's round half away from zero, then
/// `cvttss2si`), without a libm call: truncate, then step by the sign when
/// the dropped fraction (exact for |v| < 2^23, 0 above) is at least 1/2.
/// Out of the i32 range (and NaN) both `t` and `v` become 0, so the byte
/// is 0, as `cvttss2si`'s `INT_MIN`; the range is checked once.
#[inline(always)]
fn round_low_byte(v: f32) -> u8 {
    let (t, in_range) = trunc_in_range(v);
    let v = if in_range { v } else { 0.0 };
    let frac = v - t as f32;
    let r = t.wrapping_add((frac >= 0.5) as i32).wrapping_sub((frac <= -0.5) as i32);
    r as u8
}

/// The blocks of a row as arrays (the length is a multiple of 32, checked).
#[inline(always)]
fn blocks(x: &[f32]) -> impl Iterator<Item = &[f32; QK]> {
    x.chunks_exact(QK).map(|b| b.try_into().expect("32 values"))
}

/// Packs the 32 4-bit levels `level(j)` as ggml does: value j and j+16 in
/// byte j (the low byte of `l[j] | l[j+16] << 4`, so a level's high bits
/// land where the C's `qs[j] = xi0; qs[j] |= xi1 << 4` puts them).
#[inline(always)]
fn pack4(level: impl Fn(usize) -> i32, qs: &mut [u8]) {
    for (j, q) in qs[..QK / 2].iter_mut().enumerate() {
        *q = (level(j) | level(j + QK / 2) << 4) as u8;
    }
}

/// Packs the 32 5-bit levels `level(j)` as ggml does: low nibbles in `qs`
/// (value j and j+16 in byte j), the fifth bit of value j as bit j of the
/// 32-bit little-endian `qh`.
#[inline(always)]
fn pack5(level: impl Fn(usize) -> i32, qh_out: &mut [u8], qs: &mut [u8]) {
    let mut l = [0u8; QK];
    for (j, lj) in l.iter_mut().enumerate() {
        *lj = level(j) as u8;
    }
    for j in 0..QK / 2 {
        qs[j] = (l[j] & 0x0F) | ((l[j + QK / 2] & 0x0F) << 4);
    }
    let qh = fifth_bits(&l[..16]) | fifth_bits(&l[16..]) << 16;
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

/// Bit 4 of byte j as bit j, for 16 bytes: SSE2's byte mask (x86-64's
/// baseline; LLVM compiled every loop tried to a scalar or horizontal
/// reduction per block, up to half of Q5's time).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn fifth_bits(l: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_slli_epi16};
    assert!(l.len() == 16);
    // SAFETY: SSE2 is part of x86-64's baseline; 16 bytes are read from `l`.
    // The shift moves each byte's bit 4 to its bit 7 (the bits crossing
    // into the next byte land below its bit 7), which the mask collects.
    unsafe { _mm_movemask_epi8(_mm_slli_epi16::<3>(_mm_loadu_si128(l.as_ptr().cast()))) as u32 }
}

/// Bit 4 of byte j as bit j, for 16 bytes.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn fifth_bits(l: &[u8]) -> u32 {
    l.iter().enumerate().fold(0, |qh, (j, &v)| qh | u32::from(v & 0x10 != 0) << j)
}

/// `f` clamped to `[lo, hi]` (NaN to `hi`) and truncated toward zero:
/// `cvttss2si` for the values the clamp leaves alone. The fast paths use it
/// where the level is known to be inside `[lo, hi]` (a block whose `d` and
/// `1/d` are finite), or where the C clamps to `hi` anyway: no range
/// selects for `INT_MIN`, no sign extension of a byte.
#[inline(always)]
fn trunc_clamped(f: f32, lo: f32, hi: f32) -> i32 {
    debug_assert!(-2_147_483_648.0 <= lo && hi < 2_147_483_648.0);
    let c = c_max(lo, c_min(f, hi));
    // SAFETY: `c` is in `[lo, hi]`, inside the i32 range.
    unsafe { c.to_int_unchecked() }
}

/// `(int)roundf(x)` (half away from zero) for `|x| < 128`: `trunc(x +- 0.5)`
/// is exact there except at `|x| = 0.5 - 2^-25`, whose sum rounds up to 1,
/// hence the `|x| >= 0.5` test (below it `roundf` is 0).
#[inline(always)]
fn round_small(x: f32) -> i32 {
    if x.abs() >= 0.5 {
        trunc_clamped(x + 0.5f32.copysign(x), -128.0, 128.0)
    } else {
        0
    }
}

fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// The imatrix paths (`quantize_row_*_impl`): runs of 16 blocks whose
/// scale searches run in lanes, `search(values, weights, levels) -> (d, m)`
/// (transposed, one block per lane), with ggml's weights
/// `qw * sqrt(sigma2 + x*x)`, `sigma2` the mean square of the whole row;
/// then `write(levels, d, m, bytes)` per block.
#[inline(always)]
fn imatrix_rows(
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
    bytes: usize,
    search: impl Fn(&[Col; QK], &[Col; QK], &mut [[u8; LANES]; QK]) -> (Col, Col),
    write: impl Fn(&[u8; QK], f32, f32, &mut [u8]),
) {
    let sigma2 = [row_sigma2(x); LANES];
    for (r, (xr, yr)) in x.chunks(QK * LANES).zip(out.chunks_mut(bytes * LANES)).enumerate() {
        let xt = transpose::<QK>(xr);
        let w = imatrix_weights(&xt, &qw[QK * LANES * r..QK * LANES * r + xr.len()], &sigma2);
        let mut lt = [[0u8; LANES]; QK];
        let (d, m) = search(&xt, &w, &mut lt);
        let mut l = [0u8; QK * LANES];
        untranspose(&lt, &mut l);
        for (k, (lb, y)) in l.chunks_exact(QK).zip(yr.chunks_exact_mut(bytes)).enumerate() {
            write(lb.try_into().expect("32 levels"), d[k], m[k], y);
        }
    }
}

/// Q4_0 (`nmax` 8) and Q5_0 (16) with an imatrix: ggml's
/// `make_qx_quants(nmax, .., 1, weights)`, levels in `[0, 2*nmax)`.
#[inline(always)]
fn symmetric_search(nmax: i32, x: &[Col; QK], w: &[Col; QK], l: &mut [[u8; LANES]; QK]) -> (Col, Col) {
    (qx_lanes(nmax, x, w, l), [0f32; LANES])
}

/// Q4_1 (`nmax` 15) and Q5_1 (31) with an imatrix: ggml's
/// `make_qkx3_quants` (the `_impl` search); `m` is the block min.
#[inline(always)]
fn asymmetric_search(nmax: i32, x: &[Col; QK], w: &[Col; QK], l: &mut [[u8; LANES]; QK]) -> (Col, Col) {
    let (d, neg_min) = qkx_lanes(QkxSearch::with_imatrix(nmax), x, w, false, l);
    (d, neg_min.map(|v| -v))
}

#[inline(always)]
fn write_q4_0(l: &[u8; QK], d: f32, _: f32, y: &mut [u8]) {
    put_f16(y, 0, d);
    pack4(|j| l[j].into(), &mut y[2..18]);
}

#[inline(always)]
fn write_q5_0(l: &[u8; QK], d: f32, _: f32, y: &mut [u8]) {
    put_f16(y, 0, d);
    let (qh, qs) = y[2..22].split_at_mut(4);
    pack5(|j| l[j].into(), qh, qs);
}

#[inline(always)]
fn write_q4_1(l: &[u8; QK], d: f32, m: f32, y: &mut [u8]) {
    put_f16(y, 0, d);
    put_f16(y, 2, m);
    pack4(|j| l[j].into(), &mut y[4..20]);
}

#[inline(always)]
fn write_q5_1(l: &[u8; QK], d: f32, m: f32, y: &mut [u8]) {
    put_f16(y, 0, d);
    put_f16(y, 2, m);
    let (qh, qs) = y[4..24].split_at_mut(4);
    pack5(|j| l[j].into(), qh, qs);
}

// The no-imatrix paths run in two passes, so that a call can check all
// its values before it writes anything (see `super::quantize_batch`): first
// each block's statistics (reduced on order keys, see above) and whether it
// is finite, then in runs of `LANES` blocks the scales with one lane per
// block (the divisions vectorize) and the levels block by block.

/// Pass 1: `stat(block) -> (statistics, finite)` for the blocks of `x`
/// into `stats`; false at the first block that is not finite.
#[inline(always)]
fn lane_stats(x: &[f32], stats: &mut [Stat], stat: impl Fn(&[f32; QK]) -> (Stat, bool)) -> bool {
    assert_eq!(x.len(), stats.len() * QK);
    for (xb, s) in blocks(x).zip(stats) {
        let finite;
        (*s, finite) = stat(xb);
        // The exit also keeps LLVM from vectorizing this loop across
        // blocks, with gathers (3x slower than each block's reduction).
        if !finite {
            return false;
        }
    }
    true
}

/// Pass 2 over a row, in runs of `LANES` blocks with their `stats`: for
/// the run at once `scale(a, b) -> (d, id, m)` (the divisions vectorize),
/// then `write(block, halves, id, m, fast, bytes)`, `halves` = `d` and `m`
/// as ggml halves (converted in lanes too), `fast` = `d` and `id` are
/// finite: then every level is in its type's range and the writers skip
/// the C's out-of-range conversions (a huge range or a tiny scale takes the
/// exact slow path).
#[inline(always)]
fn lane_rows(
    x: &[f32],
    stats: &[Stat],
    out: &mut [u8],
    bytes: usize,
    scale: impl Fn(f32, f32) -> (f32, f32, f32),
    write: impl Fn(&[f32; QK], [u8; 4], f32, f32, bool, &mut [u8]),
) {
    assert_eq!(x.len(), stats.len() * QK);
    let runs = x.chunks(QK * LANES).zip(stats.chunks(LANES));
    for ((xr, sr), yr) in runs.zip(out.chunks_mut(bytes * LANES)) {
        // Lanes past a partial run are zero blocks, never written.
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        for (i, &[ai, bi]) in sr.iter().enumerate() {
            (a[i], b[i]) = (ai, bi);
        }
        let (mut halves, mut id, mut m, mut fast) = ([[0u8; 4]; LANES], [0f32; LANES], [0f32; LANES], [false; LANES]);
        for i in 0..LANES {
            let (di, idi, mi) = scale(a[i], b[i]);
            let h = u32::from(fp32_to_fp16(di)) | (u32::from(fp32_to_fp16(mi)) << 16);
            (halves[i], id[i], m[i], fast[i]) = (h.to_le_bytes(), idi, mi, di.is_finite() & idi.is_finite());
        }
        for (i, (xb, y)) in blocks(xr).zip(yr.chunks_exact_mut(bytes)).enumerate() {
            write(xb, halves[i], id[i], m[i], fast[i], y);
        }
    }
}

/// Packs a block's levels `level(j)` into `y` (the bytes after its scales):
/// 5-bit (`five`) or 4-bit.
#[inline(always)]
fn pack_levels(five: bool, level: impl Fn(usize) -> i32, y: &mut [u8]) {
    if five {
        let (qh, qs) = y.split_at_mut(4);
        pack5(level, qh, qs);
    } else {
        pack4(level, y);
    }
}

/// Q4_0 (`nmax` 8) and Q5_0 (16, `five`) without imatrix over a row,
/// scales in lanes.
#[allow(clippy::redundant_closure)] // an `#[inline(always)]` closure, as below
#[inline(always)]
fn symmetric_row(x: &[f32], stats: &[Stat], out: &mut [u8], nmax: i32, five: bool) {
    let offset = nmax as f32 + 0.5; // 8.5 / 16.5 as in the C
    let top = 2 * nmax - 1;
    lane_rows(
        x,
        stats,
        out,
        if five { 22 } else { 18 },
        #[inline(always)]
        |min, max| {
            let d = larger_magnitude(min, max) / -(nmax as f32);
            (d, if d != 0.0 { 1.0 / d } else { 0.0 }, 0.0)
        },
        #[inline(always)]
        |xb, halves, id, _, fast, y| {
            y[..2].copy_from_slice(&halves[..2]);
            let y = &mut y[2..];
            if fast {
                // `v * id + offset` is in [0.5 - e, 2 nmax + 0.5 + e]: the
                // C's `MIN(top, (int8_t)...)` is a clamp before truncating.
                pack_levels(five, |j| trunc_clamped(xb[j] * id + offset, 0.0, top as f32), y);
            } else {
                pack_levels(five, |j| c_min(top, low_byte(xb[j] * id + offset) as i8 as i32), y);
            }
        },
    );
}

/// Q4_1 (`nmax` 15) and Q5_1 (31, `five`) without imatrix over a row,
/// scales in lanes. `round` is the C's conversion of `v + 0.5` (Q4_1 clamps,
/// Q5_1 does not).
#[allow(clippy::redundant_closure)] // an `#[inline(always)]` closure, as below
#[inline(always)]
fn asymmetric_row(x: &[f32], stats: &[Stat], out: &mut [u8], nmax: i32, five: bool, round: impl Fn(f32) -> i32) {
    lane_rows(
        x,
        stats,
        out,
        if five { 24 } else { 20 },
        #[inline(always)]
        |min, max| {
            let d = (max - min) / nmax as f32;
            (d, if d != 0.0 { 1.0 / d } else { 0.0 }, min)
        },
        #[inline(always)]
        |xb, halves, id, min, fast, y| {
            y[..4].copy_from_slice(&halves);
            let y = &mut y[4..];
            if fast {
                // `(v - min) * id + 0.5` is in [0.5, nmax + 0.5 + e].
                pack_levels(five, |j| trunc_clamped((xb[j] - min) * id + 0.5, 0.0, nmax as f32), y);
            } else {
                pack_levels(five, |j| round((xb[j] - min) * id + 0.5), y);
            }
        },
    );
}

// The closures are `#[inline(always)]`: a function item passed instead
// would be compiled out of line, without the dispatched target features.
#[allow(clippy::redundant_closure)]
#[inline(always)]
fn quantize_q4_0_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let Some(qw) = imatrix else {
        plain_rows(GgmlType::Q4_0, x, out);
        return;
    };
    imatrix_rows(
        x,
        qw,
        out,
        18,
        #[inline(always)]
        |x, w, l| symmetric_search(8, x, w, l),
        #[inline(always)]
        |l, d, m, y| write_q4_0(l, d, m, y),
    );
}

#[allow(clippy::redundant_closure)] // as above
#[inline(always)]
fn quantize_q5_0_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let Some(qw) = imatrix else {
        plain_rows(GgmlType::Q5_0, x, out);
        return;
    };
    imatrix_rows(
        x,
        qw,
        out,
        22,
        #[inline(always)]
        |x, w, l| symmetric_search(16, x, w, l),
        #[inline(always)]
        |l, d, m, y| write_q5_0(l, d, m, y),
    );
}

#[allow(clippy::redundant_closure)] // as above
#[inline(always)]
fn quantize_q4_1_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let Some(qw) = imatrix else {
        plain_rows(GgmlType::Q4_1, x, out);
        return;
    };
    imatrix_rows(
        x,
        qw,
        out,
        20,
        #[inline(always)]
        |x, w, l| asymmetric_search(15, x, w, l),
        #[inline(always)]
        |l, d, m, y| write_q4_1(l, d, m, y),
    );
}

#[allow(clippy::redundant_closure)] // as above
#[inline(always)]
fn quantize_q5_1_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let Some(qw) = imatrix else {
        plain_rows(GgmlType::Q5_1, x, out);
        return;
    };
    imatrix_rows(
        x,
        qw,
        out,
        24,
        #[inline(always)]
        |x, w, l| asymmetric_search(31, x, w, l),
        #[inline(always)]
        |l, d, m, y| write_q5_1(l, d, m, y),
    );
}

/// Q8_0 has no imatrix path in ggml (`quantize_q8_0` ignores it).
#[inline(always)]
fn quantize_q8_0_impl(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8]) {
    plain_rows(GgmlType::Q8_0, x, out);
}

/// Q8_0 over a row, scales in lanes.
#[inline(always)]
fn q8_0_row(x: &[f32], stats: &[Stat], out: &mut [u8]) {
    lane_rows(
        x,
        stats,
        out,
        34,
        #[inline(always)]
        |amax, _| {
            let d = amax / 127.0;
            (d, if d != 0.0 { 1.0 / d } else { 0.0 }, 0.0)
        },
        #[inline(always)]
        |xb, halves, id, _, fast, y| {
            y[..2].copy_from_slice(&halves[..2]);
            let q: &mut [u8; QK] = (&mut y[2..34]).try_into().expect("32 bytes");
            if fast {
                // `|v * id| <= 127 (1 + e)`.
                for (qj, &v) in q.iter_mut().zip(xb) {
                    *qj = round_small(v * id) as u8;
                }
            } else {
                for (qj, &v) in q.iter_mut().zip(xb) {
                    *qj = round_low_byte(v * id);
                }
            }
        },
    );
}

/// Whether `ty` is one of this module's types, whose no-imatrix path runs
/// as [`block_stats`] then [`write_blocks`].
pub(crate) fn has_block_stats(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0)
}

#[allow(clippy::redundant_closure)] // as above
#[inline(always)]
fn stats_impl(ty: GgmlType, x: &[f32], stats: &mut [Stat]) -> bool {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 => lane_stats(
            x,
            stats,
            #[inline(always)]
            |xb| block_signed_absmax(xb),
        ),
        Q4_1 | Q5_1 => lane_stats(
            x,
            stats,
            #[inline(always)]
            |xb| block_min_max(xb),
        ),
        Q8_0 => lane_stats(
            x,
            stats,
            #[inline(always)]
            |xb| block_abs_max(xb),
        ),
        _ => unreachable!("{} has no block statistics", ty.name()),
    }
}

#[inline(always)]
fn write_impl(ty: GgmlType, x: &[f32], stats: &[Stat], out: &mut [u8]) {
    use GgmlType::*;
    match ty {
        Q4_0 => symmetric_row(x, stats, out, 8, false),
        Q5_0 => symmetric_row(x, stats, out, 16, true),
        Q4_1 => asymmetric_row(x, stats, out, 15, false, |v| c_min(15, low_byte(v) as i8 as i32)),
        Q5_1 => asymmetric_row(x, stats, out, 31, true, |v| low_byte(v).into()),
        Q8_0 => q8_0_row(x, stats, out),
        _ => unreachable!("{} has no block statistics", ty.name()),
    }
}

// Pass 1 (`stats`: one per block of `x`; false when a value is not finite)
// and pass 2 (writes `out` from `x` and its `stats`) of a `ty` with
// [`has_block_stats`] and no importance matrix.
isa_dispatch!(pub(crate) fn block_stats(ty: GgmlType, x: &[f32], stats: &mut [Stat]) -> bool = stats_impl);
isa_dispatch!(pub(crate) fn write_blocks(ty: GgmlType, x: &[f32], stats: &[Stat], out: &mut [u8]) -> () = write_impl);

/// Both passes over blocks of checked values (rows widened from f16 /
/// bf16), a chunk at a time, so that the second pass finds them in cache.
#[inline(always)]
fn plain_rows(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    const CHUNK: usize = 4 * LANES;
    let bytes = ty.info().bytes;
    let mut stats = [[0f32; 2]; CHUNK];
    for (xc, yc) in x.chunks(QK * CHUNK).zip(out.chunks_mut(bytes * CHUNK)) {
        let s = &mut stats[..xc.len() / QK];
        stats_impl(ty, xc, s);
        write_impl(ty, xc, s, yc);
    }
}

pub fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(18).zip(y.chunks_exact_mut(QK)) {
        let d = get_f16(blk, 0);
        for j in 0..QK / 2 {
            yb[j] = ((blk[2 + j] & 0x0F) as i32 - 8) as f32 * d;
            yb[j + QK / 2] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(20).zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (get_f16(blk, 0), get_f16(blk, 2));
        for j in 0..QK / 2 {
            yb[j] = (blk[4 + j] & 0x0F) as f32 * d + m;
            yb[j + QK / 2] = (blk[4 + j] >> 4) as f32 * d + m;
        }
    }
}

/// The 5-bit values of a Q5 block: `qh` at `at`, then 16 bytes of `qs`.
fn unpack5(blk: &[u8], at: usize) -> [i32; QK] {
    let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
    let mut v = [0i32; QK];
    for j in 0..QK / 2 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        v[j] = ((blk[at + 4 + j] & 0x0F) as u32 | xh0) as i32;
        v[j + QK / 2] = ((blk[at + 4 + j] >> 4) as u32 | xh1) as i32;
    }
    v
}

pub fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(22).zip(y.chunks_exact_mut(QK)) {
        let d = get_f16(blk, 0);
        for (yj, v) in yb.iter_mut().zip(unpack5(blk, 2)) {
            *yj = (v - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(24).zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (get_f16(blk, 0), get_f16(blk, 2));
        for (yj, v) in yb.iter_mut().zip(unpack5(blk, 4)) {
            *yj = v as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(34).zip(y.chunks_exact_mut(QK)) {
        let d = get_f16(blk, 0);
        for j in 0..QK {
            yb[j] = blk[2 + j] as i8 as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::{hard_groups, isas, Row};
    use super::super::search::{c_float_to_int, make_qkx_quants, make_qx_quants, signed_absmax};
    use super::*;

    /// ggml's `quantize_row_q{4,5}_0_ref` one block at a time, as written in
    /// C: the no-imatrix paths' reference.
    fn scalar_sym(x: &[f32], nmax: i32, bytes: usize, five: bool) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK * bytes];
        for (xb, y) in x.chunks_exact(QK).zip(out.chunks_exact_mut(bytes)) {
            let max = signed_absmax(xb).1;
            let d = max / -(nmax as f32);
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(y, 0, d);
            let mut l = [0u8; QK];
            for j in 0..QK {
                let xi = c_float_to_int(xb[j] * id + (nmax as f32 + 0.5)) as i8 as i32;
                l[j] = c_min(2 * nmax - 1, xi) as u8;
            }
            pack_scalar(&l, five, &mut y[2..]);
        }
        out
    }

    /// ggml's `quantize_row_q{4,5}_1_ref`.
    fn scalar_asym(x: &[f32], nmax: i32, bytes: usize, five: bool) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK * bytes];
        for (xb, y) in x.chunks_exact(QK).zip(out.chunks_exact_mut(bytes)) {
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in xb {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            let d = (max - min) / nmax as f32;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(y, 0, d);
            put_f16(y, 2, min);
            let mut l = [0u8; QK];
            for j in 0..QK {
                let xi = c_float_to_int((xb[j] - min) * id + 0.5);
                l[j] = if five { xi as u8 } else { c_min(15, xi as i8 as i32) as u8 };
            }
            pack_scalar(&l, five, &mut y[4..]);
        }
        out
    }

    /// ggml's `quantize_row_q8_0_ref` (`roundf` from std).
    fn scalar_q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK * 34];
        for (xb, y) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
            let mut amax = 0f32;
            for &v in xb {
                amax = c_max(amax, v.abs());
            }
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(y, 0, d);
            for j in 0..QK {
                y[2 + j] = c_float_to_int((xb[j] * id).round()) as u8;
            }
        }
        out
    }

    /// The C's packing loops: value j and j+16 in byte j, fifth bits in `qh`.
    fn pack_scalar(l: &[u8; QK], five: bool, y: &mut [u8]) {
        let (mut qh, qs) = (0u32, if five { 4 } else { 0 });
        for j in 0..QK / 2 {
            y[qs + j] = (l[j] & 0x0F) | ((l[j + QK / 2] & 0x0F) << 4);
            qh |= (((l[j] & 0x10) >> 4) as u32) << j;
            qh |= (((l[j + QK / 2] & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        if five {
            y[..4].copy_from_slice(&qh.to_le_bytes());
        }
    }

    /// Blocks the block statistics could get wrong: magnitude ties of both
    /// signs in either order, zeros of both signs first, constant blocks,
    /// extremes that make `1/d` overflow or nearly, on top of [`hard_groups`].
    fn tie_groups(seed: u32) -> Vec<f32> {
        let mut x = Vec::new();
        for g in 0..16u32 {
            for i in 0..QK as u32 {
                let r = ((i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) >> 20) as f32 / 4096.0 - 0.5;
                x.push(match (g + seed) % 9 {
                    0 => [0.5, -0.5][((i + g) % 2) as usize] * if i % 7 == 3 { 1.0 } else { r },
                    1 => [-0.5, 0.5][((i + g) % 2) as usize] * if i % 5 == 1 { 1.0 } else { r },
                    2 => [0.0, -0.0][((i / 3 + g) % 2) as usize],
                    3 => [-0.0, 0.0, 0.25][(i % 3) as usize],
                    4 => -2.5,
                    5 => {
                        if i == 31 {
                            -3.0e38
                        } else {
                            3.0e38 * r
                        }
                    }
                    6 => {
                        if i == 9 {
                            f32::from_bits(1)
                        } else {
                            -f32::from_bits(1 + i) * (i % 2) as f32
                        }
                    }
                    7 => r * 1e-30,
                    // Scales just below and above 1/FLT_MAX: `1/d` finite
                    // (the fast paths) or infinite (the exact slow ones).
                    _ => r * [6e-38, 2e-38, 5e-38][(g % 3) as usize],
                });
            }
        }
        x
    }

    #[test]
    fn block_statistics_write_the_scalar_bytes_on_every_isa() {
        for seed in 0..16 {
            // 16 + 16 + 5 blocks: full runs and a partial one at the row end.
            let mut x = hard_groups(QK, seed);
            x.extend(&tie_groups(seed));
            x.extend(&hard_groups(QK, seed + 1)[..5 * QK]);
            let cases: [(GgmlType, Row, Vec<u8>); 5] = [
                (GgmlType::Q4_0, q4_0_isa, scalar_sym(&x, 8, 18, false)),
                (GgmlType::Q5_0, q5_0_isa, scalar_sym(&x, 16, 22, true)),
                (GgmlType::Q4_1, q4_1_isa, scalar_asym(&x, 15, 20, false)),
                (GgmlType::Q5_1, q5_1_isa, scalar_asym(&x, 31, 24, true)),
                (GgmlType::Q8_0, q8_0_isa, scalar_q8_0(&x)),
            ];
            for (ty, fast, want) in &cases {
                for &isa in isas() {
                    let mut got = vec![0xAB; want.len()];
                    fast(isa, &x, None, &mut got);
                    assert!(got == *want, "{} seed {seed} {isa:?}", ty.name());
                    // The two passes of a call's f32 pieces.
                    let mut stats = vec![[0f32; 2]; x.len() / QK];
                    assert!(block_stats(isa, *ty, &x, &mut stats));
                    got.fill(0xAB);
                    write_blocks(isa, *ty, &x, &stats, &mut got);
                    assert!(got == *want, "{} seed {seed} {isa:?}, two passes", ty.name());
                }
            }
        }
    }

    /// The first pass sees every NaN and infinity, also in the blocks whose
    /// statistics come from the C's loop (which skips NaN): among zeros of
    /// either sign and at a +-amax tie.
    #[test]
    fn block_statistics_see_every_non_finite_value_on_every_isa() {
        let bad = [f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001), f32::INFINITY, f32::NEG_INFINITY];
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            for &isa in isas() {
                for (k, &v) in bad.iter().enumerate() {
                    for at in [0, 5, 31] {
                        for fill in [[0.0, -0.0], [0.5, -0.5], [1e-3, 2e-3]] {
                            // Block 17 of 20 (the second run) is the bad one.
                            let mut x: Vec<f32> = (0..20 * QK).map(|i| fill[i % 2]).collect();
                            x[17 * QK + at] = v;
                            let mut stats = vec![[0f32; 2]; 20];
                            assert!(!block_stats(isa, ty, &x, &mut stats), "{} {isa:?} {k} {at} {fill:?}", ty.name());
                            x[17 * QK + at] = fill[0];
                            assert!(block_stats(isa, ty, &x, &mut stats), "{} {isa:?} {k} {at} {fill:?}", ty.name());
                        }
                    }
                }
            }
        }
    }

    /// `round_small` is `roundf` below 128: every 7th f32 bit pattern of
    /// either sign, and every value within 64 ulps of each half-integer.
    #[test]
    fn round_small_is_roundf_below_128() {
        let check = |x: f32| assert_eq!(round_small(x), x.round() as i32, "{x:e} ({:#x})", x.to_bits());
        for b in (0..0x4300_0000u32).step_by(7) {
            check(f32::from_bits(b));
            check(-f32::from_bits(b));
        }
        for h in 0..256 {
            let half = f32::from_bits((h as f32 * 0.5).to_bits());
            for k in 0..64 {
                for x in [f32::from_bits(half.to_bits() + k), f32::from_bits(half.to_bits().saturating_sub(k))] {
                    if x.abs() < 128.0 {
                        check(x);
                        check(-x);
                    }
                }
            }
        }
        check(0.5 - 2f32.powi(-25));
    }

    /// ggml's imatrix searches one block at a time: the lanes' reference.
    fn scalar_search(sym: bool, nmax: i32, x: &[Col; QK], w: &[Col; QK], l: &mut [[u8; LANES]; QK]) -> (Col, Col) {
        let (mut xs, mut ws) = ([0f32; QK * LANES], [0f32; QK * LANES]);
        untranspose(x, &mut xs);
        untranspose(w, &mut ws);
        let (mut d, mut m) = ([0f32; LANES], [0f32; LANES]);
        for k in 0..LANES {
            let g = QK * k..QK * k + QK;
            let mut lk = [0u8; QK];
            if sym {
                let mut li = [0i8; QK];
                d[k] = make_qx_quants(nmax, &xs[g.clone()], &mut li, 1, Some(&ws[g]));
                lk = li.map(|v| v as u8);
            } else {
                let p = QkxSearch::with_imatrix(nmax);
                let (s, neg_min) = make_qkx_quants(p, &xs[g.clone()], &ws[g], &mut lk, &mut [0u8; QK], false);
                (d[k], m[k]) = (s, -neg_min);
            }
            for i in 0..QK {
                l[i][k] = lk[i];
            }
        }
        (d, m)
    }

    fn reference(
        x: &[f32],
        w: &[f32],
        bytes: usize,
        sym: bool,
        nmax: i32,
        write: fn(&[u8; QK], f32, f32, &mut [u8]),
    ) -> Vec<u8> {
        let mut out = vec![0xCD; x.len() / QK * bytes];
        imatrix_rows(x, w, &mut out, bytes, |x, w, l| scalar_search(sym, nmax, x, w, l), write);
        out
    }

    #[test]
    fn imatrix_lane_searches_write_the_scalar_bytes_on_every_isa() {
        for seed in 0..16 {
            // 24 blocks (a full run of 16 and a partial one); every other
            // row without the huge groups, whose squares would make the
            // row's sigma2 (and so every weight) infinite.
            let mut x = hard_groups(32, seed);
            x.extend(&hard_groups(16, seed + 1));
            if seed % 2 == 0 {
                x.iter_mut().for_each(|v| *v = v.clamp(-1e6, 1e6));
            }
            let w: Vec<f32> =
                hard_groups(32, seed + 2).iter().chain(&hard_groups(16, seed + 3)).map(|v| v.abs().min(1e3)).collect();
            let cases: [(Row, Vec<u8>); 4] = [
                (q4_0_isa, reference(&x, &w, 18, true, 8, write_q4_0)),
                (q5_0_isa, reference(&x, &w, 22, true, 16, write_q5_0)),
                (q4_1_isa, reference(&x, &w, 20, false, 15, write_q4_1)),
                (q5_1_isa, reference(&x, &w, 24, false, 31, write_q5_1)),
            ];
            for (t, (fast, want)) in cases.iter().enumerate() {
                for &isa in isas() {
                    let mut got = vec![0xAB; want.len()];
                    fast(isa, &x, Some(&w), &mut got);
                    assert!(got == *want, "type {t} seed {seed} {isa:?}");
                }
            }
        }
    }
}
