//! ggml's scale searches ([`super::search`]) run on 16 independent groups at
//! once: one lane per sub-block (or block), the groups transposed so that
//! `t[i][k]` is value `i` of group `k`. Every lane does exactly the scalar
//! function's operations in the scalar function's order (the sums run over
//! `i` inside a lane, never across lanes), and a data-dependent branch of
//! the C becomes a per-lane select, so each lane's result is bit for bit the
//! scalar one; LLVM turns the `k` loops into vector instructions. The
//! `tests` module compares every function here with its scalar original.
//!
//! Everything is `#[inline(always)]`: the callers are compiled once per
//! instruction set by `isa_dispatch!`, and the loops must be inlined there.
#![allow(clippy::needless_range_loop)]

use super::search::{c_max, c_min, nearest_int, QkxSearch, GROUP_MAX_EPS};

/// Groups searched at once (one AVX-512 vector of f32).
pub(crate) const LANES: usize = 16;

/// One f32 per lane.
pub(crate) type Col = [f32; LANES];

// Small helpers as functions, not closures: a closure is not always
// inlined, and out of line it loses the dispatched target features.

/// `|diff|` (`use_mad`) or `diff * diff`.
#[inline(always)]
pub(crate) fn err(use_mad: bool, diff: f32) -> f32 {
    if use_mad {
        diff.abs()
    } else {
        diff * diff
    }
}

/// Per lane, all bits set where `c` holds, else 0.
#[inline(always)]
pub(crate) fn mask(c: bool) -> u32 {
    (c as u32).wrapping_neg()
}

/// `if m != 0 { a } else { b }` for `m` all ones or zero, as bit
/// operations: LLVM turned some such `if`s over lanes into a branch per lane.
#[inline(always)]
pub(crate) fn blend(m: u32, a: f32, b: f32) -> f32 {
    f32::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
}

/// `MAX(0, MIN(nmax, nearest_int(iscale * (x - min))))`.
#[inline(always)]
fn qkx_level(nmax: i32, iscale: f32, x: f32, min: f32) -> i32 {
    c_max(0, c_min(nmax, nearest_int(iscale * (x - min))))
}

/// `MAX(-nmax, MIN(nmax - 1, v))`.
#[inline(always)]
fn clamp_sym(nmax: i32, v: i32) -> i32 {
    c_max(-nmax, c_min(nmax - 1, v))
}

/// `MAX(-nmax, MIN(nmax - 1, nearest_int(v)))` as a float, for `|v| < 2^22`,
/// in the float domain: `nearest_int` adds 1.5 * 2^23 and reads the low
/// bits, and in that range the sum is an integer with an exact distance to
/// 1.5 * 2^23, so clamping the sum and subtracting 1.5 * 2^23 gives the same
/// value in 4 vector operations instead of 7. `make_qx_quants` and the
/// first pass of `make_q3_quants` stay in range: `v = iscale * x` with
/// `|iscale| <= (nmax + 1) / |max|` and `|x| <= |max|` (a lane below
/// `GROUP_MAX_EPS` is discarded whatever it computes).
#[inline(always)]
fn clamp_sym_f(nmax: i32, v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    c_max(MAGIC - nmax as f32, c_min(MAGIC + (nmax - 1) as f32, v + MAGIC)) - MAGIC
}

/// IQ4's `sumqx`, `sumq2` at the inverse scales `id`, in ggml's order.
#[inline(always)]
fn iq4_sums(x: &[Col; 32], w: &[Col; 32], id: &Col) -> (Col, Col) {
    let (mut sumqx, mut sumq2) = ([0f32; LANES], [0f32; LANES]);
    for i in 0..32 {
        for k in 0..LANES {
            let q = super::iq4::nearest_iq4(id[k] * x[i][k]).1;
            let wq = w[i][k] * q;
            sumqx[k] += wq * x[i][k];
            sumq2[k] += wq * q;
        }
    }
    (sumqx, sumq2)
}

/// The groups of `N` values in `x` (at most `LANES` of them, back to back),
/// transposed: `t[i][k] = x[N * k + i]`. Lanes past the end of `x` are 0
/// (a group of zeros: every search returns early on it without trouble).
#[inline(always)]
pub(crate) fn transpose<const N: usize>(x: &[f32]) -> [Col; N] {
    if x.len() >= LANES * N {
        return transpose_full(&x[..LANES * N]);
    }
    let mut padded = [[0f32; N]; LANES];
    for (p, g) in padded.iter_mut().zip(x.chunks_exact(N)) {
        p.copy_from_slice(g);
    }
    transpose_full(padded.as_flattened())
}

/// [`transpose`] of exactly `LANES` groups, in 4 x 4 tiles. On x86-64 a
/// tile is four loads, eight SSE shuffles and four stores: plain loops
/// (any arrangement tried) were compiled to gathers and scatters, a third
/// of Q6_K's time.
#[inline(always)]
fn transpose_full<const N: usize>(x: &[f32]) -> [Col; N] {
    let mut t = [[0f32; LANES]; N];
    transpose_full_into(x, &mut t);
    t
}

