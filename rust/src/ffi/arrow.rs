//! Exported Arrow C Data Interface functions. Each one: take ownership of
//! the input `ArrowArray` first (so that every later path, success, error or
//! panic, releases it exactly once), check the raw structs against the
//! spec, import them with arrow-rs, call [`crate::arrow`], and move the
//! result into the caller's output structs, all inside [`run`].
//!
//! The raw checks read the structs through [`RawArray`] / [`RawSchema`],
//! mirrors of the spec's C layout, because arrow-rs's accessors panic (or
//! trust the producer) on NULL children, negative lengths or misaligned
//! buffers; after them the import reads nothing it has not vetted.

use std::ffi::{c_char, c_void, CStr};
use std::mem::{align_of, size_of};
use std::ptr;

use arrow_array::ffi::from_ffi_and_data_type;
use arrow_data::ffi::FFI_ArrowArray;
use arrow_data::ArrayData;
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{DataType, Field};

use super::boundary::{run, PqError};
use super::memory::{check_aligned, check_aligned_to, check_struct, Region};
use crate::arrow;
use crate::error::{Error, PqStatus, Result};
use crate::layout::{Axis, Scheme};

/// Pass as `group_size` to `pq_quantize_arrow` for one group per row
/// (`group_size` = the last axis of each tensor's shape). `SIZE_MAX`, which
/// is never a valid group size.
pub const PQ_GROUP_SIZE_PER_ROW: usize = !0;

/// Per-column importance weights for the tensor named `name` (UTF-8, not
/// NUL-terminated), for `pq_quantize_arrow`: `weights_len` non-negative
/// finite weights, one per column of the tensor (per row with
/// `PQ_AXIS_FIRST`), as `PqQuantizeItem.importance`.
#[repr(C)]
pub struct PqNamedImportance {
    pub name: *const u8,
    pub name_len: usize,
    pub weights: *const f32,
    pub weights_len: usize,
}

/// Quantizes the tensors in an Arrow array and returns them as an Arrow
/// record batch (a struct array), through the Arrow C Data Interface.
///
/// Input: `*in_array` with type `*in_schema` is a float32 or float16 array
/// (one 1-D tensor, named by the schema's name), or a struct array with
/// columns `name` (utf8, large_utf8 or utf8_view), `weights` (list,
/// large_list, list_view, large_list_view or fixed_size_list of float32 or
/// float16) and optional `shape` (a list-like of any integer type). A
/// `weights` column of the `arrow.fixed_shape_tensor` extension type (or
/// Ray Data's tensor type) gives every row the shape in its metadata. Other
/// columns are passed through: appended to the result unchanged, after its
/// own columns (a name that clashes with one of those is refused); they may
/// be of any integer, float, boolean, date, time, timestamp, duration,
/// string, binary, list or struct type, not dictionary-encoded.
/// Float64 is refused with the cast to make. Groups of `group_size` run along the last axis of each
/// tensor's shape (`PQ_GROUP_SIZE_PER_ROW`: one group per row). Values are
/// read in place; value and offset buffers must be aligned for their type.
/// `threads` as for `pq_quantize_batch` (0: all cores); all tensors of the
/// input are quantized in one batch, all or nothing.
///
/// Ownership: `in_array` is moved from on every call that gets past the
/// NULL and alignment checks, success or error: pyquant takes the struct
/// (setting `in_array->release` to NULL) and calls its release callback
/// exactly once, before returning. `in_schema` is borrowed; the caller
/// still releases it. `out_array` and `out_schema` are caller-allocated
/// structs, written only on `PQ_STATUS_OK`: then the caller owns them and
/// must call each one's `release` once (they may be moved first).
/// `out_schema` may be NULL: then the result's schema is not exported
/// (building it costs more than the rest of a small call); it is
/// `pq_arrow_quantized_schema`'s for `method`, `scale_dtype` and `axis`,
/// followed by the input's columns other than `name`, `weights` and
/// `shape`, in their order, as `in_schema` has them (`out_array->n_children`
/// tells whether there are any). Columns
/// (`pq_arrow_quantized_schema` of `method` and `scale_dtype`): name utf8,
/// codes large_binary, scales and mins list<float32> (list<float16> with
/// `PQ_SCALE_DTYPE_F16`), shape list<int64>, dtype utf8, bits uint8,
/// group_size uint32, then, for another method than `PQ_METHOD_MIN_MAX`,
/// method utf8 ("search"), then, with `PQ_AXIS_FIRST`, axis int8 (0).
/// `method`, `scale_dtype` and `axis` as in `PqQuantizeItem` (0, 0, 0:
/// min-max with float32 scales along the last axis, the format's original
/// schema); an unknown code is `PQ_STATUS_INVALID_SCHEME`. With
/// `PQ_AXIS_FIRST` every tensor must be 2-D (shape R x C): groups run down
/// its columns (`PQ_GROUP_SIZE_PER_ROW`: one group per column) and the row
/// holds the codes, scales and mins of its C x R transpose.
///
/// `importance` (NULL with `importance_len` 0: none) lists per-column
/// weights by tensor name, for `PQ_METHOD_SEARCH` only: each tensor of the
/// input takes the entry of its name; entries that name no tensor of this
/// input are not used (the batches of a stream may share one list); a name
/// listed twice is `PQ_STATUS_INVALID_IMATRIX`. The lists are borrowed.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize_arrow(
    in_array: *mut FFI_ArrowArray,
    in_schema: *const FFI_ArrowSchema,
    bits: u32,
    group_size: usize,
    method: u32,
    scale_dtype: u32,
    axis: u32,
    importance: *const PqNamedImportance,
    importance_len: usize,
    threads: usize,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    error: *mut PqError,
) -> PqStatus {
    let group_size = (group_size != PQ_GROUP_SIZE_PER_ROW).then_some(group_size);
    // SAFETY: the caller's promises on the four structs, as documented above.
    let out_schema = (!out_schema.is_null()).then_some(out_schema);
    unsafe {
        transform(in_array, in_schema, arrow::check_quantize_type, out_array, out_schema, error, |field, data| {
            let (scheme, axis) = (Scheme::from_codes(method, scale_dtype)?, Axis::from_code(axis)?);
            // SAFETY: the caller's promise on the importance list, as documented above.
            let importance = named_importance(importance, importance_len)?;
            arrow::quantize(data, field.name(), bits, group_size, scheme, axis, &importance, threads)
        })
    }
}

