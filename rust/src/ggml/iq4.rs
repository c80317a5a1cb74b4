//! The non-linear 4-bit types IQ4_NL (blocks of 32) and IQ4_XS (super-blocks
//! of 256 with 6-bit sub-block scales): ggml's `quantize_row_iq4_nl_impl` as
//! `quantize_iq4_nl` / `quantize_iq4_xs` call it (`ntry = 7`, with or without
//! quant weights), and `dequantize_row_iq4_*`. The block scale search runs
//! 16 blocks of 32 at once in the lanes of `lanes`; the tests keep
//! ggml's loop, one block at a time, as the reference.

use super::lanes::{imatrix_weights, iq4_lanes, lane_map, transpose, Col, LANES};
use super::search::{c_max, c_min, fp32_to_fp16, get_f16, nearest_int};
use crate::kernel::fast::isa_dispatch;
use crate::kernel::Isa;

/// `kvalues_iq4nl`: the 16 levels of IQ4.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
const QK_K: usize = 256;

// Compiled for the CPU's best instruction set: the lane loops vectorize there.
isa_dispatch!(fn iq4_nl_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = iq4_nl_impl);
isa_dispatch!(fn iq4_xs_isa(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) -> () = iq4_xs_impl);

pub fn quantize_iq4_nl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    iq4_nl_isa(Isa::detect(), x, imatrix, out);
}

pub fn quantize_iq4_xs(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    iq4_xs_isa(Isa::detect(), x, imatrix, out);
}

/// `best_index_int8(16, kvalues_iq4nl, x)` without branches, and the level
/// at that index: the C's bisection ends at the first level above `x` (at
/// the last one for NaN), found here by counting; then the same tie rule
/// and end cases.
#[inline(always)]
pub(crate) fn nearest_iq4(x: f32) -> (u8, f32) {
    let v = KVALUES_IQ4NL.map(f32::from);
    let (mut lo, mut hi, mut mu) = (v[0], v[1], 1u8);
    for j in 1..15 {
        let ge = (x >= v[j]) | x.is_nan(); // the C's `!(x < val[mav])`
        lo = if ge { v[j] } else { lo };
        hi = if ge { v[j + 1] } else { hi };
        mu += ge as u8;
    }
    let nearest = if x - lo < hi - x { (mu - 1, lo) } else { (mu, hi) };
    if x <= v[0] {
        (0, v[0])
    } else if x >= v[15] {
        (15, v[15])
    } else {
        nearest
    }
}

/// ggml's `sigma2` of a super-block: `sum(x*x)`, then `*= 2/n`.
#[inline(always)]
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// The scale search of `quantize_row_iq4_nl_impl` on the blocks of 32 of
/// `x` (16 of them at most, in super-blocks of `n` values), one per lane.
#[inline(always)]
fn search(x: &[f32], qw: Option<&[f32]>, n: usize) -> Col {
    let xt = transpose::<32>(x);
    let w = match qw {
        Some(qw) => {
            let mut s2 = [0f32; LANES];
            for (t, sb) in x.chunks_exact(n).enumerate() {
                s2[t * n / 32..(t + 1) * n / 32].fill(sigma2(sb));
            }
            imatrix_weights(&xt, qw, &s2)
        }
        None => lane_map(&xt, |v| v * v),
    };
    iq4_lanes(&xt, &w)
}

/// The levels of `x` at the inverse scale `id`, packed two per byte
/// (values `j` and `j + 16` of each block of 32).
#[inline(always)]
fn pack_levels(x: &[f32], id: f32, q4: &mut [u8]) {
    for (xb, q) in x.chunks_exact(32).zip(q4.chunks_exact_mut(16)) {
        let mut l = [0u8; 32];
        for j in 0..32 {
            l[j] = nearest_iq4(id * xb[j]).0;
        }
        for j in 0..16 {
            q[j] = l[j] | (l[16 + j] << 4);
        }
    }
}

