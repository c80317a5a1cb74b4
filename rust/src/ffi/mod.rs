//! The C ABI: the only place with `extern "C"`.
//!
//! Each exported function checks pointers and lengths ([`memory`]), turns
//! them into slices, calls the safe kernels, and turns the result into a
//! [`PqStatus`] inside a panic boundary ([`boundary`]). Nothing here
//! quantizes; nothing here re-checks what [`crate::Layout`] checks.
//!
//! The safety contract of every `unsafe extern "C"` function (valid pointers
//! with their lengths, ownership) is its doc comment in `pyquant.h` and the
//! header's preamble, written for C callers, not a Rust `# Safety` section.
#![allow(clippy::missing_safety_doc)]

mod arrow;
mod boundary;
mod ggml;
mod memory;
mod quantize;
#[cfg(feature = "test-ffi")]
mod test_ffi;

pub use arrow::*;
pub use boundary::PqError;
pub use ggml::*;
pub use quantize::*;
#[cfg(feature = "test-ffi")]
pub use test_ffi::*;

/// Version of the C ABI. Bumped on any incompatible change of a signature,
/// struct or constant in `pyquant.h`, or of a documented guarantee (4:
/// outputs may be partly written on a bad value; 5: `PqQuantizeItem` carries
/// the method, scale dtype and importance weights; 6: `pq_quantize_block`).
pub const PQ_ABI_VERSION: u32 = 6;

/// Capacity of [`PqError::message`], including the terminating NUL.
pub const PQ_ERROR_MESSAGE_CAPACITY: usize = 256;
