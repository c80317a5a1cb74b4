//! The 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: ggml's
//! `quantize_row_*_ref` (no importance matrix), `quantize_row_*_impl` (with
//! one) and `dequantize_row_*`, one row at a time.

use super::search::{
    c_float_to_int, c_max, c_min, get_f16, make_qkx_quants, make_qx_quants, put_f16, QkxSearch,
};

const QK: usize = 32;

/// `(int8_t)f` / `(uint8_t)f` as compiled by gcc: the low byte of the i32.
fn low_byte(f: f32) -> u8 {
    c_float_to_int(f) as u8
}

/// The signed value and its magnitude of largest absolute value (first wins).
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
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

/// The per-value weights of the imatrix paths: `qw * sqrt(sigma2 + x*x)`,
/// `sigma2` the mean square of the whole row.
fn row_weights(x: &[f32], qw: &[f32], sigma2: f32, weight: &mut [f32; QK]) {
    for j in 0..QK {
        weight[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
}

fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

pub fn quantize_q4_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = imatrix.map(|_| row_sigma2(x));
    for (ib, (xb, y)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(18)).enumerate() {
        let mut l = [0u8; QK];
        let d = match (imatrix, sigma2) {
            (Some(qw), Some(s2)) => {
                let mut weight = [0f32; QK];
                row_weights(xb, &qw[ib * QK..], s2, &mut weight);
                let mut li = [0i8; QK];
                let d = make_qx_quants(8, xb, &mut li, 1, Some(&weight));
                l = li.map(|v| v as u8);
                d
            }
            _ => {
                let (_, max) = signed_absmax(xb);
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for j in 0..QK {
                    l[j] = c_min(15, low_byte(xb[j] * id + 8.5) as i8 as i32) as u8;
                }
                d
            }
        };
        put_f16(y, 0, d);
        pack4(&l, &mut y[2..18]);
    }
}

pub fn quantize_q4_1(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = imatrix.map(|_| row_sigma2(x));
    for (ib, (xb, y)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(20)).enumerate() {
        let mut l = [0u8; QK];
        let (d, m) = match (imatrix, sigma2) {
            (Some(qw), Some(s2)) => {
                let mut weight = [0f32; QK];
                row_weights(xb, &qw[ib * QK..], s2, &mut weight);
                let p = QkxSearch {
                    nmax: 15,
                    rmin: -0.9,
                    rdelta: 0.05,
                    nstep: 36,
                    use_mad: false,
                };
                let (d, min) = make_qkx_quants(p, xb, &weight, &mut l, &mut [0u8; QK], false);
                (d, -min)
            }
            _ => {
                let (min, max) = min_max(xb);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for j in 0..QK {
                    l[j] = c_min(15, low_byte((xb[j] - min) * id + 0.5) as i8 as i32) as u8;
                }
                (d, min)
            }
        };
        put_f16(y, 0, d);
        put_f16(y, 2, m);
        pack4(&l, &mut y[4..20]);
    }
}

pub fn quantize_q5_0(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = imatrix.map(|_| row_sigma2(x));
    for (ib, (xb, y)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(22)).enumerate() {
        let mut l = [0u8; QK];
        let d = match (imatrix, sigma2) {
            (Some(qw), Some(s2)) => {
                let mut weight = [0f32; QK];
                row_weights(xb, &qw[ib * QK..], s2, &mut weight);
                let mut li = [0i8; QK];
                let d = make_qx_quants(16, xb, &mut li, 1, Some(&weight));
                l = li.map(|v| v as u8);
                d
            }
            _ => {
                let (_, max) = signed_absmax(xb);
                let d = max / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for j in 0..QK {
                    l[j] = c_min(31, low_byte(xb[j] * id + 16.5) as i8 as i32) as u8;
                }
                d
            }
        };
        put_f16(y, 0, d);
        let (qh, qs) = y[2..22].split_at_mut(4);
        pack5(&l, qh, qs);
    }
}

pub fn quantize_q5_1(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = imatrix.map(|_| row_sigma2(x));
    for (ib, (xb, y)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(24)).enumerate() {
        let mut l = [0u8; QK];
        let (d, m) = match (imatrix, sigma2) {
            (Some(qw), Some(s2)) => {
                let mut weight = [0f32; QK];
                row_weights(xb, &qw[ib * QK..], s2, &mut weight);
                let p = QkxSearch {
                    nmax: 31,
                    rmin: -0.9,
                    rdelta: 0.05,
                    nstep: 36,
                    use_mad: false,
                };
                let (d, min) = make_qkx_quants(p, xb, &weight, &mut l, &mut [0u8; QK], false);
                (d, -min)
            }
            _ => {
                let (min, max) = min_max(xb);
                let d = (max - min) / 31.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for j in 0..QK {
                    l[j] = low_byte((xb[j] - min) * id + 0.5);
                }
                (d, min)
            }
        };
        put_f16(y, 0, d);
        put_f16(y, 2, m);
        let (qh, qs) = y[4..24].split_at_mut(4);
        pack5(&l, qh, qs);
    }
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
