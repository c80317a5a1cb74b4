//! The quantized row format, owned here: its schema, the rules a row
//! follows (a quantized float tensor, or a tensor carried over unchanged),
//! the one reader of rows ([`QuantizedBatch`]) and the one writer
//! ([`quantized_batch`], behind [`super::quantize`] and [`row`]).

use std::borrow::Cow;

use super::*;
use crate::layout::{Axis, Method, ScaleDtype, Scheme};

/// Name of the column that says how scales and mins were chosen: present
/// only in batches quantized with another method than min-max (a batch
/// without it is min-max, as every batch written before it existed).
const METHOD: &str = "method";

/// Name of the column that says along which axis groups run: present only
/// in batches quantized along the first axis (int8, 0; a batch without it
/// is grouped along the last axis, as every batch written before it).
const AXIS: &str = "axis";

/// The value of an `axis` column for `axis` (Python's axis numbers).
fn axis_value(axis: Axis) -> i8 {
    match axis {
        Axis::Last => -1,
        Axis::First => 0,
    }
}

/// The axis of an `axis` column's value.
fn axis_of(value: i64) -> Result<Axis> {
    [Axis::Last, Axis::First].into_iter().find(|&a| i64::from(axis_value(a)) == value).ok_or_else(|| {
        Error::new(PqStatus::InvalidScheme, format!("axis {value} is not -1 (along rows) or 0 (along columns)"))
    })
}

/// The schema of a quantized batch, one row per tensor, for `scheme` and
/// `axis` (README "Arrow"): scales and mins are lists of float32, or of
/// float16 with float16 scales; a `method` column (utf8) follows with
/// another method than min-max, then an `axis` column (int8, 0) with groups
/// along the first axis. The defaults' schema is the format's original one.
/// Built once per scheme and axis (a result's schema, on every call).
pub fn quantized_fields(scheme: Scheme, axis: Axis) -> Fields {
    static BUILT: [std::sync::OnceLock<Fields>; 8] = [const { std::sync::OnceLock::new() }; 8];
    let index = 4 * (scheme.method as usize) + 2 * (scheme.scale_dtype as usize) + axis as usize;
    BUILT[index].get_or_init(|| build_quantized_fields(scheme, axis)).clone()
}

fn build_quantized_fields(scheme: Scheme, axis: Axis) -> Fields {
    let scales = DataType::List(item(match scheme.scale_dtype {
        ScaleDtype::F32 => DataType::Float32,
        ScaleDtype::F16 => DataType::Float16,
    }));
    let mut fields = vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("codes", DataType::LargeBinary, false),
        Field::new("scales", scales.clone(), false),
        Field::new("mins", scales, false),
        Field::new("shape", DataType::List(item(DataType::Int64)), false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new("bits", DataType::UInt8, false),
        Field::new("group_size", DataType::UInt32, false),
    ];
    if scheme.method != Method::MinMax {
        fields.push(Field::new(METHOD, DataType::Utf8, false));
    }
    if axis != Axis::Last {
        fields.push(Field::new(AXIS, DataType::Int8, false));
    }
    Fields::from(fields)
}

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
pub(super) enum Row {
    /// `bits` 2, 3, 4 or 8: the codes, scales and mins of a float32, float16
    /// or bfloat16 tensor laid out as `layout` (with its scheme).
    Quantized { dtype: Dtype, layout: Layout },
    /// `bits` 0, `group_size` 0, no scales or mins: a tensor carried over
    /// unchanged, `bytes` of it in `codes`.
    Carried { bytes: usize },
}

/// The rules of one row (README "Arrow"); the lengths are those of its
/// `codes`, `scales` and `mins`. With `Axis::First` a quantized row is 2-D
/// and its codes, scales and mins are those of its transpose.
pub(super) fn check_row(
    shape: &[i64],
    dtype: &str,
    bits: u8,
    group_size: u32,
    scheme: Scheme,
    axis: Axis,
    lens: [usize; 3],
) -> Result<Row> {
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
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect(); // non-negative: counted above
    let layout = tensor_layout(&dims, count, bits as u32, Some(group_size as usize), axis)?.with_scheme(scheme);
    check_len("codes", codes, layout.codes_len, true)?;
    check_len("scales", scales, layout.n_groups, true)?;
    check_len("mins", mins, layout.n_groups, true)?;
    Ok(Row::Quantized { dtype, layout })
}