/// [`transpose`] into `t`: a caller that transposes run after run keeps one
/// `t` rather than zeroing a new one each time.
#[inline(always)]
pub(crate) fn transpose_into<const N: usize>(x: &[f32], t: &mut [Col; N]) {
    if x.len() >= LANES * N {
        transpose_full_into(&x[..LANES * N], t);
    } else {
        *t = transpose(x);
    }
}

/// [`transpose_full`] into `t`.
#[inline(always)]
fn transpose_full_into<const N: usize>(x: &[f32], t: &mut [Col; N]) {
    for k0 in (0..LANES).step_by(4) {
        for i0 in (0..N).step_by(4) {
            let row = |a: usize| -> &[f32; 4] { x[N * (k0 + a) + i0..][..4].try_into().expect("4 values") };
            let tile = tile4([row(0), row(1), row(2), row(3)]);
            for (j, c) in tile.iter().enumerate() {
                t[i0 + j][k0..k0 + 4].copy_from_slice(c);
            }
        }
    }
}

/// The transpose of a 4 x 4 tile given by its rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tile4(r: [&[f32; 4]; 4]) -> [[f32; 4]; 4] {
    use std::arch::x86_64::{
        __m128, _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
    };
    let mut out = [[0f32; 4]; 4];
    // SAFETY: SSE is part of x86-64's baseline, so the intrinsics can run
    // on any x86-64 CPU; every pointer is to 4 f32 of a 4-array.
    unsafe {
        let [r0, r1, r2, r3]: [__m128; 4] = r.map(|v| _mm_loadu_ps(v.as_ptr()));
        let (t0, t1) = (_mm_unpacklo_ps(r0, r1), _mm_unpacklo_ps(r2, r3));
        let (t2, t3) = (_mm_unpackhi_ps(r0, r1), _mm_unpackhi_ps(r2, r3));
        let c = [_mm_movelh_ps(t0, t1), _mm_movehl_ps(t1, t0), _mm_movelh_ps(t2, t3), _mm_movehl_ps(t3, t2)];
        for (o, c) in out.iter_mut().zip(c) {
            _mm_storeu_ps(o.as_mut_ptr(), c);
        }
    }
    out
}

/// The transpose of a 4 x 4 tile given by its rows.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn tile4(r: [&[f32; 4]; 4]) -> [[f32; 4]; 4] {
    std::array::from_fn(|j| [r[0][j], r[1][j], r[2][j], r[3][j]])
}

/// Writes lane `k` of `t` to `out[N * k..N * k + N]` for the groups `out` holds.
#[inline(always)]
pub(crate) fn untranspose<T: Copy, const N: usize>(t: &[[T; LANES]; N], out: &mut [T]) {
    for (k, g) in out.chunks_exact_mut(N).take(LANES).enumerate() {
        for i in 0..N {
            g[i] = t[i][k];
        }
    }
}

/// `f` of every value (`array::map` is not always inlined, and out of line
/// it loses the dispatched target features).
#[inline(always)]
pub(crate) fn lane_map<const N: usize>(t: &[Col; N], f: impl Fn(f32) -> f32) -> [Col; N] {
    lane_zip(t, t, |v, _| f(v))
}

/// `f(a, b)` of every pair of values, as one flat loop: written as a double
/// loop over `[Col; N]` it was vectorized over the rows, with gathers.
#[inline(always)]
pub(crate) fn lane_zip<const N: usize>(a: &[Col; N], b: &[Col; N], f: impl Fn(f32, f32) -> f32) -> [Col; N] {
    lane_zip3(a, b, b, |a, b, _| f(a, b))
}

/// [`lane_zip`] of three inputs, to any output type.
#[inline(always)]
pub(crate) fn lane_zip3<T: Copy + Default, const N: usize>(
    a: &[Col; N],
    b: &[Col; N],
    c: &[Col; N],
    f: impl Fn(f32, f32, f32) -> T,
) -> [[T; LANES]; N] {
    let mut m = [[T::default(); LANES]; N];
    let abc = a.as_flattened().iter().zip(b.as_flattened()).zip(c.as_flattened());
    for (m, ((&a, &b), &c)) in m.as_flattened_mut().iter_mut().zip(abc) {
        *m = f(a, b, c);
    }
    m
}

/// ggml's imatrix weights `qw * sqrt(sigma2 + x*x)` (`qw` in value order,
/// `sigma2` per lane).
#[inline(always)]
pub(crate) fn imatrix_weights<const N: usize>(xt: &[Col; N], qw: &[f32], sigma2: &Col) -> [Col; N] {
    let root = lane_zip(&[*sigma2; N], xt, |s, v| (s + v * v).sqrt());
    lane_zip(&transpose::<N>(qw), &root, |q, r| q * r)
}

