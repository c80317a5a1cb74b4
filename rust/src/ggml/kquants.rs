//! The K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (super-blocks of 256 values):
//! ggml's `quantize_row_*_ref` (no importance matrix), `quantize_row_*_impl`
//! (with one; `quant_weights` holds one weight per column of the row) and
//! `dequantize_row_*`, one row at a time.
//!
//! Each quantizer is a search (the scales of the sub-blocks: nearly all the
//! time) and a finish (super-block scales, requantization, packing). The
//! search runs the 16 sub-blocks of a super-block (Q6_K; Q3_K four at a
//! time, Q2_K two) or the 8 of four super-blocks (Q4_K, Q5_K) as the lanes
//! of `lanes`; the
//! scalar searches of [`super::search`], one sub-block at a time, stay as
//! the tests' reference and give the same bytes.
#![allow(clippy::needless_range_loop)] // indexed like the C, as in `search`

use super::lanes::{self, lane_map, lane_sums, lane_zip, qkx_lanes, qx_lanes, transpose, Col, Q3Lanes, Q3Out, LANES};
use super::search::{
    c_max, c_min, get_f16, make_qp_quants, make_qx_quants, nearest_int, put_f16, QkxSearch, GROUP_MAX_EPS,
};
use crate::kernel::fast::isa_dispatch;
use crate::kernel::Isa;

const QK_K: usize = 256;

// Compiled for the CPU's best instruction set: the lane loops vectorize there.
isa_dispatch!(fn q2_k_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = q2_k_impl);
isa_dispatch!(fn q3_k_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = q3_k_impl);
isa_dispatch!(fn q4_k_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = q4_k_impl);
isa_dispatch!(fn q5_k_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = q5_k_impl);
isa_dispatch!(fn q6_k_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = q6_k_impl);

pub fn quantize_q2_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q2_k_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q3_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q3_k_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q4_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q4_k_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q5_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q5_k_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_q6_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    q6_k_isa(Isa::detect(), x, imatrix, out);
}

/// What the sub-block search of one super-block found: per sub-block the
/// scale, the min as `make_qkx*_quants` returns it (negated; Q2_K, Q4_K,
/// Q5_K), the sum of the weights (imatrix paths), and the 256 levels,
/// transposed as the lanes left them: `l[S * i + j]` is value `i` of
/// sub-block `j`. Every finish requantizes each sub-block whose stored
/// scale is nonzero and reads the search's levels only for the others
/// ([`Found::levels_of`]): putting all of them back in value order was
/// wasted (a twentieth of Q5_K's time).
#[derive(Clone, Copy, Debug)]
struct Found<const S: usize> {
    scales: [f32; S],
    mins: [f32; S],
    sw: [f32; S],
    l: [u8; QK_K],
}

impl<const S: usize> Found<S> {
    const ZERO: Self = Found { scales: [0.0; S], mins: [0.0; S], sw: [0.0; S], l: [0; QK_K] };

    /// Splits the lane results of a run of `RUN` super-blocks (`S` lanes
    /// each; `lt` holds their levels, `lt[i][k]` value `i` of lane `k`).
    #[inline(always)]
    fn split<const RUN: usize, const N: usize>(
        scales: &Col,
        mins: &Col,
        sw: &Col,
        lt: &[[u8; LANES]; N],
    ) -> [Self; RUN] {
        let mut f = [Self::ZERO; RUN];
        for (t, f) in f.iter_mut().enumerate() {
            f.scales.copy_from_slice(&scales[S * t..S * t + S]);
            f.mins.copy_from_slice(&mins[S * t..S * t + S]);
            f.sw.copy_from_slice(&sw[S * t..S * t + S]);
            for (i, row) in lt.iter().enumerate() {
                f.l[S * i..S * i + S].copy_from_slice(&row[S * t..S * t + S]);
            }
        }
        f
    }

    /// The search's levels of sub-block `j` into `out` (its `QK_K / S`
    /// values, in order).
    #[inline(always)]
    fn levels_of(&self, j: usize, out: &mut [u8]) {
        for (i, o) in out[..QK_K / S].iter_mut().enumerate() {
            *o = self.l[S * i + j];
        }
    }
}

