//! Validated sizes of a quantized tensor: the rules of docs/scheme.md's memory
//! layout, checked once, with checked arithmetic.

use crate::error::{Error, PqStatus, Result};

/// The shape of one quantization problem: `len` values in rows of `row_len`,
/// split into groups of `group_size`, coded with `bits` bits each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of input values.
    pub len: usize,
    /// Length of the last axis (K).
    pub row_len: usize,
    /// 2, 3, 4 or 8.
    pub bits: u32,
    /// Values per group (G); divides `row_len`.
    pub group_size: usize,
    /// Bytes of packed codes: `len * bits / 8`.
    pub codes_len: usize,
    /// Number of groups, that is the length of `scales` and of `mins`.
    pub n_groups: usize,
    /// How each group's scale and min are chosen and stored (docs/scheme.md).
    pub scheme: Scheme,
    /// Which axis of a 2-D input the groups run along. With `Axis::First`
    /// the input is `row_len` rows of `len / row_len` columns read as its
    /// transpose: output row `c` is input column `c`, and every rule above
    /// is about the transpose (docs/scheme.md, "Axis").
    pub axis: Axis,
}

/// The axis of a 2-D tensor that groups run along: `Last` (-1, along rows,
/// pyquant's original format) or `First` (0, along columns: the bytes of the
/// transpose quantized along its rows).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Axis {
    #[default]
    Last = 0,
    First = 1,
}

impl Axis {
    /// The axis of the C code `axis` (`PQ_AXIS_*`: 0 = last, 1 = first).
    pub fn from_code(axis: u32) -> Result<Axis> {
        match axis {
            0 => Ok(Axis::Last),
            1 => Ok(Axis::First),
            a => Err(Error::new(PqStatus::InvalidScheme, format!("axis must be 0 (last) or 1 (first), got {a}"))),
        }
    }
}

/// How a group's scale and min are chosen: `docs/scheme.md`, "Methods".
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// `scale = (max - min) / qmax`, `min` = the group's minimum.
    #[default]
    MinMax = 0,
    /// The error-minimizing search of docs/scheme.md.
    Search = 1,
}

/// The precision scales and mins are rounded to (they are always handed
/// over as f32; with `F16` every one is exactly a float16 value).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScaleDtype {
    #[default]
    F32 = 0,
    F16 = 1,
}

/// The method and scale precision of a quantization; the default is
/// pyquant's original format (min-max, f32 scales).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scheme {
    pub method: Method,
    pub scale_dtype: ScaleDtype,
}

impl Method {
    /// The method's name in Python, checkpoints and Arrow batches.
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Search => "search",
        }
    }

    /// The method named `name` ([`Method::name`]).
    pub fn from_name(name: &str) -> Result<Method> {
        [Method::MinMax, Method::Search].into_iter().find(|m| m.name() == name).ok_or_else(|| {
            Error::new(PqStatus::InvalidScheme, format!("method {name:?} is not \"minmax\" or \"search\""))
        })
    }
}

impl Scheme {
    /// The scheme of the C codes `method` (`PQ_METHOD_*`) and `scale_dtype`
    /// (`PQ_SCALE_DTYPE_*`).
    pub fn from_codes(method: u32, scale_dtype: u32) -> Result<Scheme> {
        let method = match method {
            0 => Method::MinMax,
            1 => Method::Search,
            m => {
                return Err(Error::new(
                    PqStatus::InvalidScheme,
                    format!("method must be 0 (minmax) or 1 (search), got {m}"),
                ))
            }
        };
        let scale_dtype = match scale_dtype {
            0 => ScaleDtype::F32,
            1 => ScaleDtype::F16,
            d => {
                return Err(Error::new(
                    PqStatus::InvalidScheme,
                    format!("scale_dtype must be 0 (float32) or 1 (float16), got {d}"),
                ))
            }
        };
        Ok(Scheme { method, scale_dtype })
    }
}

