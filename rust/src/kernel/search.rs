//! Groups quantized with `method = search`: the searched scale and min of
//! docs/scheme.md, "Methods and scale dtypes" (min-max with float16 scales
//! runs in the fast kernels, which call [`stored`] for the rounding).
//!
//! The scalar definition of these bytes is `reference::search_quantize`
//! (tests and the `reference` feature), one group at a time. This module
//! runs the same operations on [`LANES`] groups at once: the groups are
//! transposed so that `t[i][k]` is value `i` of group `k`, every lane does
//! exactly its group's scalar operations in the scalar order (sums run over
//! `i` inside a lane, never across lanes), and each data-dependent branch of
//! the scalar code becomes a per-lane select, written as a bit blend where
//! LLVM would otherwise branch per lane. LLVM turns the `k` loops into
//! vector instructions; `isa_dispatch!` compiles them for AVX-512, AVX2 and
//! the baseline. Only IEEE add, subtract, multiply, divide and compare on f32
//! are used (Rust never contracts `a * b + c` into an FMA), so every
//! instruction set gives the reference's bytes; the tests compare them.
//!
//! The search proposes a candidate with llama.cpp's `make_qkx2_quants`
//! ([`crate::ggml::search::make_qkx_quants`], here [`qkx_lanes`]), but the
//! codes, and the choice between candidates, always come from this format's
//! own formula on the scale and min *as stored*, so that what is measured is
//! what dequantize gives back.
//!
//! Everything below the entry point is `#[inline(always)]` and uses
//! functions rather than closures: out of line, a helper would lose the
//! dispatched target features.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use super::fast::F16c;
use super::fast::{f16_bits_to_f32, f32_to_f16_bits, group_codes, isa_dispatch, HalfCvt, Lane, Soft};
use super::ROUND_MAGIC;
use crate::element::Values;
use crate::error::{Error, PqStatus, Result};
pub(crate) use crate::ggml::lanes::LANES;
use crate::ggml::lanes::{blend, err as qkx_err, mask, Col};
use crate::ggml::search::{c_max, c_min, nearest_int, QkxSearch};
use crate::kernel::Isa;
use crate::layout::{Layout, Method, ScaleDtype};

/// The `make_qkx2_quants` parameters of the search: 9 inverse scales
/// `(qmax - 0.4 + 0.2 * k) / (max - min)`, `k = 0..=8`, squared error; for
/// 2 bits (`qmax = 3`) 7, `(3 - 0.2 + 0.2 * k) / (max - min)`, `k = 0..=6`.
/// Fewer than llama.cpp's 21 (`rmin -1.0, rdelta 0.1, nstep 20`, which the
/// K-quants keep): each step is a pass over the group, and these make the
/// search 1.5x to 1.8x faster for almost the same error (docs/scheme.md,
/// step 5).
pub(crate) fn qkx_search(qmax: u32) -> QkxSearch {
    let (rmin, nstep) = if qmax == 3 { (-0.2, 6) } else { (-0.4, 8) };
    QkxSearch { nmax: qmax as i32, rmin, rdelta: 0.2, nstep, use_mad: false }
}

/// Quantizes every group of a piece (`first_group` is the index of its first
/// group in the tensor) with `layout.scheme` (method search). `importance`
/// is the tensor's per-column weights (length `row_len`, already checked).
/// Errors as the min-max kernel, in group order, plus a group whose min-max
/// min or scale does not fit float16 when scales are stored as f16; on
/// error the outputs of the groups before it may have been written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    isa: Isa,
    input: Values<'_>,
    layout: &Layout,
    first_group: usize,
    importance: Option<&[f32]>,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    debug_assert_eq!(layout.scheme.method, Method::Search);
    match input {
        Values::F32(x) => encode_isa(isa, x, layout, first_group, importance, codes, scales, mins),
        Values::F16(x) => encode_isa(isa, x, layout, first_group, importance, codes, scales, mins),
        Values::BF16(x) => encode_isa(isa, x, layout, first_group, importance, codes, scales, mins),
    }
}

isa_dispatch!(
    #[allow(clippy::too_many_arguments)]
    fn encode_isa<T>(x: &[T], layout: &Layout, first_group: usize, importance: Option<&[f32]>, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]) -> Result<()> = encode_impl
);

#[inline(always)]
fn encode_impl<T: Lane, H: HalfCvt>(
    x: &[T],
    layout: &Layout,
    first_group: usize,
    importance: Option<&[f32]>,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    // Without importance every weight is 1.0, and `1.0 * v` is `v`: that
    // variant reads no weights.
    match importance {
        Some(w) => encode_blocks::<T, H, true>(x, layout, first_group, w, codes, scales, mins),
        None => encode_blocks::<T, H, false>(x, layout, first_group, &[], codes, scales, mins),
    }
}

/// Weight `w` of a weighted search, 1.0 otherwise.
#[inline(always)]
fn weight<const W: bool>(w: f32) -> f32 {
    if W {
        w
    } else {
        1.0
    }
}

