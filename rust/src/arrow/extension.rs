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
const RAY_VARIABLE_TENSOR: [&str; 2] = ["ray.data.arrow_variable_shaped_tensor", "ray.data.arrow_variable_shaped_tensor_v2"];

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
                format!("column {column:?}: the shape {shape:?} of its {name} type does not hold its {size} values per row"),
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
        return parse_ints(value)
            .map(Some)
            .ok_or_else(|| invalid(format!("the extension metadata {json:?} has a {key:?} that is not a list of integers")));
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