/// Quantizes a row: `search` on runs of `RUN` super-blocks (fewer at the
/// row's end) with their quant weights, then `finish(x, found, imatrix, y)`
/// on each super-block of the run and its `bytes` output bytes. The
/// callers pass `#[inline(always)]` closures: a function item or a plain
/// closure would be compiled once, without the dispatched target features.
#[inline(always)]
fn rows<const S: usize, const RUN: usize>(
    x: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [u8],
    bytes: usize,
    mut search: impl FnMut(&[f32], Option<&[f32]>, &mut [Found<S>; RUN]),
    finish: impl Fn(&[f32; QK_K], &Found<S>, bool, &mut [u8]),
) {
    // One buffer for every run (its size made copying and zeroing it per
    // run a tenth of Q3_K's time); the search fills what the finish reads.
    let mut found = [Found::ZERO; RUN];
    for (r, (xr, yr)) in x.chunks(QK_K * RUN).zip(out.chunks_mut(bytes * RUN)).enumerate() {
        let at = QK_K * RUN * r;
        search(xr, imatrix.map(|w| &w[at..at + xr.len()]), &mut found);
        for ((xs, y), f) in xr.chunks_exact(QK_K).zip(yr.chunks_exact_mut(bytes)).zip(&found) {
            // As an array, the finish's indexing needs no bounds checks:
            // with them, LLVM once left Q3_K's requantization scalar.
            finish(xs.try_into().expect("a super-block"), f, imatrix.is_some(), y);
        }
    }
}

#[inline(always)]
fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// ggml's `sigma2 = factor * sum(x*x) / QK_K` of each super-block of the
/// run, in the lanes of its `S` sub-blocks.
#[inline(always)]
fn sigma2_lanes<const S: usize>(x: &[f32], factor: f32) -> Col {
    let mut s = [0f32; LANES];
    for (t, sb) in x.chunks_exact(QK_K).enumerate() {
        s[S * t..S * t + S].fill(factor * sum_squares(sb) / QK_K as f32);
    }
    s
}

/// ggml's imatrix weights `qw * sqrt(sigma2 + x*x)` in lanes, and their
/// sum per lane.
#[inline(always)]
fn imatrix_weights<const N: usize>(xt: &[Col; N], qw: &[f32], sigma2: &Col) -> ([Col; N], Col) {
    let w = lanes::imatrix_weights(xt, qw, sigma2);
    let sw = lane_sums(&w, |v| v);
    (w, sw)
}

/// Lanes `16 h..16 h + 16` of a 32-lane search (two sets of 16 searched
/// together) set to `t`.
#[inline(always)]
fn put_half<const N: usize>(wide: &mut [[f32; 2 * LANES]; N], h: usize, t: &[Col; N]) {
    for (w, t) in wide.iter_mut().zip(t) {
        w[LANES * h..LANES * h + LANES].copy_from_slice(t);
    }
}

/// Lanes `16 h..16 h + 16` of a 32-lane search's results.
#[inline(always)]
fn half<T: Copy + Default, const N: usize>(wide: &[[T; 2 * LANES]; N], h: usize) -> [[T; LANES]; N] {
    std::array::from_fn(|i| std::array::from_fn(|k| wide[i][LANES * h + k]))
}

