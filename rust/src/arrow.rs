//! The Arrow path in safe Rust: tensors held in Arrow arrays in, quantized
//! record batches out, and back.
//!
//! An input holds one tensor (a float32 or float16 array) or a batch of them
//! (a struct array with columns `name`, `weights` and optional `shape`). Each
//! tensor's values are read in place and all tensors are quantized in one
//! [`crate::batch::quantize_batch`] call (the same kernels as every path);
//! the result is a struct array of [`quantized_fields`] whose codes, scales
//! and mins buffers are the vectors the kernel wrote, handed to Arrow without
//! a copy. `format` owns that row format (schema, the rules of quantized and
//! carried-over rows, the one reader and writer of rows); `dequantize` is the
//! way back, through [`crate::batch::dequantize_batch`].
//!
//! Moving C Data Interface structs in and out and checking their raw pointers
//! is `ffi/arrow.rs`'s job; this module sees imported [`ArrayData`] only.
//! Every buffer of a result holds one shared [`ExportToken`], so
//! [`live_exports`] counts results that still have a buffer alive.

use std::ops::Range;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int64Type};
use arrow_array::{
    make_array, Array, ArrayRef, GenericListArray, LargeBinaryArray, ListArray, OffsetSizeTrait, StringArray,
    StructArray,
};
use arrow_buffer::{ArrowNativeType, Buffer, MutableBuffer, OffsetBuffer, ScalarBuffer, ToByteSlice};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, FieldRef, Fields};

use crate::batch::{dequantize_batch, quantize_batch, DequantizeItem, QuantizeItem};
use crate::element::{Dtype, Element, Values, ValuesMut};
use crate::error::{Error, PqStatus, Result};
use crate::layout::{check_len, Axis, Layout, Method, Scheme};

mod dequantize;
mod extension;
mod format;
#[cfg(test)]
pub(crate) mod tests;

pub use dequantize::{dequantize, dequantized_fields, raw_fields, Dequantized};
pub use format::{check_dequantize_type, check_quantized, quantized_fields, row, RowParts};
use format::{quantized_batch, Encoded, RowMeta};

/// Column names of an input batch.
const NAME: &str = "name";
const WEIGHTS: &str = "weights";
const SHAPE: &str = "shape";

const EXPECTED_INPUT: &str = "a float32/float16 array, or a struct (record batch) of name (a string), \
     weights (a list of float32/float16) and optional shape (a list of integers); other columns are passed through";

/// What to do with float64 weights (numpy's, duckdb's DOUBLE[], polars' Float64 default).
const CAST_HINT: &str = "float64 is not quantized: cast to float32 first (pyarrow: \
     .cast(pa.list_(pa.float32())), polars: pl.List(pl.Float32), duckdb: ::FLOAT[])";

fn item(value: DataType) -> FieldRef {
    Arc::new(Field::new_list_field(value, true))
}

// ---------------------------------------------------------------------------
// Live exports

static LIVE_EXPORTS: AtomicUsize = AtomicUsize::new(0);

/// Number of results built by [`quantize`] / [`dequantize`] that still have a
/// buffer alive (for an exported result: whose release has not freed
/// everything yet). For tests: it returns to 0 once every result is released.
pub fn live_exports() -> usize {
    LIVE_EXPORTS.load(Ordering::SeqCst)
}

/// Shared by every buffer of one result; counted in [`live_exports`] until
/// the last buffer is dropped.
struct ExportToken;

impl ExportToken {
    fn new() -> Arc<ExportToken> {
        LIVE_EXPORTS.fetch_add(1, Ordering::SeqCst);
        Arc::new(ExportToken)
    }
}

