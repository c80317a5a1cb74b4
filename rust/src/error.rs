//! Errors of the safe API. Each [`Error`] carries the [`PqStatus`] that the C
//! ABI returns for it, so the status mapping exists in one place.

use std::fmt;

/// Status code returned by every fallible `pq_` function.
///
/// Values are explicit and stable: they are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PqStatus {
    /// Success.
    Ok = 0,
    /// A panic was caught at the C boundary (a bug in pyquant).
    Panic = 1,
    /// A NULL pointer was passed with a non-zero length, or a required out-pointer was NULL.
    NullPointer = 2,
    /// A pointer is not aligned for its element type.
    Misaligned = 3,
    /// An output buffer overlaps an input or another output.
    Overlap = 4,
    /// An output buffer is smaller than the result, or an input length does not match.
    BufferTooSmall = 5,
    /// A size computation overflowed.
    SizeOverflow = 6,
    /// `bits` is not 2, 3, 4 or 8.
    InvalidBits = 7,
    /// The group size is 0, larger than the row, or `group_size * bits` is not a multiple of 8.
    InvalidGroupSize = 8,
    /// The row length is 0, does not divide the input length, or is not a multiple of the group size.
    ShapeMismatch = 9,
    /// A value is NaN or infinite, or a group's range overflows f32.
    NonFinite = 10,
    /// The dtype code is not one of `PQ_DTYPE_*`.
    UnsupportedDtype = 11,
    /// An Arrow input is released, breaks the C Data Interface rules (missing
    /// buffers or children, bad lengths or offsets), holds nulls, or lacks a
    /// column pyquant needs.
    InvalidArrow = 12,
    /// An internal error that is not a panic (e.g. building or exporting a
    /// result failed): a bug in pyquant, like `Panic`.
    Internal = 13,
    /// The GGML type id is not one of the types pyquant implements.
    UnsupportedGgmlType = 14,
    /// An importance matrix has the wrong length or a negative or non-finite
    /// entry, or is missing for a type that needs one.
    InvalidImatrix = 15,
    /// The quantization method or scale dtype code is unknown, or importance
    /// weights were given for a method that does not use them.
    InvalidScheme = 16,
}

/// An error of the safe API: a status plus a message that names the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub status: PqStatus,
    pub message: String,
}

impl Error {
    pub fn new(status: PqStatus, message: impl Into<String>) -> Self {
        Error { status, message: message.into() }
    }

    /// A `PQ_STATUS_INTERNAL` error: "internal error {what}: {cause}".
    #[cold]
    pub fn internal(what: &str, cause: impl fmt::Display) -> Self {
        Error::new(PqStatus::Internal, format!("internal error {what}: {cause}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
