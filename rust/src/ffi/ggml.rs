//! Exported GGML functions: check regions (NULL, alignment, sizes, overlap),
//! build slices, call [`crate::ggml`], all inside [`run`].

use std::os::raw::{c_char, c_void};
use std::ptr;

use super::boundary::{run, PqError};
use super::memory::{Region, Span, TensorRegion};
use super::quantize::{checked_regions, run_batch};
use crate::batch::BatchError;
use crate::error::{PqStatus, Result};
use crate::ggml::{self, GgmlDequantizeItem, GgmlQuantizeItem, GgmlType};

/// ggml's name of GGML type `ggml_type` (a `ggml_type` /
/// `GGMLQuantizationType` value), e.g. "Q4_K": a static NUL-terminated
/// string the caller must not free; NULL if pyquant does not support the
/// type. Cannot fail.
#[no_mangle]
pub extern "C" fn pq_ggml_type_name(ggml_type: u32) -> *const c_char {
    GgmlType::try_from(ggml_type).map_or(ptr::null(), |t| t.info().c_name.as_ptr())
}

/// The block of GGML type `ggml_type`: `*block_values` values are stored in
/// `*block_bytes` bytes; rows must hold whole blocks. Both out-pointers are
/// owned by the caller and must not be NULL. Fails only for an unsupported
/// type.
#[no_mangle]
pub unsafe extern "C" fn pq_ggml_block_size(
    ggml_type: u32,
    block_values: *mut usize,
    block_bytes: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let values_out = Region::new("block_values", block_values, 1)?;
        let bytes_out = Region::new("block_bytes", block_bytes, 1)?;
        let info = GgmlType::try_from(ggml_type)?.info();
        // SAFETY: both checked non-NULL and aligned; the caller owns them.
        unsafe {
            values_out.as_mut_slice()[0] = info.block;
            bytes_out.as_mut_slice()[0] = info.bytes;
        }
        Ok(())
    })
}

/// Bytes of `input_len` values of GGML type `ggml_type` in rows of
/// `row_len` into `*output_len`: the output size of `pq_ggml_quantize` and
/// the input size of `pq_ggml_dequantize`.
#[no_mangle]
pub unsafe extern "C" fn pq_ggml_quantized_size(
    ggml_type: u32,
    input_len: usize,
    row_len: usize,
    output_len: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let out = Region::new("output_len", output_len, 1)?;
        let bytes = ggml::quantized_len(GgmlType::try_from(ggml_type)?, input_len, row_len)?;
        // SAFETY: checked non-NULL and aligned; the caller owns it.
        unsafe { out.as_mut_slice()[0] = bytes };
        Ok(())
    })
}

/// Quantizes `input_len` values of type `dtype` (a `PQ_DTYPE_*` code) read
/// in place from `input`, in rows of `row_len`, to GGML type `ggml_type`,
/// writing the first `pq_ggml_quantized_size` bytes of `output`: the bytes
/// of ggml's `ggml_quantize_chunk`. `imatrix` is NULL (no importance
/// matrix; `imatrix_len` must then be 0) or `imatrix_len == row_len`
/// finite, non-negative weights, one per column. `threads`: 0 = all cores,
/// n = at most n; the bytes are the same for every value.
///
/// `input` must be aligned for `dtype`; `output` may not overlap `input` or
/// `imatrix`. Buffers are owned by the caller; `output` is written only
/// when the call returns `PQ_STATUS_OK`.
#[no_mangle]
pub unsafe extern "C" fn pq_ggml_quantize(
    ggml_type: u32,
    dtype: u32,
    input: *const c_void,
    input_len: usize,
    row_len: usize,
    imatrix: *const f32,
    imatrix_len: usize,
    threads: usize,
    output: *mut u8,
    output_len: usize,
    error: *mut PqError,
) -> PqStatus {
    let item =
        PqGgmlQuantizeItem { ggml_type, dtype, input, input_len, row_len, imatrix, imatrix_len, output, output_len };
    // A batch of one.
    run(error, || quantize_items(&[item], threads, &[]).map_err(|e| e.error))
}

/// One tensor of `pq_ggml_quantize_batch`: the arguments of
/// `pq_ggml_quantize` but `threads`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PqGgmlQuantizeItem {
    /// A `ggml_type` / `GGMLQuantizationType` value.
    pub ggml_type: u32,
    /// A `PQ_DTYPE_*` code: the type of `input`.
    pub dtype: u32,
    /// `input_len` values of `dtype`, aligned for it, read in place.
    pub input: *const c_void,
    pub input_len: usize,
    pub row_len: usize,
    /// NULL, or `row_len` finite non-negative weights.
    pub imatrix: *const f32,
    pub imatrix_len: usize,
    /// At least `pq_ggml_quantized_size` bytes; written on success.
    pub output: *mut u8,
    pub output_len: usize,
}

/// Quantizes `items_len` tensors described by `items` (mixed GGML types and
/// dtypes) in one call on up to `threads` threads, as `pq_ggml_quantize`
/// each. All or nothing: every item's pointers, lengths, overlaps (no output
/// may overlap any buffer of any item or the `items` array), importance
/// matrix and values are checked before any output is written. On failure
/// nothing is written and `*failed_item` (nullable, any alignment) is set to
/// the index N of the item the problem is about (to `SIZE_MAX` when it is not
/// about one item, and on success); the message does not name N, as in
/// `pq_quantize_batch`.
#[no_mangle]
pub unsafe extern "C" fn pq_ggml_quantize_batch(
    items: *const PqGgmlQuantizeItem,
    items_len: usize,
    threads: usize,
    failed_item: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    // SAFETY: the caller provides `items_len` readable items; every bit
    // pattern is a valid PqGgmlQuantizeItem (integers and raw pointers).
    unsafe { run_batch(items, items_len, failed_item, error, |list, span| quantize_items(list, threads, span)) }
}