impl Layout {
    /// Checks every rule of the layout and computes the output sizes.
    ///
    /// A tensor with zero rows (`len == 0`) is valid and has empty outputs;
    /// a row length of 0 is an error.
    pub fn new(len: usize, row_len: usize, bits: u32, group_size: usize) -> Result<Layout> {
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(Error::new(PqStatus::InvalidBits, format!("bits must be 2, 3, 4 or 8, got {bits}")));
        }
        if row_len == 0 {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                "the last axis (row length) is 0: there is nothing to quantize along it",
            ));
        }
        if group_size == 0 {
            return Err(Error::new(PqStatus::InvalidGroupSize, "group_size must be at least 1, got 0"));
        }
        let group_bits = group_size
            .checked_mul(bits as usize)
            .ok_or_else(|| Error::new(PqStatus::InvalidGroupSize, format!("group_size {group_size} is too large")))?;
        if group_bits % 8 != 0 {
            return Err(Error::new(
                PqStatus::InvalidGroupSize,
                format!(
                    "group_size * bits must be a multiple of 8 so that groups fill whole bytes, \
                     got {group_size} * {bits} = {group_bits}"
                ),
            ));
        }
        if group_size > row_len {
            return Err(Error::new(
                PqStatus::InvalidGroupSize,
                format!(
                    "group_size {group_size} is larger than the row length {row_len} \
                     (a group never spans two rows)"
                ),
            ));
        }
        if !row_len.is_multiple_of(group_size) {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!("the last axis ({row_len}) must be a multiple of group_size ({group_size})"),
            ));
        }
        if !len.is_multiple_of(row_len) {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!("input length {len} is not a multiple of the row length {row_len}"),
            ));
        }
        let codes_bits = len.checked_mul(bits as usize).ok_or_else(|| {
            Error::new(PqStatus::SizeOverflow, format!("input length {len} times {bits} bits overflows usize"))
        })?;
        Ok(Layout {
            len,
            row_len,
            bits,
            group_size,
            codes_len: codes_bits / 8,
            n_groups: len / group_size,
            scheme: Scheme::default(),
            axis: Axis::Last,
        })
    }

    /// The same layout grouped along `axis`: with `Axis::First` the input
    /// is `row_len` rows of `len / row_len` columns, read as its transpose.
    pub fn with_axis(self, axis: Axis) -> Layout {
        Layout { axis, ..self }
    }

    /// The number of output rows (input columns with `Axis::First`).
    pub fn rows(&self) -> usize {
        self.len / self.row_len
    }

    /// The same layout over the first `rows` output rows only (a tile).
    pub fn first_rows(&self, rows: usize) -> Layout {
        let len = rows * self.row_len;
        Layout { len, codes_len: len * self.bits as usize / 8, n_groups: len / self.group_size, ..*self }
    }

    /// The same layout quantized with `scheme`.
    pub fn with_scheme(self, scheme: Scheme) -> Layout {
        Layout { scheme, ..self }
    }

    /// Bytes of packed codes in one group.
    pub fn group_code_bytes(&self) -> usize {
        self.group_size * self.bits as usize / 8
    }

    /// Largest code value, `2**bits - 1`.
    pub fn qmax(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// The error for the non-finite `value` at `offset` within `group`.
    #[cold]
    pub fn value_error(&self, group: usize, offset: usize, value: f32) -> Error {
        let index = group * self.group_size + offset;
        Error::new(
            PqStatus::NonFinite,
            format!(
                "{value} at flat index {index} (row {}, column {}) in group {group}: \
                 inputs must be finite",
                index / self.row_len,
                index % self.row_len
            ),
        )
    }

    /// The error for a group whose range `hi - lo` overflows f32.
    #[cold]
    pub fn range_error(&self, group: usize, lo: f32, hi: f32) -> Error {
        Error::new(
            PqStatus::NonFinite,
            format!(
                "group {group} (row {}) spans [{lo:e}, {hi:e}]: its range overflows float32",
                group * self.group_size / self.row_len
            ),
        )
    }
}

/// The error for a non-finite scale or min given to dequantize.
#[cold]
pub fn params_error(group: usize, scale: f32, min: f32) -> Error {
    Error::new(PqStatus::NonFinite, format!("group {group} has a non-finite scale ({scale}) or min ({min})"))
}

/// Checks a buffer length against the layout. `exact`: an input must have
/// exactly the expected length; an output at least.
pub fn check_len(what: &str, got: usize, want: usize, exact: bool) -> Result<()> {
    if got == want || (!exact && got > want) {
        return Ok(());
    }
    let need = if exact { "exactly" } else { "at least" };
    Err(Error::new(PqStatus::BufferTooSmall, format!("{what} has {got} elements, needs {need} {want}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<Layout>) -> PqStatus {
        r.err().map(|e| e.status).unwrap_or(PqStatus::Ok)
    }

    #[test]
    fn sizes() {
        let l = Layout::new(1024 * 256, 256, 4, 128).unwrap();
        assert_eq!(l.codes_len, 1024 * 128);
        assert_eq!(l.n_groups, 2048);
        assert_eq!(l.group_code_bytes(), 64);
        assert_eq!(l.qmax(), 15);
        let l = Layout::new(12, 4, 2, 4).unwrap();
        assert_eq!((l.codes_len, l.n_groups), (3, 3));
        let empty = Layout::new(0, 128, 8, 128).unwrap();
        assert_eq!((empty.codes_len, empty.n_groups), (0, 0));
    }

    #[test]
    fn rules() {
        for bits in [0, 1, 5, 6, 7, 16, u32::MAX] {
            assert_eq!(status(Layout::new(128, 128, bits, 128)), PqStatus::InvalidBits);
        }
        assert_eq!(status(Layout::new(128, 128, 4, 0)), PqStatus::InvalidGroupSize);
        assert_eq!(status(Layout::new(128, 128, 4, 3)), PqStatus::InvalidGroupSize);
        assert_eq!(status(Layout::new(128, 128, 2, 2)), PqStatus::InvalidGroupSize);
        assert_eq!(status(Layout::new(128, 128, 3, 4)), PqStatus::InvalidGroupSize);
        assert_eq!(Layout::new(128, 128, 3, 8).unwrap().group_code_bytes(), 3);
        assert_eq!(status(Layout::new(128, 128, 4, 256)), PqStatus::InvalidGroupSize);
        assert_eq!(status(Layout::new(128, 128, 4, usize::MAX)), PqStatus::InvalidGroupSize);
        assert_eq!(status(Layout::new(128, 128, 8, usize::MAX / 4)), PqStatus::InvalidGroupSize);
        assert_eq!(status(Layout::new(120, 120, 4, 16)), PqStatus::ShapeMismatch);
        assert_eq!(status(Layout::new(130, 128, 4, 128)), PqStatus::ShapeMismatch);
        assert_eq!(status(Layout::new(0, 0, 4, 128)), PqStatus::ShapeMismatch);
        let huge = usize::MAX / 128 * 128;
        assert_eq!(status(Layout::new(huge, 128, 4, 128)), PqStatus::SizeOverflow);
    }
}