/// `s = 0; s += f(t[i])` over `i` in each lane (the C's running sums).
#[inline(always)]
pub(crate) fn lane_sums<const N: usize>(t: &[Col; N], f: impl Fn(f32) -> f32) -> Col {
    let mut s = [0f32; LANES];
    for row in t {
        for k in 0..LANES {
            s[k] += f(row[k]);
        }
    }
    s
}

/// `make_qkx2_quants` (`qkx2`) / `make_qkx3_quants` of [`super::search::make_qkx_quants`]
/// on `L` groups of `N` values (16, or 32:
/// two vectors per operation, two independent dependency chains per step) with weights `w`: fills `l` (transposed) and
/// returns `(scale, -min)` per lane.
#[inline(always)]
pub(crate) fn qkx_lanes<const N: usize, const L: usize>(
    p: QkxSearch,
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
    qkx2: bool,
    l: &mut [[u8; L]; N],
) -> ([f32; L], [f32; L]) {
    let nmax = p.nmax;
    let (mut min, mut max, mut sum_w) = (x[0], x[0], w[0]);
    let mut sum_x = [0f32; L];
    for k in 0..L {
        sum_x[k] = sum_w[k] * x[0][k];
    }
    for i in 1..N {
        for k in 0..L {
            let v = x[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * v;
        }
    }
    let mut flat = [false; L];
    let (mut iscale, mut scale) = ([0f32; L], [0f32; L]);
    for k in 0..L {
        min[k] = if min[k] > 0.0 { 0.0 } else { min[k] };
        flat[k] = if qkx2 { max[k] == min[k] } else { max[k] <= min[k] };
        iscale[k] = nmax as f32 / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let flat_min = min;
    // The levels are a function of the `iscale` and `min` they were made
    // with: rather than copying them on every improvement, remember those
    // two per lane and make the levels once at the end (the same operations,
    // so the same levels).
    let (mut l_iscale, mut l_min) = (iscale, min);
    let level = |iscale: f32, x: f32, min: f32| qkx_level(nmax, iscale, x, min);
    let mut best_error = [0f32; L];
    for i in 0..N {
        for k in 0..L {
            let diff = scale[k] * level(iscale[k], x[i][k], min[k]) as f32 + min[k] - x[i][k];
            best_error[k] += w[i][k] * err(p.use_mad, diff);
        }
    }
    let mut laux = [[0f32; L]; N];
    for is in 0..=p.nstep {
        let num = p.rmin + p.rdelta * is as f32 + nmax as f32;
        for k in 0..L {
            iscale[k] = num / (max[k] - min[k]);
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; L], [0f32; L], [0f32; L]);
        for i in 0..N {
            for k in 0..L {
                let lf = level(iscale[k], x[i][k], min[k]) as f32;
                laux[i][k] = lf;
                let wl = w[i][k] * lf;
                sum_l[k] += wl;
                sum_l2[k] += wl * lf;
                sum_xl[k] += wl * x[i][k];
            }
        }
        let (mut this_scale, mut this_min, mut valid) = ([0f32; L], [0f32; L], [0f32; L]);
        let mut any = false;
        for k in 0..L {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            let s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            (this_scale[k], this_min[k]) = if m > 0.0 { (sum_xl[k] / sum_l2[k], 0.0) } else { (s, m) };
            valid[k] = if d > 0.0 { 1.0 } else { 0.0 };
            any |= d > 0.0;
        }
        if !any {
            continue;
        }
        let mut cur_error = [0f32; L];
        for i in 0..N {
            for k in 0..L {
                let diff = this_scale[k] * laux[i][k] + this_min[k] - x[i][k];
                cur_error[k] += w[i][k] * err(p.use_mad, diff);
            }
        }
        for k in 0..L {
            let better = ((valid[k] != 0.0) & (cur_error[k] < best_error[k])) as u32;
            let m = better.wrapping_neg();
            best_error[k] = blend(m, cur_error[k], best_error[k]);
            scale[k] = blend(m, this_scale[k], scale[k]);
            l_iscale[k] = blend(m, iscale[k], l_iscale[k]);
            l_min[k] = blend(m, min[k], l_min[k]);
            min[k] = blend(m, this_min[k], min[k]);
        }
    }
    let mut neg_min = [0f32; L];
    for k in 0..L {
        scale[k] = if flat[k] { 0.0 } else { scale[k] };
        neg_min[k] = if flat[k] { -flat_min[k] } else { -min[k] };
        // A flat lane's levels are 0: `level(0, x, 0)` is 0 for finite `x`.
        l_iscale[k] = if flat[k] { 0.0 } else { l_iscale[k] };
        l_min[k] = if flat[k] { 0.0 } else { l_min[k] };
    }
    for i in 0..N {
        for k in 0..L {
            l[i][k] = level(l_iscale[k], x[i][k], l_min[k]) as u8;
        }
    }
    (scale, neg_min)
}

/// Per lane, all bits set (a NaN: only its bits are used) where the group's
/// `amax` is at least `GROUP_MAX_EPS`, 0 where the C returns early with
/// levels 0.
#[inline(always)]
fn keep_mask(amax: &Col) -> Col {
    amax.map(|a| f32::from_bits(if a < GROUP_MAX_EPS { 0 } else { u32::MAX }))
}

/// `(amax, max)` of [`super::search::signed_absmax`] per lane.
#[inline(always)]
fn signed_absmax_lanes<const N: usize>(x: &[Col; N]) -> (Col, Col) {
    let (mut amax, mut max) = ([0f32; LANES], [0f32; LANES]);
    for row in x {
        for k in 0..LANES {
            let ax = row[k].abs();
            let bigger = ax > amax[k];
            amax[k] = if bigger { ax } else { amax[k] };
            max[k] = if bigger { row[k] } else { max[k] };
        }
    }
    (amax, max)
}

/// [`super::search::make_qx_quants`] with `rmse_type` 1 and weights `w`
/// (the quant weights, or `x * x` where the C has none) on 16 groups: fills
/// `l` (levels offset by `nmax`, transposed) and returns the scale per lane.
#[inline(always)]
pub(crate) fn qx_lanes<const N: usize>(nmax: i32, x: &[Col; N], w: &[Col; N], l: &mut [[u8; LANES]; N]) -> Col {
    let (amax, max) = signed_absmax_lanes(x);
    let clamp = |v: i32| clamp_sym(nmax, v);
    // `w * x[i]` is the same product in every step.
    let wx = lane_zip(w, x, |w, x| w * x);
    let mut iscale = [0f32; LANES];
    let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
    for k in 0..LANES {
        iscale[k] = (-nmax) as f32 / max[k];
    }
    for i in 0..N {
        for k in 0..LANES {
            let lf = clamp_sym_f(nmax, iscale[k] * x[i][k]);
            sumlx[k] += wx[i][k] * lf;
            suml2[k] += w[i][k] * lf * lf;
        }
    }
    let (mut scale, mut best) = ([0f32; LANES], [0f32; LANES]);
    for k in 0..LANES {
        scale[k] = if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 };
        best[k] = scale[k] * sumlx[k];
    }
    // As in `qkx_lanes`: the levels are made once at the end, from the
    // `iscale` of the best step.
    let mut l_iscale = iscale;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = nmax as f32 + 0.1 * is as f32;
        for k in 0..LANES {
            iscale[k] = -num / max[k];
        }
        let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
        for i in 0..N {
            for k in 0..LANES {
                let lf = clamp_sym_f(nmax, iscale[k] * x[i][k]);
                sumlx[k] += wx[i][k] * lf;
                suml2[k] += w[i][k] * lf * lf;
            }
        }
        for k in 0..LANES {
            let m = (((suml2[k] > 0.0) & (sumlx[k] * sumlx[k] > best[k] * suml2[k])) as u32).wrapping_neg();
            let s = sumlx[k] / suml2[k];
            scale[k] = blend(m, s, scale[k]);
            best[k] = blend(m, s * sumlx[k], best[k]);
            l_iscale[k] = blend(m, iscale[k], l_iscale[k]);
        }
    }
    let keep = keep_mask(&amax);
    for k in 0..LANES {
        scale[k] = if keep[k].to_bits() != 0 { scale[k] } else { 0.0 };
    }
    *l = lane_zip3(&[l_iscale; N], x, &[keep; N], |s, x, keep| {
        ((clamp(nearest_int(s * x)) + nmax) as u32 & keep.to_bits()) as u8
    });
    scale
}