/// The caller's importance list as (name, weights) slices, each region
/// checked (NULL, alignment, size) before it is read.
///
/// # Safety
/// As documented on `pq_quantize_arrow` for `importance`.
unsafe fn named_importance<'a>(list: *const PqNamedImportance, len: usize) -> Result<Vec<(&'a str, &'a [f32])>> {
    // SAFETY: checked by Region::new; the caller promised `len` readable entries.
    let list = unsafe { Region::new("importance", list, len)?.as_slice() };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            // SAFETY: as above, for each entry's name and weights.
            let name = unsafe { Region::new("importance name", e.name, e.name_len)?.as_slice() };
            let name = std::str::from_utf8(name).map_err(|err| {
                Error::new(PqStatus::InvalidImatrix, format!("importance[{i}]: the name is not UTF-8: {err}"))
            })?;
            Ok((name, unsafe { Region::new("importance weights", e.weights, e.weights_len)?.as_slice() }))
        })
        .collect()
}

/// Checks an Arrow type, with no array yet, against what
/// `pq_quantize_arrow` accepts: the very check that function runs on its
/// `in_schema` before it reads the array (for `pyquant.explain`, which must
/// raise what the call would). `in_schema` is borrowed; the caller still
/// releases it. Errors as `pq_quantize_arrow`'s for a type it refuses:
/// `PQ_STATUS_UNSUPPORTED_DTYPE` (float64 says how to cast),
/// `PQ_STATUS_INVALID_ARROW` (a missing, unknown or repeated column).
#[no_mangle]
pub unsafe extern "C" fn pq_arrow_check_quantize_schema(
    in_schema: *const FFI_ArrowSchema,
    error: *mut PqError,
) -> PqStatus {
    // SAFETY: the caller's promise on `in_schema`, as documented above.
    run(error, || unsafe { import_field(in_schema, arrow::check_quantize_type) }.map(|_| ()))
}

/// `form` of `pq_dequantize_arrow`: `name`, `weights` (a list of the
/// dtype), `shape` when every row is a quantized float32 row, or every row a
/// quantized float16 row; otherwise as `PQ_DEQUANTIZED_RAW`.
pub const PQ_DEQUANTIZED_AUTO: u32 = 0;
/// `form` of `pq_dequantize_arrow`: `name` utf8, `dtype` utf8, `shape`
/// list<int64>, `data` large_binary (each tensor's raw little-endian bytes in
/// its dtype), whatever the rows hold: one schema for every batch of a stream.
pub const PQ_DEQUANTIZED_RAW: u32 = 1;

/// The way back: reconstructs the tensors of a quantized batch (made by
/// `pq_quantize_arrow`, or a batch of an Arrow checkpoint) as a struct
/// array in the `form` asked for (`PQ_DEQUANTIZED_AUTO` or
/// `PQ_DEQUANTIZED_RAW`). Quantized rows come back as `mins + q * scales` in
/// their dtype (float32, float16 or bfloat16); carried-over rows (`bits` 0:
/// `codes` hold the tensor's raw little-endian bytes) come back unchanged.
///
/// Ownership as for `pq_quantize_arrow`: `in_array` is moved from and
/// released exactly once by pyquant, `in_schema` is borrowed, and the
/// caller-allocated `out_array` / `out_schema` are written only on
/// `PQ_STATUS_OK`, after which the caller releases each once.
#[no_mangle]
pub unsafe extern "C" fn pq_dequantize_arrow(
    in_array: *mut FFI_ArrowArray,
    in_schema: *const FFI_ArrowSchema,
    form: u32,
    threads: usize,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    error: *mut PqError,
) -> PqStatus {
    // SAFETY: as for pq_quantize_arrow.
    unsafe {
        transform(in_array, in_schema, arrow::check_dequantize_type, out_array, Some(out_schema), error, |_, data| {
            let form = match form {
                PQ_DEQUANTIZED_AUTO => arrow::Dequantized::Auto,
                PQ_DEQUANTIZED_RAW => arrow::Dequantized::Raw,
                other => {
                    return Err(Error::new(
                        PqStatus::InvalidArrow,
                        format!("form {other} is not PQ_DEQUANTIZED_AUTO (0) or PQ_DEQUANTIZED_RAW (1)"),
                    ))
                }
            };
            arrow::dequantize(&data, form, threads)
        })
    }
}

/// Checks a quantized batch (a batch of an Arrow checkpoint, say) without
/// dequantizing it: every row against the rules `pq_dequantize_arrow` and
/// `pq_arrow_quantized_row` apply, with the same errors. Ownership as for
/// `pq_dequantize_arrow`'s input: `in_array` is moved from and released
/// exactly once by pyquant, `in_schema` is borrowed.
#[no_mangle]
pub unsafe extern "C" fn pq_arrow_check_quantized(
    in_array: *mut FFI_ArrowArray,
    in_schema: *const FFI_ArrowSchema,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        // SAFETY: as for pq_dequantize_arrow's input.
        let input = unsafe { take_array(in_array) }?;
        let (_, data) = unsafe { import(input, in_schema, arrow::check_dequantize_type) }?;
        arrow::check_quantized(&data)
    })
}