impl Drop for ExportToken {
    fn drop(&mut self) {
        LIVE_EXPORTS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A vector or buffer that Arrow borrows as a buffer without copying it.
struct Tracked<D> {
    data: D,
    _token: Arc<ExportToken>,
}

impl<T: ArrowNativeType> AsRef<[u8]> for Tracked<Vec<T>> {
    fn as_ref(&self) -> &[u8] {
        self.data.to_byte_slice()
    }
}

impl AsRef<[u8]> for Tracked<MutableBuffer> {
    fn as_ref(&self) -> &[u8] {
        self.data.as_slice()
    }
}

/// The small buffers of one result (offsets, names, shapes, bits...)
/// written one after another into one allocation, each 8-byte aligned:
/// one Arrow buffer, sliced by [`Output::small`], rather than an
/// allocation (with its owner and reference count) each.
struct Small(MutableBuffer);

impl Small {
    fn with_capacity(bytes: usize) -> Small {
        Small(MutableBuffer::with_capacity(bytes))
    }

    /// Appends `values`; returns their byte range.
    fn push<T: ArrowNativeType>(&mut self, values: impl IntoIterator<Item = T>) -> Range<usize> {
        let start = self.0.len();
        self.0.extend(values);
        let end = self.0.len();
        self.0.extend_zeros(end.next_multiple_of(8) - end);
        start..end
    }

    /// Appends the i32 offsets of `items` (a string column), then their
    /// bytes; returns both ranges.
    fn strings<'s>(
        &mut self,
        items: impl Iterator<Item = &'s str> + Clone,
        column: &str,
    ) -> Result<(Range<usize>, Range<usize>)> {
        offset_i32(items.clone().map(str::len).sum(), column)?;
        let ends = items.clone().scan(0i32, |end, s| {
            *end += s.len() as i32; // fits: the total was checked above
            Some(*end)
        });
        let offsets = self.push(std::iter::once(0i32).chain(ends));
        let data = self.push(items.flat_map(str::bytes));
        Ok((offsets, data))
    }
}

/// Builds the arrays of one result; all their buffers share one token.
struct Output {
    token: Arc<ExportToken>,
}

impl Output {
    fn new() -> Output {
        Output { token: ExportToken::new() }
    }

    /// `data` as an Arrow buffer: the vector's own allocation, not a copy.
    fn buffer<D: Send + 'static>(&self, data: D) -> Buffer
    where
        Tracked<D>: AsRef<[u8]>,
    {
        Buffer::from(bytes::Bytes::from_owner(Tracked { data, _token: Arc::clone(&self.token) }))
    }

    /// `N` buffers, the pieces of one allocation (one `malloc` instead of
    /// `N`; warm memory when a freed result's block is reused), of `lens`
    /// bytes each and each 8-byte aligned, written by `fill`. The block is
    /// not zeroed (that would be one more pass over the codes): `fill` must
    /// write every byte of every piece and read none before writing it
    /// (the kernel's outputs: it assigns every byte of every group, tested
    /// by `tests::every_output_byte_is_written`); the padding after each piece is
    /// zeroed here. On error the block is freed, unexposed.
    fn block<const N: usize>(
        &self,
        lens: [usize; N],
        fill: impl FnOnce([&mut [u8]; N]) -> Result<()>,
    ) -> Result<[Buffer; N]> {
        let mut starts = [0usize; N];
        let mut end = 0usize;
        for (start, &len) in starts.iter_mut().zip(&lens) {
            *start = end;
            end = end.checked_add(len).and_then(|e| e.checked_next_multiple_of(8)).ok_or_else(|| {
                Error::new(PqStatus::SizeOverflow, "the result's buffers together overflow the address space")
            })?;
        }
        let mut words: Vec<u64> = Vec::with_capacity(end / 8);
        let base = words.as_mut_ptr() as *mut u8;
        // Tests fill the block with a pattern first: a byte `fill` left
        // unwritten would show as a difference between two patterns.
        #[cfg(test)]
        // SAFETY: the capacity holds `end` bytes.
        unsafe {
            ptr::write_bytes(base, tests::BLOCK_PATTERN.load(Ordering::Relaxed), end)
        };
        let pieces = std::array::from_fn(|i| {
            let (start, len) = (starts[i], lens[i]);
            // SAFETY: start..start + len and its padding up to the next
            // multiple of 8 lie within the capacity (end bytes), and the
            // pieces are disjoint. u8 has no invalid values; the
            // uninitialised bytes are only written (see above) before
            // `set_len` exposes them.
            unsafe {
                ptr::write_bytes(base.add(start + len), 0, (start + len).next_multiple_of(8) - (start + len));
                std::slice::from_raw_parts_mut(base.add(start), len)
            }
        });
        fill(pieces)?;
        // SAFETY: every byte of the capacity is written: the pieces by
        // `fill`, the padding above.
        unsafe { words.set_len(end / 8) };
        let block = self.buffer(words);
        Ok(std::array::from_fn(|i| block.slice_with_length(starts[i], lens[i])))
    }

