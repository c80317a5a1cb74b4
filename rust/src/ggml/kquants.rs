//! The K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (super-blocks of 256 values):
//! ggml's `quantize_row_*_ref` (no importance matrix), `quantize_row_*_impl`
//! (with one; `quant_weights` holds one weight per column of the row) and
//! `dequantize_row_*`, one row at a time.

use super::search::{
    c_max, c_min, get_f16, make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants, nearest_int, put_f16,
    QkxSearch, GROUP_MAX_EPS,
};

const QK_K: usize = 256;

/// Packs 256 two-bit values: byte `l` of each 32-byte quarter holds values
/// `l`, `l+32`, `l+64`, `l+96` of its 128-value half.
fn pack2(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

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

/// The `_ref` scale search of Q2_K, Q4_K and Q5_K: `make_qkx2_quants` on
/// each sub-block (`scales.len()` of them) with the weights `weigh` gives
/// it; returns the largest scale and the largest min.
fn ref_sub_blocks(
    x: &[f32],
    p: QkxSearch,
    l: &mut [u8; QK_K],
    scales: &mut [f32],
    mins: &mut [f32],
    weigh: impl Fn(&[f32], &mut [f32]),
) -> (f32, f32) {
    let sub = QK_K / scales.len();
    let (mut weights, mut laux) = ([0f32; 32], [0u8; 32]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..scales.len() {
        let xs = &x[sub * j..sub * j + sub];
        weigh(xs, &mut weights[..sub]);
        (scales[j], mins[j]) = make_qkx_quants(p, xs, &weights[..sub], &mut l[sub * j..], &mut laux, true);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    (max_scale, max_min)
}

// ---------------------------------------------------------------- Q2_K

/// Requantizes with the stored 4-bit scales and mins, then packs (both paths).
fn finish_q2_k(x: &[f32], l: &mut [u8; QK_K], y: &mut [u8]) {
    let (dall, dmin) = (get_f16(y, 80), get_f16(y, 82));
    for j in 0..QK_K / 16 {
        let sc = y[j];
        let d = dall * (sc & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * (sc >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = c_max(0, c_min(3, nearest_int((x[16 * j + ii] + dm) / d))) as u8;
        }
    }
    pack2(l, &mut y[16..80]);
}

pub fn quantize_q2_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    for (i, (x, y)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(84)).enumerate() {
        if let Some(qw) = imatrix {
            let sigma2 = sum_squares(x) / QK_K as f32;
            let mut sw = [0f32; QK_K / 16];
            let p = QkxSearch::with_imatrix(3);
            for j in 0..QK_K / 16 {
                let xs = &x[16 * j..16 * j + 16];
                sw[j] = weighted(&qw[QK_K * i + 16 * j..], xs, sigma2, &mut weights);
                (scales[j], mins[j]) = make_qkx_quants(p, xs, &weights, &mut l[16 * j..], &mut laux, false);
            }
            let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            put_f16(y, 80, dm);
            put_f16(y, 82, mm);
            for j in 0..QK_K / 16 {
                y[j] = ls[j] | (lm[j] << 4);
            }
        } else {
            let p = QkxSearch { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
            let (max_scale, max_min) = ref_sub_blocks(x, p, &mut l, &mut scales, &mut mins, |xs, w| {
                for (w, v) in w.iter_mut().zip(xs) {
                    *w = v.abs();
                }
            });
            if max_scale > 0.0 {
                let iscale = 15.0 / max_scale;
                for j in 0..QK_K / 16 {
                    y[j] = nearest_int(iscale * scales[j]) as u8;
                }
                put_f16(y, 80, max_scale / 15.0);
            } else {
                y[..16].fill(0);
                put_f16(y, 80, 0.0);
            }
            if max_min > 0.0 {
                let iscale = 15.0 / max_min;
                for j in 0..QK_K / 16 {
                    y[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
                }
                put_f16(y, 82, max_min / 15.0);
            } else {
                put_f16(y, 82, 0.0);
            }
        }
        finish_q2_k(x, &mut l, y);
    }
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

/// Stores the 16 six-bit scales (`l` in 0..64) in Q3_K's 12 bytes.
fn put_q3_scales(ls: &[i32; 16], sb: &mut [u8]) {
    sb[..12].fill(0);
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            sb[j] = (l & 0xF) as u8;
        } else {
            sb[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        sb[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
    }
}

/// Q3_K's scale `j` (0..64, stored offset by 32).
fn q3_scale(sb: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { sb[j] & 0xF } else { sb[j - 8] >> 4 };
    (lo | (((sb[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32
}

/// Requantizes with the stored scales, splits off the high bits, packs.
fn finish_q3_k(x: &[f32], l: &mut [i8; QK_K], y: &mut [u8]) {
    let dall = get_f16(y, 108);
    for j in 0..QK_K / 16 {
        let sc = (q3_scale(&y[96..108], j) - 32) as i8;
        let d = dall * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = c_max(-4, c_min(3, nearest_int(x[16 * j + ii] / d)));
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    hmask.fill(0);
    let mut lu = [0u8; QK_K];
    let (mut m, mut hm) = (0usize, 1u8);
    for j in 0..QK_K {
        if l[j] > 3 {
            hmask[m] |= hm;
            l[j] -= 4;
        }
        lu[j] = l[j] as u8;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack2(&lu, &mut rest[..64]);
}

pub fn quantize_q3_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (i, (x, y)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(110)).enumerate() {
        let mut stored = [0i32; 16];
        if let Some(qw) = imatrix {
            let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
            let mut weight = [0f32; 16];
            let mut sw = [0f32; QK_K / 16];
            for j in 0..QK_K / 16 {
                let xs = &x[16 * j..16 * j + 16];
                sw[j] = weighted(&qw[QK_K * i + 16 * j..], xs, sigma2, &mut weight);
                scales[j] = make_qx_quants(4, xs, &mut l[16 * j..], 1, Some(&weight));
            }
            let mut ls = [0i8; 16];
            let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
            stored = ls.map(|v| v as i32);
            put_q3_scales(&stored, &mut y[96..108]);
            put_f16(y, 108, d_block);
        } else {
            let (mut max_scale, mut amax) = (0f32, 0f32);
            for j in 0..QK_K / 16 {
                scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..], true);
                let scale = scales[j].abs();
                if scale > amax {
                    amax = scale;
                    max_scale = scales[j];
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
        finish_q3_k(x, &mut l, y);
    }
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

/// Scale/min search shared by Q4_K and Q5_K (`nmax` 15 or 31): fills `l`
/// and the 12 scale bytes, `d` and `dmin` at the front of `y`.
fn scales_k(x: &[f32], qw: Option<&[f32]>, nmax: i32, clamp_qp: bool, l: &mut [u8; QK_K], y: &mut [u8]) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    match qw {
        // The `_impl` path (`quantize_q*_K` with quant_weights).
        Some(qw) => {
            let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
            let mut sw = [0f32; QK_K / 32];
            let p = QkxSearch::with_imatrix(nmax);
            for j in 0..QK_K / 32 {
                let xs = &x[32 * j..32 * j + 32];
                sw[j] = weighted(&qw[32 * j..], xs, sigma2, &mut weights);
                (scales[j], mins[j]) = make_qkx_quants(p, xs, &weights, &mut l[32 * j..], &mut laux, false);
            }
            let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
            let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
            if clamp_qp {
                ls = ls.map(|v| c_min(63, v));
                lm = lm.map(|v| c_min(63, v));
            }
            put_f16(y, 0, d_block);
            put_f16(y, 2, m_block);
        }
        // The `_ref` path.
        None => {
            let p = if nmax == 15 {
                QkxSearch { nmax, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }
            } else {
                QkxSearch { nmax, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false }
            };
            let (max_scale, max_min) = ref_sub_blocks(x, p, l, &mut scales, &mut mins, |xs, w| {
                let av_x = (sum_squares(xs) / 32.0).sqrt();
                for (w, v) in w.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
            });
            let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..QK_K / 32 {
                ls[j] = c_min(63, nearest_int(inv_scale * scales[j]) as u8);
                lm[j] = c_min(63, nearest_int(inv_min * mins[j]) as u8);
            }
            put_f16(y, 0, max_scale / 63.0);
            put_f16(y, 2, max_min / 63.0);
        }
    }
    put_scale_min_k4(&ls, &lm, &mut y[4..16]);
    let (dall, dmin) = (get_f16(y, 0), get_f16(y, 2));
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &y[4..16]);
        let d = dall * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = c_max(0, c_min(nmax, nearest_int((x[32 * j + ii] + dm) / d))) as u8;
        }
    }
}

pub fn quantize_q4_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (i, (x, y)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)).enumerate() {
        scales_k(x, imatrix.map(|w| &w[QK_K * i..]), 15, false, &mut l, y);
        let q = &mut y[16..144];
        for (n, j) in (0..QK_K).step_by(64).enumerate() {
            for i in 0..32 {
                q[32 * n + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

pub fn quantize_q5_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (i, (x, y)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(176)).enumerate() {
        scales_k(x, imatrix.map(|w| &w[QK_K * i..]), 31, true, &mut l, y);
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (k, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * k + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
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

pub fn quantize_q6_k(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (i, (x, y)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)).enumerate() {
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..QK_K / 16 {
            let qw = imatrix.map(|w| &w[QK_K * i + 16 * ib..QK_K * i + 16 * ib + 16]);
            let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..], 1, qw);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y.fill(0);
            continue;
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
                continue;
            }
            for ii in 0..16 {
                let q = c_max(-32, c_min(31, nearest_int(x[16 * j + ii] / d)));
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        let (ql, qh) = y[..192].split_at_mut(128);
        let lu = l.map(|v| v as u8);
        for (n, j) in (0..QK_K).step_by(128).enumerate() {
            for i in 0..32 {
                let q = [lu[j + i], lu[j + i + 32], lu[j + i + 64], lu[j + i + 96]];
                ql[64 * n + i] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
                ql[64 * n + i + 32] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
                qh[32 * n + i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
    }
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