/// `v` rounded to the scale dtype, to nearest, ties to even.
#[inline(always)]
fn round_stored(dtype: ScaleDtype, v: f32) -> f32 {
    match dtype {
        ScaleDtype::F32 => v,
        ScaleDtype::F16 => f16_bits_to_f32(f32_to_f16_bits(v)),
    }
}

/// `(scale, min)` rounded (to nearest, ties to even) to the scale dtype, or
/// `None` if either is then not finite.
pub(crate) fn stored(dtype: ScaleDtype, scale: f32, min: f32) -> Option<(f32, f32)> {
    let (scale, min) = (round_stored(dtype, scale), round_stored(dtype, min));
    (scale.is_finite() && min.is_finite()).then_some((scale, min))
}

/// The error of a group whose min or scale overflows float16.
#[cold]
pub(crate) fn f16_error(group: usize, min: f32, scale: f32) -> Error {
    Error::new(
        PqStatus::NonFinite,
        format!(
            "group {group}: its min ({min:e}) or scale ({scale:e}) overflows float16 \
             (scale_dtype float16 stores them in float16; use float32)"
        ),
    )
}

/// `(lo, hi)` of finite values; `+ 0.0` turns -0.0 into +0.0, as min-max does.
pub(crate) fn range(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (x[0], x[0]);
    for &v in x {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
    }
    (lo + 0.0, hi + 0.0)
}

/// The checks of group `index` (values `x`), in the order of docs/scheme.md:
/// a non-finite value, a range that overflows f32, a min-max scale or min
/// that overflows the scale dtype. Returns `(lo, hi)` and candidate 1, the
/// min-max `(scale, min)` rounded as stored.
pub(crate) fn check_group(x: &[f32], layout: &Layout, index: usize) -> Result<((f32, f32), (f32, f32))> {
    if let Some(offset) = x.iter().position(|v| !v.is_finite()) {
        return Err(layout.value_error(index, offset, x[offset]));
    }
    let (lo, hi) = range(x);
    if !(hi - lo).is_finite() {
        return Err(layout.range_error(index, lo, hi));
    }
    let qmax = layout.qmax() as f32;
    let c1 = stored(layout.scheme.scale_dtype, (hi - lo) / qmax, lo)
        .ok_or_else(|| f16_error(index, lo, (hi - lo) / qmax))?;
    Ok(((lo, hi), c1))
}

/// The first error of a block of groups (the first is group `first`), which
/// the lanes found to have one.
#[cold]
#[inline(never)]
fn first_error<T: Lane>(block: &[T], layout: &Layout, first: usize) -> Error {
    let mut x = vec![0f32; layout.group_size];
    for (j, group) in block.chunks_exact(layout.group_size).enumerate() {
        for (d, v) in x.iter_mut().zip(group) {
            *d = v.widen::<Soft>();
        }
        if let Err(e) = check_group(&x, layout, first + j) {
            return e;
        }
    }
    unreachable!("the lanes saw a bad value, range or float16 overflow in this block")
}

/// Lane `k` of `t` is group `k` of `groups` (values widened to f32), lanes
/// past the last group 0.
#[inline(always)]
fn transpose<T: Lane, H: HalfCvt>(groups: &[T], t: &mut [Col]) {
    let g = t.len();
    let n = groups.len() / g;
    for row in t.iter_mut() {
        row[n..].fill(0.0);
    }
    for (k, group) in groups.chunks_exact(g).enumerate() {
        for (row, v) in t.iter_mut().zip(group) {
            row[k] = v.widen::<H>();
        }
    }
}