/// Builds a quantized batch of one row, the way every row of the format is
/// checked when read, into the caller-allocated `*out_array` /
/// `*out_schema` (schema as `pq_arrow_quantized_schema`, written only on
/// `PQ_STATUS_OK`; the caller then releases each once). For writers of
/// Arrow checkpoints, so that they need not know the row format.
///
/// A quantized row: `bits` 2, 3, 4 or 8, `dtype` "float32", "float16" or
/// "bfloat16", `codes` / `scales` / `mins` as `pq_quantize` writes them for
/// `shape` (groups of `group_size` along its last axis). A carried-over row:
/// `bits` 0, `group_size` 0, no scales or mins, `codes` the tensor's raw
/// little-endian bytes, `dtype` one of float64, float32, float16, bfloat16,
/// int64, int32, int16, int8, uint64, uint32, uint16, uint8, bool. `name`
/// and `dtype` are UTF-8 (not NUL-terminated). `method`, `scale_dtype` and
/// `axis` (codes as in `PqQuantizeItem`) choose the batch's schema, as for
/// `pq_quantize_arrow` (with `PQ_AXIS_FIRST` a quantized row is 2-D and its
/// codes, scales and mins are those of its transpose); with
/// `PQ_SCALE_DTYPE_F16` every scale and min must be a float16 value
/// (`PQ_STATUS_INVALID_SCHEME` otherwise). A carried-over
/// row takes those of the batches it is written with. Every buffer is
/// copied and owned by the caller.
#[no_mangle]
pub unsafe extern "C" fn pq_arrow_quantized_row(
    name: *const u8,
    name_len: usize,
    dtype: *const u8,
    dtype_len: usize,
    shape: *const i64,
    shape_len: usize,
    bits: u32,
    group_size: usize,
    codes: *const u8,
    codes_len: usize,
    scales: *const f32,
    scales_len: usize,
    mins: *const f32,
    mins_len: usize,
    method: u32,
    scale_dtype: u32,
    axis: u32,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let text = |what: &'static str, p: *const u8, len: usize| -> Result<&str> {
            // SAFETY: checked by Region::new; the caller promised `len` readable bytes.
            let bytes = unsafe { Region::new(what, p, len)?.as_slice() };
            std::str::from_utf8(bytes)
                .map_err(|e| Error::new(PqStatus::InvalidArrow, format!("{what} is not UTF-8: {e}")))
        };
        let (name, dtype) = (text("name", name, name_len)?, text("dtype", dtype, dtype_len)?);
        let bits = u8::try_from(bits).map_err(|_| {
            Error::new(PqStatus::InvalidBits, format!("bits must be 0 (carried over), 2, 3, 4 or 8, got {bits}"))
        })?;
        let group_size = u32::try_from(group_size).map_err(|_| {
            Error::new(PqStatus::InvalidGroupSize, format!("group_size {group_size} does not fit uint32"))
        })?;
        let (scheme, axis) = (Scheme::from_codes(method, scale_dtype)?, Axis::from_code(axis)?);
        check_outputs(out_array, Some(out_schema))?;
        // SAFETY: each region is checked (NULL, alignment, size) and only read.
        let parts = unsafe {
            arrow::RowParts {
                name,
                dtype,
                shape: Region::new("shape", shape, shape_len)?.as_slice(),
                bits,
                group_size,
                codes: Region::new("codes", codes, codes_len)?.as_slice(),
                scales: Region::new("scales", scales, scales_len)?.as_slice(),
                mins: Region::new("mins", mins, mins_len)?.as_slice(),
                scheme,
                axis,
            }
        };
        let row = arrow::row(&parts)?;
        unsafe { export(row, out_array, Some(out_schema)) }
    })
}

/// The shared body of the Arrow functions, inside the panic boundary: move
/// the input out of `*in_array` (released exactly once, on every path past
/// the pointer check), import it if `accept` takes its type, check the
/// outputs, run `work`, release the input, and export the result into the
/// caller's structs (`out_schema` `None`: the array alone).
///
/// # Safety
/// As documented on `pq_quantize_arrow` for its four struct pointers.
unsafe fn transform(
    in_array: *mut FFI_ArrowArray,
    in_schema: *const FFI_ArrowSchema,
    accept: fn(&DataType) -> Result<()>,
    out_array: *mut FFI_ArrowArray,
    out_schema: Option<*mut FFI_ArrowSchema>,
    error: *mut PqError,
    work: impl FnOnce(&Field, ArrayData) -> Result<ArrayData>,
) -> PqStatus {
    run(error, || {
        let input = unsafe { take_array(in_array) }?;
        let (field, data) = unsafe { import(input, in_schema, accept) }?;
        check_outputs(out_array, out_schema)?;
        // `work` takes the input: it is released (unless columns of it are
        // passed through) before the result is handed over.
        let result = work(&field, data)?;
        unsafe { export(result, out_array, out_schema) }
    })
}