/// `make_q3_quants`' refinement state of a set of 16 groups: the values,
/// their weights `w = x * x` and `wx = w * x`, the levels as floats (small
/// integers, exact), each value's terms of the sums, `wx * l` and
/// `w * l * l` (a pass subtracts them, and a level it changes has its new
/// terms made already), and the sums `sumlx`, `suml2`.
#[derive(Clone, Copy)]
struct Q3Set<const N: usize> {
    x: [Col; N],
    w: [Col; N],
    wx: [Col; N],
    lf: [Col; N],
    tlx: [Col; N],
    tl2: [Col; N],
    sumlx: Col,
    suml2: Col,
}

impl<const N: usize> Q3Set<N> {
    const ZERO: Self = Q3Set {
        x: [[0.0; LANES]; N],
        w: [[0.0; LANES]; N],
        wx: [[0.0; LANES]; N],
        lf: [[0.0; LANES]; N],
        tlx: [[0.0; LANES]; N],
        tl2: [[0.0; LANES]; N],
        sumlx: [0.0; LANES],
        suml2: [0.0; LANES],
    };

    /// Makes the weights and terms from `x` and `lf`, as one flat loop
    /// (over rows and lanes, LLVM vectorized it across the rows, with
    /// gathers and scatters).
    #[inline(always)]
    fn weigh(&mut self) {
        let out = self.w.as_flattened_mut().iter_mut().zip(self.wx.as_flattened_mut());
        let terms = self.tlx.as_flattened_mut().iter_mut().zip(self.tl2.as_flattened_mut());
        let inputs = self.x.as_flattened().iter().zip(self.lf.as_flattened());
        for (((w, wx), (tlx, tl2)), (&x, &l)) in out.zip(terms).zip(inputs) {
            (*w, *wx, *tlx, *tl2) = q3_terms(x, l);
        }
    }

