//! The Arrow path in safe Rust: tensors held in Arrow arrays in, quantized
//! record batches out, and back.
//!
//! An input holds one tensor (a float32 or float16 array) or a batch of them
//! (a struct array with columns `name`, `weights` and optional `shape`). Each
//! tensor's values are read in place and all tensors are quantized in one
//! [`crate::batch::quantize_batch`] call (the same kernels as every path);
//! the result is a struct array of [`quantized_fields`] whose codes, scales
//! and mins buffers are the vectors the kernel wrote, handed to Arrow without
//! a copy. [`dequantize`] is the way back, through [`crate::batch::dequantize_batch`].
//!
//! Moving C Data Interface structs in and out and checking their raw pointers
//! is `ffi/arrow.rs`'s job; this module sees imported [`ArrayData`] only.
//! Every buffer of a result holds one shared [`ExportToken`], so
//! [`live_exports`] counts results that still have a buffer alive.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int64Type, UInt32Type, UInt8Type};
use arrow_array::{
    make_array, Array, ArrayRef, GenericListArray, LargeBinaryArray, ListArray, OffsetSizeTrait, StringArray,
    StructArray, UInt32Array, UInt8Array,
};
use arrow_buffer::{ArrowNativeType, Buffer, OffsetBuffer, ScalarBuffer, ToByteSlice};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, FieldRef, Fields};

use crate::batch::{dequantize_batch, quantize_batch, DequantizeItem, QuantizeItem};
use crate::element::{Dtype, Element, Values, ValuesMut};
use crate::error::{Error, PqStatus, Result};
use crate::layout::{check_len, Layout};

/// Column names of an input batch.
const NAME: &str = "name";
const WEIGHTS: &str = "weights";
const SHAPE: &str = "shape";

const EXPECTED_INPUT: &str = "a float32/float16 array, or a struct (record batch) of \
     name: utf8, weights: list of float32/float16, optional shape: list<int64>";

/// The schema of a quantized batch, one row per tensor (fixed; README "Arrow").
pub fn quantized_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("codes", DataType::LargeBinary, false),
        Field::new("scales", f32_list_type(), false),
        Field::new("mins", f32_list_type(), false),
        Field::new("shape", DataType::List(item(DataType::Int64)), false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new("bits", DataType::UInt8, false),
        Field::new("group_size", DataType::UInt32, false),
    ])
}

fn item(value: DataType) -> FieldRef {
    Arc::new(Field::new_list_field(value, true))
}