    /// The pieces of `small` as Arrow buffers of one allocation: `piece(range)`.
    fn small(&self, small: Small) -> impl Fn(Range<usize>) -> Buffer {
        let block = self.buffer(small.0);
        move |r: Range<usize>| block.slice_with_length(r.start, r.len())
    }

    fn scalars<T: ArrowNativeType>(&self, data: Vec<T>) -> ScalarBuffer<T> {
        let len = data.len();
        ScalarBuffer::new(self.buffer(data), 0, len)
    }

    fn list<T: arrow_array::ArrowPrimitiveType>(&self, offsets: Vec<i32>, values: Vec<T::Native>) -> ArrayRef {
        let values = arrow_array::PrimitiveArray::<T>::new(self.scalars(values), None);
        let field = item(T::DATA_TYPE);
        Arc::new(ListArray::new(field, OffsetBuffer::new(self.scalars(offsets)), Arc::new(values), None))
    }

    fn strings<'s>(&self, items: impl Iterator<Item = &'s str>, column: &str) -> Result<ArrayRef> {
        let mut offsets = vec![0i32];
        let mut data = Vec::new();
        for s in items {
            data.extend_from_slice(s.as_bytes());
            offsets.push(offset_i32(data.len(), column)?);
        }
        Ok(Arc::new(StringArray::new(OffsetBuffer::new(self.scalars(offsets)), self.buffer(data), None)))
    }
}

/// A piece of [`Output::block`] as f32 values.
fn f32s(bytes: &mut [u8]) -> &mut [f32] {
    // SAFETY: f32 has no invalid bit patterns; the bytes are only written
    // before they are exposed, as `Output::block` requires.
    let (head, floats, tail) = unsafe { bytes.align_to_mut::<f32>() };
    assert!(head.is_empty() && tail.is_empty(), "block pieces are 8-byte aligned and hold whole floats");
    floats
}

fn offset_i32(n: usize, column: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::new(
            PqStatus::SizeOverflow,
            format!("column {column} would hold {n} values, more than a 32-bit offset allows: split the batch"),
        )
    })
}

fn checked_add(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_add(b).ok_or_else(|| Error::new(PqStatus::SizeOverflow, format!("the total size of {what} overflows")))
}

// ---------------------------------------------------------------------------
// Errors

fn invalid(message: impl Into<String>) -> Error {
    Error::new(PqStatus::InvalidArrow, message)
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::new(PqStatus::UnsupportedDtype, message)
}

/// An error of one tensor, prefixed with which one.
fn in_tensor(e: Error, name: &str, row: usize) -> Error {
    Error::new(e.status, format!("tensor {name:?} (row {row}): {}", e.message))
}

fn no_nulls(array: &dyn Array, what: &str) -> Result<()> {
    match array.null_count() {
        0 => Ok(()),
        n => Err(invalid(format!("{what} has {n} null value(s): nulls are not supported"))),
    }
}