/// IQ4_NL's block after the search: `d` as a ggml half, then the levels.
#[inline(always)]
fn finish_nl(x: &[f32], d: f32, y: &mut [u8]) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    pack_levels(x, id, &mut y[2..18]);
    y[..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
}

/// IQ4_XS's super-block after the search of its 8 block scales: the
/// super-block scale, the six-bit block scales, the levels.
#[inline(always)]
fn finish_xs(x: &[f32], scales: &[f32], y: &mut [u8]) {
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for &d in scales {
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let (head, qs) = y.split_at_mut(8);
    let mut scales_h = 0u16;
    let d = -max_scale / 32.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for ib in 0..QK_K / 32 {
        let mut ls = c_max(-32, c_min(31, nearest_int(id * scales[ib])));
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        pack_levels(&x[32 * ib..32 * ib + 32], idl, &mut qs[16 * ib..16 * ib + 16]);
        ls += 32;
        let (l_l, l_h) = ((ls & 0xf) as u8, (ls >> 4) as u8);
        if ib % 2 == 0 {
            head[4 + ib / 2] = l_l;
        } else {
            head[4 + ib / 2] |= l_l << 4;
        }
        scales_h |= (l_h as u16) << (2 * (ib % 8));
    }
    head[..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    head[2..4].copy_from_slice(&scales_h.to_le_bytes());
}

/// Runs of 16 blocks of 32 (IQ4_NL) or 2 super-blocks of 256 (IQ4_XS):
/// `search` on the run, then `finish(x, scales, y)` per (super-)block.
#[inline(always)]
fn rows(
    x: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [u8],
    n: usize,
    bytes: usize,
    search: impl Fn(&[f32], Option<&[f32]>) -> Col,
    finish: impl Fn(&[f32], &[f32], &mut [u8]),
) {
    let run = 32 * LANES;
    for (r, (xr, yr)) in x.chunks(run).zip(out.chunks_mut(run / n * bytes)).enumerate() {
        let qw = imatrix.map(|w| &w[run * r..run * r + xr.len()]);
        let scales = search(xr, qw);
        for (t, (xs, y)) in xr.chunks_exact(n).zip(yr.chunks_exact_mut(bytes)).enumerate() {
            finish(xs, &scales[n / 32 * t..n / 32 * (t + 1)], y);
        }
    }
}

// The closures are `#[inline(always)]`; the function items would be
// compiled out of line, without the dispatched target features.
#[allow(clippy::redundant_closure)]
#[inline(always)]
fn iq4_nl_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    rows(
        x,
        imatrix,
        out,
        32,
        18,
        #[inline(always)]
        |x, qw| search(x, qw, 32),
        #[inline(always)]
        |x, scales, y| finish_nl(x, scales[0], y),
    );
}

#[allow(clippy::redundant_closure)] // as above
#[inline(always)]
fn iq4_xs_impl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    rows(
        x,
        imatrix,
        out,
        QK_K,
        136,
        #[inline(always)]
        |x, qw| search(x, qw, QK_K),
        #[inline(always)]
        |x, scales, y| finish_xs(x, scales, y),
    );
}

pub fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = get_f16(blk, 0);
        for j in 0..16 {
            yb[j] = d * KVALUES_IQ4NL[(blk[2 + j] & 0xf) as usize] as f32;
            yb[j + 16] = d * KVALUES_IQ4NL[(blk[2 + j] >> 4) as usize] as f32;
        }
    }
}