fn f32_list_type() -> DataType {
    DataType::List(item(DataType::Float32))
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

/// A vector that Arrow borrows as a buffer without copying it.
struct Tracked<T> {
    data: Vec<T>,
    _token: Arc<ExportToken>,
}

impl<T: ArrowNativeType> AsRef<[u8]> for Tracked<T> {
    fn as_ref(&self) -> &[u8] {
        self.data.to_byte_slice()
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
    fn buffer<T: ArrowNativeType>(&self, data: Vec<T>) -> Buffer {
        Buffer::from(bytes::Bytes::from_owner(Tracked { data, _token: Arc::clone(&self.token) }))
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
        other => Err(unsupported(format!("values of type {other} are not float32 or float16"))),
    }
}

/// The value type of a list, large list or fixed-size list.
fn list_value_type(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => Some(f.data_type()),
        _ => None,
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

fn strings<'a>(array: &'a dyn Array, column: &str) -> Result<Vec<&'a str>> {
    no_nulls(array, &format!("column {column}"))?;
    match array.data_type() {
        DataType::Utf8 => Ok(array.as_string::<i32>().iter().map(|s| s.unwrap_or_default()).collect()),
        DataType::LargeUtf8 => Ok(array.as_string::<i64>().iter().map(|s| s.unwrap_or_default()).collect()),
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

/// Column positions of an input batch.
struct InputColumns {
    name: usize,
    weights: usize,
    shape: Option<usize>,
}

impl InputColumns {
    fn find(fields: &Fields) -> Result<InputColumns> {
        let (mut name, mut weights, mut shape) = (None, None, None);
        for (i, field) in fields.iter().enumerate() {
            let (slot, ok) = match field.name().as_str() {
                NAME => (&mut name, matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8)),
                WEIGHTS => (
                    &mut weights,
                    matches!(list_value_type(field.data_type()), Some(DataType::Float32 | DataType::Float16)),
                ),
                SHAPE => (&mut shape, list_value_type(field.data_type()) == Some(&DataType::Int64)),
                other => return Err(invalid(format!("unexpected column {other:?}: expected {EXPECTED_INPUT}"))),
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
        Ok(InputColumns {
            name: name.ok_or_else(|| missing(NAME))?,
            weights: weights.ok_or_else(|| missing(WEIGHTS))?,
            shape,
        })
    }
}

/// Errors unless `dt` is an input type [`quantize`] accepts. Checked on the
/// type alone, before any buffer of the input is read.
pub fn check_quantize_type(dt: &DataType) -> Result<()> {
    match dt {
        DataType::Float32 | DataType::Float16 => Ok(()),
        DataType::Struct(fields) => InputColumns::find(fields).map(|_| ()),
        other => Err(unsupported(format!("cannot quantize an Arrow array of type {other}: expected {EXPECTED_INPUT}"))),
    }
}

struct Tensor<'a> {
    name: &'a str,
    values: Values<'a>,
    shape: Vec<usize>,
}

/// The tensors of `array`, read in place. `field_name` names a lone tensor.
fn read_tensors<'a>(array: &'a dyn Array, field_name: &'a str) -> Result<Vec<Tensor<'a>>> {
    check_quantize_type(array.data_type())?;
    let DataType::Struct(fields) = array.data_type() else {
        no_nulls(array, "the input array")?;
        let values = read_values(array)?;
        return Ok(vec![Tensor { name: field_name, values, shape: vec![values.len()] }]);
    };
    let columns = InputColumns::find(fields)?;
    let batch = array.as_struct();
    no_nulls(batch, "the input struct array")?;
    let names = strings(batch.column(columns.name).as_ref(), NAME)?;
    let weights = ListColumn::read(batch.column(columns.weights).as_ref(), WEIGHTS)?;
    let values = read_values(weights.values)?;
    let shapes = match columns.shape {
        Some(i) => Some(ListColumn::read(batch.column(i).as_ref(), SHAPE)?),
        None => None,
    };
    let dims = shapes.as_ref().map(|s| s.values.as_primitive::<Int64Type>().values().as_ref());
    let mut tensors = Vec::with_capacity(batch.len());
    for (row, (name, range)) in names.into_iter().zip(weights.ranges).enumerate() {
        let values = values.slice(range);
        let shape = match (&shapes, dims) {
            (Some(s), Some(dims)) => {
                shape_of(&dims[s.ranges[row].clone()], values.len()).map_err(|e| in_tensor(e, name, row))?
            }
            _ => vec![values.len()],
        };
        tensors.push(Tensor { name, values, shape });
    }
    Ok(tensors)
}

/// Quantizes every tensor of `input` (see the module doc) with `bits` and
/// `group_size` along the last axis of its shape (`None`: one group per row),
/// and returns the quantized batch ([`quantized_fields`]).
///
/// `field_name` names the tensor when `input` is a lone float array. The
/// input is validated in full first; nothing is returned on any error.
pub fn quantize(
    input: &ArrayData,
    field_name: &str,
    bits: u32,
    group_size: Option<usize>,
    threads: usize,
) -> Result<ArrayData> {
    validate(input)?;
    let array = make_array(input.clone());
    let tensors = read_tensors(array.as_ref(), field_name)?;

    let mut layouts = Vec::with_capacity(tensors.len());
    let (mut codes_len, mut n_groups) = (0usize, 0usize);
    for (row, t) in tensors.iter().enumerate() {
        let row_len = *t.shape.last().expect("shape_of returns at least one axis");
        let layout = Layout::new(t.values.len(), row_len, bits, group_size.unwrap_or(row_len))
            .map_err(|e| in_tensor(e, t.name, row))?;
        u32::try_from(layout.group_size).map_err(|_| {
            in_tensor(Error::new(PqStatus::InvalidGroupSize, "the group size does not fit uint32"), t.name, row)
        })?;
        codes_len = checked_add(codes_len, layout.codes_len, "codes")?;
        n_groups = checked_add(n_groups, layout.n_groups, "scales")?;
        layouts.push(layout);
    }
    offset_i32(n_groups, "scales")?;

    // Zeroed vectors come from calloc: pages the kernel then fills once.
    let mut codes = vec![0u8; codes_len];
    let mut scales = vec![0f32; n_groups];
    let mut mins = vec![0f32; n_groups];
    let (mut codes_offsets, mut group_offsets) = (vec![0i64], vec![0i32]);
    {
        // All rows in one batch call: tensors spread over the cores, and a
        // large one split across them; all or nothing.
        let (mut codes_rest, mut scales_rest, mut mins_rest) = (&mut codes[..], &mut scales[..], &mut mins[..]);
        let mut items = Vec::with_capacity(tensors.len());
        for (t, l) in tensors.iter().zip(&layouts) {
            let (c, cr) = std::mem::take(&mut codes_rest).split_at_mut(l.codes_len);
            let (s, sr) = std::mem::take(&mut scales_rest).split_at_mut(l.n_groups);
            let (m, mr) = std::mem::take(&mut mins_rest).split_at_mut(l.n_groups);
            (codes_rest, scales_rest, mins_rest) = (cr, sr, mr);
            items.push(QuantizeItem { input: t.values, layout: *l, codes: c, scales: s, mins: m });
            codes_offsets.push(codes_offsets.last().copied().unwrap_or(0) + l.codes_len as i64);
            group_offsets.push(group_offsets.last().copied().unwrap_or(0) + l.n_groups as i32);
        }
        quantize_batch(&mut items, threads).map_err(|e| match e.item {
            Some(row) => in_tensor(e.error, tensors[row].name, row),
            None => e.error,
        })?;
    }

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
    quantized_batch(&Output::new(), &rows, (codes_offsets, codes), group_offsets, scales, mins)
}

// ---------------------------------------------------------------------------
// The quantized row format

/// Dtypes a carried-over row (`bits` 0) may hold, with their sizes in bytes:
/// every dtype a safetensors checkpoint can carry over. Its `codes` are the
/// tensor's raw little-endian bytes.
const CARRIED: [(&str, usize); 13] = [
    ("float64", 8),
    ("float32", 4),
    ("float16", 2),
    ("bfloat16", 2),
    ("int64", 8),
    ("int32", 4),
    ("int16", 2),
    ("int8", 1),
    ("uint64", 8),
    ("uint32", 4),
    ("uint16", 2),
    ("uint8", 1),
    ("bool", 1),
];

/// What a row of a quantized batch holds, once checked against the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    /// `bits` 2, 4 or 8: the codes, scales and mins of a float32, float16
    /// or bfloat16 tensor laid out as `layout`.
    Quantized { dtype: Dtype, layout: Layout },
    /// `bits` 0, `group_size` 0, no scales or mins: a tensor carried over
    /// unchanged, `bytes` of it in `codes`.
    Carried { bytes: usize },
}

/// The rules of one row (README "Arrow"); the lengths are those of its
/// `codes`, `scales` and `mins`.
fn check_row(shape: &[i64], dtype: &str, bits: u8, group_size: u32, lens: [usize; 3]) -> Result<Row> {
    let count = shape.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)));
    let count = count.ok_or_else(|| Error::new(PqStatus::ShapeMismatch, format!("bad shape {shape:?}")))?;
    let [codes, scales, mins] = lens;
    if bits == 0 {
        let size = CARRIED.iter().find(|(name, _)| *name == dtype).map(|&(_, size)| size).ok_or_else(|| {
            let known: Vec<&str> = CARRIED.iter().map(|(n, _)| *n).collect();
            unsupported(format!("dtype {dtype:?} of a carried-over row (bits 0) is not one of {}", known.join(", ")))
        })?;
        if group_size != 0 || scales != 0 || mins != 0 {
            return Err(invalid(format!(
                "a carried-over row (bits 0) has group_size 0 and no scales or mins, \
                 not group_size {group_size}, {scales} scales and {mins} mins"
            )));
        }
        let bytes = count.checked_mul(size).filter(|&b| b == codes).ok_or_else(|| {
            Error::new(
                PqStatus::ShapeMismatch,
                format!("codes hold {codes} bytes, but a carried-over {dtype} tensor of shape {shape:?} has {count} values of {size} bytes"),
            )
        })?;
        return Ok(Row::Carried { bytes });
    }
    let dtype = Dtype::from_name(dtype).ok_or_else(|| {
        unsupported(format!(
            "dtype {dtype:?} is not float32, float16 or bfloat16, as a quantized row (bits {bits}) needs"
        ))
    })?;
    let row_len = shape.last().map_or(0, |&d| d as usize);
    let layout = Layout::new(count, row_len, bits as u32, group_size as usize)?;
    check_len("codes", codes, layout.codes_len, true)?;
    check_len("scales", scales, layout.n_groups, true)?;
    check_len("mins", mins, layout.n_groups, true)?;
    Ok(Row::Quantized { dtype, layout })
}