    /// The first levels of `make_q3_quants` for the values in `x` and
    /// their sums; returns `amax`.
    #[inline(always)]
    fn start(&mut self, nmax: i32) -> Col {
        let (amax, max) = signed_absmax_lanes(&self.x);
        let mut iscale = [0f32; LANES];
        for k in 0..LANES {
            iscale[k] = (-nmax) as f32 / max[k];
        }
        let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
        for i in 0..N {
            for k in 0..LANES {
                self.lf[i][k] = clamp_sym_f(nmax, iscale[k] * self.x[i][k]);
            }
            for k in 0..LANES {
                let t = q3_terms(self.x[i][k], self.lf[i][k]);
                (self.w[i][k], self.wx[i][k], self.tlx[i][k], self.tl2[i][k]) = t;
                sumlx[k] += t.2;
                suml2[k] += t.3;
            }
        }
        (self.sumlx, self.suml2) = (sumlx, suml2);
        amax
    }

    /// The scale of lane `k` (written to lane `lk` of `l` with its levels,
    /// offset by `nmax`): 0 where the group is below `GROUP_MAX_EPS` (the
    /// C's early return), as in [`Self::results`].
    #[inline(always)]
    fn lane_result(&self, nmax: i32, k: usize, amax: f32, l: &mut [[u8; LANES]; N], lk: usize) -> f32 {
        let keep = amax >= GROUP_MAX_EPS;
        for i in 0..N {
            l[i][lk] = if keep { (nearest_int(self.lf[i][k]) + nmax) as u8 } else { 0 };
        }
        let (slx, sl2) = (self.sumlx[k], self.suml2[k]);
        if keep && sl2 > 0.0 {
            slx / sl2
        } else {
            0.0
        }
    }

    /// The scales, and the levels (offset by `nmax`) in `l`.
    #[inline(always)]
    fn results(&self, nmax: i32, amax: &Col, l: &mut [[u8; LANES]; N]) -> Col {
        let keep = keep_mask(amax);
        let mut scale = [0f32; LANES];
        for k in 0..LANES {
            let (slx, sl2) = (self.sumlx[k], self.suml2[k]);
            scale[k] = if keep[k].to_bits() != 0 && sl2 > 0.0 { slx / sl2 } else { 0.0 };
        }
        // `nearest_int` of the small integers in `lf` is exact and, unlike
        // `as`, vectorizes.
        *l = lane_zip3(&self.lf, &self.lf, &[keep; N], |lf, _, keep| {
            ((nearest_int(lf) + nmax) as u32 & keep.to_bits()) as u8
        });
        scale
    }
}

/// A value's weight `w = x * x`, `wx = w * x` and terms `wx * l`,
/// `w * l * l` at level `l` (the same operations wherever they are made,
/// so the same bits).
#[inline(always)]
fn q3_terms(x: f32, l: f32) -> (f32, f32, f32, f32) {
    let w = x * x;
    let wx = w * x;
    (w, wx, wx * l, w * l * l)
}

/// One refinement pass of `make_q3_quants` on `V` sets: returns per set
/// the lanes that changed (all bits set). Each lane's pass is a chain of
/// dependent divisions; the `V` sets' chains are independent, and
/// interleaving them lets the CPU overlap their latencies.
#[inline(always)]
fn q3_pass<const N: usize, const V: usize>(nmax: i32, s: &mut [Q3Set<N>; V]) -> [[u32; LANES]; V] {
    let clamp = |v: i32| clamp_sym(nmax, v);
    let mut changed = [[0u32; LANES]; V];
    // The sums as locals: LLVM keeps them in registers.
    let (mut sumlx, mut suml2) = ([[0f32; LANES]; V], [[0f32; LANES]; V]);
    for v in 0..V {
        (sumlx[v], suml2[v]) = (s[v].sumlx, s[v].suml2);
    }
    for i in 0..N {
        for v in 0..V {
            let s = &mut s[v];
            for k in 0..LANES {
                let li = s.lf[i][k];
                let slx = sumlx[v][k] - s.tlx[i][k];
                let sl2 = suml2[v][k] - s.tl2[i][k];
                let new_l = clamp(nearest_int(s.x[i][k] * sl2 / slx)) as f32;
                let (tlx, tl2) = (s.wx[i][k] * new_l, s.w[i][k] * new_l * new_l);
                let (slx2, sl22) = (slx + tlx, sl2 + tl2);
                let take = (slx > 0.0)
                    & (new_l != li)
                    & (sl22 > 0.0)
                    & (slx2 * slx2 * suml2[v][k] > sumlx[v][k] * sumlx[v][k] * sl22);
                let m = (take as u32).wrapping_neg();
                s.lf[i][k] = blend(m, new_l, li);
                s.tlx[i][k] = blend(m, tlx, s.tlx[i][k]);
                s.tl2[i][k] = blend(m, tl2, s.tl2[i][k]);
                sumlx[v][k] = blend(m, slx2, sumlx[v][k]);
                suml2[v][k] = blend(m, sl22, suml2[v][k]);
                changed[v][k] |= m;
            }
        }
    }
    for v in 0..V {
        (s[v].sumlx, s[v].suml2) = (sumlx[v], suml2[v]);
    }
    changed
}