/// Writes the schema of `pq_quantize_arrow`'s result for `method`,
/// `scale_dtype` and `axis` (0, 0, 0: the format's original schema) into
/// the caller-allocated `*out_schema`, on `PQ_STATUS_OK` only; the caller
/// then releases it once.
#[no_mangle]
pub unsafe extern "C" fn pq_arrow_quantized_schema(
    method: u32,
    scale_dtype: u32,
    axis: u32,
    out_schema: *mut FFI_ArrowSchema,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let (scheme, axis) = (Scheme::from_codes(method, scale_dtype)?, Axis::from_code(axis)?);
        check_struct("out_schema", out_schema)?;
        let schema = FFI_ArrowSchema::try_from(DataType::Struct(arrow::quantized_fields(scheme, axis)))
            .map_err(|e| Error::internal("exporting the schema", e))?;
        // SAFETY: checked non-NULL and aligned; the caller's struct is overwritten, not dropped.
        unsafe { ptr::write(out_schema, schema) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Moving in, checking, importing, exporting

/// Checks the caller's output structs (`out_schema` `None`: none wanted).
fn check_outputs(out_array: *mut FFI_ArrowArray, out_schema: Option<*mut FFI_ArrowSchema>) -> Result<()> {
    check_struct("out_array", out_array)?;
    out_schema.map_or(Ok(()), |s| check_struct("out_schema", s))
}

/// Moves `*in_array` into an owned value (the caller's struct is left
/// released): dropping the value calls the producer's release once.
///
/// # Safety
/// `in_array` is NULL or points to an `ArrowArray` the caller owns.
unsafe fn take_array(in_array: *mut FFI_ArrowArray) -> Result<FFI_ArrowArray> {
    check_struct("in_array", in_array)?;
    // SAFETY: non-NULL, aligned, and the caller hands its struct over.
    let array = unsafe { FFI_ArrowArray::from_raw(in_array) };
    if array.is_released() {
        return Err(Error::new(
            PqStatus::InvalidArrow,
            "in_array is released (its release callback is NULL): it was already consumed or moved",
        ));
    }
    Ok(array)
}

/// Checks the schema and the array against the C Data Interface, rejects
/// types `accept` refuses, and imports the array (without copying).
///
/// # Safety
/// `array` is a non-released array from the C caller; `in_schema` is NULL
/// or points to an `ArrowSchema`.
unsafe fn import(
    array: FFI_ArrowArray,
    in_schema: *const FFI_ArrowSchema,
    accept: fn(&DataType) -> Result<()>,
) -> Result<(Field, ArrayData)> {
    let field = unsafe { import_field(in_schema, accept) }?;
    // SAFETY: `array` is owned here and laid out as the spec says.
    let raw = unsafe { &*(&array as *const FFI_ArrowArray as *const RawArray) };
    unsafe { check_array(raw, field.data_type(), Path::Root("in_array")) }?;
    // SAFETY: every buffer, child and length that the import reads was checked above.
    let data = unsafe { from_ffi_and_data_type(array, field.data_type().clone()) }
        .map_err(|e| Error::new(PqStatus::InvalidArrow, format!("in_array: {e}")))?;
    Ok((field, data))
}

/// Checks the schema against the C Data Interface and reads it as a field,
/// rejecting types `accept` refuses.
///
/// # Safety
/// `in_schema` is NULL or points to an `ArrowSchema`.
unsafe fn import_field(in_schema: *const FFI_ArrowSchema, accept: fn(&DataType) -> Result<()>) -> Result<Field> {
    check_struct("in_schema", in_schema)?;
    // SAFETY: non-NULL and aligned; FFI_ArrowSchema has the spec's layout.
    let schema = unsafe { &*in_schema };
    let raw_schema = unsafe { &*(in_schema as *const RawSchema) };
    if raw_schema.release.is_none() {
        return Err(Error::new(PqStatus::InvalidArrow, "in_schema is released (its release callback is NULL)"));
    }
    unsafe { check_schema(raw_schema, Path::Root("in_schema"), 0) }?;
    let field =
        Field::try_from(schema).map_err(|e| Error::new(PqStatus::UnsupportedDtype, format!("in_schema: {e}")))?;
    accept(field.data_type())?;
    Ok(field)
}

/// Exports `data` into the caller's structs (its type too unless
/// `out_schema` is `None`); nothing is written on error.
///
/// # Safety
/// `out_array` and `out_schema` passed [`check_outputs`].
unsafe fn export(
    data: ArrayData,
    out_array: *mut FFI_ArrowArray,
    out_schema: Option<*mut FFI_ArrowSchema>,
) -> Result<()> {
    let schema = out_schema
        .map(|s| FFI_ArrowSchema::try_from(data.data_type()).map(|schema| (s, schema)))
        .transpose()
        .map_err(|e| Error::internal("exporting the schema", e))?;
    let array = FFI_ArrowArray::new(&data);
    // SAFETY: checked writable structs; their old contents are overwritten, not dropped.
    unsafe {
        ptr::write(out_array, array);
        if let Some((out_schema, schema)) = schema {
            ptr::write(out_schema, schema);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Raw structure checks

/// `struct ArrowArray` as the spec lays it out (the layout of FFI_ArrowArray).
#[repr(C)]
struct RawArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *const *const c_void,
    children: *const *const RawArray,
    dictionary: *const RawArray,
    release: Option<unsafe extern "C" fn(*mut RawArray)>,
    private_data: *mut c_void,
}

/// `struct ArrowSchema` as the spec lays it out (the layout of FFI_ArrowSchema).
#[repr(C)]
struct RawSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *const *const RawSchema,
    dictionary: *const RawSchema,
    release: Option<unsafe extern "C" fn(*mut RawSchema)>,
    private_data: *mut c_void,
}

const _: () = assert!(size_of::<RawArray>() == size_of::<FFI_ArrowArray>());
const _: () = assert!(align_of::<RawArray>() == align_of::<FFI_ArrowArray>());
const _: () = assert!(size_of::<RawSchema>() == size_of::<FFI_ArrowSchema>());
const _: () = assert!(align_of::<RawSchema>() == align_of::<FFI_ArrowSchema>());

fn invalid(path: impl std::fmt::Display, message: impl std::fmt::Display) -> Error {
    Error::new(PqStatus::InvalidArrow, format!("{path}: {message}"))
}

/// Where a check is in the caller's structs (`in_array.children[1]`,
/// `in_array: buffer 2`): formatted only into an error message, so that a
/// valid input costs no string.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'static str),
    Child(&'a Path<'a>, usize),
    Buffer(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root(name) => f.write_str(name),
            Path::Child(parent, i) => write!(f, "{parent}.children[{i}]"),
            Path::Buffer(parent, i) => write!(f, "{parent}: buffer {i}"),
        }
    }
}

/// Nesting deeper than this is refused before recursing (pyquant's inputs
/// nest three levels deep).
const MAX_DEPTH: usize = 16;

/// Entry `i` of a C array of pointers (which need not be aligned).
///
/// # Safety
/// `base` points to at least `i + 1` pointers.
unsafe fn nth<T>(base: *const *const T, i: usize) -> *const T {
    unsafe { ptr::read_unaligned(base.add(i)) }
}

/// Checks what arrow-rs's schema import would otherwise trust or panic on.
///
/// # Safety
/// `s` is a non-released schema from the caller.
unsafe fn check_schema(s: &RawSchema, path: Path, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(invalid(path, format!("nests deeper than {MAX_DEPTH} levels")));
    }
    if s.format.is_null() {
        return Err(invalid(path, "format is NULL"));
    }
    // SAFETY: the spec makes format and name NUL-terminated strings.
    let format = unsafe { CStr::from_ptr(s.format) }.to_str().map_err(|_| invalid(path, "format is not UTF-8"))?;
    if !s.name.is_null() && unsafe { CStr::from_ptr(s.name) }.to_str().is_err() {
        return Err(invalid(path, "name is not UTF-8"));
    }
    if !s.dictionary.is_null() {
        return Err(Error::new(
            PqStatus::UnsupportedDtype,
            format!("{path}: dictionary-encoded data (format {format:?}) is not supported"),
        ));
    }
    let n = usize::try_from(s.n_children).map_err(|_| invalid(path, format!("n_children is {}", s.n_children)))?;
    if n > 0 && s.children.is_null() {
        return Err(invalid(path, format!("n_children is {n} but children is NULL")));
    }
    for i in 0..n {
        let child = unsafe { nth(s.children, i) };
        let child_path = Path::Child(&path, i);
        if child.is_null() {
            return Err(invalid(child_path, "is NULL"));
        }
        check_aligned(child_path, child)?;
        // SAFETY: non-NULL, aligned, owned by the parent schema.
        let child = unsafe { &*child };
        if child.release.is_none() {
            return Err(invalid(child_path, "is released"));
        }
        unsafe { check_schema(child, child_path, depth + 1) }?;
    }
    Ok(())
}

