//! The reference kernels: the affine per-group scheme of docs/scheme.md written
//! the plain scalar way, one value at a time. This is the code pyquant
//! shipped first; the fast kernels (`kernel::fast`, run by `crate::batch`) must
//! give exactly its bytes, and the tests compare them bit for bit. Not used
//! on any production path.
//!
//! Groups are `group_size` consecutive values; since rows are a multiple of
//! the group size, a flat tensor is just a sequence of groups, and group `i`
//! owns bytes `i * G * bits / 8 ..` of the codes and entry `i` of scales/mins.

use super::search::{check_group, qkx_search, stored};
use super::{pack_codes, unpack_code, ROUND_MAGIC};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::ggml::search::make_qkx_quants;
use crate::layout::{check_len, params_error, Layout, Method};

/// Quantizes `input` laid out as `layout` into `codes`, `scales` and `mins`.
///
/// Every group is checked before anything is written: on error the outputs
/// are untouched. Outputs may be longer than needed; only the prefix the
/// layout names is written.
pub fn quantize<T: Element>(
    input: &[T],
    layout: &Layout,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    check_lens(input.len(), codes, scales, mins, layout)?;
    if layout.len == 0 {
        return Ok(());
    }
    let g = layout.group_size;
    let qmax = layout.qmax() as f32;
    // Pass 1: find any non-finite value or overflowing range before writing.
    for (i, group) in input.chunks_exact(g).enumerate() {
        let (lo, hi, finite) = group_range(group);
        if !finite {
            return Err(non_finite_error(input, layout, i));
        }
        if !(hi - lo).is_finite() {
            return Err(layout.range_error(i, lo, hi));
        }
    }
    // Pass 2: write. The group is in L1 after its range is found, so the
    // second read of each group is cheap.
    let codes = &mut codes[..layout.codes_len];
    let groups = input
        .chunks_exact(g)
        .zip(codes.chunks_exact_mut(layout.group_code_bytes()))
        .zip(scales.iter_mut().zip(mins.iter_mut()));
    for ((group, group_codes), (scale_out, min_out)) in groups {
        let (lo, hi, _) = group_range(group);
        let scale = (hi - lo) / qmax;
        quantize_group(group, lo, scale, layout.bits, group_codes);
        *scale_out = scale;
        *min_out = lo;
    }
    Ok(())
}

/// The length checks of a quantize call: the input exactly, outputs at least.
fn check_lens(input: usize, codes: &[u8], scales: &[f32], mins: &[f32], layout: &Layout) -> Result<()> {
    check_len("input", input, layout.len, true)?;
    check_len("codes", codes.len(), layout.codes_len, false)?;
    check_len("scales", scales.len(), layout.n_groups, false)?;
    check_len("mins", mins.len(), layout.n_groups, false)
}

/// Dequantizes codes, scales and mins laid out as `layout` into `output`
/// (`mins + q * scales` in f32, then converted to `T`).
///
/// Non-finite scales or mins are an error, found before anything is written.
pub fn dequantize<T: Element>(
    codes: &[u8],
    scales: &[f32],
    mins: &[f32],
    layout: &Layout,
    output: &mut [T],
) -> Result<()> {
    check_len("codes", codes.len(), layout.codes_len, true)?;
    check_len("scales", scales.len(), layout.n_groups, true)?;
    check_len("mins", mins.len(), layout.n_groups, true)?;
    check_len("output", output.len(), layout.len, false)?;
    if let Some(i) = (0..layout.n_groups).find(|&i| !(scales[i].is_finite() && mins[i].is_finite())) {
        return Err(params_error(i, scales[i], mins[i]));
    }
    if layout.len == 0 {
        return Ok(());
    }
    let groups = codes
        .chunks_exact(layout.group_code_bytes())
        .zip(output[..layout.len].chunks_exact_mut(layout.group_size))
        .zip(scales.iter().zip(mins.iter()));
    for ((group_codes, out), (&scale, &min)) in groups {
        dequantize_group(group_codes, scale, min, layout.bits, out);
    }
    Ok(())
}