/// Where [`Q3Lanes::search`] writes a set of 16 groups' results: their
/// scales and levels (offset by `nmax`, transposed). The row function's
/// own result buffer implements it, so nothing is copied afterwards.
pub(crate) trait Q3Out<const N: usize> {
    fn parts(&mut self) -> (&mut Col, &mut [[u8; LANES]; N]);
}

impl<const N: usize> Q3Out<N> for (Col, [[u8; LANES]; N]) {
    fn parts(&mut self) -> (&mut Col, &mut [[u8; LANES]; N]) {
        (&mut self.0, &mut self.1)
    }
}

/// Sets of lanes searched at once in the first pass and in the pool.
const Q3_GROUP: usize = 4;

/// [`super::search::make_q3_quants`] with `do_rmse` on sets of 16 groups,
/// with its working memory (made once per call of the row function). The
/// first refinement pass runs on four sets at once. Most groups stop after
/// it (on Student-t data about five in six): rather than running the later
/// passes on whole sets, mostly redoing stopped groups, the groups that
/// changed are gathered from many sets into a pool of full ones, with
/// where each came from.
pub(crate) struct Q3Lanes<const N: usize> {
    first: [Q3Set<N>; Q3_GROUP],
    pool: [Q3Set<N>; Q3_GROUP],
    /// Per pooled group: its set, lane and `amax`.
    from: [(usize, usize, f32); Q3_GROUP * LANES],
    n: usize,
}

impl<const N: usize> Q3Lanes<N> {
    pub(crate) fn new() -> Box<Self> {
        Box::new(Q3Lanes {
            first: [Q3Set::ZERO; Q3_GROUP],
            pool: [Q3Set::ZERO; Q3_GROUP],
            from: [(0, 0, 0.0); Q3_GROUP * LANES],
            n: 0,
        })
    }

    /// The groups of `N` values in `x` (at most `out.len()` sets of 16;
    /// missing ones search zeros), `out.len()` a multiple of 4.
    #[inline(always)]
    pub(crate) fn search(&mut self, nmax: i32, x: &[f32], out: &mut [impl Q3Out<N>]) {
        let sets = x.len().div_ceil(LANES * N).min(out.len());
        for g in (0..sets).step_by(Q3_GROUP) {
            let mut amax = [[0f32; LANES]; Q3_GROUP];
            // All transposes first: `start` reads whole rows that the
            // transpose wrote in quarters, which cannot be forwarded from
            // stores still in flight.
            for t in 0..Q3_GROUP {
                let at = (LANES * N * (g + t)).min(x.len());
                transpose_into(&x[at..], &mut self.first[t].x);
            }
            for t in 0..Q3_GROUP {
                amax[t] = self.first[t].start(nmax);
            }
            let changed = q3_pass::<N, Q3_GROUP>(nmax, &mut self.first);
            for t in 0..Q3_GROUP {
                let v = g + t;
                let (scale, l) = out[v].parts();
                *scale = self.first[t].results(nmax, &amax[t], l);
                for k in 0..LANES {
                    if changed[t][k] != 0 {
                        if self.n == self.from.len() {
                            self.flush(nmax, out);
                        }
                        self.push(t, v, k, amax[t][k]);
                    }
                }
            }
        }
        self.flush(nmax, out);
    }

    /// Adds lane `k` of first-pass set `t`, lane `k` of set `v` of the
    /// results, to the pool.
    #[inline(always)]
    fn push(&mut self, t: usize, v: usize, k: usize, amax: f32) {
        let (p, q) = (self.n / LANES, self.n % LANES);
        let (s, d) = (&self.first[t], &mut self.pool[p]);
        for i in 0..N {
            d.x[i][q] = s.x[i][k];
            d.lf[i][q] = s.lf[i][k];
        }
        d.sumlx[q] = s.sumlx[k];
        d.suml2[q] = s.suml2[k];
        self.from[self.n] = (v, k, amax);
        self.n += 1;
    }