/// Errors unless `dt` is a quantized batch type [`dequantize`] accepts:
/// the columns of [`quantized_fields`], in any order, with the plain,
/// `large_` and view variants of the string, binary and list types (what
/// polars and other producers write back), a shape of any integer type,
/// `bits` / `group_size` of any integer type (Spark writes them signed),
/// scales and mins both of float32 or both of float16, an optional
/// `method` column of strings and an optional `axis` column of integers.
pub fn check_dequantize_type(dt: &DataType) -> Result<()> {
    let DataType::Struct(fields) = dt else {
        return Err(unsupported(format!(
            "cannot dequantize an Arrow array of type {dt}: expected a quantized batch (struct)"
        )));
    };
    QuantizedColumns::find(fields).map(|_| ())
}

/// Column positions of a quantized batch, in [`quantized_fields`] order,
/// the positions of its `method` and `axis` columns if it has them, and the
/// scale dtype its scales and mins are stored in.
struct QuantizedColumns([usize; 8], Option<usize>, Option<usize>, ScaleDtype);

impl QuantizedColumns {
    fn find(fields: &Fields) -> Result<QuantizedColumns> {
        let wanted = quantized_fields(Scheme::default(), Axis::Last);
        let mut found = [usize::MAX; 8];
        for (i, want) in wanted.iter().enumerate() {
            let (pos, field) = fields
                .iter()
                .enumerate()
                .find(|(_, f)| f.name() == want.name())
                .ok_or_else(|| invalid(format!("a quantized batch needs a column {:?}", want.name())))?;
            let dt = field.data_type();
            let ok = match want.name().as_str() {
                "name" | "dtype" => is_string(dt),
                "codes" => matches!(dt, DataType::Binary | DataType::LargeBinary | DataType::BinaryView),
                "scales" | "mins" => matches!(list_value_type(dt), Some(DataType::Float32 | DataType::Float16)),
                "shape" => is_int_list(dt),
                // Any integer width: Spark and others have no unsigned types.
                _ => dt.is_integer(),
            };
            if !ok {
                return Err(unsupported(format!(
                    "column {:?} of a quantized batch has type {dt}, expected {}{}",
                    want.name(),
                    want.data_type(),
                    if matches!(want.name().as_str(), "scales" | "mins") { " (or a list of float16)" } else { "" }
                )));
            }
            found[i] = pos;
        }
        let value = |i: usize| list_value_type(fields[found[i]].data_type());
        let scale_dtype = match (value(2), value(3)) {
            (Some(DataType::Float32), Some(DataType::Float32)) => ScaleDtype::F32,
            (Some(DataType::Float16), Some(DataType::Float16)) => ScaleDtype::F16,
            (s, m) => {
                return Err(unsupported(format!(
                    "columns \"scales\" and \"mins\" hold lists of {} and of {}: both must be float32, or both float16",
                    s.map_or("?".into(), |t| t.to_string()),
                    m.map_or("?".into(), |t| t.to_string())
                )))
            }
        };
        let method = fields.iter().position(|f| f.name() == METHOD);
        if let Some(i) = method {
            if !is_string(fields[i].data_type()) {
                return Err(unsupported(format!(
                    "column \"method\" of a quantized batch has type {}, expected utf8",
                    fields[i].data_type()
                )));
            }
        }
        let axis = fields.iter().position(|f| f.name() == AXIS);
        if let Some(i) = axis {
            if !fields[i].data_type().is_integer() {
                return Err(unsupported(format!(
                    "column \"axis\" of a quantized batch has type {}, expected int8",
                    fields[i].data_type()
                )));
            }
        }
        Ok(QuantizedColumns(found, method, axis, scale_dtype))
    }
}

fn binary_rows<'a>(array: &'a dyn Array, column: &str) -> Result<Vec<&'a [u8]>> {
    no_nulls(array, &format!("column {column}"))?;
    match array.data_type() {
        DataType::Binary => Ok(array.as_binary::<i32>().iter().map(|b| b.unwrap_or_default()).collect()),
        DataType::LargeBinary => Ok(array.as_binary::<i64>().iter().map(|b| b.unwrap_or_default()).collect()),
        DataType::BinaryView => Ok(array.as_binary_view().iter().map(|b| b.unwrap_or_default()).collect()),
        other => Err(unsupported(format!("column {column} has type {other}, not binary"))),
    }
}