/// Quantizes `input` with `layout.scheme` (docs/scheme.md, "Methods and
/// scale dtypes"), one group at a time: the scalar definition of the bytes
/// `kernel::search` computes on many groups at once (method search), and of
/// min-max with float16 scales (candidate 1 alone, as the fast kernels).
/// `importance`: per-column weights (`row_len` of them) or none (all 1.0).
/// Errors in group order; on error the groups before it have been written.
pub fn search_quantize<T: Element>(
    input: &[T],
    layout: &Layout,
    importance: Option<&[f32]>,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    check_lens(input.len(), codes, scales, mins, layout)?;
    let g = layout.group_size;
    let qmax = layout.qmax() as f32;
    let (mut x, mut w) = (vec![0f32; g], vec![1f32; g]);
    let (mut q, mut best, mut l, mut laux) = (vec![0u8; g], vec![0u8; g], vec![0u8; g], vec![0u8; g]);
    let groups = input
        .chunks_exact(g)
        .zip(codes.chunks_exact_mut(layout.group_code_bytes()))
        .zip(scales.iter_mut().zip(mins.iter_mut()));
    for (index, ((group, group_codes), (scale_out, min_out))) in groups.enumerate() {
        for (d, v) in x.iter_mut().zip(group) {
            *d = v.to_f32();
        }
        // Candidate 1: min-max, rounded as stored.
        let ((lo, hi), (mut scale, mut min)) = check_group(&x, layout, index)?;
        if let Some(imp) = importance {
            let col = index * g % layout.row_len;
            w.copy_from_slice(&imp[col..col + g]);
        }
        let best_err = assign(&x, &w, scale, min, qmax, &mut best);
        // Candidate 2: the make_qkx2_quants search, taken only if strictly better.
        if layout.scheme.method == Method::Search && hi > lo {
            let (d, neg_min) = make_qkx_quants(qkx_search(layout.qmax()), &x, &w, &mut l, &mut laux, true);
            if let Some((d, m)) = stored(layout.scheme.scale_dtype, d, -neg_min + 0.0) {
                if d >= 0.0 {
                    let err = assign(&x, &w, d, m, qmax, &mut q);
                    if err < best_err {
                        (scale, min) = (d, m);
                        std::mem::swap(&mut q, &mut best);
                    }
                }
            }
        }
        pack_codes(&best, layout.bits, group_codes);
        *scale_out = scale;
        *min_out = min;
    }
    Ok(())
}

/// The code of `v` for a stored `scale` and `min`: `(v - min) / scale`, each
/// rounded to f32, clamped to `[0, qmax]`, rounded half to even; 0 when
/// `scale` is 0. The min-max formula when `min` is the group's minimum.
fn search_code(v: f32, min: f32, scale: f32, qmax: f32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    let t = (v - min) / scale;
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < qmax { t } else { qmax };
    (t + ROUND_MAGIC).to_bits() as u8
}

/// Writes the codes of `x` into `q` and returns the weighted squared error
/// of their dequantized values `min + q * scale`, summed in index order.
fn assign(x: &[f32], w: &[f32], scale: f32, min: f32, qmax: f32, q: &mut [u8]) -> f32 {
    let mut err = 0f32;
    for ((&v, &wi), qi) in x.iter().zip(w).zip(q.iter_mut()) {
        *qi = search_code(v, min, scale, qmax);
        let diff = (min + *qi as f32 * scale) - v;
        err += wi * (diff * diff);
    }
    err
}