pub fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    for (blk, yb) in b.chunks_exact(136).zip(y.chunks_exact_mut(QK_K)) {
        let d = get_f16(blk, 0);
        let scales_h = u16::from_le_bytes([blk[2], blk[3]]) as i32;
        for ib in 0..QK_K / 32 {
            let ls = ((blk[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xf) | (((scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &blk[8 + 16 * ib..8 + 16 * ib + 16];
            for j in 0..16 {
                yb[32 * ib + j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
                yb[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::{hard_groups, isas, Row};
    use super::super::search::{best_index_int8, signed_absmax, GROUP_MAX_EPS};
    use super::*;

    /// ggml's block loop of `quantize_row_iq4_nl_impl` (the scales only),
    /// one block at a time: the reference for [`search`].
    fn scalar_search(x: &[f32], qw: Option<&[f32]>, n: usize) -> Col {
        let values = &KVALUES_IQ4NL;
        let mut scales = [0f32; LANES];
        for (ib, xb) in x.chunks_exact(32).enumerate() {
            let sb = 32 * ib / n * n;
            let mut sigma2 = 0f32;
            for &v in &x[sb..sb + n] {
                sigma2 += v * v;
            }
            sigma2 *= 2.0 / n as f32;
            let weight: Vec<f32> = match qw {
                Some(qw) => (0..32).map(|j| qw[32 * ib + j] * (sigma2 + xb[j] * xb[j]).sqrt()).collect(),
                None => xb.iter().map(|v| v * v).collect(),
            };
            let (amax, max) = signed_absmax(xb);
            if amax < GROUP_MAX_EPS {
                continue;
            }
            let mut d = -max / values[0] as f32;
            let mut id = 1.0 / d;
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for j in 0..32 {
                let q = values[best_index_int8(values, id * xb[j])] as f32;
                sumqx += weight[j] * q * xb[j];
                sumq2 += weight[j] * q * q;
            }
            d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
            let mut best = d * sumqx;
            for itry in -7..=7 {
                id = (itry as f32 + values[0] as f32) / max;
                (sumqx, sumq2) = (0.0, 0.0);
                for j in 0..32 {
                    let q = values[best_index_int8(values, id * xb[j])] as f32;
                    sumqx += weight[j] * q * xb[j];
                    sumq2 += weight[j] * q * q;
                }
                if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
            scales[ib] = d;
        }
        scales
    }

    #[test]
    fn best_index_matches_the_bisection() {
        let v = KVALUES_IQ4NL;
        let mut xs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-30, -1e30];
        for w in v.windows(2) {
            let (a, b) = (w[0] as f32, w[1] as f32);
            xs.extend([a, b, (a + b) / 2.0, f32::from_bits(((a + b) / 2.0).to_bits() + 1), a - 0.25, b + 0.25]);
        }
        xs.extend((0..2000).map(|i| (i as f32 - 1000.0) * 0.137));
        for x in xs {
            let (i, q) = nearest_iq4(x);
            assert_eq!((i as usize, q), (best_index_int8(&v, x), v[i as usize] as f32), "{x}");
        }
    }

    #[test]
    fn lane_search_writes_the_scalar_bytes_on_every_isa() {
        for seed in 0..24 {
            // Three super-blocks / 24 blocks: a partial run at the end.
            let mut x = hard_groups(32, seed);
            x.extend(&hard_groups(16, seed + 1));
            let w: Vec<f32> =
                hard_groups(32, seed + 2).iter().chain(&hard_groups(16, seed + 3)).map(|v| v.abs().min(1e3)).collect();
            for qw in [None, Some(w.as_slice())] {
                let mut nl = vec![0xCD; 24 * 18];
                rows(
                    x.as_slice(),
                    qw,
                    &mut nl,
                    32,
                    18,
                    |x, qw| scalar_search(x, qw, 32),
                    |x, s, y| finish_nl(x, s[0], y),
                );
                let mut xs = vec![0xCD; 3 * 136];
                rows(x.as_slice(), qw, &mut xs, QK_K, 136, |x, qw| scalar_search(x, qw, QK_K), finish_xs);
                let cases: [(Row, Vec<u8>); 2] = [(iq4_nl_isa, nl), (iq4_xs_isa, xs)];
                for (fast, want) in &cases {
                    for &isa in isas() {
                        let mut got = vec![0xAB; want.len()];
                        fast(isa, &x, qw, &mut got);
                        assert!(got == *want, "seed {seed} imatrix {} {isa:?} {}", qw.is_some(), want.len());
                    }
                }
            }
        }
    }
}