    /// Runs the remaining passes (after the first; 5 in all) on the pool
    /// and writes its groups' results. The lanes past the last group
    /// search zeros (`slx` is 0: nothing changes).
    #[inline(always)]
    fn flush(&mut self, nmax: i32, out: &mut [impl Q3Out<N>]) {
        let sets = self.n.div_ceil(LANES);
        for j in self.n..sets * LANES {
            let (p, q) = (j / LANES, j % LANES);
            let d = &mut self.pool[p];
            for i in 0..N {
                (d.x[i][q], d.lf[i][q]) = (0.0, 0.0);
            }
            (d.sumlx[q], d.suml2[q]) = (0.0, 0.0);
        }
        for p in 0..sets {
            self.pool[p].weigh();
        }
        // A pass that changes nothing in a lane leaves that lane's state as
        // it was, so the next pass changes nothing either: running a lane
        // past the C's early exit is harmless, and the loop stops when no
        // lane changed. One function per number of sets.
        for _ in 1..5 {
            let any = |c: &[[u32; LANES]]| c.iter().flatten().any(|&m| m != 0);
            let st = &mut self.pool;
            let changed = match sets {
                1 => any(&q3_pass::<N, 1>(nmax, (&mut st[..1]).try_into().expect("1 set"))),
                2 => any(&q3_pass::<N, 2>(nmax, (&mut st[..2]).try_into().expect("2 sets"))),
                3 => any(&q3_pass::<N, 3>(nmax, (&mut st[..3]).try_into().expect("3 sets"))),
                4 => any(&q3_pass::<N, 4>(nmax, st)),
                _ => false,
            };
            if !changed {
                break;
            }
        }
        for (j, &(v, k, amax)) in self.from[..self.n].iter().enumerate() {
            let (scale, l) = out[v].parts();
            scale[k] = self.pool[j / LANES].lane_result(nmax, j % LANES, amax, l, k);
        }
        self.n = 0;
    }
}

/// The scale search of ggml's `quantize_row_iq4_nl_impl` (`ntry = 7`) on
/// 16 blocks of 32 with weights `w`: the block scale `d` per lane (0 for a
/// block below `GROUP_MAX_EPS`). The levels are made afterwards.
#[inline(always)]
pub(crate) fn iq4_lanes(x: &[Col; 32], w: &[Col; 32]) -> Col {
    use super::iq4::KVALUES_IQ4NL;
    let v0 = f32::from(KVALUES_IQ4NL[0]);
    let (amax, max) = signed_absmax_lanes(x);
    let mut id = [0f32; LANES];
    for k in 0..LANES {
        id[k] = 1.0 / (-max[k] / v0);
    }
    let (sumqx, sumq2) = iq4_sums(x, w, &id);
    let (mut d, mut best) = ([0f32; LANES], [0f32; LANES]);
    for k in 0..LANES {
        d[k] = if sumq2[k] > 0.0 { sumqx[k] / sumq2[k] } else { 0.0 };
        best[k] = d[k] * sumqx[k];
    }
    for itry in -7i32..=7 {
        let num = itry as f32 + v0;
        for k in 0..LANES {
            id[k] = num / max[k];
        }
        let (sumqx, sumq2) = iq4_sums(x, w, &id);
        for k in 0..LANES {
            let m = (((sumq2[k] > 0.0) & (sumqx[k] * sumqx[k] > best[k] * sumq2[k])) as u32).wrapping_neg();
            let dk = sumqx[k] / sumq2[k];
            d[k] = blend(m, dk, d[k]);
            best[k] = blend(m, dk * sumqx[k], best[k]);
        }
    }
    for k in 0..LANES {
        d[k] = if amax[k] < GROUP_MAX_EPS { 0.0 } else { d[k] };
    }
    d
}

/// A row quantizer of a given instruction set (`isa_dispatch!`).
#[cfg(test)]
pub(crate) type Row = fn(crate::kernel::Isa, &[f32], Option<&[f32]>, &mut [u8]) -> ();

/// The instruction sets this CPU can run, for tests that compare them all.
#[cfg(test)]
pub(crate) fn isas() -> &'static [crate::kernel::Isa] {
    use crate::kernel::Isa;
    match Isa::detect() {
        Isa::Avx512 => &[Isa::Portable, Isa::Avx2, Isa::Avx512],
        Isa::Avx2 => &[Isa::Portable, Isa::Avx2],
        Isa::Portable => &[Isa::Portable],
    }
}

