//! The GGML types pyquant reads and writes: one table of name, GGML type id,
//! block size and bytes per block.

use std::ffi::CStr;

use crate::error::{Error, PqStatus, Result};

/// A GGML tensor type. Discriminants are ggml's `enum ggml_type` values
/// (also gguf-py's `GGMLQuantizationType`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Iq4Nl = 20,
    Iq4Xs = 23,
    Bf16 = 30,
}

/// One row of the type table.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    pub ty: GgmlType,
    /// ggml's name (`ggml_type_name`) in upper case, as gguf-py's
    /// `GGMLQuantizationType` spells it; NUL-terminated for the C ABI.
    pub c_name: &'static CStr,
    /// Values per block.
    pub block: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// Whether ggml refuses to quantize without an importance matrix
    /// (`ggml_quantize_requires_imatrix`): only IQ2_XXS, IQ2_XS and IQ1_S,
    /// none of the types here, so the column documents the rule.
    pub needs_imatrix: bool,
}

const fn t(ty: GgmlType, c_name: &'static CStr, block: usize, bytes: usize) -> TypeInfo {
    TypeInfo { ty, c_name, block, bytes, needs_imatrix: false }
}

/// Every supported type, in GGML id order.
pub const TYPES: [TypeInfo; 15] = [
    t(GgmlType::F32, c"F32", 1, 4),
    t(GgmlType::F16, c"F16", 1, 2),
    t(GgmlType::Q4_0, c"Q4_0", 32, 18),
    t(GgmlType::Q4_1, c"Q4_1", 32, 20),
    t(GgmlType::Q5_0, c"Q5_0", 32, 22),
    t(GgmlType::Q5_1, c"Q5_1", 32, 24),
    t(GgmlType::Q8_0, c"Q8_0", 32, 34),
    t(GgmlType::Q2K, c"Q2_K", 256, 84),
    t(GgmlType::Q3K, c"Q3_K", 256, 110),
    t(GgmlType::Q4K, c"Q4_K", 256, 144),
    t(GgmlType::Q5K, c"Q5_K", 256, 176),
    t(GgmlType::Q6K, c"Q6_K", 256, 210),
    t(GgmlType::Iq4Nl, c"IQ4_NL", 32, 18),
    t(GgmlType::Iq4Xs, c"IQ4_XS", 256, 136),
    t(GgmlType::Bf16, c"BF16", 1, 2),
];

impl GgmlType {
    pub fn info(self) -> &'static TypeInfo {
        TYPES.iter().find(|i| i.ty == self).expect("every GgmlType is in TYPES")
    }

    pub fn name(self) -> &'static str {
        self.info().c_name.to_str().expect("type names are ASCII")
    }

    /// Bytes of one row of `row_len` values, checking that `row_len` is a
    /// positive multiple of the block size.
    pub fn row_bytes(self, row_len: usize) -> Result<usize> {
        let info = self.info();
        if row_len == 0 || !row_len.is_multiple_of(info.block) {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!(
                    "row length {row_len} is not a positive multiple of the {} block size {}",
                    self.name(),
                    info.block
                ),
            ));
        }
        (row_len / info.block).checked_mul(info.bytes).ok_or_else(|| {
            Error::new(
                PqStatus::SizeOverflow,
                format!("a row of {row_len} {} values overflows the byte count", self.name()),
            )
        })
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = Error;

    fn try_from(id: u32) -> Result<Self> {
        TYPES.iter().find(|i| i.ty as u32 == id).map(|i| i.ty).ok_or_else(|| {
            let known: Vec<String> = TYPES.iter().map(|i| format!("{}={}", i.ty.name(), i.ty as u32)).collect();
            Error::new(
                PqStatus::UnsupportedGgmlType,
                format!("GGML type {id} is not supported (supported: {})", known.join(", ")),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_refused() {
        for info in TYPES {
            assert_eq!(GgmlType::try_from(info.ty as u32).unwrap(), info.ty);
        }
        for id in [4, 5, 9, 15, 16, 24, 31, 99] {
            let e = GgmlType::try_from(id).unwrap_err();
            assert_eq!(e.status, PqStatus::UnsupportedGgmlType);
            assert!(e.message.contains(&format!("GGML type {id}")));
        }
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q4K.row_bytes(512).unwrap(), 288);
        assert_eq!(GgmlType::F16.row_bytes(3).unwrap(), 6);
        assert_eq!(GgmlType::Q8_0.row_bytes(33).unwrap_err().status, PqStatus::ShapeMismatch);
        assert_eq!(GgmlType::Q6K.row_bytes(0).unwrap_err().status, PqStatus::ShapeMismatch);
    }
}
