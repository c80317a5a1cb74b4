//! Tensor extension types of a `weights` column: a fixed-size list whose
//! field metadata gives the shape every row shares. Arrow's canonical
//! `arrow.fixed_shape_tensor` (pyarrow's `pa.fixed_shape_tensor`) and Ray
//! Data's `ray.data.arrow_tensor` types are read; Ray's variable-shaped type
//! is refused with the fix. Without this the shape would be silently dropped
//! (the storage alone reads as a flat 1-D tensor).

use super::*;

const EXTENSION_NAME: &str = "ARROW:extension:name";
const EXTENSION_METADATA: &str = "ARROW:extension:metadata";

const FIXED_SHAPE_TENSOR: &str = "arrow.fixed_shape_tensor";
const RAY_TENSOR: [&str; 2] = ["ray.data.arrow_tensor", "ray.data.arrow_tensor_v2"];
const RAY_VARIABLE_TENSOR: [&str; 2] =
    ["ray.data.arrow_variable_shaped_tensor", "ray.data.arrow_variable_shaped_tensor_v2"];

/// The shape of every row of `field` (a `weights` column) when it has a
/// tensor extension type; None for a plain list (then the `shape` column,
/// or 1-D). Errors name the fix for a tensor type that is not read.
pub(super) fn fixed_shape(field: &Field) -> Result<Option<Vec<i64>>> {
    let Some(name) = field.metadata().get(EXTENSION_NAME) else { return Ok(None) };
    let metadata = field.metadata().get(EXTENSION_METADATA).map_or("", String::as_str);
    let column = field.name();
    if RAY_VARIABLE_TENSOR.contains(&name.as_str()) {
        return Err(unsupported(format!(
            "column {column:?} has Ray's variable-shaped tensor type ({name}), which is not read: \
             give each row's shape in a \"shape\" column and the values as a list \
             (pyquant.quantize_arrow accepts Ray's numpy batches, batch_format=\"numpy\", and converts them)"
        )));
    }
    let shape = if name == FIXED_SHAPE_TENSOR {
        if let Some(p) = int_array(metadata, "permutation")? {
            if p.iter().enumerate().any(|(i, &d)| d != i as i64) {
                return Err(unsupported(format!(
                    "column {column:?} is an {FIXED_SHAPE_TENSOR} with permutation {p:?}: only the identity \
                     permutation (row-major storage) is read; write the tensors in row-major order"
                )));
            }
        }
        int_array(metadata, "shape")?
    } else if RAY_TENSOR.contains(&name.as_str()) {
        // Ray serializes the shape as a bare JSON list ("[2, 3]") or, in
        // newer versions, as an object with a "shape" key.
        match metadata.trim_start().starts_with('[') {
            true => parse_ints(metadata),
            false => int_array(metadata, "shape")?,
        }
    } else {
        return Ok(None); // another extension type: its storage is read as it is
    };
    let shape = shape.ok_or_else(|| {
        invalid(format!("column {column:?} has type {name} but its metadata {metadata:?} gives no shape"))
    })?;
    // Each row's length is checked against the shape as it is read (Ray
    // stores its tensors in variable-size lists); a fixed size up front.
    if let DataType::FixedSizeList(_, size) = field.data_type() {
        let count = shape.iter().try_fold(1i64, |n, &d| if d < 0 { None } else { n.checked_mul(d) });
        if count != Some(i64::from(*size)) {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!(
                    "column {column:?}: the shape {shape:?} of its {name} type does not hold its {size} values per row"
                ),
            ));
        }
    }
    Ok(Some(shape))
}

/// The integer list under `"key":` in a JSON object (the extension
/// metadata, a few bytes): None without the key, an error for a value that
/// is not a list of integers.
fn int_array(json: &str, key: &str) -> Result<Option<Vec<i64>>> {
    let quoted = format!("\"{key}\"");
    let mut rest = json;
    while let Some(at) = rest.find(&quoted) {
        rest = &rest[at + quoted.len()..];
        // A key is followed by a colon; the same text as a value (in dim_names) is not.
        let Some(value) = rest.trim_start().strip_prefix(':') else { continue };
        return parse_ints(value).map(Some).ok_or_else(|| {
            invalid(format!("the extension metadata {json:?} has a {key:?} that is not a list of integers"))
        });
    }
    Ok(None)
}

