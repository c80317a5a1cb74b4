//! pyquant: affine per-group weight quantization (2, 4 or 8 bits) of f32, f16
//! and bf16 tensors.
//!
//! The safe API lives in [`layout`] (validated sizes of a quantized tensor),
//! [`kernel`] (quantize / dequantize of one tensor over slices) and [`batch`]
//! (many tensors, mixed dtypes and bit widths, on several threads). [`ffi`] is the only
//! module with `extern "C"`; it checks pointers and lengths, builds slices and
//! calls the safe code. [`arrow`] reads and builds Arrow arrays around the
//! same kernels (the C Data Interface structs themselves are [`ffi`]'s).
//! The scheme is the normative one of DESIGN.md.

pub mod arrow;
pub mod batch;
pub mod element;
pub mod error;
pub mod ggml;
pub mod kernel;
pub mod layout;

pub mod ffi;

pub use batch::{dequantize_batch, quantize_batch, BatchError, DequantizeItem, QuantizeItem};
pub use element::{Dtype, Element, Values, ValuesMut};
pub use error::{Error, PqStatus};
pub use kernel::{dequantize, quantize};
pub use layout::Layout;
