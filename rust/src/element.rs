//! The element types, their exact conversion to f32, and the dtype-erased
//! slices the batch API takes.

use std::slice;

use half::{bf16, f16};

use crate::error::{Error, PqStatus};

/// Element types of tensor values, passed to the C functions as
/// `uint32_t dtype` (a `PQ_DTYPE_*` code; the values are stable).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE binary32, native byte order.
    F32 = 0,
    /// IEEE binary16, native byte order.
    F16 = 1,
    /// bfloat16 (the upper 16 bits of a binary32), native byte order.
    Bf16 = 2,
}

impl Dtype {
    const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// Size (and alignment) of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The numpy / safetensors-style name, e.g. "float32"; also the `dtype`
    /// column of a quantized Arrow batch.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }

    /// The dtype named `name` (see [`Dtype::name`]).
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl TryFrom<u32> for Dtype {
    type Error = Error;

    fn try_from(code: u32) -> Result<Dtype, Error> {
        Dtype::ALL.into_iter().find(|&d| d as u32 == code).ok_or_else(|| {
            Error::new(
                PqStatus::UnsupportedDtype,
                format!("dtype code {code} is not one of PQ_DTYPE_F32 (0), PQ_DTYPE_F16 (1), PQ_DTYPE_BF16 (2)"),
            )
        })
    }
}

/// A float type that converts to f32 exactly and back with round-to-nearest-even.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: Dtype;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// Wraps a slice of this type for the dtype-erased (batch) API.
    fn values(s: &[Self]) -> Values<'_>;
    /// Wraps a writable slice of this type for the dtype-erased (batch) API.
    fn values_mut(s: &mut [Self]) -> ValuesMut<'_>;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn values(s: &[Self]) -> Values<'_> {
        s.into()
    }
    fn values_mut(s: &mut [Self]) -> ValuesMut<'_> {
        s.into()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn values(s: &[Self]) -> Values<'_> {
        s.into()
    }
    fn values_mut(s: &mut [Self]) -> ValuesMut<'_> {
        s.into()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn values(s: &[Self]) -> Values<'_> {
        s.into()
    }
    fn values_mut(s: &mut [Self]) -> ValuesMut<'_> {
        s.into()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // bf16 is the top half of an f32: widening is a shift, always exact.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// A read-only tensor of one of the supported element types, so that a batch
/// can mix dtypes.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// A writable tensor of one of the supported element types.
#[derive(Debug)]
pub enum ValuesMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

macro_rules! each_values {
    ($v:expr, $s:ident => $body:expr) => {
        match $v {
            Values::F32($s) => $body,
            Values::F16($s) => $body,
            Values::BF16($s) => $body,
        }
    };
}

macro_rules! each_values_mut {
    ($v:expr, $s:ident => $body:expr) => {
        match $v {
            ValuesMut::F32($s) => $body,
            ValuesMut::F16($s) => $body,
            ValuesMut::BF16($s) => $body,
        }
    };
}

impl<'a> Values<'a> {
    pub fn dtype(&self) -> Dtype {
        match self {
            Values::F32(_) => Dtype::F32,
            Values::F16(_) => Dtype::F16,
            Values::BF16(_) => Dtype::Bf16,
        }
    }

    /// Number of values (not bytes).
    pub fn len(&self) -> usize {
        each_values!(self, s => s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` values of `dtype` at `ptr`.
    ///
    /// # Safety
    /// `ptr` is non-NULL, aligned for `dtype` and points to `len` values that
    /// stay readable and unchanged for `'a`.
    pub(crate) unsafe fn from_raw(dtype: Dtype, ptr: *const u8, len: usize) -> Values<'a> {
        unsafe {
            match dtype {
                Dtype::F32 => Values::F32(slice::from_raw_parts(ptr.cast(), len)),
                Dtype::F16 => Values::F16(slice::from_raw_parts(ptr.cast(), len)),
                Dtype::Bf16 => Values::BF16(slice::from_raw_parts(ptr.cast(), len)),
            }
        }
    }

    /// The values in `range`. Panics if it is out of bounds.
    pub fn slice(self, range: std::ops::Range<usize>) -> Values<'a> {
        let (_, rest) = self.split_at(range.start);
        rest.split_at(range.len()).0
    }

    /// Splits into `[..mid]` and `[mid..]`. Panics if `mid > len`.
    pub fn split_at(self, mid: usize) -> (Values<'a>, Values<'a>) {
        match self {
            Values::F32(s) => {
                let (a, b) = s.split_at(mid);
                (Values::F32(a), Values::F32(b))
            }
            Values::F16(s) => {
                let (a, b) = s.split_at(mid);
                (Values::F16(a), Values::F16(b))
            }
            Values::BF16(s) => {
                let (a, b) = s.split_at(mid);
                (Values::BF16(a), Values::BF16(b))
            }
        }
    }
}

impl<'a> ValuesMut<'a> {
    pub fn dtype(&self) -> Dtype {
        match self {
            ValuesMut::F32(_) => Dtype::F32,
            ValuesMut::F16(_) => Dtype::F16,
            ValuesMut::BF16(_) => Dtype::Bf16,
        }
    }

    /// Number of values (not bytes).
    pub fn len(&self) -> usize {
        each_values_mut!(self, s => s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` writable values of `dtype` at `ptr`.
    ///
    /// # Safety
    /// As [`Values::from_raw`], and no other reference to the memory exists for `'a`.
    pub(crate) unsafe fn from_raw(dtype: Dtype, ptr: *mut u8, len: usize) -> ValuesMut<'a> {
        unsafe {
            match dtype {
                Dtype::F32 => ValuesMut::F32(slice::from_raw_parts_mut(ptr.cast(), len)),
                Dtype::F16 => ValuesMut::F16(slice::from_raw_parts_mut(ptr.cast(), len)),
                Dtype::Bf16 => ValuesMut::BF16(slice::from_raw_parts_mut(ptr.cast(), len)),
            }
        }
    }

    /// Splits into `[..mid]` and `[mid..]`. Panics if `mid > len`.
    pub fn split_at(self, mid: usize) -> (ValuesMut<'a>, ValuesMut<'a>) {
        match self {
            ValuesMut::F32(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ValuesMut::F32(a), ValuesMut::F32(b))
            }
            ValuesMut::F16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ValuesMut::F16(a), ValuesMut::F16(b))
            }
            ValuesMut::BF16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ValuesMut::BF16(a), ValuesMut::BF16(b))
            }
        }
    }
}

impl<'a> From<&'a [f32]> for Values<'a> {
    fn from(s: &'a [f32]) -> Self {
        Values::F32(s)
    }
}
impl<'a> From<&'a [f16]> for Values<'a> {
    fn from(s: &'a [f16]) -> Self {
        Values::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for Values<'a> {
    fn from(s: &'a [bf16]) -> Self {
        Values::BF16(s)
    }
}
impl<'a> From<&'a mut [f32]> for ValuesMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        ValuesMut::F32(s)
    }
}
impl<'a> From<&'a mut [f16]> for ValuesMut<'a> {
    fn from(s: &'a mut [f16]) -> Self {
        ValuesMut::F16(s)
    }
}
impl<'a> From<&'a mut [bf16]> for ValuesMut<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        ValuesMut::BF16(s)
    }
}
