//! Groups quantized with `method = search`: the searched scale and min of
//! docs/scheme.md, "Methods and scale dtypes" (min-max with float16 scales
//! runs in the fast kernels, which call [`stored`] for the rounding). One
//! scalar implementation, which defines these bytes: there is no second,
//! vectorized copy to keep in step. It uses only IEEE add, subtract, multiply, divide and
//! compare on f32 (Rust never contracts `a * b + c` into an FMA), so it gives
//! the same bytes whatever instruction set the batch runs with.
//!
//! The search proposes a candidate with llama.cpp's `make_qkx2_quants`
//! (shared with the K-quants: [`crate::ggml::search::make_qkx_quants`]), but
//! the codes, and the choice between candidates, always come from this
//! format's own formula on the scale and min *as stored*, so that what is
//! measured is what dequantize gives back.

use super::fast::{f16_bits_to_f32, f32_to_f16_bits};
use super::{pack_codes, ROUND_MAGIC};
use crate::element::{Element, Values};
use crate::error::{Error, PqStatus, Result};
use crate::ggml::search::{make_qkx_quants, QkxSearch};
use crate::layout::{Layout, Method, ScaleDtype};

/// The `make_qkx2_quants` parameters of the search: 21 inverse scales
/// `(qmax - 1.0 + 0.1 * k) / (max - min)`, `k = 0..=20`, squared error.
fn qkx_search(qmax: u32) -> QkxSearch {
    QkxSearch { nmax: qmax as i32, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false }
}

/// Quantizes every group of a piece (`first_group` is the index of its first
/// group in the tensor) with `layout.scheme`. `importance` is the tensor's
/// per-column weights (length `row_len`, already checked), used by the
/// search only. Errors as the min-max kernel, in group order, plus a group
/// whose min or scale does not fit float16 when scales are stored as f16.
pub(crate) fn encode(
    input: Values<'_>,
    layout: &Layout,
    first_group: usize,
    importance: Option<&[f32]>,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    match input {
        Values::F32(x) => encode_groups(x, layout, first_group, importance, codes, scales, mins),
        Values::F16(x) => encode_groups(x, layout, first_group, importance, codes, scales, mins),
        Values::BF16(x) => encode_groups(x, layout, first_group, importance, codes, scales, mins),
    }
}

/// Per-group work buffers, allocated once per piece.
struct Scratch {
    x: Vec<f32>,
    w: Vec<f32>,
    q: Vec<u8>,
    best: Vec<u8>,
    l: Vec<u8>,
    laux: Vec<u8>,
}

fn encode_groups<T: Element>(
    x: &[T],
    layout: &Layout,
    first_group: usize,
    importance: Option<&[f32]>,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    let g = layout.group_size;
    let qmax = layout.qmax() as f32;
    let mut s =
        Scratch { x: vec![0.0; g], w: vec![1.0; g], q: vec![0; g], best: vec![0; g], l: vec![0; g], laux: vec![0; g] };
    let groups =
        x.chunks_exact(g).zip(codes.chunks_exact_mut(layout.group_code_bytes())).zip(scales.iter_mut().zip(mins));
    for (j, ((group, group_codes), (scale_out, min_out))) in groups.enumerate() {
        let index = first_group + j;
        for (d, v) in s.x.iter_mut().zip(group) {
            *d = v.to_f32();
        }
        if let Some(offset) = s.x.iter().position(|v| !v.is_finite()) {
            return Err(layout.value_error(index, offset, s.x[offset]));
        }
        let (lo, hi) = range(&s.x);
        if !(hi - lo).is_finite() {
            return Err(layout.range_error(index, lo, hi));
        }
        if let Some(w) = importance {
            let col = index * g % layout.row_len;
            s.w.copy_from_slice(&w[col..col + g]);
        }
        // Candidate 1: min-max, rounded as stored.
        let (mut scale, mut min) = stored(layout.scheme.scale_dtype, (hi - lo) / qmax, lo)
            .ok_or_else(|| f16_error(index, lo, (hi - lo) / qmax))?;
        let best_err = assign(&s.x, &s.w, scale, min, qmax, &mut s.best);
        // Candidate 2: the make_qkx2_quants search, taken only if strictly better.
        if layout.scheme.method == Method::Search && hi > lo {
            let (d, neg_min) = make_qkx_quants(qkx_search(layout.qmax()), &s.x, &s.w, &mut s.l, &mut s.laux, true);
            if let Some((d, m)) = stored(layout.scheme.scale_dtype, d, -neg_min + 0.0) {
                if d >= 0.0 {
                    let err = assign(&s.x, &s.w, d, m, qmax, &mut s.q);
                    if err < best_err {
                        (scale, min) = (d, m);
                        std::mem::swap(&mut s.q, &mut s.best);
                    }
                }
            }
        }
        pack_codes(&s.best, layout.bits, group_codes);
        *scale_out = scale;
        *min_out = min;
    }
    Ok(())
}