/// 16 adversarial groups of `n` values: random, constant, zero, a
/// single outlier, ties, subnormals, huge and tiny, all negative or
/// positive, alternating signs.
#[cfg(test)]
pub(crate) fn hard_groups(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    let mut rnd = move || {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    };
    let mut x = Vec::with_capacity(16 * n);
    for g in 0..16 {
        for i in 0..n {
            let r = rnd();
            x.push(match (g + seed as usize) % 16 {
                0 | 1 => r,
                2 => 0.7,
                3 => 0.0,
                4 => {
                    if i == 5 {
                        100.0
                    } else {
                        r * 1e-3
                    }
                }
                5 => (i % 4) as f32 * 0.25 - 0.5,
                6 => r * 1e-39,
                7 => r * 1e30,
                8 => r * 1e-20,
                9 => -r.abs() - 0.1,
                10 => r.abs() + 0.1,
                11 => {
                    if i % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
                12 => (i as f32 - 7.5) * 0.125,
                13 => {
                    if i == 0 {
                        -3.0
                    } else {
                        0.0
                    }
                }
                14 => -0.0,
                _ => r * r * r,
            });
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::super::search::{make_q3_quants, make_qkx_quants, make_qx_quants};
    use super::*;

    fn weights(x: &[f32], seed: u32) -> Vec<f32> {
        let mut s = seed;
        x.iter()
            .map(|v| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                v.abs() * 0.5 + (s >> 28) as f32 * 0.0625
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    fn check_qkx<const N: usize>(p: QkxSearch, qkx2: bool) {
        for seed in 0..40 {
            let x = hard_groups(N, seed);
            let w = weights(&x, seed);
            let mut l = [[0u8; LANES]; N];
            let (s, m) = qkx_lanes(p, &transpose::<N>(&x), &transpose::<N>(&w), qkx2, &mut l);
            let mut got = vec![0u8; 16 * N];
            untranspose(&l, &mut got);
            for k in 0..16 {
                let g = N * k..N * k + N;
                let (mut lw, mut aux) = (vec![0u8; N], vec![0u8; N]);
                let (es, em) = make_qkx_quants(p, &x[g.clone()], &w[g.clone()], &mut lw, &mut aux, qkx2);
                assert_eq!(bits(&[s[k], m[k]]), bits(&[es, em]), "seed {seed} lane {k}");
                assert_eq!(got[g], lw[..], "seed {seed} lane {k}");
            }
        }
    }

    #[test]
    fn qkx_lanes_match_the_scalar_search() {
        check_qkx::<32>(QkxSearch { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }, true);
        check_qkx::<32>(QkxSearch::with_imatrix(31), false);
        check_qkx::<16>(QkxSearch { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true }, true);
        check_qkx::<16>(QkxSearch::with_imatrix(3), false);
    }

    #[test]
    fn q3_lanes_pool_more_groups_than_it_holds() {
        // 16 sets, 12 of uniform random groups (about 3 in 10 go on past
        // the first pass: more than the pool holds), 4 adversarial; then
        // fewer groups than the sets hold.
        for seed in 0..8u32 {
            let mut s = seed.wrapping_mul(2_654_435_761);
            let mut x: Vec<f32> = Vec::new();
            for v in 0..16 {
                if v % 4 == 3 {
                    x.extend(hard_groups(16, seed * 16 + v));
                } else {
                    x.extend((0..256).map(|_| {
                        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                    }));
                }
            }
            for n in [x.len(), 16 * (16 * 13 + 5)] {
                let mut out = [([0f32; LANES], [[0u8; LANES]; 16]); 16];
                Q3Lanes::new().search(4, &x[..n], &mut out);
                for (g, xs) in x[..n].chunks_exact(16).enumerate() {
                    let mut lw = [0i8; 16];
                    let es = make_q3_quants(4, xs, &mut lw, true);
                    let (v, k) = (g / 16, g % 16);
                    assert_eq!(out[v].0[k].to_bits(), es.to_bits(), "seed {seed} group {g}");
                    assert_eq!(out[v].1.map(|r| r[k]), lw.map(|v| v as u8), "seed {seed} group {g}");
                }
            }
        }
    }

    #[test]
    fn qx_and_q3_lanes_match_the_scalar_searches() {
        for seed in 0..40 {
            let x = hard_groups(16, seed);
            let w = weights(&x, seed);
            let xt = transpose::<16>(&x);
            let sq: Vec<f32> = x.iter().map(|v| v * v).collect();
            for (nmax, wt) in [(32, w.as_slice()), (4, w.as_slice()), (32, sq.as_slice())] {
                let mut l = [[0u8; LANES]; 16];
                let s = qx_lanes(nmax, &xt, &transpose::<16>(wt), &mut l);
                let mut got = vec![0u8; 256];
                untranspose(&l, &mut got);
                for k in 0..16 {
                    let g = 16 * k..16 * k + 16;
                    let mut lw = [0i8; 16];
                    let qw = (wt.as_ptr() != sq.as_ptr()).then(|| &wt[g.clone()]);
                    let es = make_qx_quants(nmax, &x[g.clone()], &mut lw, 1, qw);
                    assert_eq!(s[k].to_bits(), es.to_bits(), "qx seed {seed} lane {k}");
                    assert_eq!(got[g], lw.map(|v| v as u8), "qx seed {seed} lane {k}");
                }
            }
            let mut out = [([0f32; LANES], [[0u8; LANES]; 16]); 4];
            Q3Lanes::new().search(4, &x, &mut out);
            let s = out[0].0;
            let mut got = vec![0u8; 256];
            untranspose(&out[0].1, &mut got);
            for k in 0..16 {
                let g = 16 * k..16 * k + 16;
                let mut lw = [0i8; 16];
                let es = make_q3_quants(4, &x[g.clone()], &mut lw, true);
                assert_eq!(s[k].to_bits(), es.to_bits(), "q3 seed {seed} lane {k}");
                assert_eq!(got[g], lw.map(|v| v as u8), "q3 seed {seed} lane {k}");
            }
        }
    }
}