#[inline(always)]
fn encode_blocks<T: Lane, H: HalfCvt, const W: bool>(
    x: &[T],
    layout: &Layout,
    first_group: usize,
    importance: &[f32],
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    let g = layout.group_size;
    let qmax = layout.qmax() as f32;
    let dtype = layout.scheme.scale_dtype;
    let search = qkx_search(layout.qmax());
    let code_bytes = layout.group_code_bytes();
    let mut xt = vec![[0f32; LANES]; g];
    let mut wt = vec![[0f32; LANES]; if W { g } else { 0 }];
    let mut laux = vec![[0f32; LANES]; g];
    let blocks = x
        .chunks(g * LANES)
        .zip(codes.chunks_mut(code_bytes * LANES))
        .zip(scales.chunks_mut(LANES).zip(mins.chunks_mut(LANES)));
    for (b, ((xb, cb), (sb, mb))) in blocks.enumerate() {
        let first = first_group + b * LANES;
        let n = sb.len();
        transpose::<T, H>(xb, &mut xt);
        if W {
            for row in wt.iter_mut() {
                row[n..].fill(0.0);
            }
            for k in 0..n {
                let col = (first + k) * g % layout.row_len;
                for (row, &v) in wt.iter_mut().zip(&importance[col..col + g]) {
                    row[k] = v;
                }
            }
        }
        // The checks and candidate 1 of `check_group`, per lane; a block with
        // any error is checked again group by group for the first one.
        let (mut lo, mut hi) = (xt[0], xt[0]);
        let mut bad = [0u32; LANES];
        for row in xt.iter() {
            for k in 0..LANES {
                let v = row[k];
                lo[k] = if v < lo[k] { v } else { lo[k] };
                hi[k] = if v > hi[k] { v } else { hi[k] };
                bad[k] |= ((v.to_bits() & 0x7FFF_FFFF) >= 0x7F80_0000) as u32;
            }
        }
        let (mut scale, mut min) = ([0f32; LANES], [0f32; LANES]);
        for k in 0..LANES {
            lo[k] += 0.0;
            hi[k] += 0.0;
            scale[k] = round_stored(dtype, (hi[k] - lo[k]) / qmax);
            min[k] = round_stored(dtype, lo[k]);
            let finite = (hi[k] - lo[k]).is_finite() & scale[k].is_finite() & min[k].is_finite();
            bad[k] |= (!finite) as u32;
        }
        if bad[..n].iter().any(|&b| b != 0) {
            return Err(first_error(xb, layout, first));
        }
        let best_err = errors::<W>(&xt, &wt, &scale, &min, qmax);
        // Candidate 2: the make_qkx2_quants search, taken only if strictly better.
        let (d, neg_min) = qkx_lanes::<W>(search, &xt, &wt, &mut laux);
        let (mut scale2, mut min2, mut ok) = ([0f32; LANES], [0f32; LANES], [0u32; LANES]);
        for k in 0..LANES {
            scale2[k] = round_stored(dtype, d[k]);
            min2[k] = round_stored(dtype, -neg_min[k] + 0.0);
            ok[k] = mask(scale2[k].is_finite() & min2[k].is_finite() & (scale2[k] >= 0.0) & (hi[k] > lo[k]));
        }
        let err = errors::<W>(&xt, &wt, &scale2, &min2, qmax);
        for k in 0..LANES {
            let take = ok[k] & mask(err[k] < best_err[k]);
            scale[k] = blend(take, scale2[k], scale[k]);
            min[k] = blend(take, min2[k], min[k]);
        }
        sb.copy_from_slice(&scale[..n]);
        mb.copy_from_slice(&min[..n]);
        for (k, (group, out)) in xb.chunks_exact(g).zip(cb.chunks_exact_mut(code_bytes)).enumerate() {
            group_codes::<T, H>(layout.bits, group, min[k], scale[k], out);
        }
    }
    Ok(())
}

/// Per lane, the weighted squared error of the codes of the stored `scale`
/// and `min`, summed in index order: the code `(v - min) / scale` (each
/// rounded to f32) clamped to `[0, qmax]`, rounded half to even, 0 where
/// `scale` is 0; the error of `min + q * scale`.
#[inline(always)]
fn errors<const W: bool>(x: &[Col], w: &[Col], scale: &Col, min: &Col, qmax: f32) -> Col {
    let n = x.len();
    let w = if W { &w[..n] } else { x };
    let mut keep = [0u32; LANES];
    for k in 0..LANES {
        keep[k] = mask(scale[k] != 0.0);
    }
    let mut err = [0f32; LANES];
    for i in 0..n {
        for k in 0..LANES {
            let v = x[i][k];
            let t = (v - min[k]) / scale[k];
            let t = if t > 0.0 { t } else { 0.0 };
            let t = if t < qmax { t } else { qmax };
            // `t` is in [0, 255]: the sum's low bits are the rounded code,
            // and subtracting 2**23 again gives it exactly.
            let q = f32::from_bits(((t + ROUND_MAGIC) - ROUND_MAGIC).to_bits() & keep[k]);
            let diff = (min[k] + q * scale[k]) - v;
            err[k] += weight::<W>(w[i][k]) * (diff * diff);
        }
    }
    err
}

/// `MAX(0, MIN(nmax, nearest_int(iscale * (x - min))))` as f32.
/// `FLOAT`: the same value computed in f32 (round half to even by adding
/// and subtracting `1.5 * 2**23`, clamp), one vector operation fewer; only
/// for `|iscale * (x - min)| < 2**22 - 1`, where `nearest_int` is exact (outside it,
/// `nearest_int` returns the C's wrapped bits, which the integer form keeps).
#[inline(always)]
fn qkx_level<const FLOAT: bool>(nmax: i32, iscale: f32, x: f32, min: f32) -> f32 {
    let y = iscale * (x - min);
    if FLOAT {
        let r = (y + 12_582_912.0) - 12_582_912.0;
        let r = if (nmax as f32) < r { nmax as f32 } else { r };
        if 0.0 > r {
            0.0
        } else {
            r
        }
    } else {
        c_max(0, c_min(nmax, nearest_int(y))) as f32
    }
}