/// `(lo, hi, all_finite)` of a group in f32. `+ 0.0` turns -0.0 into +0.0 so
/// that -0.0 behaves like 0.0 and the stored min is never -0.0.
#[inline(always)]
fn group_range<T: Element>(group: &[T]) -> (f32, f32, bool) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    let mut finite = true;
    for &v in group {
        let x = v.to_f32();
        // Comparisons, not f32::min/max, so that the loop vectorizes.
        lo = if x < lo { x } else { lo };
        hi = if x > hi { x } else { hi };
        finite &= x.is_finite();
    }
    (lo + 0.0, hi + 0.0, finite)
}

#[cold]
fn non_finite_error<T: Element>(input: &[T], layout: &Layout, group: usize) -> Error {
    let g = layout.group_size;
    let start = group * g;
    let (offset, value) = input[start..start + g]
        .iter()
        .map(|v| v.to_f32())
        .enumerate()
        .find(|(_, x)| !x.is_finite())
        .expect("group_range reported a non-finite value");
    layout.value_error(group, offset, value)
}

fn quantize_group<T: Element>(group: &[T], lo: f32, scale: f32, bits: u32, codes: &mut [u8]) {
    if scale == 0.0 {
        // A constant group: every code is 0 (and dequantizes to lo exactly).
        codes.fill(0);
        return;
    }
    let qmax = ((1u32 << bits) - 1) as f32;
    let q: Vec<u8> = group
        .iter()
        .map(|&v| {
            // Subtraction and division each rounded to f32: no FMA, no reciprocal.
            let t = (v.to_f32() - lo) / scale;
            // t >= 0 since v >= lo; clamping before rounding equals clamping after.
            let t = if t < qmax { t } else { qmax };
            ((t + ROUND_MAGIC) - ROUND_MAGIC) as u8
        })
        .collect();
    pack_codes(&q, bits, codes);
}