/// A quantized batch, read in place, every row checked by [`check_row`].
pub(super) struct QuantizedBatch<'a> {
    pub(super) names: Vec<&'a str>,
    pub(super) codes: Vec<&'a [u8]>,
    /// As f32 (float16 scales and mins are widened, exactly).
    pub(super) scales: Vec<Cow<'a, [f32]>>,
    pub(super) mins: Vec<Cow<'a, [f32]>>,
    pub(super) shapes: IntLists<'a>,
    pub(super) dtypes: Vec<&'a str>,
    pub(super) rows: Vec<Row>,
}

impl<'a> QuantizedBatch<'a> {
    pub(super) fn read(array: &'a dyn Array) -> Result<QuantizedBatch<'a>> {
        check_dequantize_type(array.data_type())?;
        let DataType::Struct(fields) = array.data_type() else { unreachable!("checked above") };
        let QuantizedColumns([name, codes, scales, mins, shape, dtype, bits, group_size], method, axis, scale_dtype) =
            QuantizedColumns::find(fields)?;
        let batch = array.as_struct();
        no_nulls(batch, "the quantized batch")?;
        let col = |i: usize| batch.column(i).as_ref();
        let names = strings(col(name), "name")?;
        let codes = binary_rows(col(codes), "codes")?;
        let floats = |i: usize, what: &str| -> Result<Vec<Cow<'a, [f32]>>> {
            let list = ListColumn::read(col(i), what)?;
            Ok(match scale_dtype {
                ScaleDtype::F32 => {
                    let values = list.values.as_primitive::<Float32Type>().values();
                    list.ranges.into_iter().map(|r| Cow::Borrowed(&values[r])).collect()
                }
                ScaleDtype::F16 => {
                    let values = list.values.as_primitive::<Float16Type>().values();
                    list.ranges
                        .into_iter()
                        .map(|r| Cow::Owned(values[r].iter().map(|v| v.to_f32()).collect()))
                        .collect()
                }
            })
        };
        let (scales, mins) = (floats(scales, "scales")?, floats(mins, "mins")?);
        let shapes = IntLists::read(col(shape), "shape")?;
        let dtypes = strings(col(dtype), "dtype")?;
        for (c, what) in [(Some(bits), "bits"), (Some(group_size), "group_size"), (axis, AXIS)] {
            c.map_or(Ok(()), |c| no_nulls(col(c), &format!("column {what}")))?;
        }
        let methods = method.map(|i| strings(col(i), METHOD)).transpose()?;
        let axes = axis.map(|i| int_values(col(i), AXIS)).transpose()?;
        let bits = int_values(col(bits), "bits")?;
        let group_sizes = int_values(col(group_size), "group_size")?;
        let rows = (0..batch.len())
            .map(|r| {
                let lens = [codes[r].len(), scales[r].len(), mins[r].len()];
                let out_of_range = |what: &str, v: i64| invalid(format!("{what} {v} is out of range"));
                let b = u8::try_from(bits[r]).map_err(|_| out_of_range("bits", bits[r]));
                let g = u32::try_from(group_sizes[r]).map_err(|_| out_of_range("group_size", group_sizes[r]));
                let method = methods.as_ref().map_or(Ok(Method::MinMax), |m| Method::from_name(m[r]));
                let axis = axes.as_ref().map_or(Ok(Axis::Last), |a| axis_of(a[r]));
                let scheme = |method| Scheme { method, scale_dtype };
                b.and_then(|b| check_row(shapes.row(r), dtypes[r], b, g?, scheme(method?), axis?, lens))
                    .map_err(|e| in_tensor(e, names[r], r))
            })
            .collect::<Result<Vec<Row>>>()?;
        Ok(QuantizedBatch { names, codes, scales, mins, shapes, dtypes, rows })
    }

    /// The dtype of every row if they all are quantized float32 rows, or all
    /// quantized float16 rows: then [`dequantize`] returns `weights` lists.
    pub(super) fn common_float(&self) -> Option<Dtype> {
        let mut dtypes = self.rows.iter().map(|r| match r {
            Row::Quantized { dtype: d @ (Dtype::F32 | Dtype::F16), .. } => Some(*d),
            _ => None,
        });
        let first = dtypes.next().unwrap_or(Some(Dtype::F32))?;
        dtypes.all(|d| d == Some(first)).then_some(first)
    }
}