/// The buffers of a C Data Interface array of each type pyquant reads.
#[derive(Clone, Copy)]
enum Buf {
    /// The validity bitmap: may be NULL, any alignment.
    Validity,
    /// `offset + length` values of this many bytes each.
    Values(usize),
    /// `offset + length + 1` offsets of this many bytes each (4 or 8).
    Offsets(usize),
    /// `offset + length` bits (boolean values), any alignment.
    Bits,
    /// Bytes of a string or binary array, as many as the last offset says.
    Data,
    /// The 16-byte views of a string or binary view array (8-aligned, as
    /// the spec allows; arrow-rs realigns them), followed by the variadic
    /// data buffers and their int64 lengths (checked by [`check_variadic`]).
    Views,
}

fn buffers_of(dt: &DataType, path: Path) -> Result<&'static [Buf]> {
    use Buf::*;
    Ok(match dt {
        DataType::UInt8 | DataType::Int8 => &[Validity, Values(1)],
        DataType::Float16 | DataType::UInt16 | DataType::Int16 => &[Validity, Values(2)],
        DataType::Float32 | DataType::UInt32 | DataType::Int32 => &[Validity, Values(4)],
        DataType::Int64 | DataType::UInt64 => &[Validity, Values(8)],
        // Columns passed through by pq_quantize_arrow (never read by pyquant).
        DataType::Boolean => &[Validity, Bits],
        DataType::Date32 | DataType::Time32(_) => &[Validity, Values(4)],
        DataType::Float64
        | DataType::Date64
        | DataType::Time64(_)
        | DataType::Timestamp(_, _)
        | DataType::Duration(_) => &[Validity, Values(8)],
        DataType::Utf8 | DataType::Binary => &[Validity, Offsets(4), Data],
        DataType::LargeUtf8 | DataType::LargeBinary => &[Validity, Offsets(8), Data],
        DataType::Utf8View | DataType::BinaryView => &[Validity, Views],
        DataType::List(_) => &[Validity, Offsets(4)],
        DataType::LargeList(_) => &[Validity, Offsets(8)],
        // Offsets and sizes, one of each per row.
        DataType::ListView(_) => &[Validity, Values(4), Values(4)],
        DataType::LargeListView(_) => &[Validity, Values(8), Values(8)],
        DataType::FixedSizeList(_, _) | DataType::Struct(_) => &[Validity],
        other => return Err(Error::new(PqStatus::UnsupportedDtype, format!("{path}: type {other} is not supported"))),
    })
}