/// A JSON list of integers at the start of `text` (`[2, 3]`), the rest ignored.
fn parse_ints(text: &str) -> Option<Vec<i64>> {
    let inner = text.trim_start().strip_prefix('[')?;
    let inner = &inner[..inner.find(']')?];
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|d| d.trim().parse::<i64>().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::exclusive;
    use super::*;
    use arrow_array::{FixedSizeListArray, Float32Array, Int64Array, Int8Array};
    use std::collections::HashMap;

    #[test]
    fn metadata_shape_is_read_by_key_not_by_text() {
        let json = r#"{"dim_names":["shape","x"], "shape" : [2, 3], "permutation":[0,1]}"#;
        assert_eq!(int_array(json, "shape").unwrap(), Some(vec![2, 3]));
        assert_eq!(int_array(json, "permutation").unwrap(), Some(vec![0, 1]));
        assert_eq!(int_array(r#"{"dim_names":["shape"]}"#, "shape").unwrap(), None);
        assert_eq!(status(int_array(r#"{"shape":[2,"x"]}"#, "shape")), PqStatus::InvalidArrow);
        assert_eq!(parse_ints("[4, 128]"), Some(vec![4, 128]));
    }

    fn status<T>(r: Result<T>) -> PqStatus {
        r.err().map_or(PqStatus::Ok, |e| e.status)
    }

    fn tensor_field(name: &str, metadata: &str, size: i32) -> Field {
        let storage = DataType::FixedSizeList(item(DataType::Float32), size);
        Field::new(WEIGHTS, storage, false).with_metadata(HashMap::from([
            (EXTENSION_NAME.to_string(), name.to_string()),
            (EXTENSION_METADATA.to_string(), metadata.to_string()),
        ]))
    }

    /// A batch of two 2 x 64 tensors in a weights column of `field`'s type, an extra column after it.
    fn input(field: Field) -> (ArrayData, Vec<f32>) {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0).collect();
        let weights =
            FixedSizeListArray::new(item(DataType::Float32), 128, Arc::new(Float32Array::from(x.clone())), None);
        let fields = vec![Field::new(NAME, DataType::Utf8, false), field, Field::new("id", DataType::Int64, false)];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(weights),
            Arc::new(Int64Array::from(vec![7, 8])),
        ];
        (StructArray::new(Fields::from(fields), columns, None).into_data(), x)
    }

    #[test]
    fn fixed_shape_tensor_gives_the_shape_and_other_columns_pass_through() {
        let _guard = exclusive();
        let (data, x) = input(tensor_field(FIXED_SHAPE_TENSOR, r#"{"shape":[2,64]}"#, 128));
        let out =
            StructArray::from(quantize(data.clone(), "", 4, Some(32), Scheme::default(), Axis::Last, &[], 1).unwrap());
        let shape = out.column_by_name(SHAPE).unwrap().as_list::<i32>();
        assert_eq!(shape.value(1).as_primitive::<Int64Type>().values(), &[2, 64]);
        assert_eq!(out.column_by_name("id").unwrap().as_primitive::<Int64Type>().values(), &[7, 8]);
        assert_eq!(out.num_columns(), quantized_fields(Scheme::default(), Axis::Last).len() + 1);
        // The same groups as a plain list with a shape column: rows of 64.
        let l = Layout::new(128, 64, 4, 32).unwrap();
        let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        crate::batch::quantize(&x[128..], &l, &mut c, &mut s, &mut m).unwrap();
        assert_eq!(out.column_by_name("codes").unwrap().as_binary::<i64>().value(1), &c[..]);

        let wrong = input(tensor_field(FIXED_SHAPE_TENSOR, r#"{"shape":[3,64]}"#, 128)).0;
        assert_eq!(
            status(quantize(wrong.clone(), "", 4, Some(32), Scheme::default(), Axis::Last, &[], 1)),
            PqStatus::ShapeMismatch
        );
        let permuted = input(tensor_field(FIXED_SHAPE_TENSOR, r#"{"shape":[2,64],"permutation":[1,0]}"#, 128)).0;
        assert_eq!(
            status(quantize(permuted.clone(), "", 4, Some(32), Scheme::default(), Axis::Last, &[], 1)),
            PqStatus::UnsupportedDtype
        );
        let ray = input(tensor_field(RAY_TENSOR[0], "[2, 64]", 128)).0;
        assert_eq!(
            StructArray::from(quantize(ray.clone(), "", 4, Some(32), Scheme::default(), Axis::Last, &[], 1).unwrap())
                .column(0)
                .len(),
            2
        );
        let variable = input(tensor_field(RAY_VARIABLE_TENSOR[0], "2", 128)).0;
        assert_eq!(
            status(quantize(variable.clone(), "", 4, Some(32), Scheme::default(), Axis::Last, &[], 1)),
            PqStatus::UnsupportedDtype
        );
    }

    #[test]
    fn dequantize_reads_signed_bits_and_group_size() {
        let _guard = exclusive();
        let (data, _) = input(tensor_field(FIXED_SHAPE_TENSOR, r#"{"shape":[2,64]}"#, 128));
        let q =
            StructArray::from(quantize(data.clone(), "", 4, Some(32), Scheme::default(), Axis::Last, &[], 1).unwrap());
        let want = dequantize(&q.to_data(), Dequantized::Auto, 1).unwrap();
        let (fields, mut columns, nulls) = q.into_parts();
        let mut fields: Vec<FieldRef> = fields.iter().cloned().collect();
        columns[6] = Arc::new(Int8Array::from(vec![4, 4]));
        columns[7] = Arc::new(Int64Array::from(vec![32, 32]));
        fields[6] = Arc::new(Field::new("bits", DataType::Int8, false));
        fields[7] = Arc::new(Field::new("group_size", DataType::Int64, false));
        let signed = StructArray::new(Fields::from(fields.clone()), columns.clone(), nulls.clone());
        assert_eq!(dequantize(&signed.into_data(), Dequantized::Auto, 1).unwrap(), want);
        columns[7] = Arc::new(Int64Array::from(vec![32, -1]));
        let negative = StructArray::new(Fields::from(fields), columns, nulls);
        assert_eq!(status(dequantize(&negative.into_data(), Dequantized::Auto, 1)), PqStatus::InvalidArrow);
    }
}