/// Whether every lane that is not `flat` has `|iscale * (x - min)| < 2**22 - 1`
/// for all its values `x` in `[lo, hi]` (rounded subtraction and product
/// are monotonic, so the ends bound them): then [`qkx_level`] may run in f32.
/// (Just below `2**22`, `nearest_int`'s sum rounds up to `2**24` and wraps.)
#[inline(always)]
fn levels_fit_f32(iscale: &Col, min: &Col, lo: &Col, hi: &Col, flat: &[u32; LANES]) -> bool {
    const LIMIT: f32 = 4_194_303.0;
    let mut out = 0u32;
    for k in 0..LANES {
        let (a, b) = (iscale[k] * (lo[k] - min[k]), iscale[k] * (hi[k] - min[k]));
        out |= !flat[k] & !mask((a.abs() < LIMIT) & (b.abs() < LIMIT));
    }
    out == 0
}

/// One step's levels (into `laux`) and their sums `(sum_l, sum_l2, sum_xl)`.
#[inline(always)]
fn qkx_sums<const W: bool, const FLOAT: bool>(
    nmax: i32,
    (iscale, min): (&Col, &Col),
    x: &[Col],
    w: &[Col],
    laux: &mut [Col],
) -> (Col, Col, Col) {
    let n = x.len();
    let (w, laux) = (&w[..n], &mut laux[..n]);
    let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for i in 0..n {
        for k in 0..LANES {
            let lf = qkx_level::<FLOAT>(nmax, iscale[k], x[i][k], min[k]);
            laux[i][k] = lf;
            let wl = weight::<W>(w[i][k]) * lf;
            sum_l[k] += wl;
            sum_l2[k] += wl * lf;
            sum_xl[k] += wl * x[i][k];
        }
    }
    (sum_l, sum_l2, sum_xl)
}

/// The error of the levels of `iscale` for `scale` and `min` (the scalar
/// search's first `best_error`).
#[inline(always)]
fn qkx_first_error<const W: bool, const MAD: bool, const FLOAT: bool>(
    nmax: i32,
    (iscale, scale, min): (&Col, &Col, &Col),
    x: &[Col],
    w: &[Col],
) -> Col {
    let n = x.len();
    let w = &w[..n];
    let mut err = [0f32; LANES];
    for i in 0..n {
        for k in 0..LANES {
            let diff = scale[k] * qkx_level::<FLOAT>(nmax, iscale[k], x[i][k], min[k]) + min[k] - x[i][k];
            err[k] += weight::<W>(w[i][k]) * qkx_err(MAD, diff);
        }
    }
    err
}

/// [`crate::ggml::search::make_qkx_quants`] with `qkx2` on [`LANES`] groups
/// of `x.len()` values with weights `w` (ignored, all 1.0, unless `W`):
/// `(scale, -min)` per lane, bit for bit the scalar results. `laux` is
/// scratch of `x.len()` rows. The levels are not made (the caller makes its own
/// codes from the scale and min).
#[inline(always)]
pub(crate) fn qkx_lanes<const W: bool>(p: QkxSearch, x: &[Col], w: &[Col], laux: &mut [Col]) -> (Col, Col) {
    if p.use_mad {
        qkx_lanes_with::<W, true>(p, x, w, laux)
    } else {
        qkx_lanes_with::<W, false>(p, x, w, laux)
    }
}

