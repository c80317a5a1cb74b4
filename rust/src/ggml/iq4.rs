//! The non-linear 4-bit types IQ4_NL (blocks of 32) and IQ4_XS (super-blocks
//! of 256 with 6-bit sub-block scales): ggml's `quantize_row_iq4_nl_impl` as
//! `quantize_iq4_nl` / `quantize_iq4_xs` call it (`ntry = 7`, with or without
//! quant weights), and `dequantize_row_iq4_*`.

use super::search::{best_index_int8, c_max, c_min, fp32_to_fp16, get_f16, nearest_int, signed_absmax, GROUP_MAX_EPS};

/// `kvalues_iq4nl`: the 16 levels of IQ4.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
const NTRY: i32 = 7;
const QK_K: usize = 256;

/// One super-block of `x.len()` values (32 for IQ4_NL, 256 for IQ4_XS) in
/// blocks of 32. Returns the stored super-block scale `d`, writes the
/// 4-bit levels to `q4` and, for IQ4_XS, the six-bit block scales.
fn quantize_super_block(x: &[f32], qw: Option<&[f32]>, q4: &mut [u8], xs_scales: Option<(&mut u16, &mut [u8])>) -> u16 {
    let n = x.len();
    let values = &KVALUES_IQ4NL;
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 32];
    let mut weight = [0f32; 32];
    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / n as f32;
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for ib in 0..n / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        match qw {
            Some(qw) => {
                for j in 0..32 {
                    weight[j] = qw[32 * ib + j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let (amax, max) = signed_absmax(xb);
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = -max / values[0] as f32; // ntry > 0
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for j in 0..32 {
            let k = best_index_int8(values, id * xb[j]);
            l[32 * ib + j] = k as u8;
            let q = values[k] as f32;
            sumqx += weight[j] * q * xb[j];
            sumq2 += weight[j] * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry as f32 + values[0] as f32) / max;
            sumqx = 0.0;
            sumq2 = 0.0;
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
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let dh = match xs_scales {
        Some((scales_h, scales_l)) => {
            *scales_h = 0;
            let d = -max_scale / 32.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for ib in 0..n / 32 {
                let mut ls = c_max(-32, c_min(31, nearest_int(id * scales[ib])));
                let dl = d * ls as f32;
                let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
                for j in 0..32 {
                    l[32 * ib + j] = best_index_int8(values, idl * x[32 * ib + j]) as u8;
                }
                ls += 32;
                let (l_l, l_h) = ((ls & 0xf) as u8, (ls >> 4) as u8);
                if ib % 2 == 0 {
                    scales_l[ib / 2] = l_l;
                } else {
                    scales_l[ib / 2] |= l_l << 4;
                }
                *scales_h |= (l_h as u16) << (2 * (ib % 8));
            }
            fp32_to_fp16(d)
        }
        None => {
            let id = if scales[0] != 0.0 { 1.0 / scales[0] } else { 0.0 };
            for j in 0..n {
                l[j] = best_index_int8(values, id * x[j]) as u8;
            }
            fp32_to_fp16(scales[0])
        }
    };
    for i in 0..n / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
    dh
}

pub fn quantize_iq4_nl(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    for (ib, (xb, y)) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)).enumerate() {
        let qw = imatrix.map(|w| &w[32 * ib..32 * ib + 32]);
        let dh = quantize_super_block(xb, qw, &mut y[2..18], None);
        y[..2].copy_from_slice(&dh.to_le_bytes());
    }
}

pub fn quantize_iq4_xs(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    for (ib, (xb, y)) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(136)).enumerate() {
        let qw = imatrix.map(|w| &w[QK_K * ib..QK_K * ib + QK_K]);
        let (head, qs) = y.split_at_mut(8);
        let mut scales_h = 0u16;
        let dh = quantize_super_block(xb, qw, qs, Some((&mut scales_h, &mut head[4..8])));
        head[..2].copy_from_slice(&dh.to_le_bytes());
        head[2..4].copy_from_slice(&scales_h.to_le_bytes());
    }
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