fn validate(data: &ArrayData) -> Result<()> {
    data.validate_full().map_err(|e| invalid(format!("the input breaks the Arrow format: {e}")))
}

// ---------------------------------------------------------------------------
// Reading columns in place

/// A float32 / float16 array's values, borrowed from its buffers.
fn read_values(array: &dyn Array) -> Result<Values<'_>> {
    match array.data_type() {
        DataType::Float32 => Ok(Values::F32(array.as_primitive::<Float32Type>().values())),
        DataType::Float16 => Ok(Values::F16(array.as_primitive::<Float16Type>().values())),
        DataType::Float64 => Err(unsupported(CAST_HINT)),
        other => Err(unsupported(format!("values of type {other} are not float32 or float16"))),
    }
}

/// The value type of a list, large list, list view, large list view or
/// fixed-size list.
fn list_value_type(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => Some(f.data_type()),
        _ => None,
    }
}

fn is_string(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// A list-like type of integers (a shape column: duckdb writes list<int32>,
/// others list<int64> or list<uint64>).
fn is_int_list(dt: &DataType) -> bool {
    list_value_type(dt).is_some_and(|v| v.is_integer())
}

/// An integer array's values as i64: borrowed for int64, converted for the
/// other integer types (shapes are a few values per tensor).
fn int_values<'a>(array: &'a dyn Array, column: &str) -> Result<std::borrow::Cow<'a, [i64]>> {
    use arrow_array::types::*;
    use std::borrow::Cow;
    fn widen<T: arrow_array::ArrowPrimitiveType>(array: &dyn Array, column: &str) -> Result<Cow<'static, [i64]>>
    where
        T::Native: TryInto<i64> + Copy + std::fmt::Display,
    {
        let values = array.as_primitive::<T>().values();
        values
            .iter()
            .map(|&v| {
                v.try_into().map_err(|_| {
                    Error::new(PqStatus::ShapeMismatch, format!("column {column}: value {v} is too large"))
                })
            })
            .collect::<Result<Vec<i64>>>()
            .map(Cow::Owned)
    }
    match array.data_type() {
        DataType::Int64 => Ok(Cow::Borrowed(array.as_primitive::<Int64Type>().values())),
        DataType::Int32 => widen::<Int32Type>(array, column),
        DataType::Int16 => widen::<Int16Type>(array, column),
        DataType::Int8 => widen::<Int8Type>(array, column),
        DataType::UInt64 => widen::<UInt64Type>(array, column),
        DataType::UInt32 => widen::<UInt32Type>(array, column),
        DataType::UInt16 => widen::<UInt16Type>(array, column),
        DataType::UInt8 => widen::<UInt8Type>(array, column),
        other => Err(unsupported(format!("column {column} holds {other}, not integers"))),
    }
}

/// A list-like column of integers (shapes), read as i64: row `i` is
/// `values[ranges[i]]`.
struct IntLists<'a> {
    ranges: Vec<Range<usize>>,
    values: std::borrow::Cow<'a, [i64]>,
}

impl<'a> IntLists<'a> {
    fn read(array: &'a dyn Array, column: &str) -> Result<IntLists<'a>> {
        let list = ListColumn::read(array, column)?;
        Ok(IntLists { values: int_values(list.values, column)?, ranges: list.ranges })
    }

    fn row(&self, i: usize) -> &[i64] {
        &self.values[self.ranges[i].clone()]
    }
}

/// A list-like column: row `i` is `values[ranges[i]]`. Nulls are rejected,
/// at the list level and inside every row's range.
struct ListColumn<'a> {
    ranges: Vec<Range<usize>>,
    values: &'a dyn Array,
}

