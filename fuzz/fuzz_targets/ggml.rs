//! pq_ggml_quantize and pq_ggml_dequantize on parameters decoded from the
//! fuzz input (any type id, dtype, row length, values, importance matrix,
//! output length and thread count). An oracle predicts from the parameters
//! alone whether quantize must succeed. On success the bytes past the
//! result are untouched, one thread writes the same bytes, and the result
//! dequantizes; on error the output is untouched. Byte-exactness against
//! ggml itself is the Python tests' job (tests/test_ggml.py).
#![no_main]

use std::os::raw::c_void;
use std::ptr;

use pyquant::ffi::{pq_ggml_dequantize, pq_ggml_quantize};
use pyquant::ggml::{quantized_len, GgmlType, TYPES};
use pyquant::PqStatus;
use pyquant_fuzz::*;

pyquant_fuzz::fuzz_target!(run);

/// Largest tensor (in values) the target builds.
const MAX_VALUES: usize = 4096;

/// Canary bytes after the output's expected end.
const TAIL: usize = 16;

fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let type_id = match r.u8() % 8 {
        0 => r.u32(),
        _ => TYPES[r.below(TYPES.len())].ty as u32,
    };
    let ty = GgmlType::try_from(type_id).ok();
    let dtype = r.dtype_code();
    let block = ty.map_or(32, |t| t.info().block);
    let row_len = match r.u8() % 8 {
        0 => r.size(300),
        _ => block * (1 + r.below(3)),
    };
    let n = match r.u8() % 16 {
        0 => r.size(MAX_VALUES).min(MAX_VALUES),
        _ => row_len.saturating_mul(r.below(4)).min(MAX_VALUES),
    };
    let bytes = r.element_bytes(dtype, n);
    // 8-aligned storage for any dtype.
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        *w = u64::from_le_bytes(b);
    }
    let imatrix: Option<Vec<f32>> = match r.u8() % 4 {
        0 => None,
        1 => Some(
            r.values_f32(row_len.min(MAX_VALUES))
                .iter()
                .map(|v| v.abs())
                .collect(),
        ),
        2 => {
            let len = r.below(300);
            Some(r.values_f32(len))
        }
        _ => Some(r.values_f32(row_len.min(MAX_VALUES))),
    };
    let need = ty.and_then(|t| quantized_len(t, n, row_len).ok());
    let out_len = match (need, r.u8() % 4) {
        (Some(need), 0) => need.saturating_sub(1 + r.below(4)),
        (Some(need), 1) => need + r.below(8),
        (Some(need), _) => need,
        (None, _) => r.below(512),
    };
    let threads = 1 + r.below(3);

    let valid_imatrix = imatrix
        .as_ref()
        .is_none_or(|w| w.len() == row_len && w.iter().all(|v| v.is_finite() && *v >= 0.0));
    let finite = dtype <= 2 && to_f32(dtype, &bytes).iter().all(|v| v.is_finite());
    let must_succeed =
        dtype <= 2 && need.is_some_and(|need| out_len >= need) && valid_imatrix && finite;

    let quantize = |out: &mut [u8], threads: usize| {
        let mut e = new_error();
        let (w_ptr, w_len) = imatrix
            .as_ref()
            .map_or((ptr::null(), 0), |w| (w.as_ptr(), w.len()));
        // SAFETY: every pointer is valid for its length for the whole call.
        let status = unsafe {
            pq_ggml_quantize(
                type_id,
                dtype,
                words.as_ptr() as *const c_void,
                n,
                row_len,
                w_ptr,
                w_len,
                threads,
                out.as_mut_ptr(),
                out_len,
                &mut e,
            )
        };
        check_error(status, &e);
        status
    };
    let mut out = vec![CANARY; out_len + TAIL];
    let status = quantize(&mut out, threads);
    trace("ggml_quantize", status);
    assert_eq!(status == PqStatus::Ok, must_succeed, "status {status:?}");
    let Some(need) = need.filter(|_| must_succeed) else {
        assert!(out.iter().all(|&b| b == CANARY), "output written on error");
        return;
    };
    assert!(
        out[need..].iter().all(|&b| b == CANARY),
        "bytes past the result written"
    );
    let mut serial = vec![CANARY; out_len + TAIL];
    assert_eq!(quantize(&mut serial, 1), PqStatus::Ok);
    assert_eq!(
        first_diff(&out, &serial),
        None,
        "bytes depend on the thread count"
    );

    let mut back = vec![0f32; n];
    let mut e = new_error();
    // SAFETY: as above.
    let status = unsafe {
        pq_ggml_dequantize(
            type_id,
            out.as_ptr(),
            need,
            row_len,
            0,
            threads,
            back.as_mut_ptr() as *mut c_void,
            n,
            &mut e,
        )
    };
    check_error(status, &e);
    assert_eq!(status, PqStatus::Ok);
}