/// Errors unless `dt` is a quantized batch type [`dequantize`] accepts:
/// the columns of [`quantized_fields`], in any order, with `large_`/plain
/// variants of the string, binary and list types.
pub fn check_dequantize_type(dt: &DataType) -> Result<()> {
    let DataType::Struct(fields) = dt else {
        return Err(unsupported(format!(
            "cannot dequantize an Arrow array of type {dt}: expected a quantized batch (struct)"
        )));
    };
    QuantizedColumns::find(fields).map(|_| ())
}

/// Column positions of a quantized batch, in [`quantized_fields`] order.
struct QuantizedColumns([usize; 8]);

impl QuantizedColumns {
    fn find(fields: &Fields) -> Result<QuantizedColumns> {
        let wanted = quantized_fields();
        let mut found = [usize::MAX; 8];
        for (i, want) in wanted.iter().enumerate() {
            let (pos, field) = fields
                .iter()
                .enumerate()
                .find(|(_, f)| f.name() == want.name())
                .ok_or_else(|| invalid(format!("a quantized batch needs a column {:?}", want.name())))?;
            let dt = field.data_type();
            let ok = match want.name().as_str() {
                "name" | "dtype" => matches!(dt, DataType::Utf8 | DataType::LargeUtf8),
                "codes" => matches!(dt, DataType::Binary | DataType::LargeBinary),
                "scales" | "mins" => list_value_type(dt) == Some(&DataType::Float32),
                "shape" => list_value_type(dt) == Some(&DataType::Int64),
                _ => dt == want.data_type(),
            };
            if !ok {
                return Err(unsupported(format!(
                    "column {:?} of a quantized batch has type {dt}, expected {}",
                    want.name(),
                    want.data_type()
                )));
            }
            found[i] = pos;
        }
        Ok(QuantizedColumns(found))
    }
}

fn binary_rows<'a>(array: &'a dyn Array, column: &str) -> Result<Vec<&'a [u8]>> {
    no_nulls(array, &format!("column {column}"))?;
    match array.data_type() {
        DataType::Binary => Ok(array.as_binary::<i32>().iter().map(|b| b.unwrap_or_default()).collect()),
        DataType::LargeBinary => Ok(array.as_binary::<i64>().iter().map(|b| b.unwrap_or_default()).collect()),
        other => Err(unsupported(format!("column {column} has type {other}, not binary"))),
    }
}

/// A quantized batch, read in place, every row checked by [`check_row`].
struct QuantizedBatch<'a> {
    names: Vec<&'a str>,
    codes: Vec<&'a [u8]>,
    scales: Vec<&'a [f32]>,
    mins: Vec<&'a [f32]>,
    shapes: Vec<&'a [i64]>,
    dtypes: Vec<&'a str>,
    rows: Vec<Row>,
}

impl<'a> QuantizedBatch<'a> {
    fn read(array: &'a dyn Array) -> Result<QuantizedBatch<'a>> {
        check_dequantize_type(array.data_type())?;
        let DataType::Struct(fields) = array.data_type() else { unreachable!("checked above") };
        let QuantizedColumns([name, codes, scales, mins, shape, dtype, bits, group_size]) =
            QuantizedColumns::find(fields)?;
        let batch = array.as_struct();
        no_nulls(batch, "the quantized batch")?;
        let col = |i: usize| batch.column(i).as_ref();
        let names = strings(col(name), "name")?;
        let codes = binary_rows(col(codes), "codes")?;
        let floats = |i: usize, what: &str| -> Result<Vec<&'a [f32]>> {
            let list = ListColumn::read(col(i), what)?;
            let values = list.values.as_primitive::<Float32Type>().values();
            Ok(list.ranges.into_iter().map(|r| &values[r]).collect())
        };
        let (scales, mins) = (floats(scales, "scales")?, floats(mins, "mins")?);
        let shape_list = ListColumn::read(col(shape), "shape")?;
        let dims = shape_list.values.as_primitive::<Int64Type>().values();
        let shapes: Vec<&[i64]> = shape_list.ranges.into_iter().map(|r| &dims[r]).collect();
        let dtypes = strings(col(dtype), "dtype")?;
        for (c, what) in [(bits, "bits"), (group_size, "group_size")] {
            no_nulls(col(c), &format!("column {what}"))?;
        }
        let bits = col(bits).as_primitive::<UInt8Type>().values();
        let group_sizes = col(group_size).as_primitive::<UInt32Type>().values();
        let rows = (0..batch.len())
            .map(|r| {
                let lens = [codes[r].len(), scales[r].len(), mins[r].len()];
                check_row(shapes[r], dtypes[r], bits[r], group_sizes[r], lens).map_err(|e| in_tensor(e, names[r], r))
            })
            .collect::<Result<Vec<Row>>>()?;
        Ok(QuantizedBatch { names, codes, scales, mins, shapes, dtypes, rows })
    }

