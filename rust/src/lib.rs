//! pyquant: affine per-group weight quantization (2, 3, 4 or 8 bits) of f32, f16
//! and bf16 tensors.
//!
//! Modules, each using only the ones before it:
//! [`error`] (statuses and errors), [`element`] (the one [`Dtype`] and the
//! element types), [`layout`] (validated sizes of a quantized tensor, and the
//! errors that name a place in it), [`kernel`] (the vectorized kernels over
//! runs of groups; the scalar reference, their test oracle, only under
//! `cfg(test)` or the `reference` feature), [`batch`] (lengths, all-or-nothing
//! checks and threads for many tensors; single-tensor [`quantize`] /
//! [`dequantize`] are batches of one), [`arrow`] (Arrow arrays in and out,
//! and the quantized row format), and [`ffi`], the only module with
//! `extern "C"`: it checks pointers and lengths, builds slices and calls the
//! safe code. The normative scheme is docs/scheme.md.

pub mod arrow;
pub mod batch;
pub mod element;
pub mod error;
pub mod ggml;
pub mod kernel;
pub mod layout;

pub mod ffi;

pub use batch::{dequantize, dequantize_batch, quantize, quantize_batch, BatchError, DequantizeItem, QuantizeItem};
pub use element::{Dtype, Element, Values, ValuesMut};
pub use error::{Error, PqStatus};
pub use layout::Layout;