/// The checked regions of one item, before any slice exists.
struct ItemRegions {
    ty: GgmlType,
    input: TensorRegion,
    imatrix: Option<Region<f32>>,
    output: Region<u8>,
    row_len: usize,
}

fn item_regions(item: &PqGgmlQuantizeItem) -> Result<ItemRegions> {
    let ty = GgmlType::try_from(item.ggml_type)?;
    let input = TensorRegion::new(item.dtype, "input", item.input, item.input_len)?;
    let weights = Region::new("imatrix", item.imatrix, item.imatrix_len)?;
    let output = Region::new("output", item.output as *const u8, item.output_len)?;
    let imatrix = (!item.imatrix.is_null()).then_some(weights);
    Ok(ItemRegions { ty, input, imatrix, output, row_len: item.row_len })
}

/// Checks every item's regions and their overlaps (with the call's other
/// inputs, `extra`: the items array), then runs the safe batch.
fn quantize_items(items: &[PqGgmlQuantizeItem], threads: usize, extra: &[Span]) -> std::result::Result<(), BatchError> {
    let regions = checked_regions(items, extra, item_regions, |i, r, spans| {
        spans.push(r.input.span(i, false));
        spans.extend(r.imatrix.as_ref().map(|w| w.span(Some(i), false)));
        spans.push(r.output.span(Some(i), true));
    })?;
    // SAFETY: every region was checked (NULL, alignment, size) and no
    // output overlaps anything; the caller keeps the buffers valid.
    let mut safe: Vec<GgmlQuantizeItem<'_>> = regions
        .iter()
        .map(|r| unsafe {
            GgmlQuantizeItem {
                ty: r.ty,
                input: r.input.values(),
                row_len: r.row_len,
                imatrix: r.imatrix.as_ref().map(|w| w.as_slice()),
                output: r.output.as_mut_slice(),
            }
        })
        .collect();
    ggml::quantize_batch(&mut safe, threads)
}

/// Dequantizes `input` (exactly `pq_ggml_quantized_size(ggml_type,
/// output_len, row_len)` bytes) into `output_len` values of type `dtype`,
/// as ggml's `dequantize_row_*` (rounded to nearest-even for f16 / bf16
/// outputs); `threads` as in `pq_ggml_quantize`. `output` must be aligned
/// for `dtype` and not overlap `input`; it is written only on
/// `PQ_STATUS_OK`.
#[no_mangle]
pub unsafe extern "C" fn pq_ggml_dequantize(
    ggml_type: u32,
    input: *const u8,
    input_len: usize,
    row_len: usize,
    dtype: u32,
    threads: usize,
    output: *mut c_void,
    output_len: usize,
    error: *mut PqError,
) -> PqStatus {
    let item = PqGgmlDequantizeItem { ggml_type, input, input_len, row_len, dtype, output, output_len };
    run(error, || dequantize_items(&[item], threads, &[]).map_err(|e| e.error))
}

/// One tensor of `pq_ggml_dequantize_batch`: the arguments of
/// `pq_ggml_dequantize` but `threads`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PqGgmlDequantizeItem {
    /// A `ggml_type` / `GGMLQuantizationType` value.
    pub ggml_type: u32,
    /// Exactly `pq_ggml_quantized_size(ggml_type, output_len, row_len)` bytes.
    pub input: *const u8,
    pub input_len: usize,
    pub row_len: usize,
    /// A `PQ_DTYPE_*` code: the type of `output`.
    pub dtype: u32,
    /// `output_len` values of `dtype`, aligned for it; written on success.
    pub output: *mut c_void,
    pub output_len: usize,
}

/// Dequantizes `items_len` tensors described by `items` (mixed GGML types,
/// mixed output dtypes) in one call on up to `threads` threads, as
/// `pq_ggml_dequantize` each; all or nothing, with `*failed_item` as in
/// `pq_ggml_quantize_batch`.
#[no_mangle]
pub unsafe extern "C" fn pq_ggml_dequantize_batch(
    items: *const PqGgmlDequantizeItem,
    items_len: usize,
    threads: usize,
    failed_item: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    // SAFETY: the caller provides `items_len` readable items; every bit
    // pattern is a valid PqGgmlDequantizeItem (integers and raw pointers).
    unsafe { run_batch(items, items_len, failed_item, error, |list, span| dequantize_items(list, threads, span)) }
}

/// As [`quantize_items`], for dequantization.
fn dequantize_items(
    items: &[PqGgmlDequantizeItem],
    threads: usize,
    extra: &[Span],
) -> std::result::Result<(), BatchError> {
    let checked = |item: &PqGgmlDequantizeItem| -> Result<(GgmlType, Region<u8>, TensorRegion, usize)> {
        let ty = GgmlType::try_from(item.ggml_type)?;
        let input = Region::new("input", item.input, item.input_len)?;
        let output = TensorRegion::new(item.dtype, "output", item.output, item.output_len)?;
        Ok((ty, input, output, item.row_len))
    };
    let regions = checked_regions(items, extra, checked, |i, (_, input, output, _), spans| {
        spans.push(input.span(Some(i), false));
        spans.push(output.span(i, true));
    })?;
    // SAFETY: as in quantize_items.
    let mut safe: Vec<GgmlDequantizeItem<'_>> = regions
        .iter()
        .map(|(ty, input, output, row_len)| unsafe {
            GgmlDequantizeItem { ty: *ty, input: input.as_slice(), row_len: *row_len, output: output.values_mut() }
        })
        .collect();
    ggml::dequantize_batch(&mut safe, threads)
}
