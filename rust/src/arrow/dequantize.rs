//! The way back: quantized batches (rows of [`super::format`]) to tensors,
//! in one of two forms ([`Dequantized`]).

use super::format::{QuantizedBatch, Row};
use super::*;

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
    for r in 0..q.rows.len() {
        shape_values.extend_from_slice(q.shapes.row(r));
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
                scales: &q.scales[r],
                mins: &q.mins[r],
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
            items.push(DequantizeItem { codes: q.codes[r], scales: &q.scales[r], mins: &q.mins[r], layout, output });
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
