//! The quantized row format, owned here: its schema, the rules a row
//! follows (a quantized float tensor, or a tensor carried over unchanged),
//! the one reader of rows ([`QuantizedBatch`]) and the one writer
//! ([`quantized_batch`], behind [`super::quantize`] and [`row`]).

use super::*;

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
    /// or bfloat16 tensor laid out as `layout`.
    Quantized { dtype: Dtype, layout: Layout },
    /// `bits` 0, `group_size` 0, no scales or mins: a tensor carried over
    /// unchanged, `bytes` of it in `codes`.
    Carried { bytes: usize },
}

/// The rules of one row (README "Arrow"); the lengths are those of its
/// `codes`, `scales` and `mins`.
pub(super) fn check_row(shape: &[i64], dtype: &str, bits: u8, group_size: u32, lens: [usize; 3]) -> Result<Row> {
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
/// the columns of [`quantized_fields`], in any order, with the plain,
/// `large_` and view variants of the string, binary and list types (what
/// polars and other producers write back), a shape of any integer type, and
/// `bits` / `group_size` of any integer type (Spark writes them signed).
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
                "name" | "dtype" => is_string(dt),
                "codes" => matches!(dt, DataType::Binary | DataType::LargeBinary | DataType::BinaryView),
                "scales" | "mins" => list_value_type(dt) == Some(&DataType::Float32),
                "shape" => is_int_list(dt),
                // Any integer width: Spark and others have no unsigned types.
                _ => dt.is_integer(),
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
        DataType::BinaryView => Ok(array.as_binary_view().iter().map(|b| b.unwrap_or_default()).collect()),
        other => Err(unsupported(format!("column {column} has type {other}, not binary"))),
    }
}

/// A quantized batch, read in place, every row checked by [`check_row`].
pub(super) struct QuantizedBatch<'a> {
    pub(super) names: Vec<&'a str>,
    pub(super) codes: Vec<&'a [u8]>,
    pub(super) scales: Vec<&'a [f32]>,
    pub(super) mins: Vec<&'a [f32]>,
    pub(super) shapes: IntLists<'a>,
    pub(super) dtypes: Vec<&'a str>,
    pub(super) rows: Vec<Row>,
}

impl<'a> QuantizedBatch<'a> {
    pub(super) fn read(array: &'a dyn Array) -> Result<QuantizedBatch<'a>> {
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
        let shapes = IntLists::read(col(shape), "shape")?;
        let dtypes = strings(col(dtype), "dtype")?;
        for (c, what) in [(bits, "bits"), (group_size, "group_size")] {
            no_nulls(col(c), &format!("column {what}"))?;
        }
        let bits = int_values(col(bits), "bits")?;
        let group_sizes = int_values(col(group_size), "group_size")?;
        let rows = (0..batch.len())
            .map(|r| {
                let lens = [codes[r].len(), scales[r].len(), mins[r].len()];
                let out_of_range = |what: &str, v: i64| invalid(format!("{what} {v} is out of range"));
                let b = u8::try_from(bits[r]).map_err(|_| out_of_range("bits", bits[r]));
                let g = u32::try_from(group_sizes[r]).map_err(|_| out_of_range("group_size", group_sizes[r]));
                b.and_then(|b| check_row(shapes.row(r), dtypes[r], b, g?, lens)).map_err(|e| in_tensor(e, names[r], r))
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

/// Assembles a quantized batch ([`quantized_fields`]) from its rows and the
/// concatenated codes (with their int64 offsets), scales and mins (with
/// their int32 offsets per row). The vectors become the buffers, uncopied.
pub(super) fn quantized_batch(
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
    /// 2, 3, 4 or 8 for a quantized tensor; 0 for a carried-over one.
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

/// Checks every row of a quantized batch against the rules, reading
/// nothing but what [`super::dequantize`] would check: for readers of Arrow
/// checkpoints, which then take views of the rows themselves.
pub fn check_quantized(input: &ArrayData) -> Result<()> {
    validate(input)?;
    let array = make_array(input.clone());
    QuantizedBatch::read(array.as_ref()).map(|_| ())
}