/// [`qkx_lanes`] with `p.use_mad == MAD`.
#[inline(always)]
fn qkx_lanes_with<const W: bool, const MAD: bool>(p: QkxSearch, x: &[Col], w: &[Col], laux: &mut [Col]) -> (Col, Col) {
    let n = x.len();
    let w = if W { &w[..n] } else { x };
    let laux = &mut laux[..n];
    let nmax = p.nmax;
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = ([0f32; LANES], [0f32; LANES]);
    for k in 0..LANES {
        sum_w[k] = weight::<W>(w[0][k]);
        sum_x[k] = sum_w[k] * x[0][k];
    }
    for i in 1..n {
        for k in 0..LANES {
            let v = x[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            let wi = weight::<W>(w[i][k]);
            sum_w[k] += wi;
            sum_x[k] += wi * v;
        }
    }
    let lo = min;
    let (mut flat, mut iscale, mut scale) = ([0u32; LANES], [0f32; LANES], [0f32; LANES]);
    for k in 0..LANES {
        min[k] = if min[k] > 0.0 { 0.0 } else { min[k] };
        flat[k] = mask(max[k] == min[k]);
        iscale[k] = nmax as f32 / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let flat_min = min;
    let mut best_error = if levels_fit_f32(&iscale, &min, &lo, &max, &flat) {
        qkx_first_error::<W, MAD, true>(nmax, (&iscale, &scale, &min), x, w)
    } else {
        qkx_first_error::<W, MAD, false>(nmax, (&iscale, &scale, &min), x, w)
    };
    let steps = if p.nstep < 1 { 0 } else { p.nstep + 1 };
    for is in 0..steps {
        let num = p.rmin + p.rdelta * is as f32 + nmax as f32;
        for k in 0..LANES {
            iscale[k] = num / (max[k] - min[k]);
        }
        let (sum_l, sum_l2, sum_xl) = if levels_fit_f32(&iscale, &min, &lo, &max, &flat) {
            qkx_sums::<W, true>(nmax, (&iscale, &min), x, w, laux)
        } else {
            qkx_sums::<W, false>(nmax, (&iscale, &min), x, w, laux)
        };
        let (mut this_scale, mut this_min, mut valid) = ([0f32; LANES], [0f32; LANES], [0u32; LANES]);
        for k in 0..LANES {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            let s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            let clip = mask(m > 0.0);
            this_scale[k] = blend(clip, sum_xl[k] / sum_l2[k], s);
            this_min[k] = blend(clip, 0.0, m);
            valid[k] = mask(d > 0.0);
        }
        if valid == [0; LANES] {
            continue;
        }
        let mut cur_error = [0f32; LANES];
        for i in 0..n {
            for k in 0..LANES {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - x[i][k];
                cur_error[k] += weight::<W>(w[i][k]) * qkx_err(MAD, diff);
            }
        }
        for k in 0..LANES {
            let better = valid[k] & mask(cur_error[k] < best_error[k]);
            best_error[k] = blend(better, cur_error[k], best_error[k]);
            scale[k] = blend(better, this_scale[k], scale[k]);
            min[k] = blend(better, this_min[k], min[k]);
        }
    }
    let mut neg_min = [0f32; LANES];
    for k in 0..LANES {
        scale[k] = blend(flat[k], 0.0, scale[k]);
        neg_min[k] = blend(flat[k], -flat_min[k], -min[k]);
    }
    (scale, neg_min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{fast, reference};
    use crate::layout::Scheme;

    type Out = (Vec<u8>, Vec<f32>, Vec<f32>);

    fn heavy_tailed(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * u * u * 8.0 + u
            })
            .collect()
    }

    fn empty(l: &Layout) -> Out {
        (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups])
    }

    /// The scalar reference's result (the outputs as far as written).
    fn reference_run(x: &[f32], l: &Layout, importance: Option<&[f32]>) -> (Result<()>, Out) {
        let mut o = empty(l);
        let r = reference::search_quantize(x, l, importance, &mut o.0, &mut o.1, &mut o.2);
        (r, o)
    }

    /// The groups `from..` of `input` quantized by the batch's kernel for
    /// `l.scheme` (a piece that starts at group `from`) with `isa`.
    fn kernel_run(
        isa: Isa,
        input: Values<'_>,
        l: &Layout,
        from: usize,
        importance: Option<&[f32]>,
    ) -> (Result<()>, Out) {
        let piece = input.split_at(from * l.group_size).1;
        let pl = Layout {
            len: piece.len(),
            codes_len: piece.len() * l.bits as usize / 8,
            n_groups: l.n_groups - from,
            ..*l
        };
        let mut o = empty(&pl);
        let r = match l.scheme.method {
            Method::MinMax => fast::encode(isa, piece, &pl, from, &mut o.0, &mut o.1, &mut o.2),
            Method::Search => encode(isa, piece, &pl, from, importance, &mut o.0, &mut o.1, &mut o.2),
        };
        (r, o)
    }

    /// Every instruction set's kernel against the reference, whole and from
    /// group `from` on: the same error, or the same bytes.
    fn check(x: &[f32], l: &Layout, importance: Option<&[f32]>, from: usize, what: &str) -> (Result<()>, Out) {
        let (want_r, want) = reference_run(x, l, importance);
        for isa in Isa::available() {
            for start in [0, from] {
                let (got_r, got) = kernel_run(isa, Values::F32(x), l, start, importance);
                assert_eq!(got_r, want_r, "{what} {isa:?} from {start}");
                if want_r.is_ok() {
                    let (cb, c) = (start * l.group_code_bytes(), &want);
                    assert_eq!(got.0, c.0[cb..], "codes {what} {isa:?} from {start}");
                    assert_eq!(bits(&got.1), bits(&c.1[start..]), "scales {what} {isa:?} from {start}");
                    assert_eq!(bits(&got.2), bits(&c.2[start..]), "mins {what} {isa:?} from {start}");
                }
            }
        }
        (want_r, want)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// `check` of a tensor that must quantize: its result.
    fn run(x: &[f32], l: &Layout, importance: Option<&[f32]>) -> Out {
        let (r, o) = check(x, l, importance, 0, "run");
        r.unwrap();
        o
    }

    /// Groups of `g` values, one adversarial kind per group, chosen by the
    /// group's index and `seed`: random, constant, zeros, -0.0, one outlier,
    /// ties, subnormals, tiny, huge (`big` at most), one sign, alternating,
    /// a ramp, one non-zero value, values in a narrow band.
    fn hard_groups(n_groups: usize, g: usize, seed: u64, big: f32) -> Vec<f32> {
        let r = heavy_tailed(n_groups * g, seed);
        let mut x = Vec::with_capacity(n_groups * g);
        for k in 0..n_groups {
            for i in 0..g {
                let u = r[k * g + i];
                x.push(match (k as u64 * 7 + seed) % 16 {
                    0 | 1 => u,
                    2 => 0.7,
                    3 => 0.0,
                    4 => -0.0,
                    5 => {
                        if i == g / 2 {
                            100.0
                        } else {
                            u * 1e-3
                        }
                    }
                    6 => (i % 4) as f32 * 0.25 - 0.5,
                    7 => u * 1e-39,
                    8 => u * 1e-20,
                    9 => u * big,
                    10 => -u.abs() - 0.1,
                    11 => u.abs() + 0.1,
                    12 => {
                        if i % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                    13 => (i as f32 - 7.5) * 0.125,
                    14 => {
                        if i == 0 {
                            -3.0
                        } else {
                            0.0
                        }
                    }
                    _ => 1000.0 + u * 1e-3,
                });
            }
        }
        x
    }

    /// Per-column weights with zeros, ties and a wide spread.
    fn hard_weights(n: usize, seed: u64) -> Vec<f32> {
        heavy_tailed(n, seed + 99)
            .iter()
            .enumerate()
            .map(|(i, u)| match i % 7 {
                0 => 0.0,
                1 => 1.0,
                2 => 1e-30,
                3 => 1e20,
                _ => u.abs() * 10.0,
            })
            .collect()
    }

    #[test]
    fn lanes_give_the_reference_bytes_on_hard_groups() {
        let mut cases = 0;
        for bits in [2u32, 3, 4, 8] {
            let mut sizes = vec![8, 16, 32, 64, 128];
            sizes.extend(match bits {
                8 => &[1usize, 3][..],
                4 => &[2, 6],
                2 => &[4, 12],
                _ => &[24],
            });
            for g in sizes {
                // 5 groups a row, 7 rows: two full blocks of lanes and a tail.
                let (row, rows) = (5 * g, 7);
                for dtype in [ScaleDtype::F32, ScaleDtype::F16] {
                    let l = Layout::new(row * rows, row, bits, g)
                        .unwrap()
                        .with_scheme(Scheme { method: Method::Search, scale_dtype: dtype });
                    let big = if dtype == ScaleDtype::F32 { 1e30 } else { 3e4 };
                    for seed in 0..3 {
                        let x = hard_groups(l.n_groups, g, seed, big);
                        let w = hard_weights(row, seed);
                        for imp in [None, Some(&w[..])] {
                            let what = format!("bits {bits} g {g} {dtype:?} seed {seed} weights {}", imp.is_some());
                            check(&x, &l, imp, 3, &what).0.unwrap();
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 300);
    }

    #[test]
    fn lanes_report_the_first_error_in_group_order() {
        let (g, groups) = (32, 40);
        let base = hard_groups(groups, g, 5, 1e3);
        let bad_values = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for dtype in [ScaleDtype::F32, ScaleDtype::F16] {
            let l = Layout::new(groups * g, 4 * g, 4, g)
                .unwrap()
                .with_scheme(Scheme { method: Method::Search, scale_dtype: dtype });
            for (at, v) in [(20 * g + 5, bad_values[0]), (33 * g, bad_values[1]), (37 * g + 31, bad_values[2])] {
                let mut x = base.clone();
                x[at] = v;
                // A later range overflow (in the same group for the last
                // one) does not hide the bad value.
                x[37 * g] = -3e38;
                x[37 * g + 1] = 3e38;
                let (r, _) = check(&x, &l, None, 17, "bad value");
                let e = r.unwrap_err();
                assert!(e.message.contains(&format!("flat index {at}")), "{}", e.message);
            }
            let mut x = base.clone();
            x[36 * g] = -3e38;
            x[36 * g + 1] = 3e38;
            let e = check(&x, &l, None, 33, "range").0.unwrap_err();
            assert!(e.message.contains("group 36"), "{}", e.message);
            // Candidate 1 overflows float16: an error only with float16.
            let mut x = base.clone();
            x[21 * g + 2] = -7e4;
            let r = check(&x, &l, None, 16, "f16").0;
            assert_eq!(r.is_err(), dtype == ScaleDtype::F16);
            if let Err(e) = r {
                assert!(e.message.contains("group 21") && e.message.contains("float16"), "{}", e.message);
            }
        }
    }

    /// Min-max with float16 scales runs in the fast kernels: the same bytes
    /// as the reference's candidate 1, on every instruction set and dtype.
    #[test]
    fn fast_float16_min_max_is_candidate_one() {
        for bits in [2, 3, 4, 8] {
            let mut x = heavy_tailed(64 * 256, 11 + bits as u64);
            x[5] = -70000.0; // group 0's min overflows float16: an error in both
            let scheme = Scheme { method: Method::MinMax, scale_dtype: ScaleDtype::F16 };
            for (x, overflows) in [(&x[..], true), (&x[256..], false)] {
                let l = Layout::new(x.len(), 256, bits, 64).unwrap().with_scheme(scheme);
                assert_eq!(check(x, &l, None, if overflows { 0 } else { 7 }, "f16 min-max").0.is_err(), overflows);
            }
            // f16 input: the kernel widens exactly.
            let halves: Vec<half::f16> = x[256..].iter().map(|&v| half::f16::from_f32(v)).collect();
            let wide: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
            let l = Layout::new(wide.len(), 256, bits, 64).unwrap().with_scheme(scheme);
            let (_, want) = reference_run(&wide, &l, None);
            for isa in Isa::available() {
                let (r, got) = kernel_run(isa, Values::F16(&halves), &l, 0, None);
                r.unwrap();
                assert_eq!(got, want, "bits {bits} {isa:?}");
            }
        }
    }

    #[test]
    fn f16_and_bf16_inputs_are_searched_as_their_f32_values() {
        let x = heavy_tailed(48 * 64, 4);
        let halves: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let brains: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let w = hard_weights(128, 4);
        for bits in [2, 3, 4, 8] {
            let l = Layout::new(x.len(), 128, bits, 64)
                .unwrap()
                .with_scheme(Scheme { method: Method::Search, scale_dtype: ScaleDtype::F16 });
            for imp in [None, Some(&w[..])] {
                let wide: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
                let (_, want_h) = reference_run(&wide, &l, imp);
                let wide: Vec<f32> = brains.iter().map(|h| h.to_f32()).collect();
                let (_, want_b) = reference_run(&wide, &l, imp);
                for isa in Isa::available() {
                    assert_eq!(kernel_run(isa, Values::F16(&halves), &l, 0, imp).1, want_h, "f16 {bits} {isa:?}");
                    assert_eq!(kernel_run(isa, Values::BF16(&brains), &l, 0, imp).1, want_b, "bf16 {bits} {isa:?}");
                }
            }
        }
    }

    #[test]
    fn qkx_lanes_match_the_scalar_search() {
        use crate::ggml::search::make_qkx_quants;
        for (n, p) in [
            (32, qkx_search(15)),
            (17, qkx_search(3)),
            (32, QkxSearch { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }),
            (64, QkxSearch::with_imatrix(7)),
            (16, QkxSearch { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true }),
            (8, QkxSearch { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 0, use_mad: false }),
        ] {
            for seed in 0..8 {
                let x = hard_groups(LANES, n, seed, 1e20);
                let w = hard_weights(LANES * n, seed);
                let t = |v: &[f32]| -> Vec<Col> { (0..n).map(|i| std::array::from_fn(|k| v[k * n + i])).collect() };
                let mut scratch = vec![[0f32; LANES]; 2 * n];
                let got = [
                    qkx_lanes::<true>(p, &t(&x), &t(&w), &mut scratch),
                    qkx_lanes::<false>(p, &t(&x), &[], &mut scratch),
                ];
                for k in 0..LANES {
                    let g = k * n..(k + 1) * n;
                    let (mut l, mut aux) = (vec![0u8; n], vec![0u8; n]);
                    for (weighted, (s, m)) in got.iter().enumerate() {
                        let ones = vec![1f32; n];
                        let wk = if weighted == 0 { &w[g.clone()] } else { &ones[..] };
                        let (es, em) = make_qkx_quants(p, &x[g.clone()], wk, &mut l, &mut aux, true);
                        assert_eq!(bits(&[s[k], m[k]]), bits(&[es, em]), "n {n} seed {seed} lane {k} {weighted}");
                    }
                }
            }
        }
    }

    #[test]
    fn f32_levels_are_the_integer_levels_where_they_are_used() {
        let r = heavy_tailed(4096, 9);
        let limit = 4_194_303.0f32;
        let mut ys: Vec<f32> = r.iter().map(|u| u * 40.0).collect();
        for y in [limit, 4_194_304.0, 0.5, 1.5, 2.5, -0.5, -0.0, 14.5, 15.5, 255.5, 256.5] {
            ys.extend([y, -y, f32::from_bits(y.to_bits() - 1), f32::from_bits(y.to_bits() + 1)]);
        }
        for nmax in [3, 7, 15, 255] {
            for &y in &ys {
                for (iscale, min) in [(1.0, 0.0), (0.37, -2.0), (3.0e5, 1.0)] {
                    let x = y / iscale + min;
                    let v = iscale * (x - min);
                    let fits = levels_fit_f32(&[iscale; LANES], &[min; LANES], &[x; LANES], &[x; LANES], &[0; LANES]);
                    assert_eq!(fits, v.abs() < limit, "{v}");
                    if fits {
                        let (a, b) =
                            (qkx_level::<true>(nmax, iscale, x, min), qkx_level::<false>(nmax, iscale, x, min));
                        assert_eq!(a.to_bits(), b.to_bits(), "nmax {nmax} y {v}");
                    }
                }
            }
        }
        // A flat lane does not count; any other lane out of range does.
        let (mut lo, mut flat) = ([0f32; LANES], [0u32; LANES]);
        lo[3] = -1e30;
        assert!(!levels_fit_f32(&[1.0; LANES], &[0.0; LANES], &lo, &[1.0; LANES], &flat));
        flat[3] = u32::MAX;
        assert!(levels_fit_f32(&[1.0; LANES], &[0.0; LANES], &lo, &[1.0; LANES], &flat));
    }

    fn sq_err(x: &[f32], layout: &Layout, (c, s, m): &Out) -> f64 {
        let mut y = vec![0f32; x.len()];
        reference::dequantize(c, s, m, layout, &mut y).unwrap();
        x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
    }

    #[test]
    fn search_is_never_worse_than_min_max_per_group_and_better_overall() {
        for bits in [2, 3, 4, 8] {
            let x = heavy_tailed(64 * 256, 7 + bits as u64);
            let base = Layout::new(x.len(), 256, bits, 64).unwrap();
            for dtype in [ScaleDtype::F32, ScaleDtype::F16] {
                let mm = base.with_scheme(Scheme { method: Method::MinMax, scale_dtype: dtype });
                let se = base.with_scheme(Scheme { method: Method::Search, scale_dtype: dtype });
                let (a, b) = (run(&x, &mm, None), run(&x, &se, None));
                for gi in 0..base.n_groups {
                    let xs = &x[gi * 64..(gi + 1) * 64];
                    let one = Layout::new(64, 64, bits, 64).unwrap();
                    let cb = one.codes_len;
                    let pick = |r: &Out| (r.0[gi * cb..(gi + 1) * cb].to_vec(), vec![r.1[gi]], vec![r.2[gi]]);
                    assert!(sq_err(xs, &one, &pick(&b)) <= sq_err(xs, &one, &pick(&a)) * (1.0 + 1e-5));
                }
                if bits < 8 {
                    assert!(sq_err(&x, &base, &b) < 0.97 * sq_err(&x, &base, &a), "bits {bits} {dtype:?}");
                }
                if dtype == ScaleDtype::F16 {
                    for v in b.1.iter().chain(&b.2) {
                        assert_eq!(half::f16::from_f32(*v).to_f32(), *v);
                    }
                }
            }
        }
    }

    #[test]
    fn importance_weights_steer_the_search() {
        let x = heavy_tailed(4 * 128, 3);
        let l = Layout::new(x.len(), 128, 2, 128)
            .unwrap()
            .with_scheme(Scheme { method: Method::Search, ..Scheme::default() });
        let mut w = vec![0.01f32; 128];
        w[..16].fill(100.0);
        let (plain, weighted) = (run(&x, &l, None), run(&x, &l, Some(&w)));
        let err_first = |r: &Out| {
            let mut y = vec![0f32; x.len()];
            reference::dequantize(&r.0, &r.1, &r.2, &l, &mut y).unwrap();
            (0..4).flat_map(|row| (0..16).map(move |c| row * 128 + c)).map(|i| (x[i] - y[i]).powi(2)).sum::<f32>()
        };
        assert!(err_first(&weighted) <= err_first(&plain));
        // All-zero weights: every candidate has error 0, min-max is kept.
        let zero = vec![0f32; 128];
        let mm = Layout::new(x.len(), 128, 2, 128).unwrap();
        assert_eq!(run(&x, &l, Some(&zero)), run(&x, &mm, None));
    }

    #[test]
    fn f16_overflow_and_bad_values_are_errors() {
        for method in [Method::MinMax, Method::Search] {
            let l = Layout::new(8, 8, 4, 8).unwrap().with_scheme(Scheme { method, scale_dtype: ScaleDtype::F16 });
            let x = [-1.0e6f32, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
            let e = check(&x, &l, None, 0, "f16").0.unwrap_err();
            assert_eq!(e.status, PqStatus::NonFinite);
            assert!(e.message.contains("float16"), "{}", e.message);
            let x = [0.0f32, 1.0, f32::NAN, 2.0, 3.0, 4.0, 5.0, 6.0];
            let e = check(&x, &l, None, 0, "nan").0.unwrap_err();
            assert!(e.message.contains("flat index 2"), "{}", e.message);
        }
    }

    #[test]
    fn constant_groups_decode_exactly() {
        let x = vec![0.375f32; 64];
        for method in [Method::MinMax, Method::Search] {
            for scale_dtype in [ScaleDtype::F32, ScaleDtype::F16] {
                let l = Layout::new(64, 64, 4, 32).unwrap().with_scheme(Scheme { method, scale_dtype });
                let r = run(&x, &l, None);
                assert_eq!(sq_err(&x, &l, &r), 0.0);
            }
        }
    }
}