    /// The dtype of every row if they all are quantized float32 rows, or all
    /// quantized float16 rows: then [`dequantize`] returns `weights` lists.
    fn common_float(&self) -> Option<Dtype> {
        let mut dtypes = self.rows.iter().map(|r| match r {
            Row::Quantized { dtype: d @ (Dtype::F32 | Dtype::F16), .. } => Some(*d),
            _ => None,
        });
        let first = dtypes.next().unwrap_or(Some(Dtype::F32))?;
        dtypes.all(|d| d == Some(first)).then_some(first)
    }
}

/// One row as [`quantized_batch`] writes it.
struct RowMeta<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: Vec<i64>,
    bits: u8,
    group_size: u32,
}

/// Assembles a quantized batch ([`quantized_fields`]) from its rows and the
/// concatenated codes (with their int64 offsets), scales and mins (with
/// their int32 offsets per row). The vectors become the buffers, uncopied.
fn quantized_batch(
    out: &Output,
    rows: &[RowMeta],
    codes: (Vec<i64>, Vec<u8>),
    group_offsets: Vec<i32>,
    scales: Vec<f32>,
    mins: Vec<f32>,
) -> Result<ArrayData> {
    let mut shape_offsets = vec![0i32];
    let mut shape_values = Vec::new();
    for r in rows {
        shape_values.extend_from_slice(&r.shape);
        shape_offsets.push(offset_i32(shape_values.len(), SHAPE)?);
    }
    let (codes_offsets, codes) = codes;
    let columns: Vec<ArrayRef> = vec![
        out.strings(rows.iter().map(|r| r.name), NAME)?,
        Arc::new(LargeBinaryArray::new(OffsetBuffer::new(out.scalars(codes_offsets)), out.buffer(codes), None)),
        out.list::<Float32Type>(group_offsets.clone(), scales),
        out.list::<Float32Type>(group_offsets, mins),
        out.list::<Int64Type>(shape_offsets, shape_values),
        out.strings(rows.iter().map(|r| r.dtype), "dtype")?,
        Arc::new(UInt8Array::new(out.scalars(rows.iter().map(|r| r.bits).collect()), None)),
        Arc::new(UInt32Array::new(out.scalars(rows.iter().map(|r| r.group_size).collect()), None)),
    ];
    let batch = StructArray::try_new(quantized_fields(), columns, None)
        .map_err(|e| Error::internal("building the result", e))?;
    Ok(batch.into_data())
}

/// The parts of one row of a quantized batch, for [`row`].
pub struct RowParts<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [i64],
    /// 2, 4 or 8 for a quantized tensor; 0 for a carried-over one.
    pub bits: u8,
    /// 0 for a carried-over tensor.
    pub group_size: u32,
    /// Packed codes, or the carried-over tensor's raw little-endian bytes.
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub mins: &'a [f32],
}

/// A quantized batch of one row (copied from `parts`), checked by the rules
/// every row is read with: how a writer (pyquant's Arrow checkpoints) makes
/// rows without knowing the format.
pub fn row(parts: &RowParts) -> Result<ArrayData> {
    let lens = [parts.codes.len(), parts.scales.len(), parts.mins.len()];
    check_row(parts.shape, parts.dtype, parts.bits, parts.group_size, lens).map_err(|e| in_tensor(e, parts.name, 0))?;
    let groups = offset_i32(parts.scales.len(), "scales")?;
    let meta = RowMeta {
        name: parts.name,
        dtype: parts.dtype,
        shape: parts.shape.to_vec(),
        bits: parts.bits,
        group_size: parts.group_size,
    };
    let codes = (vec![0, parts.codes.len() as i64], parts.codes.to_vec());
    quantized_batch(&Output::new(), &[meta], codes, vec![0, groups], parts.scales.to_vec(), parts.mins.to_vec())
}

// ---------------------------------------------------------------------------
// Dequantize

/// The forms of [`dequantize`]'s result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dequantized {
    /// `name`, `weights` (list of the dtype), `shape` when every row is a
    /// quantized float32 row, or every row a quantized float16 row;
    /// otherwise as `Raw`.
    Auto,
    /// `name`, `dtype`, `shape`, `data` (large_binary: each tensor's raw
    /// little-endian bytes in its dtype), whatever the rows: one schema for
    /// every batch of a stream.
    Raw,
}

/// The schema of a dequantized batch in the `Auto` form: `name`, `weights`
/// (a list of `value`) and `shape`; quantizing it again reads it as an input
/// batch.
pub fn dequantized_fields(value: DataType) -> Fields {
    Fields::from(vec![
        Field::new(NAME, DataType::Utf8, false),
        Field::new(WEIGHTS, DataType::List(item(value)), false),
        Field::new(SHAPE, DataType::List(item(DataType::Int64)), false),
    ])
}