/// `(lo, hi)` of finite values; `+ 0.0` turns -0.0 into +0.0, as min-max does.
fn range(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (x[0], x[0]);
    for &v in x {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
    }
    (lo + 0.0, hi + 0.0)
}

/// `(scale, min)` rounded (to nearest, ties to even) to the scale dtype, or
/// `None` if either is then not finite.
pub(crate) fn stored(dtype: ScaleDtype, scale: f32, min: f32) -> Option<(f32, f32)> {
    let round = |v: f32| match dtype {
        ScaleDtype::F32 => v,
        ScaleDtype::F16 => f16_bits_to_f32(f32_to_f16_bits(v)),
    };
    let (scale, min) = (round(scale), round(min));
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

/// The code of `v` for a stored `scale` and `min`: `(v - min) / scale`, each
/// rounded to f32, clamped to `[0, qmax]`, rounded half to even. The same
/// bytes as the min-max kernel's formula when `min` is the group's minimum.
#[inline(always)]
fn code(v: f32, min: f32, scale: f32, qmax: f32) -> u8 {
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
        *qi = code(v, min, scale, qmax);
        let diff = (min + *qi as f32 * scale) - v;
        err += wi * (diff * diff);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::reference;
    use crate::layout::Scheme;

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

    fn run(x: &[f32], layout: &Layout, importance: Option<&[f32]>) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let (mut c, mut s, mut m) =
            (vec![0u8; layout.codes_len], vec![0f32; layout.n_groups], vec![0f32; layout.n_groups]);
        encode(Values::F32(x), layout, 0, importance, &mut c, &mut s, &mut m).unwrap();
        (c, s, m)
    }

    fn sq_err(x: &[f32], layout: &Layout, (c, s, m): &(Vec<u8>, Vec<f32>, Vec<f32>)) -> f64 {
        let mut y = vec![0f32; x.len()];
        reference::dequantize(c, s, m, layout, &mut y).unwrap();
        x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
    }

    #[test]
    fn default_scheme_gives_the_min_max_bytes() {
        for bits in [2, 3, 4, 8] {
            let x = heavy_tailed(4096, bits as u64);
            let l = Layout::new(x.len(), 256, bits, 64).unwrap();
            let got = run(&x, &l, None);
            let mut want = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
            reference::quantize(&x, &l, &mut want.0, &mut want.1, &mut want.2).unwrap();
            assert_eq!(got, want, "bits {bits}");
        }
    }

    /// Min-max with float16 scales runs in the fast kernels: the same bytes
    /// as this module's candidate 1, on every instruction set and dtype.
    #[test]
    fn fast_float16_min_max_is_candidate_one() {
        for bits in [2, 3, 4, 8] {
            let mut x = heavy_tailed(64 * 256, 11 + bits as u64);
            x[5] = 70000.0; // group 0's min-max overflows float16: an error in both
            let l = Layout::new(x.len(), 256, bits, 64)
                .unwrap()
                .with_scheme(Scheme { method: Method::MinMax, scale_dtype: ScaleDtype::F16 });
            let halves: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
            for input in [Values::F32(&x), Values::F32(&x[256..]), Values::F16(&halves[256..])] {
                let l = Layout::new(input.len(), 256, bits, 64).unwrap().with_scheme(l.scheme);
                let mut want = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
                let want_r = encode(input, &l, 0, None, &mut want.0, &mut want.1, &mut want.2);
                for isa in crate::kernel::Isa::available() {
                    let mut got = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
                    let got_r = super::super::fast::encode(isa, input, &l, 0, &mut got.0, &mut got.1, &mut got.2);
                    assert_eq!(got_r, want_r, "bits {bits} {isa:?}");
                    if want_r.is_ok() {
                        assert_eq!(got, want, "bits {bits} {isa:?}");
                    }
                }
            }
        }
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
                    let pick = |r: &(Vec<u8>, Vec<f32>, Vec<f32>)| {
                        (r.0[gi * cb..(gi + 1) * cb].to_vec(), vec![r.1[gi]], vec![r.2[gi]])
                    };
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
        let err_first = |r: &(Vec<u8>, Vec<f32>, Vec<f32>)| {
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
        let l = Layout::new(8, 8, 4, 8)
            .unwrap()
            .with_scheme(Scheme { method: Method::MinMax, scale_dtype: ScaleDtype::F16 });
        let (mut c, mut s, mut m) = (vec![0u8; 4], vec![0f32; 1], vec![0f32; 1]);
        let x = [-1.0e6f32, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let e = encode(Values::F32(&x), &l, 0, None, &mut c, &mut s, &mut m).unwrap_err();
        assert_eq!(e.status, PqStatus::NonFinite);
        assert!(e.message.contains("float16"), "{}", e.message);
        let x = [0.0f32, 1.0, f32::NAN, 2.0, 3.0, 4.0, 5.0, 6.0];
        let e = encode(Values::F32(&x), &l, 0, None, &mut c, &mut s, &mut m).unwrap_err();
        assert!(e.message.contains("flat index 2"), "{}", e.message);
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
