//! The C ABI: the only place with `extern "C"`.
//!
//! Each exported function checks pointers and lengths ([`memory`]), turns
//! them into slices, calls the safe kernels, and turns the result into a
//! [`PqStatus`] inside a panic boundary ([`boundary`]). Nothing here
//! quantizes; nothing here re-checks what [`crate::Layout`] checks.

mod arrow;
mod boundary;
mod ggml;
mod memory;
mod quantize;

pub use arrow::*;
pub use boundary::PqError;
pub use ggml::*;
pub use quantize::*;

/// Version of the C ABI. Bumped on any incompatible change of a signature,
/// struct or constant in `pyquant.h`.
pub const PQ_ABI_VERSION: u32 = 3;

/// Capacity of [`PqError::message`], including the terminating NUL.
pub const PQ_ERROR_MESSAGE_CAPACITY: usize = 256;

/// Element type codes, passed as `uint32_t dtype` to the functions that
/// read or write tensor values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PqDtype {
    /// IEEE binary32, native byte order.
    F32 = 0,
    /// IEEE binary16, native byte order.
    F16 = 1,
    /// bfloat16 (the upper 16 bits of a binary32), native byte order.
    Bf16 = 2,
}