/// Checks an array against its type: counts, lengths (and that no size
/// derived from them overflows), NULL and misaligned buffers, children.
///
/// # Safety
/// `a` is a non-released array from the caller, of type `dt`.
unsafe fn check_array(a: &RawArray, dt: &DataType, path: Path) -> Result<()> {
    if a.release.is_none() {
        return Err(invalid(path, "is released"));
    }
    if a.length < 0 || a.offset < 0 || a.null_count < -1 {
        return Err(invalid(
            path,
            format!("length {}, offset {}, null_count {}: negative", a.length, a.offset, a.null_count),
        ));
    }
    // The largest byte size derived below is (offset + length + 1) * 8.
    let end = a
        .offset
        .checked_add(a.length)
        .filter(|&e| e < (isize::MAX as i64) / 8 - 1)
        .ok_or_else(|| invalid(path, format!("offset {} + length {} overflows", a.offset, a.length)))?
        as usize;
    if !a.dictionary.is_null() {
        return Err(invalid(path, "has a dictionary, but its type is not dictionary-encoded"));
    }
    let bufs = buffers_of(dt, path)?;
    let views = bufs.iter().any(|b| matches!(b, Buf::Views));
    // View types add their data buffers and one buffer of their lengths.
    let count_ok = if views { a.n_buffers > bufs.len() as i64 } else { a.n_buffers == bufs.len() as i64 };
    if !count_ok {
        let plus = if views { " plus its data buffers and their lengths" } else { "" };
        return Err(invalid(path, format!("has {} buffers, type {dt} needs {}{plus}", a.n_buffers, bufs.len())));
    }
    if a.buffers.is_null() {
        return Err(invalid(path, "buffers is NULL"));
    }
    if views {
        // SAFETY: n_buffers (> 2) pointers, as the producer promises.
        unsafe { check_variadic(a, path) }?;
    }
    let mut last_offset = 0usize;
    for (i, &kind) in bufs.iter().enumerate() {
        // SAFETY: the producer provides n_buffers pointers.
        let p = unsafe { nth(a.buffers, i) } as *const u8;
        let (bytes, align) = match kind {
            Buf::Validity => continue,
            Buf::Values(w) => (end * w, w),
            Buf::Offsets(w) => ((end + 1) * w, w),
            Buf::Bits => (end.div_ceil(8), 1),
            Buf::Data => (last_offset, 1),
            Buf::Views => (end * 16, 8),
        };
        if p.is_null() {
            if bytes > 0 {
                return Err(invalid(path, format!("buffer {i} is NULL but must hold {bytes} bytes")));
            }
            continue;
        }
        check_aligned_to(Path::Buffer(&path, i), p, align)?;
        if let Buf::Offsets(w) = kind {
            // SAFETY: aligned, and the spec puts end + 1 offsets there.
            let last = unsafe {
                if w == 4 {
                    *(p as *const i32).add(end) as i64
                } else {
                    *(p as *const i64).add(end)
                }
            };
            last_offset = usize::try_from(last)
                .ok()
                .filter(|&l| l <= isize::MAX as usize)
                .ok_or_else(|| invalid(path, format!("last offset {last} is out of range")))?;
        }
    }
    let children: Vec<&DataType> = match dt {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => vec![f.data_type()],
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        _ => vec![],
    };
    if a.n_children != children.len() as i64 {
        return Err(invalid(path, format!("has {} children, type {dt} needs {}", a.n_children, children.len())));
    }
    if !children.is_empty() && a.children.is_null() {
        return Err(invalid(path, "children is NULL"));
    }
    for (i, child_type) in children.into_iter().enumerate() {
        let child_path = Path::Child(&path, i);
        // SAFETY: the producer provides n_children pointers.
        let child = unsafe { nth(a.children, i) };
        if child.is_null() {
            return Err(invalid(child_path, "is NULL"));
        }
        check_aligned(child_path, child)?;
        // SAFETY: non-NULL, aligned, owned by the parent array.
        unsafe { check_array(&*child, child_type, child_path) }?;
    }
    Ok(())
}