impl<'a> ListColumn<'a> {
    fn read(array: &'a dyn Array, column: &str) -> Result<ListColumn<'a>> {
        no_nulls(array, &format!("column {column}"))?;
        let (ranges, values) = match array.data_type() {
            DataType::List(_) => offset_ranges(array.as_list::<i32>(), column)?,
            DataType::LargeList(_) => offset_ranges(array.as_list::<i64>(), column)?,
            DataType::ListView(_) => view_ranges(array.as_list_view::<i32>(), column)?,
            DataType::LargeListView(_) => view_ranges(array.as_list_view::<i64>(), column)?,
            DataType::FixedSizeList(_, size) => {
                let list = array.as_fixed_size_list();
                let size = usize::try_from(*size)
                    .map_err(|_| invalid(format!("column {column} has a negative list size {size}")))?;
                let ranges = (0..list.len()).map(|i| i * size..(i + 1) * size).collect();
                (ranges, list.values().as_ref())
            }
            other => return Err(unsupported(format!("column {column} has type {other}, not a list"))),
        };
        for (row, r) in ranges.iter().enumerate() {
            if r.start > r.end || r.end > values.len() {
                return Err(invalid(format!("column {column} row {row}: offsets {r:?} are out of bounds")));
            }
            if let Some(nulls) = values.nulls() {
                let n = nulls.slice(r.start, r.len()).null_count();
                if n > 0 {
                    return Err(invalid(format!(
                        "column {column} row {row} holds {n} null value(s): nulls are not supported"
                    )));
                }
            }
        }
        Ok(ListColumn { ranges, values })
    }
}

fn offset_ranges<'a, O: OffsetSizeTrait>(
    list: &'a GenericListArray<O>,
    column: &str,
) -> Result<(Vec<Range<usize>>, &'a dyn Array)> {
    let to_usize = |o: O| o.to_usize().ok_or_else(|| invalid(format!("column {column} has a negative offset")));
    let ranges =
        list.value_offsets().windows(2).map(|w| Ok(to_usize(w[0])?..to_usize(w[1])?)).collect::<Result<Vec<_>>>()?;
    Ok((ranges, list.values().as_ref()))
}

/// A list view's rows: `offsets[i]..offsets[i] + sizes[i]` (rows may
/// overlap or come in any order; bounds are checked by the caller).
fn view_ranges<'a, O: OffsetSizeTrait>(
    list: &'a arrow_array::GenericListViewArray<O>,
    column: &str,
) -> Result<(Vec<Range<usize>>, &'a dyn Array)> {
    let bad = || invalid(format!("column {column} has a negative or overflowing list view offset or size"));
    let ranges = list
        .offsets()
        .iter()
        .zip(list.sizes().iter())
        .map(|(&o, &n)| {
            let start = o.to_usize().ok_or_else(bad)?;
            Ok(start..start.checked_add(n.to_usize().ok_or_else(bad)?).ok_or_else(bad)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((ranges, list.values().as_ref()))
}

fn strings<'a>(array: &'a dyn Array, column: &str) -> Result<Vec<&'a str>> {
    no_nulls(array, &format!("column {column}"))?;
    match array.data_type() {
        DataType::Utf8 => Ok(array.as_string::<i32>().iter().map(|s| s.unwrap_or_default()).collect()),
        DataType::LargeUtf8 => Ok(array.as_string::<i64>().iter().map(|s| s.unwrap_or_default()).collect()),
        DataType::Utf8View => Ok(array.as_string_view().iter().map(|s| s.unwrap_or_default()).collect()),
        other => Err(unsupported(format!("column {column} has type {other}, not utf8"))),
    }
}

/// Reads a shape row: non-negative dimensions whose product is `len`.
fn shape_of(dims: &[i64], len: usize) -> Result<Vec<usize>> {
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::new(PqStatus::ShapeMismatch, format!("shape {dims:?} has a negative dimension")))
        })
        .collect::<Result<Vec<usize>>>()?;
    if shape.is_empty() {
        return Err(Error::new(PqStatus::ShapeMismatch, "shape is empty: a tensor needs at least one axis"));
    }
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(len) {
        return Err(Error::new(
            PqStatus::ShapeMismatch,
            format!("shape {dims:?} does not match the {len} values of its weights"),
        ));
    }
    Ok(shape)
}

