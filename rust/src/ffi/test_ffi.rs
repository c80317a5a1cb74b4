//! Test-only exports, compiled with the `test-ffi` cargo feature (test.sh's
//! builds and the fuzz targets turn it on) and declared only in the test
//! header `tests/c/pyquant_test.h`: a shipped library and `include/pyquant.h`
//! have neither.

use std::slice;

use super::boundary::{run, PqError};
use crate::arrow;
use crate::error::{Error, PqStatus};
use crate::kernel::reference;
use crate::layout::{Layout, Scheme};

/// Test hook: panics inside the panic boundary, to show that a panic becomes
/// `PQ_STATUS_PANIC` with a message instead of aborting the host.
#[no_mangle]
pub unsafe extern "C" fn pq_debug_panic(error: *mut PqError) -> PqStatus {
    run(error, || panic!("pq_debug_panic was called"))
}

/// Number of arrays exported by pyquant's Arrow functions that still hold
/// memory (their release callback, or a moved child's, has not run yet).
/// For leak tests; cannot fail.
#[no_mangle]
pub extern "C" fn pq_arrow_live_exports() -> usize {
    arrow::live_exports()
}

/// Test hook: quantizes the `len` f32 values at `x` (rows of `row_len`) with
/// the scalar definition of method search (`kernel::reference::search_quantize`)
/// and the scale dtype code `scale_dtype`, into `codes`, `scales` and `mins`
/// of the layout's lengths; `importance` is NULL or `row_len` weights, not
/// checked. For tests that compare the vectorized search with it.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn pq_debug_search_reference(
    x: *const f32,
    len: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    scale_dtype: u32,
    importance: *const f32,
    codes: *mut u8,
    scales: *mut f32,
    mins: *mut f32,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let layout = Layout::new(len, row_len, bits, group_size)?.with_scheme(Scheme::from_codes(1, scale_dtype)?);
        if x.is_null() || codes.is_null() || scales.is_null() || mins.is_null() || len == 0 {
            return Err(Error::new(PqStatus::NullPointer, "pq_debug_search_reference needs data and outputs"));
        }
        // SAFETY: the caller passes buffers of the layout's lengths (a test hook).
        let (x, codes, scales, mins, importance) = unsafe {
            (
                slice::from_raw_parts(x, len),
                slice::from_raw_parts_mut(codes, layout.codes_len),
                slice::from_raw_parts_mut(scales, layout.n_groups),
                slice::from_raw_parts_mut(mins, layout.n_groups),
                (!importance.is_null()).then(|| slice::from_raw_parts(importance, row_len)),
            )
        };
        reference::search_quantize(x, &layout, importance, codes, scales, mins)
    })
}