/// The schema of a dequantized batch in the `Raw` form.
pub fn raw_fields() -> Fields {
    Fields::from(vec![
        Field::new(NAME, DataType::Utf8, false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new(SHAPE, DataType::List(item(DataType::Int64)), false),
        Field::new("data", DataType::LargeBinary, false),
    ])
}

/// Reconstructs the tensors of a quantized batch: quantized rows as
/// `mins + q * scales` in their dtype, carried-over rows as they are, in the
/// `form` asked for (see [`Dequantized`]).
pub fn dequantize(input: &ArrayData, form: Dequantized, threads: usize) -> Result<ArrayData> {
    validate(input)?;
    let array = make_array(input.clone());
    let q = QuantizedBatch::read(array.as_ref())?;
    let out = Output::new();
    let mut shape_offsets = vec![0i32];
    let mut shape_values = Vec::new();
    for s in &q.shapes {
        shape_values.extend_from_slice(s);
        shape_offsets.push(offset_i32(shape_values.len(), SHAPE)?);
    }
    let names = out.strings(q.names.iter().copied(), NAME)?;
    let shapes = out.list::<Int64Type>(shape_offsets, shape_values);
    let (fields, columns) = match (form, q.common_float()) {
        (Dequantized::Auto, Some(dtype)) => {
            let (value, weights) = match dtype {
                Dtype::F16 => (DataType::Float16, dequantize_lists::<Float16Type>(&out, &q, threads)?),
                _ => (DataType::Float32, dequantize_lists::<Float32Type>(&out, &q, threads)?),
            };
            (dequantized_fields(value), vec![names, weights, shapes])
        }
        _ => {
            let dtypes = out.strings(q.dtypes.iter().copied(), "dtype")?;
            (raw_fields(), vec![names, dtypes, shapes, dequantize_raw(&out, &q, threads)?])
        }
    };
    let batch = StructArray::try_new(fields, columns, None).map_err(|e| Error::internal("building the result", e))?;
    Ok(batch.into_data())
}

/// Runs the dequantize items of `q`'s quantized rows in one batch call; an
/// error names the tensor.
fn run_items(q: &QuantizedBatch, items: &mut [DequantizeItem], rows: &[usize], threads: usize) -> Result<()> {
    dequantize_batch(items, threads).map_err(|e| match e.item {
        Some(i) => in_tensor(e.error, q.names[rows[i]], rows[i]),
        None => e.error,
    })
}

/// The `weights` column of the `Auto` form: every row is a quantized row of `T`.
fn dequantize_lists<T>(out: &Output, q: &QuantizedBatch, threads: usize) -> Result<ArrayRef>
where
    T: arrow_array::ArrowPrimitiveType,
    T::Native: Element,
{
    let layouts: Vec<Layout> = q
        .rows
        .iter()
        .map(|r| match r {
            Row::Quantized { layout, .. } => *layout,
            Row::Carried { .. } => unreachable!("common_float: every row is quantized"),
        })
        .collect();
    let total = layouts.iter().try_fold(0usize, |n, l| checked_add(n, l.len, "weights"))?;
    offset_i32(total, WEIGHTS)?;
    let mut values = vec![T::Native::from_f32(0.0); total];
    let mut offsets = vec![0i32];
    {
        let mut rest = &mut values[..];
        let mut items = Vec::with_capacity(layouts.len());
        for (r, l) in layouts.iter().enumerate() {
            let (o, tail) = std::mem::take(&mut rest).split_at_mut(l.len);
            rest = tail;
            items.push(DequantizeItem {
                codes: q.codes[r],
                scales: q.scales[r],
                mins: q.mins[r],
                layout: *l,
                output: T::Native::values_mut(o),
            });
            offsets.push(offsets.last().copied().unwrap_or(0) + l.len as i32);
        }
        let rows: Vec<usize> = (0..layouts.len()).collect();
        run_items(q, &mut items, &rows, threads)?;
    }
    Ok(out.list::<T>(offsets, values))
}

/// The `data` column of the `Raw` form: each quantized row dequantized into
/// its dtype's bytes, each carried-over row's bytes as they are.
fn dequantize_raw(out: &Output, q: &QuantizedBatch, threads: usize) -> Result<ArrayRef> {
    let sizes: Vec<usize> = q
        .rows
        .iter()
        .map(|r| match r {
            Row::Quantized { dtype, layout } => layout.len * dtype.size(),
            Row::Carried { bytes } => *bytes,
        })
        .collect();
    let total = sizes.iter().try_fold(0usize, |n, &b| checked_add(n, b, "data"))?;
    let mut offsets = vec![0i64];
    for &b in &sizes {
        offsets.push(offsets.last().copied().unwrap_or(0) + b as i64);
    }
    // Words, so that a row starting at a multiple of its element size is
    // aligned for it and dequantized in place; the others are dequantized
    // into a buffer of their own ("staged") and copied.
    let mut words = vec![0u64; total.div_ceil(8)];
    let aligned = |r: usize, dtype: Dtype| (offsets[r] as usize).is_multiple_of(dtype.size());
    let mut staged: Vec<(usize, Vec<u32>)> = q
        .rows
        .iter()
        .enumerate()
        .filter_map(|(r, row)| match *row {
            Row::Quantized { dtype, .. } if !aligned(r, dtype) => Some((r, vec![0u32; sizes[r].div_ceil(4)])),
            _ => None,
        })
        .collect();
    // SAFETY: `words` holds at least `total` initialized bytes; u8 has no alignment.
    let data = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, total) };
    {
        let (mut items, mut item_rows) = (Vec::new(), Vec::new());
        let mut staged_bufs = staged.iter_mut().map(|(_, buf)| buf);
        let mut rest = &mut data[..];
        for (r, row) in q.rows.iter().enumerate() {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(sizes[r]);
            rest = tail;
            let (dtype, layout) = match *row {
                Row::Carried { .. } => {
                    dst.copy_from_slice(q.codes[r]);
                    continue;
                }
                Row::Quantized { dtype, layout } => (dtype, layout),
            };
            let target: *mut u8 = if aligned(r, dtype) {
                dst.as_mut_ptr()
            } else {
                staged_bufs.next().expect("a staged buffer per misaligned row").as_mut_ptr() as *mut u8
            };
            // SAFETY: `target` is this row's own `layout.len * dtype.size()`
            // bytes (in `data` or its staged buffer), aligned for the dtype,
            // and nothing else reads or writes them until the batch returns.
            let output = unsafe { ValuesMut::from_raw(dtype, target, layout.len) };
            items.push(DequantizeItem { codes: q.codes[r], scales: q.scales[r], mins: q.mins[r], layout, output });
            item_rows.push(r);
        }
        run_items(q, &mut items, &item_rows, threads)?;
    }
    for (r, buf) in &staged {
        let start = offsets[*r] as usize;
        data[start..start + sizes[*r]].copy_from_slice(&buf.to_byte_slice()[..sizes[*r]]);
    }
    Ok(Arc::new(LargeBinaryArray::new(OffsetBuffer::new(out.scalars(offsets)), out.buffer(words), None)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::batch as kernel;
    use arrow_array::{FixedSizeListArray, Float16Array, Float32Array, LargeListArray, LargeStringArray};
    use half::{bf16, f16};
    use std::sync::{Mutex, MutexGuard};

    /// Tests that build results hold this, so that [`live_exports`] is theirs alone.
    pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 37.0 - 13.0).collect()
    }

    fn kernel_bytes(x: &[f32], row: usize, bits: u32, g: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let l = Layout::new(x.len(), row, bits, g).unwrap();
        let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        kernel::quantize(x, &l, &mut c, &mut s, &mut m).unwrap();
        (c, s, m)
    }

    /// Row `i` of a quantized batch: (name, codes, scales, mins, shape, dtype, bits, group_size).
    type Row = (String, Vec<u8>, Vec<f32>, Vec<f32>, Vec<i64>, String, u8, u32);

    fn rows(data: &ArrayData) -> Vec<Row> {
        let batch = StructArray::from(data.clone());
        let list_f32 = |c: &str, i: usize| {
            batch.column_by_name(c).unwrap().as_list::<i32>().value(i).as_primitive::<Float32Type>().values().to_vec()
        };
        (0..batch.len())
            .map(|i| {
                (
                    batch.column_by_name("name").unwrap().as_string::<i32>().value(i).to_string(),
                    batch.column_by_name("codes").unwrap().as_binary::<i64>().value(i).to_vec(),
                    list_f32("scales", i),
                    list_f32("mins", i),
                    batch
                        .column_by_name("shape")
                        .unwrap()
                        .as_list::<i32>()
                        .value(i)
                        .as_primitive::<Int64Type>()
                        .values()
                        .to_vec(),
                    batch.column_by_name("dtype").unwrap().as_string::<i32>().value(i).to_string(),
                    batch.column_by_name("bits").unwrap().as_primitive::<UInt8Type>().value(i),
                    batch.column_by_name("group_size").unwrap().as_primitive::<UInt32Type>().value(i),
                )
            })
            .collect()
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> ArrayData {
        let fields: Vec<Field> = columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
        StructArray::new(Fields::from(fields), columns.into_iter().map(|(_, a)| a).collect(), None).into_data()
    }

    fn f32_list(rows: &[&[f32]]) -> ListArray {
        ListArray::from_iter_primitive::<Float32Type, _, _>(rows.iter().map(|r| Some(r.iter().map(|&v| Some(v)))))
    }

    fn i64_list(rows: &[&[i64]]) -> ListArray {
        ListArray::from_iter_primitive::<Int64Type, _, _>(rows.iter().map(|r| Some(r.iter().map(|&v| Some(v)))))
    }

    fn status<T>(r: Result<T>) -> PqStatus {
        r.err().map(|e| e.status).unwrap_or(PqStatus::Ok)
    }

    #[test]
    fn lone_array_matches_the_kernel() {
        let _g = exclusive();
        let x = values(256, 1);
        let out = quantize(&Float32Array::from(x.clone()).into_data(), "w", 4, Some(64), 0).unwrap();
        let (c, s, m) = kernel_bytes(&x, 256, 4, 64);
        assert_eq!(rows(&out), vec![("w".into(), c, s, m, vec![256], "float32".into(), 4, 64)]);
        assert_eq!(live_exports(), 1);
        drop(out);
        assert_eq!(live_exports(), 0);
    }

    #[test]
    fn batch_with_shapes_and_every_list_kind() {
        let _g = exclusive();
        let (a, b) = (values(512, 2), values(96, 3));
        let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let shapes: ArrayRef = Arc::new(i64_list(&[&[4, 128], &[2, 48]]));
        let list: ArrayRef = Arc::new(f32_list(&[&a, &b]));
        let large: ArrayRef = Arc::new(LargeListArray::from_iter_primitive::<Float32Type, _, _>(
            [&a, &b].iter().map(|r| Some(r.iter().map(|&v| Some(v)))),
        ));
        for weights in [list, large] {
            let input = batch(vec![("name", names.clone()), ("weights", weights), ("shape", shapes.clone())]);
            let got = rows(&quantize(&input, "", 2, Some(16), 0).unwrap());
            let ((ca, sa, ma), (cb, sb, mb)) = (kernel_bytes(&a, 128, 2, 16), kernel_bytes(&b, 48, 2, 16));
            assert_eq!(got[0], ("a".into(), ca, sa, ma, vec![4, 128], "float32".into(), 2, 16));
            assert_eq!(got[1], ("b".into(), cb, sb, mb, vec![2, 48], "float32".into(), 2, 16));
            // None: one group per row, along the last axis of each shape.
            let got = rows(&quantize(&input, "", 2, None, 0).unwrap());
            assert_eq!((got[0].7, got[1].7), (128, 48));
            assert_eq!(got[1].1, kernel_bytes(&b, 48, 2, 48).0);
        }
        // fixed_size_list of float16, no shape column: each tensor is one row.
        let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
        let fsl = FixedSizeListArray::new(item(DataType::Float16), 256, Arc::new(Float16Array::from(h.clone())), None);
        let names: ArrayRef = Arc::new(LargeStringArray::from(vec!["x", "y"]));
        let got =
            rows(&quantize(&batch(vec![("name", names), ("weights", Arc::new(fsl))]), "", 8, Some(256), 0).unwrap());
        let wide: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        for (row, half) in got.iter().zip(wide.chunks(256)) {
            let (c, s, m) = kernel_bytes(half, 256, 8, 256);
            assert_eq!((&row.1, &row.2, &row.3, &row.4, row.5.as_str()), (&c, &s, &m, &vec![256], "float16"));
        }
        assert_eq!(live_exports(), 0);
    }

    #[test]
    fn sliced_inputs_read_the_slice() {
        let _g = exclusive();
        let x = values(1024, 4);
        let sliced = Float32Array::from(x.clone()).into_data().slice(128, 512);
        let out = quantize(&sliced, "s", 4, Some(128), 0).unwrap();
        assert_eq!(rows(&out)[0].1, kernel_bytes(&x[128..640], 512, 4, 128).0);
        let rows_in: Vec<&[f32]> = x.chunks(256).collect();
        let names: ArrayRef = Arc::new(StringArray::from(vec!["0", "1", "2", "3"]));
        let full = batch(vec![("name", names), ("weights", Arc::new(f32_list(&rows_in)))]);
        let out = quantize(&full.slice(1, 2), "", 4, Some(64), 0).unwrap();
        let got = rows(&out);
        assert_eq!((got[0].0.as_str(), &got[0].1), ("1", &kernel_bytes(&x[256..512], 256, 4, 64).0));
        assert_eq!((got[1].0.as_str(), &got[1].1), ("2", &kernel_bytes(&x[512..768], 256, 4, 64).0));
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let _g = exclusive();
        let nulls = Float32Array::from(vec![Some(1.0), None, Some(2.0), Some(3.0)]).into_data();
        let e = quantize(&nulls, "", 4, Some(2), 0).unwrap_err();
        assert!(e.status == PqStatus::InvalidArrow && e.message.contains("null"), "{e}");
        assert_eq!(status(check_quantize_type(&DataType::Float64)), PqStatus::UnsupportedDtype);
        assert_eq!(status(check_quantize_type(&DataType::Utf8)), PqStatus::UnsupportedDtype);
        let names: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let w: ArrayRef = Arc::new(f32_list(&[&[1.0, 2.0, 3.0, 4.0]]));
        let shape = |dims: &[i64]| -> ArrayRef { Arc::new(i64_list(&[dims])) };
        for (dims, needle) in [(&[3i64][..], "does not match"), (&[][..], "empty"), (&[-4][..], "negative")] {
            let e = quantize(
                &batch(vec![("name", names.clone()), ("weights", w.clone()), ("shape", shape(dims))]),
                "",
                4,
                Some(2),
                0,
            )
            .unwrap_err();
            assert!(
                e.status == PqStatus::ShapeMismatch && e.message.contains(needle) && e.message.contains("\"a\""),
                "{e}"
            );
        }
        let e = quantize(&batch(vec![("name", names.clone())]), "", 4, Some(2), 0).unwrap_err();
        assert!(e.status == PqStatus::InvalidArrow && e.message.contains("weights"), "{e}");
        let e = quantize(
            &batch(vec![("name", names.clone()), ("weights", w.clone()), ("extra", names.clone())]),
            "",
            4,
            Some(2),
            0,
        )
        .unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        let ints: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>([Some([Some(1i64)])]));
        assert_eq!(
            status(quantize(&batch(vec![("name", names.clone()), ("weights", ints)]), "", 4, Some(2), 0)),
            PqStatus::UnsupportedDtype
        );
        let with_null: ArrayRef =
            Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>([Some([Some(1.0f32), None])]));
        let e = quantize(&batch(vec![("name", names.clone()), ("weights", with_null)]), "", 4, Some(2), 0).unwrap_err();
        assert!(e.status == PqStatus::InvalidArrow && e.message.contains("row 0"), "{e}");
        let nan: ArrayRef = Arc::new(f32_list(&[&[1.0, f32::NAN]]));
        let e = quantize(&batch(vec![("name", names.clone()), ("weights", nan)]), "", 4, Some(2), 0).unwrap_err();
        assert!(e.status == PqStatus::NonFinite && e.message.starts_with("tensor \"a\" (row 0)"), "{e}");
        assert_eq!(
            status(quantize(&Float32Array::from(vec![1.0f32; 6]).into_data(), "", 4, Some(4), 0)),
            PqStatus::ShapeMismatch
        );
        assert_eq!(live_exports(), 0);
    }

    #[test]
    fn dequantize_round_trips_through_the_kernel() {
        let _g = exclusive();
        let x = values(384, 5);
        let names: ArrayRef = Arc::new(StringArray::from(vec!["p", "q"]));
        let input = batch(vec![
            ("name", names),
            ("weights", Arc::new(f32_list(&[&x[..256], &x[256..]]))),
            ("shape", Arc::new(i64_list(&[&[2, 128], &[128]]))),
        ]);
        let q = quantize(&input, "", 8, Some(32), 0).unwrap();
        let d = dequantize(&q, Dequantized::Auto, 0).unwrap();
        let back = StructArray::from(d.clone());
        let weights = back.column_by_name("weights").unwrap().as_list::<i32>();
        for (i, (range, row)) in [(0..256, 128), (256..384, 128)].into_iter().enumerate() {
            let (c, s, m) = kernel_bytes(&x[range.clone()], row, 8, 32);
            let l = Layout::new(range.len(), row, 8, 32).unwrap();
            let mut want = vec![0f32; range.len()];
            kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
            assert_eq!(weights.value(i).as_primitive::<Float32Type>().values().to_vec(), want);
        }
        assert_eq!(
            back.column_by_name("shape")
                .unwrap()
                .as_list::<i32>()
                .value(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
            vec![2, 128]
        );
        // The dequantized batch is a valid input again.
        assert!(quantize(&d, "", 8, Some(32), 0).is_ok());
        assert_eq!(live_exports(), 2);
        drop((q, d, back));
        assert_eq!(live_exports(), 0);
        assert_eq!(
            status(dequantize(&Float32Array::from(vec![1.0f32]).into_data(), Dequantized::Auto, 0)),
            PqStatus::UnsupportedDtype
        );
    }

    /// One batch of the rows of one-row batches made by [`row`].
    fn concat(batches: &[ArrayData]) -> ArrayData {
        let parts: Vec<Row> = batches.iter().flat_map(rows).collect();
        let metas: Vec<RowMeta> = parts
            .iter()
            .map(|p| RowMeta { name: &p.0, dtype: &p.5, shape: p.4.clone(), bits: p.6, group_size: p.7 })
            .collect();
        let (mut codes, mut groups, mut scales, mut mins) = ((vec![0i64], vec![]), vec![0i32], vec![], vec![]);
        for p in &parts {
            codes.1.extend_from_slice(&p.1);
            codes.0.push(codes.1.len() as i64);
            scales.extend_from_slice(&p.2);
            mins.extend_from_slice(&p.3);
            groups.push(scales.len() as i32);
        }
        quantized_batch(&Output::new(), &metas, codes, groups, scales, mins).unwrap()
    }

    fn quantized_row(name: &str, x: &[f32], dtype: Dtype, shape: &[i64], bits: u32, g: usize) -> ArrayData {
        let row_len = *shape.last().unwrap() as usize;
        let l = Layout::new(x.len(), row_len, bits, g).unwrap();
        let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        match dtype {
            Dtype::F32 => kernel::quantize(x, &l, &mut c, &mut s, &mut m),
            Dtype::F16 => {
                kernel::quantize(&x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(), &l, &mut c, &mut s, &mut m)
            }
            Dtype::Bf16 => {
                kernel::quantize(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), &l, &mut c, &mut s, &mut m)
            }
        }
        .unwrap();
        let parts = RowParts {
            name,
            dtype: dtype.name(),
            shape,
            bits: bits as u8,
            group_size: g as u32,
            codes: &c,
            scales: &s,
            mins: &m,
        };
        row(&parts).unwrap()
    }

    fn carried_row(name: &str, dtype: &str, shape: &[i64], bytes: &[u8]) -> ArrayData {
        row(&RowParts { name, dtype, shape, bits: 0, group_size: 0, codes: bytes, scales: &[], mins: &[] }).unwrap()
    }

    #[test]
    fn carried_over_and_bfloat16_rows_dequantize_exactly_in_the_raw_form() {
        let _g = exclusive();
        let x = values(256, 9);
        let ints: Vec<u8> = (0..5i64).flat_map(|v| (v * 1_000_000_007 - 3).to_le_bytes()).collect();
        let odd = [1u8, 2, 3]; // int8, 3 values: the next row starts misaligned
        let q = concat(&[
            carried_row("ints", "int64", &[5], &ints),
            carried_row("odd", "int8", &[3], &odd),
            quantized_row("w32", &x, Dtype::F32, &[2, 128], 4, 32),
            quantized_row("wbf", &x, Dtype::Bf16, &[4, 64], 8, 64),
            carried_row("bias", "bfloat16", &[2], &[0x80, 0x3F, 0x00, 0xC0]),
        ]);
        for form in [Dequantized::Auto, Dequantized::Raw] {
            let d = StructArray::from(dequantize(&q, form, 2).unwrap());
            assert_eq!(d.fields(), &raw_fields(), "{form:?}: mixed rows come back raw");
            let data = d.column_by_name("data").unwrap().as_binary::<i64>();
            let dtypes = d.column_by_name("dtype").unwrap().as_string::<i32>();
            assert_eq!(data.value(0), &ints[..]);
            assert_eq!(data.value(1), &odd[..]);
            assert_eq!(data.value(4), &[0x80, 0x3F, 0x00, 0xC0]);
            assert_eq!((dtypes.value(0), dtypes.value(3), dtypes.value(4)), ("int64", "bfloat16", "bfloat16"));
            let l = Layout::new(256, 128, 4, 32).unwrap();
            let (c, s, m) = kernel_bytes(&x, 128, 4, 32);
            let mut want = vec![0f32; 256];
            kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
            let want: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(data.value(2), &want[..]);
            let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let l = Layout::new(256, 64, 8, 64).unwrap();
            let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
            kernel::quantize(&xb, &l, &mut c, &mut s, &mut m).unwrap();
            let mut want = vec![bf16::ZERO; 256];
            kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
            let want: Vec<u8> = want.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
            assert_eq!(data.value(3), &want[..]);
        }
        // Float32 rows only: the Auto form keeps weights lists; Raw still raw.
        let only = concat(&[quantized_row("a", &x, Dtype::F32, &[256], 2, 16)]);
        let auto = StructArray::from(dequantize(&only, Dequantized::Auto, 0).unwrap());
        assert_eq!(auto.fields(), &dequantized_fields(DataType::Float32));
        let raw = StructArray::from(dequantize(&only, Dequantized::Raw, 0).unwrap());
        assert_eq!(raw.fields(), &raw_fields());
        drop((q, only, auto, raw));
        assert_eq!(live_exports(), 0);
    }

    #[test]
    fn rows_break_the_rules_with_named_errors() {
        let _g = exclusive();
        let bad = |parts: RowParts| row(&parts).unwrap_err();
        let base = RowParts {
            name: "t",
            dtype: "int64",
            shape: &[2],
            bits: 0,
            group_size: 0,
            codes: &[0; 16],
            scales: &[],
            mins: &[],
        };
        assert!(row(&base).is_ok());
        let e = bad(RowParts { codes: &[0; 15], ..base });
        assert!(
            e.status == PqStatus::ShapeMismatch && e.message.starts_with("tensor \"t\" (row 0): codes hold 15 bytes"),
            "{e}"
        );
        let e = bad(RowParts { dtype: "complex64", ..base });
        assert_eq!(e.status, PqStatus::UnsupportedDtype, "{e}");
        let e = bad(RowParts { group_size: 4, ..base });
        assert_eq!(e.status, PqStatus::InvalidArrow, "{e}");
        let e = bad(RowParts { bits: 4, group_size: 2, ..base });
        assert!(e.status == PqStatus::UnsupportedDtype && e.message.contains("float32, float16 or bfloat16"), "{e}");
        let e = bad(RowParts {
            dtype: "float32",
            bits: 4,
            group_size: 2,
            codes: &[0; 2],
            scales: &[1.0],
            mins: &[0.0],
            ..base
        });
        assert_eq!(e.status, PqStatus::BufferTooSmall, "{e}");
        let e = bad(RowParts { dtype: "float32", bits: 3, group_size: 2, ..base });
        assert_eq!(e.status, PqStatus::InvalidBits, "{e}");
        let e = bad(RowParts { shape: &[-2], ..base });
        assert_eq!(e.status, PqStatus::ShapeMismatch, "{e}");
        assert_eq!(live_exports(), 0);
    }
}