// ---------------------------------------------------------------------------
// Quantize

/// The layout of a tensor of `shape` (`len` values) grouped along `axis`:
/// along its last axis, or down the columns of a 2-D tensor (the rows of its
/// transpose); `group_size` `None` is one group per grouped row.
fn tensor_layout(shape: &[usize], len: usize, bits: u32, group_size: Option<usize>, axis: Axis) -> Result<Layout> {
    let row_len = match (axis, shape) {
        (Axis::Last, _) => shape.last().copied().unwrap_or(0),
        (Axis::First, [rows, _]) => *rows,
        (Axis::First, _) => {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!("axis 0 is for 2-D tensors; this one has shape {shape:?}"),
            ))
        }
    };
    Ok(Layout::new(len, row_len, bits, group_size.unwrap_or(row_len))?.with_axis(axis))
}

/// Column positions of an input batch.
struct InputColumns {
    name: usize,
    weights: usize,
    shape: Option<usize>,
    /// The shape of every row, from a tensor extension type of `weights`.
    weights_shape: Option<Vec<i64>>,
    /// Any other columns: passed through to the result unchanged.
    extra: Vec<usize>,
}

impl InputColumns {
    fn find(fields: &Fields) -> Result<InputColumns> {
        let (mut name, mut weights, mut shape) = (None, None, None);
        let mut extra = Vec::new();
        // Every column a result may have (the `method` and `axis` columns included).
        let out_names = quantized_fields(Scheme { method: Method::Search, ..Scheme::default() }, Axis::First);
        for (i, field) in fields.iter().enumerate() {
            let (slot, ok) = match field.name().as_str() {
                NAME => (&mut name, is_string(field.data_type())),
                WEIGHTS => match list_value_type(field.data_type()) {
                    Some(DataType::Float32 | DataType::Float16) => (&mut weights, true),
                    Some(DataType::Float64) => {
                        return Err(unsupported(format!("column \"weights\" holds float64: {CAST_HINT}")))
                    }
                    _ => (&mut weights, false),
                },
                SHAPE => (&mut shape, is_int_list(field.data_type())),
                other if out_names.find(other).is_some() => {
                    return Err(invalid(format!(
                        "column {other:?} would clash with the result's column of that name: rename it"
                    )))
                }
                _ => {
                    extra.push(i);
                    continue;
                }
            };
            if !ok {
                return Err(unsupported(format!(
                    "column {:?} has type {}: expected {EXPECTED_INPUT}",
                    field.name(),
                    field.data_type()
                )));
            }
            if slot.replace(i).is_some() {
                return Err(invalid(format!("column {:?} appears twice", field.name())));
            }
        }
        let missing = |c: &str| invalid(format!("the input has no {c:?} column: expected {EXPECTED_INPUT}"));
        let weights = weights.ok_or_else(|| missing(WEIGHTS))?;
        Ok(InputColumns {
            name: name.ok_or_else(|| missing(NAME))?,
            weights,
            shape,
            weights_shape: extension::fixed_shape(&fields[weights])?,
            extra,
        })
    }
}

/// Errors unless `dt` is an input type [`quantize`] accepts. Checked on the
/// type alone, before any buffer of the input is read.
pub fn check_quantize_type(dt: &DataType) -> Result<()> {
    match dt {
        DataType::Float32 | DataType::Float16 => Ok(()),
        DataType::Struct(fields) => InputColumns::find(fields).map(|_| ()),
        DataType::Float64 => Err(unsupported(format!("cannot quantize an Arrow array of type Float64: {CAST_HINT}"))),
        other => Err(unsupported(format!("cannot quantize an Arrow array of type {other}: expected {EXPECTED_INPUT}"))),
    }
}