/// The variadic buffers of a view array: buffers `2..n - 1` hold the
/// strings the views point into, and the last one their `n - 3` lengths
/// (int64), which arrow-rs's import trusts. The views themselves are
/// checked against these buffers by `validate_full` after the import.
///
/// # Safety
/// `a` has `n_buffers` (> 2) buffer pointers.
unsafe fn check_variadic(a: &RawArray, path: Path) -> Result<()> {
    let n = (a.n_buffers - 3) as usize;
    // SAFETY: the last of the n_buffers pointers.
    let lens = unsafe { nth(a.buffers, n + 2) } as *const i64;
    if n == 0 {
        return Ok(());
    }
    if lens.is_null() {
        return Err(invalid(path, format!("the lengths of its {n} data buffers are NULL")));
    }
    check_aligned_to(Path::Buffer(&path, n + 2), lens, 8)?;
    for i in 0..n {
        // SAFETY: aligned, and the spec puts n lengths there.
        let len = unsafe { *lens.add(i) };
        if len < 0 || len > isize::MAX as i64 {
            return Err(invalid(path, format!("data buffer {} has length {len}", i + 2)));
        }
        // SAFETY: one of the n_buffers pointers.
        if len > 0 && unsafe { nth(a.buffers, i + 2) }.is_null() {
            return Err(invalid(path, format!("buffer {} is NULL but must hold {len} bytes", i + 2)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::tests::exclusive;
    use crate::ffi::PQ_ERROR_MESSAGE_CAPACITY;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RELEASES: AtomicUsize = AtomicUsize::new(0);

    /// What a hand-built producer owns: the values and the buffer pointers.
    struct Producer {
        _values: Vec<f32>,
        buffers: [*const c_void; 2],
    }

    unsafe extern "C" fn release_producer(a: *mut RawArray) {
        RELEASES.fetch_add(1, Ordering::SeqCst);
        unsafe {
            drop(Box::from_raw((*a).private_data as *mut Producer));
            (*a).release = None;
        }
    }

    /// A float32 array built by hand, as a C producer would.
    fn raw_f32(values: Vec<f32>) -> RawArray {
        let mut p = Box::new(Producer { buffers: [ptr::null(), values.as_ptr() as *const c_void], _values: values });
        let len = p._values.len() as i64;
        let buffers = p.buffers.as_mut_ptr() as *const *const c_void;
        RawArray {
            length: len,
            null_count: 0,
            offset: 0,
            n_buffers: 2,
            n_children: 0,
            buffers,
            children: ptr::null(),
            dictionary: ptr::null(),
            release: Some(release_producer),
            private_data: Box::into_raw(p) as *mut c_void,
        }
    }

    fn message(e: &PqError) -> String {
        let bytes: Vec<u8> = e.message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8(bytes).unwrap()
    }

    /// Calls pq_quantize_arrow on `raw`; returns status, message and how many
    /// times the input was released.
    fn call(raw: &mut RawArray, dt: DataType) -> (PqStatus, String, usize, Option<(FFI_ArrowArray, FFI_ArrowSchema)>) {
        let before = RELEASES.load(Ordering::SeqCst);
        let schema = FFI_ArrowSchema::try_from(dt).unwrap();
        let (mut out_a, mut out_s) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        let mut e = PqError { status: PqStatus::Ok, message: [0; PQ_ERROR_MESSAGE_CAPACITY] };
        let s = unsafe {
            pq_quantize_arrow(
                raw as *mut RawArray as *mut FFI_ArrowArray,
                &schema,
                4,
                4,
                0,
                0,
                0,
                ptr::null(),
                0,
                0,
                &mut out_a,
                &mut out_s,
                &mut e,
            )
        };
        assert!(raw.release.is_none(), "the input must be moved from");
        let out = (s == PqStatus::Ok).then_some((out_a, out_s));
        (s, message(&e), RELEASES.load(Ordering::SeqCst) - before, out)
    }

    #[test]
    fn success_releases_the_input_once_and_exports() {
        let _g = exclusive();
        let mut raw = raw_f32(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        let (s, m, released, out) = call(&mut raw, DataType::Float32);
        assert_eq!((s, m.as_str(), released), (PqStatus::Ok, "", 1));
        let (array, schema) = out.unwrap();
        assert_eq!(arrow::live_exports(), 1);
        // Moved (bitwise copy, source marked released), then released once by drop.
        let moved = unsafe { FFI_ArrowArray::from_raw(&array as *const _ as *mut FFI_ArrowArray) };
        assert!(array.is_released());
        drop((array, schema));
        assert_eq!(arrow::live_exports(), 1);
        drop(moved);
        assert_eq!(arrow::live_exports(), 0);
    }

    /// With a NULL out_schema, the array alone: the same data, of the
    /// type pq_arrow_quantized_schema gives.
    #[test]
    fn the_array_alone_without_out_schema() {
        let _g = exclusive();
        let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
        let (s, _, _, out) = call(&mut raw_f32(values.clone()), DataType::Float32);
        let (array, schema) = out.unwrap();
        let want = unsafe { arrow_array::ffi::from_ffi(array, &schema) }.unwrap();
        let schema = FFI_ArrowSchema::try_from(DataType::Float32).unwrap();
        let mut out = FFI_ArrowArray::empty();
        let mut raw = raw_f32(values);
        let st = unsafe {
            pq_quantize_arrow(
                &mut raw as *mut RawArray as *mut FFI_ArrowArray,
                &schema,
                4,
                4,
                0,
                0,
                0,
                ptr::null(),
                0,
                0,
                &mut out,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        assert_eq!((s, st), (PqStatus::Ok, PqStatus::Ok));
        let dt = DataType::Struct(arrow::quantized_fields(Scheme::default(), Axis::Last));
        let got = unsafe { from_ffi_and_data_type(out, dt) }.unwrap();
        assert_eq!(got, want);
        // pq_dequantize_arrow still needs its out_schema.
        let mut input = FFI_ArrowArray::new(&got);
        let schema = FFI_ArrowSchema::try_from(got.data_type()).unwrap();
        let mut out = FFI_ArrowArray::empty();
        let st = unsafe { pq_dequantize_arrow(&mut input, &schema, 0, 0, &mut out, ptr::null_mut(), ptr::null_mut()) };
        assert_eq!(st, PqStatus::NullPointer);
        drop((got, want, input));
        assert_eq!(arrow::live_exports(), 0);
    }

    #[test]
    fn every_error_path_releases_the_input_once() {
        let _g = exclusive();
        type Breaker = fn(&mut RawArray);
        let cases: [(&str, Breaker, PqStatus, &str); 8] = [
            ("negative length", |a| a.length = -1, PqStatus::InvalidArrow, "negative"),
            ("offset+length overflow", |a| a.offset = i64::MAX - 2, PqStatus::InvalidArrow, "overflows"),
            ("missing buffer", |a| a.n_buffers = 1, PqStatus::InvalidArrow, "has 1 buffers"),
            ("NULL buffers", |a| a.buffers = ptr::null(), PqStatus::InvalidArrow, "buffers is NULL"),
            (
                "NULL data",
                |a| unsafe { (*(a.private_data as *mut Producer)).buffers[1] = ptr::null() },
                PqStatus::InvalidArrow,
                "buffer 1 is NULL",
            ),
            (
                "misaligned",
                |a| unsafe {
                    let p = a.private_data as *mut Producer;
                    (*p).buffers[1] = ((*p).buffers[1] as *const u8).add(1) as *const c_void;
                    a.length -= 1;
                },
                PqStatus::Misaligned,
                "not aligned",
            ),
            ("stray children", |a| a.n_children = 1, PqStatus::InvalidArrow, "children"),
            ("unknown null count, no bitmap: no nulls", |a| a.null_count = -1, PqStatus::Ok, ""),
        ];
        for (what, brk, want, needle) in cases {
            let mut raw = raw_f32(vec![1.0; 8]);
            brk(&mut raw);
            let (s, m, released, out) = call(&mut raw, DataType::Float32);
            assert_eq!((s, released), (want, 1), "{what}: {m}");
            assert!(m.contains(needle), "{what}: {m}");
            drop(out);
        }
        let mut raw = raw_f32(vec![1.0; 8]);
        let (s, m, released, _) = call(&mut raw, DataType::Float64);
        assert_eq!((s, released), (PqStatus::UnsupportedDtype, 1), "{m}");
        // Already released: an error, and nothing to release.
        let (s, m, released, _) = call(&mut raw, DataType::Float32);
        assert_eq!((s, released), (PqStatus::InvalidArrow, 0));
        assert!(m.contains("released"), "{m}");
        assert_eq!(arrow::live_exports(), 0);
    }

    #[test]
    fn null_pointers_and_the_schema() {
        let _g = exclusive();
        let schema = FFI_ArrowSchema::try_from(DataType::Float32).unwrap();
        let mut raw = raw_f32(vec![1.0; 8]);
        let before = RELEASES.load(Ordering::SeqCst);
        let (mut a, mut s) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
        let in_a = &mut raw as *mut RawArray as *mut FFI_ArrowArray;
        let st = unsafe {
            pq_quantize_arrow(
                ptr::null_mut(),
                &schema,
                4,
                4,
                0,
                0,
                0,
                ptr::null(),
                0,
                0,
                &mut a,
                &mut s,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, PqStatus::NullPointer);
        // A NULL output still releases the (moved) input.
        let st = unsafe {
            pq_quantize_arrow(in_a, &schema, 4, 4, 0, 0, 0, ptr::null(), 0, 0, ptr::null_mut(), &mut s, ptr::null_mut())
        };
        assert_eq!((st, RELEASES.load(Ordering::SeqCst) - before), (PqStatus::NullPointer, 1));
        let mut raw = raw_f32(vec![1.0; 8]);
        let in_a = &mut raw as *mut RawArray as *mut FFI_ArrowArray;
        let st = unsafe {
            pq_quantize_arrow(in_a, ptr::null(), 4, 4, 0, 0, 0, ptr::null(), 0, 0, &mut a, &mut s, ptr::null_mut())
        };
        assert_eq!((st, RELEASES.load(Ordering::SeqCst) - before), (PqStatus::NullPointer, 2));
        // A bad importance list or axis code: an error, the input released once.
        let bad = [PqNamedImportance { name: ptr::null(), name_len: 1, weights: ptr::null(), weights_len: 0 }];
        for (axis, list, status) in
            [(0, bad.as_ptr(), PqStatus::NullPointer), (2, ptr::null(), PqStatus::InvalidScheme)]
        {
            let mut raw = raw_f32(vec![1.0; 8]);
            let in_a = &mut raw as *mut RawArray as *mut FFI_ArrowArray;
            let before = RELEASES.load(Ordering::SeqCst);
            let n = if list.is_null() { 0 } else { 1 };
            let st = unsafe {
                pq_quantize_arrow(in_a, &schema, 4, 4, 1, 0, axis, list, n, 0, &mut a, &mut s, ptr::null_mut())
            };
            assert_eq!((st, RELEASES.load(Ordering::SeqCst) - before), (status, 1));
        }
        let mut out = FFI_ArrowSchema::empty();
        assert_eq!(unsafe { pq_arrow_quantized_schema(0, 0, 0, &mut out, ptr::null_mut()) }, PqStatus::Ok);
        assert_eq!(
            DataType::try_from(&out).unwrap(),
            DataType::Struct(arrow::quantized_fields(Scheme::default(), Axis::Last))
        );
        let scheme = Scheme::from_codes(1, 1).unwrap();
        let mut out = FFI_ArrowSchema::empty();
        assert_eq!(unsafe { pq_arrow_quantized_schema(1, 1, 0, &mut out, ptr::null_mut()) }, PqStatus::Ok);
        assert_eq!(DataType::try_from(&out).unwrap(), DataType::Struct(arrow::quantized_fields(scheme, Axis::Last)));
        let mut out = FFI_ArrowSchema::empty();
        assert_eq!(unsafe { pq_arrow_quantized_schema(2, 0, 0, &mut out, ptr::null_mut()) }, PqStatus::InvalidScheme);
        assert_eq!(unsafe { pq_arrow_quantized_schema(0, 0, 1, &mut out, ptr::null_mut()) }, PqStatus::Ok);
        assert_eq!(
            DataType::try_from(&out).unwrap(),
            DataType::Struct(arrow::quantized_fields(Scheme::default(), Axis::First))
        );
        drop(out);
        let mut out = FFI_ArrowSchema::empty();
        assert_eq!(unsafe { pq_arrow_quantized_schema(0, 0, 2, &mut out, ptr::null_mut()) }, PqStatus::InvalidScheme);
        assert_eq!(arrow::live_exports(), 0);
    }

    /// The schema-only check says what pq_quantize_arrow would, with no array.
    #[test]
    fn schema_check_without_an_array() {
        let check = |dt: Option<DataType>| {
            let mut e = PqError { status: PqStatus::Ok, message: [0; PQ_ERROR_MESSAGE_CAPACITY] };
            let schema = dt.map(|dt| FFI_ArrowSchema::try_from(dt).unwrap());
            let p = schema.as_ref().map_or(ptr::null(), |s| s as *const FFI_ArrowSchema);
            let st = unsafe { pq_arrow_check_quantize_schema(p, &mut e) };
            (st, message(&e))
        };
        let list = |v: DataType| DataType::List(std::sync::Arc::new(Field::new_list_field(v, true)));
        let batch = |weights: DataType| {
            DataType::Struct(
                vec![Field::new("name", DataType::Utf8View, false), Field::new("weights", weights, false)].into(),
            )
        };
        assert_eq!(check(Some(DataType::Float32)).0, PqStatus::Ok);
        assert_eq!(check(Some(batch(list(DataType::Float16)))).0, PqStatus::Ok);
        let (st, msg) = check(Some(batch(list(DataType::Float64))));
        assert!(st == PqStatus::UnsupportedDtype && msg.contains("cast to float32"), "{msg}");
        assert_eq!(check(Some(DataType::Utf8)).0, PqStatus::UnsupportedDtype);
        assert_eq!(check(None).0, PqStatus::NullPointer);
    }
}
