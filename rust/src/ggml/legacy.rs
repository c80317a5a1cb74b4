//! The 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: ggml's
//! `quantize_row_*_ref` (no importance matrix), `quantize_row_*_impl` (with
//! one) and `dequantize_row_*`, one row at a time.

use super::search::{
    c_float_to_int, c_max, c_min, get_f16, make_qkx_quants, make_qx_quants, put_f16, signed_absmax, QkxSearch,
};

const QK: usize = 32;

/// `(int8_t)f` / `(uint8_t)f` as compiled by gcc: the low byte of the i32.
fn low_byte(f: f32) -> u8 {
    c_float_to_int(f) as u8
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Packs 32 5-bit values as ggml does: low nibbles in `qs` (value j and
/// j+16 in byte j), the fifth bits in the 32-bit little-endian `qh`.
fn pack5(l: &[u8; QK], qh_out: &mut [u8], qs: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (xi0, xi1) = (l[j], l[j + QK / 2]);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

fn pack4(l: &[u8; QK], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = l[j] | (l[j + QK / 2] << 4);
    }
}

fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// Runs `block(values, weights, bytes)` over the blocks of a row. With an
/// imatrix, `weights` are ggml's `qw * sqrt(sigma2 + x*x)` with `sigma2`
/// the mean square of the whole row (the `quantize_row_*_impl` paths).
fn for_blocks(
    x: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [u8],
    bytes: usize,
    mut block: impl FnMut(&[f32], Option<&[f32; QK]>, &mut [u8]),
) {
    let sigma2 = imatrix.map(|_| row_sigma2(x));
    let mut weight = [0f32; QK];
    for (ib, (xb, y)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(bytes)).enumerate() {
        let weights = match (imatrix, sigma2) {
            (Some(qw), Some(sigma2)) => {
                let qw = &qw[ib * QK..ib * QK + QK];
                for j in 0..QK {
                    weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
                Some(&weight)
            }
            _ => None,
        };
        block(xb, weights, y);
    }
}

/// Q4_0 (`nmax` 8) and Q5_0 (16): levels in `[0, 2*nmax)` and the scale.
fn symmetric_block(xb: &[f32], weights: Option<&[f32; QK]>, nmax: i32, l: &mut [u8; QK]) -> f32 {
    if let Some(w) = weights {
        let mut li = [0i8; QK];
        let d = make_qx_quants(nmax, xb, &mut li, 1, Some(w));
        *l = li.map(|v| v as u8);
        return d;
    }
    let (_, max) = signed_absmax(xb);
    let d = max / -(nmax as f32);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let offset = nmax as f32 + 0.5; // 8.5 / 16.5 as in the C
    for j in 0..QK {
        l[j] = c_min(2 * nmax - 1, low_byte(xb[j] * id + offset) as i8 as i32) as u8;
    }
    d
}

/// Q4_1 (`nmax` 15) and Q5_1 (31): levels in `[0, nmax]`, scale and min.
/// `round` is the C's conversion of `v + 0.5` (Q4_1 clamps, Q5_1 does not).
fn asymmetric_block(
    xb: &[f32],
    weights: Option<&[f32; QK]>,
    nmax: i32,
    round: fn(f32) -> u8,
    l: &mut [u8; QK],
) -> (f32, f32) {
    if let Some(w) = weights {
        let p = QkxSearch::with_imatrix(nmax);
        let (d, min) = make_qkx_quants(p, xb, w, l, &mut [0u8; QK], false);
        return (d, -min);
    }
    let (min, max) = min_max(xb);
    let d = (max - min) / nmax as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..QK {
        l[j] = round((xb[j] - min) * id + 0.5);
    }
    (d, min)
}

pub fn quantize_q4_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    for_blocks(x, imatrix, out, 18, |xb, w, y| {
        let mut l = [0u8; QK];
        put_f16(y, 0, symmetric_block(xb, w, 8, &mut l));
        pack4(&l, &mut y[2..18]);
    });
}

pub fn quantize_q5_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    for_blocks(x, imatrix, out, 22, |xb, w, y| {
        let mut l = [0u8; QK];
        put_f16(y, 0, symmetric_block(xb, w, 16, &mut l));
        let (qh, qs) = y[2..22].split_at_mut(4);
        pack5(&l, qh, qs);
    });
}

pub fn quantize_q4_1(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let round = |v: f32| c_min(15, low_byte(v) as i8 as i32) as u8;
    for_blocks(x, imatrix, out, 20, |xb, w, y| {
        let mut l = [0u8; QK];
        let (d, m) = asymmetric_block(xb, w, 15, round, &mut l);
        put_f16(y, 0, d);
        put_f16(y, 2, m);
        pack4(&l, &mut y[4..20]);
    });
}

pub fn quantize_q5_1(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    for_blocks(x, imatrix, out, 24, |xb, w, y| {
        let mut l = [0u8; QK];
        let (d, m) = asymmetric_block(xb, w, 31, low_byte, &mut l);
        put_f16(y, 0, d);
        put_f16(y, 2, m);
        let (qh, qs) = y[4..24].split_at_mut(4);
        pack5(&l, qh, qs);
    });
}

/// Q8_0 has no imatrix path in ggml (`quantize_q8_0` ignores it).
pub fn quantize_q8_0(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
        let mut amax = 0f32;
        for &v in xb {
            amax = c_max(amax, v.abs());
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(y, 0, d);
        for j in 0..QK {
            y[2 + j] = low_byte((xb[j] * id).round());
        }
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