struct Tensor<'a> {
    name: &'a str,
    values: Values<'a>,
    shape: Vec<usize>,
}

/// The tensors of `array`, read in place, and the positions of its columns
/// to pass through. `field_name` names a lone tensor.
fn read_tensors<'a>(array: &'a dyn Array, field_name: &'a str) -> Result<(Vec<Tensor<'a>>, Vec<usize>)> {
    let DataType::Struct(fields) = array.data_type() else {
        check_quantize_type(array.data_type())?;
        no_nulls(array, "the input array")?;
        let values = read_values(array)?;
        return Ok((vec![Tensor { name: field_name, values, shape: vec![values.len()] }], Vec::new()));
    };
    let columns = InputColumns::find(fields)?; // check_quantize_type of a struct
    let batch = array.as_struct();
    no_nulls(batch, "the input struct array")?;
    let names = strings(batch.column(columns.name).as_ref(), NAME)?;
    let weights = ListColumn::read(batch.column(columns.weights).as_ref(), WEIGHTS)?;
    let values = read_values(weights.values)?;
    let shapes = match columns.shape {
        Some(i) => Some(IntLists::read(batch.column(i).as_ref(), SHAPE)?),
        None => None,
    };
    let mut tensors = Vec::with_capacity(batch.len());
    for (row, (name, range)) in names.into_iter().zip(weights.ranges).enumerate() {
        let values = values.slice(range);
        let shape = match (&shapes, &columns.weights_shape) {
            (Some(s), Some(fixed)) if s.row(row) != fixed.as_slice() => {
                let message = format!("shape {:?} differs from the {fixed:?} of the weights' tensor type", s.row(row));
                return Err(in_tensor(Error::new(PqStatus::ShapeMismatch, message), name, row));
            }
            (Some(s), _) => shape_of(s.row(row), values.len()).map_err(|e| in_tensor(e, name, row))?,
            (None, Some(fixed)) => shape_of(fixed, values.len()).map_err(|e| in_tensor(e, name, row))?,
            (None, None) => vec![values.len()],
        };
        tensors.push(Tensor { name, values, shape });
    }
    Ok((tensors, columns.extra))
}

/// `quantized` (a struct of [`quantized_fields`]) with the `extra` columns
/// of `input` appended as they are (their buffers shared, not copied).
fn pass_through(quantized: ArrayData, input: &dyn Array, extra: &[usize]) -> Result<ArrayData> {
    if extra.is_empty() {
        return Ok(quantized);
    }
    let input = input.as_struct();
    let (fields, mut columns, nulls) = StructArray::from(quantized).into_parts();
    let mut fields: Vec<FieldRef> = fields.iter().cloned().collect();
    for &i in extra {
        fields.push(Arc::clone(&input.fields()[i]));
        columns.push(Arc::clone(input.column(i)));
    }
    let batch = StructArray::try_new(Fields::from(fields), columns, nulls)
        .map_err(|e| Error::internal("passing columns through", e))?;
    Ok(batch.into_data())
}

/// Per-column importance weights of the tensors named (`method` search
/// only): a tensor of the batch takes the entry of its name; entries that
/// name no tensor of the batch are not used (a stream's batches share one
/// list), a name given twice is an error.
pub type Importance<'a> = [(&'a str, &'a [f32])];