/// One row as [`quantized_batch`] writes it.
pub(super) struct RowMeta<'a> {
    pub(super) name: &'a str,
    pub(super) dtype: &'a str,
    pub(super) shape: Vec<i64>,
    pub(super) bits: u8,
    pub(super) group_size: u32,
}

/// The codes (with their int64 offsets per row), scales and mins (with
/// their int32 offsets per row) of a quantized batch, concatenated over its
/// rows, as the kernel wrote them.
pub(super) struct Encoded {
    pub(super) codes: (Vec<i64>, Buffer),
    pub(super) group_offsets: Vec<i32>,
    pub(super) scales: ScalarBuffer<f32>,
    pub(super) mins: ScalarBuffer<f32>,
}

/// Assembles a quantized batch ([`quantized_fields`] of `scheme` and `axis`) from its
/// rows and their `encoded` data. The buffers are used uncopied; but for
/// float16 scales and mins, narrowed (exactly: they are float16 values)
/// into new ones. The other columns' buffers are pieces of one allocation
/// ([`Small`]), and the arrays are assembled without arrow-rs's validation
/// (see [`node`]).
pub(super) fn quantized_batch(
    out: &Output,
    scheme: Scheme,
    axis: Axis,
    rows: &[RowMeta],
    encoded: Encoded,
) -> Result<ArrayData> {
    let n = rows.len();
    let Encoded { codes: (codes_offsets, codes), group_offsets, scales, mins } = encoded;
    let n_groups = scales.len();
    let n_dims = rows.iter().map(|r| r.shape.len()).sum();
    let text: usize = rows.iter().map(|r| r.name.len() + r.dtype.len()).sum();
    let mut small = Small::with_capacity(text + 8 * n_dims + 64 * n + 128);
    let names = small.strings(rows.iter().map(|r| r.name), NAME)?;
    let codes_offsets = small.push(codes_offsets);
    // One offsets buffer for both lists.
    let group_offsets = small.push(group_offsets);
    offset_i32(n_dims, SHAPE)?;
    let shape_ends = rows.iter().scan(0i32, |end, r| {
        *end += r.shape.len() as i32; // fits: checked above
        Some(*end)
    });
    let shape_offsets = small.push(std::iter::once(0i32).chain(shape_ends));
    let shape_values = small.push(rows.iter().flat_map(|r| r.shape.iter().copied()));
    let dtypes = small.strings(rows.iter().map(|r| r.dtype), "dtype")?;
    let bits = small.push(rows.iter().map(|r| r.bits));
    let group_sizes = small.push(rows.iter().map(|r| r.group_size));
    let methods = match scheme.method {
        Method::MinMax => None,
        method => Some(small.strings(rows.iter().map(|_| method.name()), METHOD)?),
    };
    let axes = (axis != Axis::Last).then(|| small.push(rows.iter().map(|_| axis_value(axis))));
    let piece = out.small(small);

    let fields = quantized_fields(scheme, axis);
    let column = |i: usize, buffers: Vec<Buffer>, children: Vec<ArrayData>| {
        node(fields[i].data_type().clone(), n, buffers, children)
    };
    // The values of list column `i`: `len` of them in `buffer`.
    let values = |i: usize, len: usize, buffer: Buffer| {
        let value_type = list_value_type(fields[i].data_type()).expect("a list column").clone();
        node(value_type, len, vec![buffer], Vec::new())
    };
    let floats = |i: usize, floats: ScalarBuffer<f32>| {
        let buffer = match scheme.scale_dtype {
            ScaleDtype::F32 => floats.into_inner(),
            ScaleDtype::F16 => out.scalars(floats.iter().map(|&v| half::f16::from_f32(v)).collect()).into_inner(),
        };
        column(i, vec![piece(group_offsets.clone())], vec![values(i, n_groups, buffer)])
    };
    let strings = |i: usize, (offsets, data): (Range<usize>, Range<usize>)| {
        column(i, vec![piece(offsets), piece(data)], Vec::new())
    };
    let mut columns = vec![
        strings(0, names),
        column(1, vec![piece(codes_offsets), codes], Vec::new()),
        floats(2, scales),
        floats(3, mins),
        column(4, vec![piece(shape_offsets)], vec![values(4, n_dims, piece(shape_values))]),
        strings(5, dtypes),
        column(6, vec![piece(bits)], Vec::new()),
        column(7, vec![piece(group_sizes)], Vec::new()),
    ];
    columns.extend(methods.map(|m| strings(columns.len(), m)));
    columns.extend(axes.map(|a| column(columns.len(), vec![piece(a)], Vec::new())));
    let batch = node(DataType::Struct(fields), n, Vec::new(), columns);
    #[cfg(any(test, debug_assertions))]
    batch.validate_full().expect("quantized_batch builds valid Arrow data");
    Ok(batch)
}