/// Packs 256 two-bit values: byte `l` of each 32-byte quarter holds values
/// `l`, `l+32`, `l+64`, `l+96` of its 128-value half.
fn pack2(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------- Q2_K

/// Super-blocks Q2_K searches at once, as 32 lanes (see `Q45_RUN`).
const Q2_RUN: usize = 2;

/// Q2_K's search in lanes: the 16 sub-blocks of each of `Q2_RUN`
/// super-blocks (of one at a row's end; the other lanes search zeros).
#[inline(always)]
fn search_q2_k(x: &[f32], qw: Option<&[f32]>) -> [Found<16>; Q2_RUN] {
    let (p, qkx2) = match qw {
        Some(_) => (QkxSearch::with_imatrix(3), false),
        None => (Q2_K_REF, true),
    };
    let (mut xt, mut w) = ([[0f32; 2 * LANES]; 16], [[0f32; 2 * LANES]; 16]);
    let mut sw = [[0f32; LANES]; 2];
    for (h, xh) in x.chunks_exact(QK_K).enumerate() {
        let t = transpose::<16>(xh);
        let (wh, swh) = match qw {
            Some(qw) => imatrix_weights(&t, &qw[QK_K * h..], &sigma2_lanes::<16>(xh, 1.0)),
            None => (lane_map(&t, f32::abs), [0f32; LANES]),
        };
        put_half(&mut xt, h, &t);
        put_half(&mut w, h, &wh);
        sw[h] = swh;
    }
    let mut lt = [[0u8; 2 * LANES]; 16];
    let (scales, mins) = qkx_lanes(p, &xt, &w, qkx2, &mut lt);
    let mut found = [Found::ZERO; Q2_RUN];
    for (h, f) in found.iter_mut().enumerate() {
        let [sc, mn] = half(&[scales, mins], h);
        [*f] = Found::split(&sc, &mn, &sw[h], &half(&lt, h));
    }
    found
}

const Q2_K_REF: QkxSearch = QkxSearch { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };

/// The super-block scales, requantization and packing of Q2_K.
#[inline(always)]
fn finish_q2_k(x: &[f32; QK_K], f: &Found<16>, imatrix: bool, y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    if imatrix {
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let dm = make_qp_quants(15, &f.scales, &mut ls, &f.sw);
        let mm = make_qp_quants(15, &f.mins, &mut lm, &f.sw);
        put_f16(y, 80, dm);
        put_f16(y, 82, mm);
        for j in 0..QK_K / 16 {
            y[j] = ls[j] | (lm[j] << 4);
        }
    } else {
        let (max_scale, max_min) = largest(&f.scales, &f.mins);
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for j in 0..QK_K / 16 {
                y[j] = nearest_int(iscale * f.scales[j]) as u8;
            }
            put_f16(y, 80, max_scale / 15.0);
        } else {
            y[..16].fill(0);
            put_f16(y, 80, 0.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for j in 0..QK_K / 16 {
                y[j] |= (nearest_int(iscale * f.mins[j]) << 4) as u8;
            }
            put_f16(y, 82, max_min / 15.0);
        } else {
            put_f16(y, 82, 0.0);
        }
    }
    let (dall, dmin) = (get_f16(y, 80), get_f16(y, 82));
    for j in 0..QK_K / 16 {
        let sc = y[j];
        let d = dall * (sc & 0xF) as f32;
        if d == 0.0 {
            f.levels_of(j, &mut l[16 * j..]);
            continue;
        }
        let dm = dmin * (sc >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = c_max(0, c_min(3, nearest_int((x[16 * j + ii] + dm) / d))) as u8;
        }
    }
    pack2(&l, &mut y[16..80]);
}

/// The largest scale and the largest min (0 if none is positive), found
/// in order as the C does.
#[inline(always)]
fn largest(scales: &[f32], mins: &[f32]) -> (f32, f32) {
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (&s, &m) in scales.iter().zip(mins) {
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    (max_scale, max_min)
}

#[allow(clippy::redundant_closure)] // see `rows`
#[inline(always)]
fn q2_k_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    rows(
        x,
        imatrix,
        out,
        84,
        #[inline(always)]
        |x, qw, f| *f = search_q2_k(x, qw),
        #[inline(always)]
        |x, f, imatrix, y| finish_q2_k(x, f, imatrix, y),
    );
}

pub fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(84).zip(y.chunks_exact_mut(QK_K)) {
        let (d, min) = (get_f16(blk, 80), get_f16(blk, 82));
        let mut out = yb.iter_mut();
        let mut is = 0;
        for n in 0..2 {
            let q = &blk[16 + 32 * n..16 + 32 * n + 32];
            for shift in [0, 2, 4, 6] {
                for half in 0..2 {
                    let sc = blk[is];
                    is += 1;
                    let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                    for &ql in &q[16 * half..16 * half + 16] {
                        *out.next().unwrap() = dl * ((ql >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q3_K

/// Super-blocks Q3_K searches at once: `q3_lanes` runs the first
/// refinement pass on four of them at a time (four chains of dependent
/// divisions, which the CPU overlaps) and pools the sub-blocks that go on
/// to more passes (about one in six) from all of them.
const Q3_RUN: usize = 16;

/// Q3_K's search in lanes: the 16 sub-blocks of a super-block, `Q3_RUN`
/// super-blocks at once (fewer at a row's end), with the working memory of
/// `Q3Lanes` kept over the row function's call.
#[inline(always)]
fn search_q3_k(x: &[f32], qw: Option<&[f32]>, q3: &mut Option<Box<Q3Lanes<16>>>, found: &mut [Found<16>; Q3_RUN]) {
    match qw {
        Some(qw) => {
            for ((t, xs), f) in x.chunks_exact(QK_K).enumerate().zip(found.iter_mut()) {
                let xt = transpose::<16>(xs);
                let (w, s) = imatrix_weights(&xt, &qw[QK_K * t..], &sigma2_lanes::<16>(xs, 2.0));
                let (scales, l) = f.parts();
                *scales = qx_lanes(4, &xt, &w, l);
                f.sw = s;
            }
        }
        None => q3.get_or_insert_with(Q3Lanes::new).search(4, x, found),
    }
}

/// Q3_K's search writes its results in place: the scales, the levels
/// transposed (`l[16 * i + j]` value `i` of sub-block `j`).
impl Q3Out<16> for Found<16> {
    fn parts(&mut self) -> (&mut Col, &mut [[u8; LANES]; 16]) {
        let rows = self.l.as_chunks_mut::<LANES>().0.try_into().expect("16 rows");
        (&mut self.scales, rows)
    }
}

/// The super-block scale, the 16 six-bit scales, requantization, packing.
#[inline(always)]
fn finish_q3_k(x: &[f32; QK_K], f: &Found<16>, imatrix: bool, y: &mut [u8]) {
    let scales = &f.scales;
    let mut stored = [0i32; 16];
    if imatrix {
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(32, scales, &mut ls, 1, Some(&f.sw));
        stored = ls.map(|v| v as i32);
        put_q3_scales(&stored, &mut y[96..108]);
        put_f16(y, 108, d_block);
    } else {
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for &scale in scales {
            if scale.abs() > amax {
                amax = scale.abs();
                max_scale = scale;
            }
        }
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                let l8 = nearest_int(iscale * scales[j]) as i8 as i32;
                stored[j] = c_max(-32, c_min(31, l8)) + 32;
            }
            put_q3_scales(&stored, &mut y[96..108]);
            put_f16(y, 108, 1.0 / iscale);
        } else {
            y[96..108].fill(0);
            put_f16(y, 108, 0.0);
        }
    }
    requantize_q3_k(x, f, y);
}

#[allow(clippy::redundant_closure)] // see `rows`
#[inline(always)]
fn q3_k_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut q3 = None; // made on first use: the imatrix path does not need it
    rows(
        x,
        imatrix,
        out,
        110,
        #[inline(always)]
        |x, qw, f| search_q3_k(x, qw, &mut q3, f),
        #[inline(always)]
        |x, f, imatrix, y| finish_q3_k(x, f, imatrix, y),
    );
}

/// Stores the 16 six-bit scales (`l` in 0..64) in Q3_K's 12 bytes (built
/// in a local array: or-ing into `sb` byte by byte was a chain of
/// store-to-load round trips).
fn put_q3_scales(ls: &[i32; 16], sb: &mut [u8]) {
    let mut b = [0u8; 12];
    for j in 0..8 {
        b[j] = ((ls[j] & 0xF) | ((ls[j + 8] & 0xF) << 4)) as u8;
    }
    for (j, &l) in ls.iter().enumerate() {
        b[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
    }
    sb[..12].copy_from_slice(&b);
}

/// Q3_K's scale `j` (0..64, stored offset by 32).
fn q3_scale(sb: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { sb[j] & 0xF } else { sb[j - 8] >> 4 };
    (lo | (((sb[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32
}

/// Requantizes with the stored scales (a sub-block whose scale is 0 keeps
/// the search's levels), splits off the high bits, packs.
#[inline(always)]
fn requantize_q3_k(x: &[f32; QK_K], f: &Found<16>, y: &mut [u8]) {
    let dall = get_f16(y, 108);
    let mut l = [0u8; QK_K];
    for j in 0..QK_K / 16 {
        let sc = (q3_scale(&y[96..108], j) - 32) as i8;
        let d = dall * sc as f32;
        if d == 0.0 {
            f.levels_of(j, &mut l[16 * j..]);
            continue;
        }
        for ii in 0..16 {
            let q = c_max(-4, c_min(3, nearest_int(x[16 * j + ii] / d)));
            l[16 * j + ii] = (q + 4) as u8;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    hmask.fill(0);
    // Value `j` sets bit `j / 32` of `hmask[j % 32]` if its level is above 3.
    let mut lu = [0u8; QK_K];
    for b in 0..8 {
        for m in 0..QK_K / 8 {
            let j = QK_K / 8 * b + m;
            let high = (l[j] > 3) as u8;
            hmask[m] |= high << b;
            lu[j] = l[j].wrapping_sub(4 * high);
        }
    }
    pack2(&lu, &mut rest[..64]);
}

pub fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(110).zip(y.chunks_exact_mut(QK_K)) {
        let d_all = get_f16(blk, 108);
        let hm = &blk[..32];
        let mut out = yb.iter_mut();
        let (mut is, mut m) = (0usize, 1u8);
        for n in 0..2 {
            let q = &blk[32 + 32 * n..64 + 32 * n];
            for shift in [0, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * (q3_scale(&blk[96..108], is) - 32) as f32;
                    is += 1;
                    for l in 16 * half..16 * half + 16 {
                        let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                        *out.next().unwrap() = dl * v as f32;
                    }
                }
                m <<= 1;
            }
        }
    }
}

// ---------------------------------------------------------------- Q4_K, Q5_K

/// The `_ref` search parameters of Q4_K (`nmax` 15) and Q5_K (31).
const fn q45_k_ref(nmax: i32) -> QkxSearch {
    if nmax == 15 {
        QkxSearch { nmax, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }
    } else {
        QkxSearch { nmax, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false }
    }
}

/// Super-blocks Q4_K / Q5_K search at once: two sets of 16 lanes (the 8
/// sub-blocks of two super-blocks each), searched as 32 lanes, so that
/// each step's operations run on two vectors: two independent dependency
/// chains (the sums, the error, the next step's `min`) the CPU overlaps.
const Q45_RUN: usize = 4;

/// The search of Q4_K / Q5_K in lanes: `Q45_RUN` super-blocks (fewer at a
/// row's end; the lanes past it search zeros and are dropped).
#[inline(always)]
fn search_q45_k(x: &[f32], qw: Option<&[f32]>, nmax: i32) -> [Found<8>; Q45_RUN] {
    let (p, qkx2) = match qw {
        Some(_) => (QkxSearch::with_imatrix(nmax), false),
        None => (q45_k_ref(nmax), true),
    };
    let (mut xt, mut w) = ([[0f32; 2 * LANES]; 32], [[0f32; 2 * LANES]; 32]);
    let mut sw = [[0f32; LANES]; 2];
    for (h, xh) in x.chunks(2 * QK_K).enumerate() {
        let t = transpose::<32>(xh);
        let (wh, swh) = match qw {
            Some(qw) => imatrix_weights(&t, &qw[2 * QK_K * h..], &sigma2_lanes::<8>(xh, 2.0)),
            None => {
                let av_x = lane_sums(&t, |v| v * v).map(|s| (s / 32.0).sqrt());
                (lane_zip(&[av_x; 32], &t, |a, v| a + v.abs()), [0f32; LANES])
            }
        };
        put_half(&mut xt, h, &t);
        put_half(&mut w, h, &wh);
        sw[h] = swh;
    }
    let mut lt = [[0u8; 2 * LANES]; 32];
    let (scales, mins) = qkx_lanes(p, &xt, &w, qkx2, &mut lt);
    let mut found = [Found::ZERO; Q45_RUN];
    for h in 0..2 {
        let [sc, mn] = half(&[scales, mins], h);
        let f: [Found<8>; 2] = Found::split(&sc, &mn, &sw[h], &half(&lt, h));
        found[2 * h..2 * h + 2].copy_from_slice(&f);
    }
    found
}

/// The rest of Q4_K / Q5_K (`nmax` 15 / 31) after the search: `d`, `dmin`
/// and the 12 scale bytes at the front of `y`; returns the levels.
#[inline(always)]
fn finish_q45_k(x: &[f32; QK_K], f: &Found<8>, imatrix: bool, nmax: i32, y: &mut [u8]) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    if imatrix {
        let d_block = make_qp_quants(63, &f.scales, &mut ls, &f.sw);
        let m_block = make_qp_quants(63, &f.mins, &mut lm, &f.sw);
        if nmax == 31 {
            // Q5_K clamps, Q4_K does not.
            ls = ls.map(|v| c_min(63, v));
            lm = lm.map(|v| c_min(63, v));
        }
        put_f16(y, 0, d_block);
        put_f16(y, 2, m_block);
    } else {
        let (max_scale, max_min) = largest(&f.scales, &f.mins);
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        for j in 0..QK_K / 32 {
            ls[j] = c_min(63, nearest_int(inv_scale * f.scales[j]) as u8);
            lm[j] = c_min(63, nearest_int(inv_min * f.mins[j]) as u8);
        }
        put_f16(y, 0, max_scale / 63.0);
        put_f16(y, 2, max_min / 63.0);
    }
    put_scale_min_k4(&ls, &lm, &mut y[4..16]);
    let (dall, dmin) = (get_f16(y, 0), get_f16(y, 2));
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        let d = dall * sc as f32;
        if d == 0.0 {
            f.levels_of(j, &mut l[32 * j..]);
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = c_max(0, c_min(nmax, nearest_int((x[32 * j + ii] + dm) / d))) as u8;
        }
    }
    l
}

#[inline(always)]
fn finish_q4_k(x: &[f32; QK_K], f: &Found<8>, imatrix: bool, y: &mut [u8]) {
    let l = finish_q45_k(x, f, imatrix, 15, y);
    let q = &mut y[16..144];
    for (n, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            q[32 * n + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

#[inline(always)]
fn finish_q5_k(x: &[f32; QK_K], f: &Found<8>, imatrix: bool, y: &mut [u8]) {
    let l = finish_q45_k(x, f, imatrix, 31, y);
    let (qh, ql) = y[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (k, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            // Levels above 15 keep their fifth bit in `qh` (without branches).
            let (l1, l2) = (l[n + j], l[n + j + 32]);
            let (h1, h2) = ((l1 > 15) as u8, (l2 > 15) as u8);
            qh[j] |= (m1 * h1) | (m2 * h2);
            ql[32 * k + j] = (l1 - 16 * h1) | ((l2 - 16 * h2) << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

#[allow(clippy::redundant_closure)] // see `rows`
#[inline(always)]
fn q4_k_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    rows(
        x,
        imatrix,
        out,
        144,
        #[inline(always)]
        |x, qw, f| *f = search_q45_k(x, qw, 15),
        #[inline(always)]
        |x, f, imatrix, y| finish_q4_k(x, f, imatrix, y),
    );
}

#[allow(clippy::redundant_closure)] // see `rows`
#[inline(always)]
fn q5_k_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    rows(
        x,
        imatrix,
        out,
        176,
        #[inline(always)]
        |x, qw, f| *f = search_q45_k(x, qw, 31),
        #[inline(always)]
        |x, f, imatrix, y| finish_q5_k(x, f, imatrix, y),
    );
}

/// ggml's `get_scale_min_k4`: six-bit scale and min `j` of the 12 bytes.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn put_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], sb: &mut [u8]) {
    for j in 0..QK_K / 32 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            sb[j] = ls;
            sb[j + 4] = lm;
        } else {
            sb[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sb[j - 4] |= (ls >> 4) << 6;
            sb[j] |= (lm >> 4) << 6;
        }
    }
}

/// Q4_K and Q5_K dequantization; `high` reads Q5_K's fifth bits.
fn dequantize_k(blk: &[u8], high: Option<&[u8]>, ql: &[u8], yb: &mut [f32]) {
    let (d, min) = (get_f16(blk, 0), get_f16(blk, 2));
    let mut out = yb.iter_mut();
    let (mut u1, mut u2) = (1u8, 2u8);
    for (n, is) in (0..QK_K / 32).step_by(2).enumerate() {
        let q = &ql[32 * n..32 * n + 32];
        for (k, u) in [(is, u1), (is + 1, u2)] {
            let (sc, m) = get_scale_min_k4(k, &blk[4..16]);
            let (dl, ml) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                let lo = if k == is { q[l] & 0xF } else { q[l] >> 4 };
                let hi = match high {
                    Some(qh) if qh[l] & u != 0 => 16,
                    _ => 0,
                };
                *out.next().unwrap() = dl * (lo as i32 + hi) as f32 - ml;
            }
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

pub fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(144).zip(y.chunks_exact_mut(QK_K)) {
        dequantize_k(blk, None, &blk[16..144], yb);
    }
}

pub fn dequantize_q5_k(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(176).zip(y.chunks_exact_mut(QK_K)) {
        dequantize_k(blk, Some(&blk[16..48]), &blk[48..176], yb);
    }
}

// ---------------------------------------------------------------- Q6_K

/// Q6_K's search in lanes: `make_qx_quants(32, ..)` on the 16 sub-blocks,
/// weighted by the quant weights or (as the C without them) `x * x`.
#[inline(always)]
fn search_q6_k(x: &[f32], qw: Option<&[f32]>) -> [Found<16>; 1] {
    let xt = transpose::<16>(x);
    let w = match qw {
        Some(qw) => transpose::<16>(qw),
        None => lane_map(&xt, |v| v * v),
    };
    let mut lt = [[0u8; LANES]; 16];
    let scales = qx_lanes(32, &xt, &w, &mut lt);
    Found::split(&scales, &[0f32; LANES], &[0f32; LANES], &lt)
}

#[inline(always)]
fn finish_q6_k(x: &[f32; QK_K], f: &Found<16>, _imatrix: bool, y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let scales = &f.scales;
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for &scale in scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(y, 208, 1.0 / iscale);
    for ib in 0..QK_K / 16 {
        y[192 + ib] = c_min(127, nearest_int(iscale * scales[ib])) as i8 as u8;
    }
    let d0 = get_f16(y, 208);
    for j in 0..QK_K / 16 {
        let d = d0 * y[192 + j] as i8 as f32;
        if d == 0.0 {
            f.levels_of(j, &mut l[16 * j..]);
            continue;
        }
        for ii in 0..16 {
            let q = c_max(-32, c_min(31, nearest_int(x[16 * j + ii] / d)));
            l[16 * j + ii] = (q + 32) as u8;
        }
    }
    let (ql, qh) = y[..192].split_at_mut(128);
    let lu = l;
    for (n, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let q = [lu[j + i], lu[j + i + 32], lu[j + i + 64], lu[j + i + 96]];
            ql[64 * n + i] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
            ql[64 * n + i + 32] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
            qh[32 * n + i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
}

#[allow(clippy::redundant_closure)] // see `rows`
#[inline(always)]
fn q6_k_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    rows(
        x,
        imatrix,
        out,
        210,
        #[inline(always)]
        |x, qw, f| *f = search_q6_k(x, qw),
        #[inline(always)]
        |x, f, imatrix, y| finish_q6_k(x, f, imatrix, y),
    );
}

pub fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(210).zip(y.chunks_exact_mut(QK_K)) {
        let d = get_f16(blk, 208);
        for n in 0..2 {
            let (ql, qh, sc) = (&blk[64 * n..64 * n + 64], &blk[128 + 32 * n..160 + 32 * n], &blk[192 + 8 * n..]);
            let yn = &mut yb[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 as i32 - 32;
                yn[l] = d * sc[is] as i8 as f32 * q1 as f32;
                yn[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                yn[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                yn[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::{hard_groups, isas, Row};
    use super::super::search::{make_q3_quants, make_qkx_quants};
    use super::*;

    fn weighted(qw: &[f32], x: &[f32], sigma2: f32, w: &mut [f32]) -> f32 {
        let mut sumw = 0f32;
        for l in 0..x.len() {
            w[l] = qw[l] * (sigma2 + x[l] * x[l]).sqrt();
        }
        for &v in &w[..x.len()] {
            sumw += v;
        }
        sumw
    }

    // The scalar searches (one sub-block at a time, ggml's loops as they
    // are): the reference the lane searches are checked against.

    /// Levels in value order (`S` sub-blocks) as `Found` keeps them.
    fn transposed<const S: usize>(l: &[u8; QK_K]) -> [u8; QK_K] {
        std::array::from_fn(|k| l[QK_K / S * (k % S) + k / S])
    }

    fn scalar_q2_k(x: &[f32], qw: Option<&[f32]>) -> Found<16> {
        let mut f = Found::<16>::ZERO;
        let (mut laux, mut weights) = ([0u8; 16], [0f32; 16]);
        let sigma2 = sum_squares(x) / QK_K as f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            let (p, qkx2) = match qw {
                Some(qw) => {
                    f.sw[j] = weighted(&qw[16 * j..], xs, sigma2, &mut weights);
                    (QkxSearch::with_imatrix(3), false)
                }
                None => {
                    weights = std::array::from_fn(|i| xs[i].abs());
                    (Q2_K_REF, true)
                }
            };
            (f.scales[j], f.mins[j]) = make_qkx_quants(p, xs, &weights, &mut f.l[16 * j..], &mut laux, qkx2);
        }
        f.l = transposed::<16>(&f.l);
        f
    }

    fn scalar_q3_k(x: &[f32], qw: Option<&[f32]>) -> Found<16> {
        let mut f = Found::<16>::ZERO;
        let mut l = [0i8; QK_K];
        let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
        let mut weight = [0f32; 16];
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            f.scales[j] = match qw {
                Some(qw) => {
                    f.sw[j] = weighted(&qw[16 * j..], xs, sigma2, &mut weight);
                    make_qx_quants(4, xs, &mut l[16 * j..], 1, Some(&weight))
                }
                None => make_q3_quants(4, xs, &mut l[16 * j..], true),
            };
        }
        f.l = transposed::<16>(&l.map(|v| v as u8));
        f
    }

    fn scalar_q45_k(x: &[f32], qw: Option<&[f32]>, nmax: i32) -> Found<8> {
        let mut f = Found::<8>::ZERO;
        let (mut laux, mut weights) = ([0u8; 32], [0f32; 32]);
        let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
        for j in 0..QK_K / 32 {
            let xs = &x[32 * j..32 * j + 32];
            let (p, qkx2) = match qw {
                Some(qw) => {
                    f.sw[j] = weighted(&qw[32 * j..], xs, sigma2, &mut weights);
                    (QkxSearch::with_imatrix(nmax), false)
                }
                None => {
                    let av_x = (sum_squares(xs) / 32.0).sqrt();
                    weights = std::array::from_fn(|i| av_x + xs[i].abs());
                    (q45_k_ref(nmax), true)
                }
            };
            (f.scales[j], f.mins[j]) = make_qkx_quants(p, xs, &weights, &mut f.l[32 * j..], &mut laux, qkx2);
        }
        f.l = transposed::<8>(&f.l);
        f
    }

    fn scalar_q6_k(x: &[f32], qw: Option<&[f32]>) -> Found<16> {
        let mut f = Found::<16>::ZERO;
        let mut l = [0i8; QK_K];
        for j in 0..QK_K / 16 {
            let qw = qw.map(|w| &w[16 * j..16 * j + 16]);
            f.scales[j] = make_qx_quants(32, &x[16 * j..16 * j + 16], &mut l[16 * j..], 1, qw);
        }
        f.l = transposed::<16>(&l.map(|v| v as u8));
        f
    }

    /// A run of super-blocks searched one by one with a scalar search.
    fn runs<const S: usize, const RUN: usize>(
        x: &[f32],
        qw: Option<&[f32]>,
        one: impl Fn(&[f32], Option<&[f32]>) -> Found<S>,
    ) -> [Found<S>; RUN] {
        let mut f = [Found::ZERO; RUN];
        for (t, xs) in x.chunks_exact(QK_K).enumerate() {
            f[t] = one(xs, qw.map(|w| &w[QK_K * t..QK_K * t + QK_K]));
        }
        f
    }

    #[test]
    fn lane_searches_write_the_scalar_bytes_on_every_isa() {
        for seed in 0..24 {
            // Three super-blocks (a partial run at the row's end for Q4_K
            // and Q5_K) of adversarial sub-blocks of 16 and of 32 values.
            let mut x = hard_groups(16, seed);
            x.extend(hard_groups(32, seed + 1));
            let w: Vec<f32> =
                hard_groups(16, seed + 2).iter().chain(&hard_groups(32, seed + 3)).map(|v| v.abs().min(1e3)).collect();
            for qw in [None, Some(w.as_slice())] {
                let cases: [(Row, usize, Vec<u8>); 5] = [
                    (q2_k_isa, 84, reference(&x, qw, 84, |x, qw| runs::<16, Q2_RUN>(x, qw, scalar_q2_k), finish_q2_k)),
                    (
                        q3_k_isa,
                        110,
                        reference(&x, qw, 110, |x, qw| runs::<16, Q3_RUN>(x, qw, scalar_q3_k), finish_q3_k),
                    ),
                    (
                        q4_k_isa,
                        144,
                        reference(
                            &x,
                            qw,
                            144,
                            |x, qw| runs::<8, Q45_RUN>(x, qw, |x, qw| scalar_q45_k(x, qw, 15)),
                            finish_q4_k,
                        ),
                    ),
                    (
                        q5_k_isa,
                        176,
                        reference(
                            &x,
                            qw,
                            176,
                            |x, qw| runs::<8, Q45_RUN>(x, qw, |x, qw| scalar_q45_k(x, qw, 31)),
                            finish_q5_k,
                        ),
                    ),
                    (q6_k_isa, 210, reference(&x, qw, 210, |x, qw| runs::<16, 1>(x, qw, scalar_q6_k), finish_q6_k)),
                ];
                for (t, (fast, bytes, want)) in cases.iter().enumerate() {
                    for &isa in isas() {
                        let mut got = vec![0xAB; 3 * bytes];
                        fast(isa, &x, qw, &mut got);
                        assert!(got == *want, "type {t} seed {seed} imatrix {} {isa:?}", qw.is_some());
                    }
                }
            }
        }
    }

    fn reference<const S: usize, const RUN: usize>(
        x: &[f32],
        qw: Option<&[f32]>,
        bytes: usize,
        search: impl Fn(&[f32], Option<&[f32]>) -> [Found<S>; RUN],
        finish: impl Fn(&[f32; QK_K], &Found<S>, bool, &mut [u8]),
    ) -> Vec<u8> {
        let mut out = vec![0xCD; x.len() / QK_K * bytes];
        rows(x, qw, &mut out, bytes, |x, qw, f| *f = search(x, qw), finish);
        out
    }
}