/// Quantizes every tensor of `input` (see the module doc) with `bits` and
/// `group_size` (`None`: one group per row) and `scheme`, with groups along
/// `axis` (the last axis of its shape, or down the columns of a 2-D tensor),
/// weighting each tensor's values by its `importance` entry, and returns
/// the quantized batch ([`quantized_fields`] of `scheme` and `axis`).
///
/// `field_name` names the tensor when `input` is a lone float array. The
/// input is validated in full first; nothing is returned on any error.
#[allow(clippy::too_many_arguments)] // the C function's arguments, one for one
pub fn quantize(
    input: ArrayData,
    field_name: &str,
    bits: u32,
    group_size: Option<usize>,
    scheme: Scheme,
    axis: Axis,
    importance: &Importance,
    threads: usize,
) -> Result<ArrayData> {
    validate(&input)?;
    let array = make_array(input); // released when this returns, unless columns are passed through
    let (tensors, extra) = read_tensors(array.as_ref(), field_name)?;
    let mut weights = std::collections::HashMap::with_capacity(importance.len());
    for &(name, w) in importance {
        if weights.insert(name, w).is_some() {
            return Err(Error::new(PqStatus::InvalidImatrix, format!("importance names tensor {name:?} twice")));
        }
    }

    let mut layouts = Vec::with_capacity(tensors.len());
    let (mut codes_len, mut n_groups) = (0usize, 0usize);
    for (row, t) in tensors.iter().enumerate() {
        let layout = tensor_layout(&t.shape, t.values.len(), bits, group_size, axis)
            .map_err(|e| in_tensor(e, t.name, row))?
            .with_scheme(scheme);
        u32::try_from(layout.group_size).map_err(|_| {
            in_tensor(Error::new(PqStatus::InvalidGroupSize, "the group size does not fit uint32"), t.name, row)
        })?;
        codes_len = checked_add(codes_len, layout.codes_len, "codes")?;
        n_groups = checked_add(n_groups, layout.n_groups, "scales")?;
        layouts.push(layout);
    }
    offset_i32(n_groups, "scales")?;
    let (mut codes_offsets, mut group_offsets) = (vec![0i64], vec![0i32]);
    for l in &layouts {
        codes_offsets.push(codes_offsets.last().copied().unwrap_or(0) + l.codes_len as i64);
        group_offsets.push(group_offsets.last().copied().unwrap_or(0) + l.n_groups as i32);
    }

    let out = Output::new();
    let floats = n_groups.checked_mul(4).ok_or_else(|| Error::new(PqStatus::SizeOverflow, "scales overflow"))?;
    let [codes, scales, mins] = out.block([codes_len, floats, floats], |[codes_rest, scales_rest, mins_rest]| {
        // All rows in one batch call: tensors spread over the cores, and a
        // large one split across them; all or nothing.
        let (mut codes_rest, mut scales_rest, mut mins_rest) = (codes_rest, f32s(scales_rest), f32s(mins_rest));
        let mut items = Vec::with_capacity(tensors.len());
        for (t, l) in tensors.iter().zip(&layouts) {
            let (c, cr) = std::mem::take(&mut codes_rest).split_at_mut(l.codes_len);
            let (s, sr) = std::mem::take(&mut scales_rest).split_at_mut(l.n_groups);
            let (m, mr) = std::mem::take(&mut mins_rest).split_at_mut(l.n_groups);
            (codes_rest, scales_rest, mins_rest) = (cr, sr, mr);
            let importance = weights.get(t.name).copied();
            items.push(QuantizeItem { input: t.values, layout: *l, codes: c, scales: s, mins: m, importance });
        }
        quantize_batch(&mut items, threads).map_err(|e| match e.item {
            Some(row) => in_tensor(e.error, tensors[row].name, row),
            None => e.error,
        })
    })?;

    let rows: Vec<RowMeta> = tensors
        .iter()
        .zip(&layouts)
        .map(|(t, l)| RowMeta {
            name: t.name,
            dtype: t.values.dtype().name(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            bits: l.bits as u8,
            group_size: l.group_size as u32,
        })
        .collect();
    let encoded = Encoded {
        codes: (codes_offsets, codes),
        group_offsets,
        scales: ScalarBuffer::new(scales, 0, n_groups),
        mins: ScalarBuffer::new(mins, 0, n_groups),
    };
    let quantized = quantized_batch(&out, scheme, axis, &rows, encoded)?;
    pass_through(quantized, array.as_ref(), &extra)
}