/// An array of `len` values of `data_type` with no nulls, from `buffers`
/// and `children` that [`quantized_batch`] built, without arrow-rs's
/// validation (of every offset and string; it costs more than the rest of
/// the assembly): that function writes offsets that start at 0, grow and
/// end at the length of what they index, strings from `&str`s, and buffers
/// as long as `len` and the type need (checked by `validate_full` in tests
/// and debug builds).
fn node(data_type: DataType, len: usize, buffers: Vec<Buffer>, children: Vec<ArrayData>) -> ArrayData {
    // SAFETY: as said above; every buffer is 8-byte aligned (Small and
    // Output::block pieces, or a vector of the value type).
    unsafe { ArrayData::new_unchecked(data_type, len, Some(0), None, 0, buffers, children) }
}

/// The parts of one row of a quantized batch, for [`row`].
pub struct RowParts<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [i64],
    /// 2, 3, 4 or 8 for a quantized tensor; 0 for a carried-over one.
    pub bits: u8,
    /// 0 for a carried-over tensor.
    pub group_size: u32,
    /// Packed codes, or the carried-over tensor's raw little-endian bytes.
    pub codes: &'a [u8],
    /// With float16 scales, every scale and min must be a float16 value.
    pub scales: &'a [f32],
    pub mins: &'a [f32],
    /// The batch's scheme (its schema); for a carried-over row, that of the
    /// batches it goes with (an Arrow checkpoint's).
    pub scheme: Scheme,
    /// The axis groups run along, as `scheme` (with `Axis::First` the codes,
    /// scales and mins are those of the 2-D tensor's transpose).
    pub axis: Axis,
}

/// A quantized batch of one row (copied from `parts`), checked by the rules
/// every row is read with: how a writer (pyquant's Arrow checkpoints) makes
/// rows without knowing the format.
pub fn row(parts: &RowParts) -> Result<ArrayData> {
    let lens = [parts.codes.len(), parts.scales.len(), parts.mins.len()];
    check_row(parts.shape, parts.dtype, parts.bits, parts.group_size, parts.scheme, parts.axis, lens)
        .and_then(|_| check_stored(parts.scheme.scale_dtype, parts.scales, parts.mins))
        .map_err(|e| in_tensor(e, parts.name, 0))?;
    let groups = offset_i32(parts.scales.len(), "scales")?;
    let meta = RowMeta {
        name: parts.name,
        dtype: parts.dtype,
        shape: parts.shape.to_vec(),
        bits: parts.bits,
        group_size: parts.group_size,
    };
    let out = Output::new();
    let encoded = Encoded {
        codes: (vec![0, parts.codes.len() as i64], out.buffer(parts.codes.to_vec())),
        group_offsets: vec![0, groups],
        scales: out.scalars(parts.scales.to_vec()),
        mins: out.scalars(parts.mins.to_vec()),
    };
    quantized_batch(&out, parts.scheme, parts.axis, &[meta], encoded)
}

/// Errors unless every scale and min is a value of `dtype`, so that storing
/// them in it loses nothing.
fn check_stored(dtype: ScaleDtype, scales: &[f32], mins: &[f32]) -> Result<()> {
    if dtype == ScaleDtype::F32 {
        return Ok(());
    }
    let exact = |v: &f32| half::f16::from_f32(*v).to_f32().to_bits() == v.to_bits();
    for (what, values) in [("scales", scales), ("mins", mins)] {
        if let Some(i) = values.iter().position(|v| !exact(v)) {
            return Err(Error::new(
                PqStatus::InvalidScheme,
                format!("{what}[{i}] = {:e} is not a float16 value, as float16 scales need", values[i]),
            ));
        }
    }
    Ok(())
}

/// Checks every row of a quantized batch against the rules, reading
/// nothing but what [`super::dequantize`] would check: for readers of Arrow
/// checkpoints, which then take views of the rows themselves.
pub fn check_quantized(input: &ArrayData) -> Result<()> {
    validate(input)?;
    let array = make_array(input.clone());
    QuantizedBatch::read(array.as_ref()).map(|_| ())
}
