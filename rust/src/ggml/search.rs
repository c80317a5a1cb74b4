//! ggml's scalar helpers, transcribed from llama.cpp's `ggml-quants.c`
//! (llama-cpp-python 0.3.36) operation for operation: every product, sum
//! and division in f32 in the C order, no fused multiply-add, the same
//! integer truncations (`as u8` / `as i8` wrap like the C conversions), and
//! the C `MIN`/`MAX` macros rather than `f32::min`/`max` (they differ on NaN).
//! The per-type quantizers and a future scale search build on these.
//! Loops index like the C (`x[i]`, `L[i]` and `qw[i]` together), so the two
//! read side by side.
#![allow(clippy::needless_range_loop)]

/// `GROUP_MAX_EPS`: below this absolute maximum a group counts as all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// The C macro `MIN(a, b)`: `a < b ? a : b`.
#[inline(always)]
pub fn c_min<T: PartialOrd>(a: T, b: T) -> T {
    if a < b {
        a
    } else {
        b
    }
}

/// The C macro `MAX(a, b)`: `a > b ? a : b`.
#[inline(always)]
pub fn c_max<T: PartialOrd>(a: T, b: T) -> T {
    if a > b {
        a
    } else {
        b
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23
/// and reading the mantissa. Exact for |x| <= 2^22 (which ggml asserts only
/// in debug builds); outside that range it returns the same bits as the C.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// A C float-to-integer conversion as x86-64 gcc compiles it (`cvttss2si`):
/// truncation toward zero, and `INT_MIN` for NaN and values out of the i32
/// range (undefined behaviour in C; this is what llama.cpp's x86 builds do).
/// Narrower C targets (`(int8_t)f`, `(uint8_t)f`) take the low bits of this.
#[inline(always)]
pub fn c_float_to_int(x: f32) -> i32 {
    if !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

/// ggml's `GGML_FP32_TO_FP16` (`ggml_compute_fp32_to_fp16`): round to nearest
/// even, overflow to infinity, NaN to 0x7E00 (with the sign).
#[inline(always)]
pub fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = c_max(shl1_w & 0xFF00_0000, 0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign }) as u16
}

/// ggml's `GGML_FP16_TO_FP32` (exact).
pub fn fp16_to_fp32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// ggml's `GGML_FP32_TO_BF16`: round to nearest even, NaN forced quiet.
pub fn fp32_to_bf16(f: f32) -> u16 {
    let i = f.to_bits();
    if i & 0x7fff_ffff > 0x7f80_0000 {
        return ((i >> 16) | 64) as u16;
    }
    (i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16
}

/// ggml's `GGML_BF16_TO_FP32` (exact).
pub fn bf16_to_fp32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `(amax, max)`: the largest magnitude in `x` and the signed value that has
/// it (the first one on ties), 0 and 0 for an empty or all-zero `x`.
pub fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// Stores `v` as ggml's `ggml_half` (little-endian) at byte `at`.
#[inline(always)]
pub fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
}

/// Reads the `ggml_half` at byte `at` as f32.
#[inline(always)]
pub fn get_f16(b: &[u8], at: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `best_index_int8`: index of the entry of the sorted table `val` nearest
/// to `x` (ties to the upper one), by bisection as in C. IQ4 uses the
/// branch-free `iq4::best_index_iq4`; this is its test reference.
#[cfg(test)]
pub fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    let n = val.len();
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[n - 1] as f32 {
        return n - 1;
    }
    let (mut ml, mut mu) = (0, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < (val[mu] as f32) - x {
        mu - 1
    } else {
        mu
    }
}

/// The weights `make_qx_quants` uses: `qw`, or for `rmse_type` without quant
/// weights the same per-value formula the C evaluates inside its loops.
fn qx_weights<'a>(qw: Option<&'a [f32]>, x: &[f32], rmse_type: i32, buf: &'a mut [f32; 32]) -> &'a [f32] {
    if let Some(w) = qw {
        return &w[..x.len()];
    }
    for (b, &v) in buf.iter_mut().zip(x) {
        *b = match rmse_type {
            1 => v * v,
            2 => 1.0,
            3 => v.abs(),
            _ => v.abs().sqrt(),
        };
    }
    &buf[..x.len()]
}

/// `make_qx_quants`: symmetric quantization of `x` (at most 32 values) to
/// `L` in `[0, 2*nmax)` (stored offset by `nmax`), searching 18 scales around
/// `-nmax/max` for the best weighted fit; returns the scale.
pub fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], mut rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = (-nmax) as f32 / max;
    let clamp = |l: i32| c_max(-nmax, c_min(nmax - 1, l));
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            l_out[i] = (nmax + clamp(l)) as i8;
        }
        return 1.0 / iscale;
    }
    let mut return_early = false;
    if rmse_type < 0 {
        rmse_type = -rmse_type;
        return_early = true;
    }
    let mut buf = [0f32; 32];
    let w = qx_weights(qw, x, rmse_type, &mut buf);
    let l_out = &mut l_out[..n];
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as i8;
        let w = w[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 { 0.5 * (scale + 1.0 / iscale) } else { 1.0 / iscale };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = clamp(nearest_int(iscale * x[i]));
            let w = w[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + clamp(l)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants`: symmetric quantization with an iterative per-value
/// refinement (`do_rmse`), weights `x*x`; `L` offset by `nmax`. Q3_K runs
/// it in lanes (`lanes::q3_lanes`); this is that code's test reference.
#[cfg(test)]
pub fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    let clamp = |l: i32| c_max(-nmax, c_min(nmax - 1, l));
    if do_rmse {
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = clamp(nearest_int(iscale * x[i]));
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l_out[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = clamp(nearest_int(x[i] * sl2 / slx));
                    if new_l != l_out[i] as i32 {
                        slx += w * x[i] * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for l in l_out[..n].iter_mut() {
            *l = l.wrapping_add(nmax as i8);
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// The fixed parameters of one `make_qkx2_quants` / `make_qkx3_quants` search.
#[derive(Clone, Copy, Debug)]
pub struct QkxSearch {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

impl QkxSearch {
    /// The search ggml's `quantize_row_*_impl` paths (with quant weights)
    /// run: 37 scales from `nmax - 0.9` in steps of 0.05, squared error.
    pub const fn with_imatrix(nmax: i32) -> Self {
        QkxSearch { nmax, rmin: -0.9, rdelta: 0.05, nstep: 36, use_mad: false }
    }
}

/// `make_qkx2_quants` (`qkx2 = true`) and `make_qkx3_quants` (`false`):
/// asymmetric quantization to `L` in `[0, nmax]` with a weighted
/// least-squares search over `nstep + 1` scales. Returns `(scale, -min)` as
/// C returns the scale and writes `*the_min`. With weights given (every
/// caller in ggml passes them) the two C functions differ only in
/// `max == min` vs `max <= min` for the flat case.
pub fn make_qkx_quants(
    p: QkxSearch,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    qkx2: bool,
) -> (f32, f32) {
    let n = x.len();
    let nmax = p.nmax;
    // Equal lengths up front, so the loops below carry no bounds checks.
    let (weights, l_out, laux) = (&weights[..n], &mut l_out[..n], &mut laux[..n]);
    let wt = |i: usize| weights[i];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = wt(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = wt(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let flat = if qkx2 { max == min } else { max <= min };
    if flat {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = c_max(0, c_min(nmax, l)) as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += wt(i) * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = c_max(0, c_min(nmax, nearest_int(iscale * (x[i] - min))));
            laux[i] = l as u8;
            let w = wt(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += wt(i) * err(diff);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants`: quantizes the non-negative (sub-block scales or mins)
/// `x` to `L` in `[0, nmax]` with weights `quant_weights`; returns the scale.
pub fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    for &xi in x {
        max = c_max(max, xi);
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = c_min(nmax, nearest_int(iscale_is * x[i]));
            let diff = x[i] - scale_is * l as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = c_min(nmax, nearest_int(iscale * x[i]));
        l_out[i] = l as u8;
        let w = quant_weights[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = c_min(nmax, nearest_int(x[i] * sl2 / slx));
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, -1.5, 3.49].map(nearest_int), [0, 2, 2, 0, -2, 3]);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }

    #[test]
    fn fp16_matches_round_to_nearest_even() {
        for bits in (0..u32::MAX).step_by(4099) {
            let f = f32::from_bits(bits);
            if f.is_nan() {
                assert_eq!(fp32_to_fp16(f) & 0x7fff, 0x7e00);
            } else {
                assert_eq!(fp32_to_fp16(f), half::f16::from_f32(f).to_bits(), "{f:e}");
            }
        }
    }

    #[test]
    fn bf16_matches_round_to_nearest_even() {
        for bits in (0..u32::MAX).step_by(4099) {
            let f = f32::from_bits(bits);
            if !f.is_nan() {
                assert_eq!(fp32_to_bf16(f), half::bf16::from_f32(f).to_bits(), "{f:e}");
            }
        }
    }

    #[test]
    fn c_float_to_int_is_cvttss2si() {
        assert_eq!(
            [1.9, -1.9, f32::NAN, f32::INFINITY, -3e9].map(c_float_to_int),
            [1, -1, i32::MIN, i32::MIN, i32::MIN]
        );
    }

    #[test]
    fn best_index_picks_the_nearest_entry() {
        let v: [i8; 16] = [-10, 0, 5, 20, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41];
        assert_eq!([-50.0, -5.0, -4.9, 2.5, 2.4, 12.5, 99.0].map(|x| best_index_int8(&v, x)), [0, 1, 1, 2, 1, 3, 15]);
    }

    #[test]
    fn flat_and_zero_groups_quantize_to_zero() {
        let mut l = [9i8; 8];
        assert_eq!(make_qx_quants(8, &[0.0; 8], &mut l, 1, None), 0.0);
        assert_eq!(l, [0; 8]);
        let (mut lu, mut aux) = ([9u8; 8], [0u8; 8]);
        let p = QkxSearch { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
        assert_eq!(make_qkx_quants(p, &[0.0; 8], &[1.0; 8], &mut lu, &mut aux, true), (0.0, -0.0));
        assert_eq!(lu, [0; 8]);
        assert_eq!(make_qp_quants(63, &[0.0; 4], &mut lu, &[1.0; 4]), 0.0);
    }

    #[test]
    fn qx_quants_reconstruct_a_linear_ramp() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 - 8.0).collect();
        let mut l = [0i8; 16];
        let d = make_qx_quants(8, &x, &mut l, 1, None);
        for (xi, li) in x.iter().zip(l) {
            assert!((d * (li as f32 - 8.0) - xi).abs() <= d.abs() * 0.5 + 1e-6);
        }
    }
}