fn dequantize_group<T: Element>(codes: &[u8], scale: f32, min: f32, bits: u32, out: &mut [T]) {
    for (i, o) in out.iter_mut().enumerate() {
        let q = unpack_code(codes, i, bits);
        *o = T::from_f32(min + q as f32 * scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PqStatus;
    use half::{bf16, f16};

    /// The scheme written the slow, obvious way, one value at a time.
    fn reference(x: &[f32], bits: u32, g: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let qmax = ((1u32 << bits) - 1) as f32;
        let mut codes = vec![0u8; x.len() * bits as usize / 8];
        let (mut scales, mut mins) = (vec![], vec![]);
        for (gi, group) in x.chunks(g).enumerate() {
            let lo = group.iter().cloned().fold(f32::INFINITY, f32::min) + 0.0;
            let hi = group.iter().cloned().fold(f32::NEG_INFINITY, f32::max) + 0.0;
            let scale = (hi - lo) / qmax;
            for (j, &v) in group.iter().enumerate() {
                let q = if scale == 0.0 { 0 } else { ((v - lo) / scale).round_ties_even().clamp(0.0, qmax) as u32 };
                let i = gi * g + j;
                codes[i * bits as usize / 8] |= (q << (i * bits as usize % 8)) as u8;
            }
            scales.push(scale);
            mins.push(lo);
        }
        (codes, scales, mins)
    }

    fn run<T: Element>(x: &[T], row: usize, bits: u32, g: usize) -> Result<(Vec<u8>, Vec<f32>, Vec<f32>)> {
        let l = Layout::new(x.len(), row, bits, g)?;
        let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        quantize(x, &l, &mut c, &mut s, &mut m)?;
        Ok((c, s, m))
    }

    /// Deterministic pseudo-random values with a wide spread of magnitudes.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * 10f32.powi(((s >> 20) % 7) as i32 - 3)
            })
            .collect()
    }

    #[test]
    fn magic_rounding_is_round_half_even() {
        for i in 0..=(255 * 64) {
            let t = i as f32 / 64.0;
            assert_eq!((t + ROUND_MAGIC) - ROUND_MAGIC, t.round_ties_even(), "{t}");
        }
        for t in [0.5f32, 1.5, 2.5, 254.5, 0.49999997, 2.5000002, 1e-30] {
            assert_eq!((t + ROUND_MAGIC) - ROUND_MAGIC, t.round_ties_even(), "{t}");
        }
    }

    #[test]
    fn matches_reference_all_bits() {
        for (seed, &(bits, g, row)) in
            [(2, 4, 8), (2, 16, 64), (4, 2, 2), (4, 32, 128), (8, 1, 3), (8, 128, 256)].iter().enumerate()
        {
            let x = values(row * 5, seed as u64);
            assert_eq!(run(&x, row, bits, g).unwrap(), reference(&x, bits, g), "bits {bits} g {g}");
        }
    }

    #[test]
    fn packing_is_little_endian_within_bytes() {
        // Group of 4 with lo = 0, hi = 3: codes are the values themselves.
        let (c, s, m) = run(&[0.0f32, 1.0, 2.0, 3.0], 4, 2, 4).unwrap();
        assert_eq!((c, s, m), (vec![0b11_10_01_00], vec![1.0], vec![0.0]));
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let (c, _, _) = run(&x, 16, 4, 16).unwrap();
        assert_eq!(c, vec![0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]);
        // 3 bits: codes 0..=7 as one little-endian bit stream, 8 codes in 3
        // bytes; code 2 (0b010) straddles bytes 0 and 1, code 5 bytes 1 and 2.
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let (c, s, _) = run(&x, 8, 3, 8).unwrap();
        let w: u32 = (0..8).map(|k| k << (3 * k)).sum();
        assert_eq!((c, s), (vec![w as u8, (w >> 8) as u8, (w >> 16) as u8], vec![1.0]));
        assert_eq!(w, 0xFAC688);
    }

    #[test]
    fn ties_round_to_even_and_negative_zero() {
        // lo = 0, hi = 30, scale = 2: x/2 = 0.5, 1.5, 2.5 -> 0, 2, 2.
        let x = [0.0f32, 1.0, 3.0, 5.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (c, s, _) = run(&x, 16, 4, 16).unwrap();
        assert_eq!(s, vec![2.0]);
        assert_eq!(c[0..3], [0x00, 0x22, 0x0F]);
        let (_, s, m) = run(&[-0.0f32, -0.0], 2, 4, 2).unwrap();
        assert_eq!((s[0].to_bits(), m[0].to_bits()), (0, 0));
    }

    #[test]
    fn constant_and_zero_groups_round_trip_exactly() {
        let x = [0.0f32; 8].iter().chain([1.25f32; 8].iter()).cloned().collect::<Vec<_>>();
        let (c, s, m) = run(&x, 16, 4, 8).unwrap();
        assert_eq!((c, s.clone(), m.clone()), (vec![0; 8], vec![0.0, 0.0], vec![0.0, 1.25]));
        let l = Layout::new(16, 16, 4, 8).unwrap();
        let mut out = vec![9.0f32; 16];
        dequantize(&[0; 8], &s, &m, &l, &mut out).unwrap();
        assert_eq!(out, x);
    }

    #[test]
    fn subnormal_groups_have_finite_scales() {
        let tiny = f32::from_bits(1);
        let x: Vec<f32> = (0..16).map(|i| tiny * i as f32).collect();
        let (c, s, m) = run(&x, 16, 4, 16).unwrap();
        assert!(s[0].is_finite() && s[0] > 0.0);
        let l = Layout::new(16, 16, 4, 16).unwrap();
        let mut out = vec![0.0f32; 16];
        dequantize(&c, &s, &m, &l, &mut out).unwrap();
        for (a, b) in x.iter().zip(&out) {
            assert!((a - b).abs() <= s[0] / 2.0 + 16.0 * tiny);
        }
    }

    #[test]
    fn non_finite_is_an_error_and_writes_nothing() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = values(256, 1);
            x[200] = bad;
            let l = Layout::new(256, 128, 4, 64).unwrap();
            let (mut c, mut s, mut m) = (vec![7u8; l.codes_len], vec![7.0; 4], vec![7.0; 4]);
            let e = quantize(&x, &l, &mut c, &mut s, &mut m).unwrap_err();
            assert_eq!(e.status, PqStatus::NonFinite);
            assert!(e.message.contains("flat index 200") && e.message.contains("group 3"), "{}", e.message);
            assert!(c.iter().all(|&b| b == 7) && s == vec![7.0; 4] && m == vec![7.0; 4]);
        }
    }

    #[test]
    fn overflowing_range_is_an_error() {
        let e = run(&[f32::MAX, -f32::MAX], 2, 4, 2).unwrap_err();
        assert_eq!(e.status, PqStatus::NonFinite);
        assert!(e.message.contains("overflows"), "{}", e.message);
        assert!(run(&[f32::MAX, f32::MAX], 2, 4, 2).is_ok());
    }

    #[test]
    fn half_types_match_f32_of_converted_values() {
        let x32 = values(512, 3);
        let xh: Vec<f16> = x32.iter().map(|&v| f16::from_f32(v)).collect();
        let xb: Vec<bf16> = x32.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
        let wb: Vec<f32> = xb.iter().map(|v| Element::to_f32(*v)).collect();
        assert_eq!(run(&xh, 128, 4, 32).unwrap(), run(&wh, 128, 4, 32).unwrap());
        assert_eq!(run(&xb, 128, 8, 128).unwrap(), run(&wb, 128, 8, 128).unwrap());
        let mut nan = xh.clone();
        nan[7] = f16::NAN;
        assert_eq!(run(&nan, 128, 4, 32).unwrap_err().status, PqStatus::NonFinite);
        let mut inf = xb.clone();
        inf[9] = bf16::INFINITY;
        assert_eq!(run(&inf, 128, 4, 32).unwrap_err().status, PqStatus::NonFinite);
    }

    #[test]
    fn dequantize_error_bound_and_requantize() {
        for bits in [2, 3, 4, 8] {
            let x = values(1024, bits as u64);
            let (c, s, m) = run(&x, 256, bits, 64).unwrap();
            let l = Layout::new(1024, 256, bits, 64).unwrap();
            let mut y = vec![0.0f32; 1024];
            dequantize(&c, &s, &m, &l, &mut y).unwrap();
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                let scale = s[i / 64];
                assert!((a - b).abs() <= scale / 2.0 + 4.0 * f32::EPSILON * a.abs().max(m[i / 64].abs()));
            }
            assert_eq!(run(&y, 256, bits, 64).unwrap().0, c);
        }
    }

    #[test]
    fn length_mismatches_are_errors() {
        let l = Layout::new(8, 8, 4, 8).unwrap();
        let x = [1.0f32; 8];
        let (mut c, mut s, mut m) = (vec![0u8; 3], vec![0.0; 1], vec![0.0; 1]);
        assert_eq!(quantize(&x, &l, &mut c, &mut s, &mut m).unwrap_err().status, PqStatus::BufferTooSmall);
        assert_eq!(quantize(&x[..7], &l, &mut [0; 4], &mut s, &mut m).unwrap_err().status, PqStatus::BufferTooSmall);
        let mut y = [0.0f32; 7];
        assert_eq!(dequantize(&[0; 4], &s, &m, &l, &mut y).unwrap_err().status, PqStatus::BufferTooSmall);
        assert_eq!(dequantize(&[0; 4], &[f32::NAN], &m, &l, &mut [0.0f32; 8]).unwrap_err().status, PqStatus::NonFinite);
        // Longer outputs are fine; only the prefix is written.
        let mut c = vec![0xAAu8; 6];
        quantize(&x, &l, &mut c, &mut s, &mut m).unwrap();
        assert_eq!(c, vec![0, 0, 0, 0, 0xAA, 0xAA]);
    }
}
