//! Test-only exports, compiled with the `test-ffi` cargo feature (test.sh's
//! builds and the fuzz targets turn it on) and declared only in the test
//! header `tests/c/pyquant_test.h`: a shipped library and `include/pyquant.h`
//! have neither.

use super::boundary::{run, PqError};
use crate::arrow;
use crate::error::PqStatus;

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
