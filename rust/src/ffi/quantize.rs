//! Exported quantization functions. Each one: check regions (including
//! overlaps across all buffers of the call), build slices, call
//! [`crate::batch`], all inside [`run`]. Single-tensor calls are batches of
//! one, so single and batch calls share every check.

use std::os::raw::{c_char, c_void};

use super::boundary::{run, PqError};
use super::memory::{check_aligned_to, check_disjoint, Region, Span, TensorRegion};
use crate::batch::{self, BatchError, DequantizeItem, QuantizeItem};
use crate::element::Dtype;
use crate::error::{Error, PqStatus, Result};
use crate::layout::{Axis, Layout, Method, ScaleDtype, Scheme};

/// The library version, e.g. "0.1.0": a static NUL-terminated string that
/// the caller must not free. Cannot fail.
#[no_mangle]
pub extern "C" fn pq_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The ABI version this library implements; compare with `PQ_ABI_VERSION`
/// from the header the host was compiled against. Cannot fail.
#[no_mangle]
pub extern "C" fn pq_abi_version() -> u32 {
    super::PQ_ABI_VERSION
}

/// Computes the output sizes for quantizing `input_len` values in rows of
/// `row_len` with `bits` bits and groups of `group_size`, checking every
/// layout rule. Use it to allocate the outputs of `pq_quantize`.
///
/// On success writes `*codes_len` (bytes of packed codes) and `*n_groups`
/// (floats in each of scales and mins). Both out-pointers are owned by the
/// caller and must not be NULL. For one group per row pass
/// `group_size = row_len`.
#[no_mangle]
pub unsafe extern "C" fn pq_quantized_sizes(
    input_len: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    codes_len: *mut usize,
    n_groups: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let codes_out = Region::new("codes_len", codes_len, 1)?;
        let groups_out = Region::new("n_groups", n_groups, 1)?;
        let layout = Layout::new(input_len, row_len, bits, group_size)?;
        // SAFETY: caller provides two writable usize out-pointers.
        unsafe {
            codes_out.as_mut_slice()[0] = layout.codes_len;
            groups_out.as_mut_slice()[0] = layout.n_groups;
        }
        Ok(())
    })
}

/// Quantizes `input_len` values of type `dtype` (a `PQ_DTYPE_*` code) read
/// in place from `input`, in rows of `row_len`, into packed `codes` and
/// per-group `scales` and `mins`, using up to `threads` threads: 0 = all
/// available cores, 1 = only the calling thread, n = at most n threads
/// (fewer when there is less than about 1 MiB of input per thread). The
/// output bytes are the same for every value of `threads`.
///
/// `input` must be aligned for `dtype` and must not change during the call
/// (use `pq_quantize_copy` if it may). Output lengths are counts of their
/// element type and must be at least what `pq_quantized_sizes` returns;
/// outputs may not overlap the input or each other. All buffers are owned by
/// the caller; pyquant keeps no pointer after returning. On an error about
/// pointers, lengths or the layout nothing is written; on a bad value
/// (`PQ_STATUS_NON_FINITE`) the outputs may be partly written (the input is
/// read once, each group validated as it is quantized) and the error names
/// the first bad value, the same for every `threads`.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize(
    dtype: u32,
    input: *const c_void,
    input_len: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    threads: usize,
    codes: *mut u8,
    codes_len: usize,
    scales: *mut f32,
    scales_len: usize,
    mins: *mut f32,
    mins_len: usize,
    error: *mut PqError,
) -> PqStatus {
    let item = plain_item(
        (dtype, input, input_len),
        (row_len, bits, group_size),
        (codes, codes_len),
        (scales, scales_len),
        (mins, mins_len),
    );
    // A batch of one.
    run(error, || quantize_items(&[item], threads, &[]).map_err(|e| e.error))
}

/// The batch item of a single-tensor call: the default scheme (min-max,
/// float32 scales, groups along rows, no importance).
fn plain_item(
    (dtype, input, input_len): (u32, *const c_void, usize),
    (row_len, bits, group_size): (usize, u32, usize),
    (codes, codes_len): (*mut u8, usize),
    (scales, scales_len): (*mut f32, usize),
    (mins, mins_len): (*mut f32, usize),
) -> PqQuantizeItem {
    PqQuantizeItem {
        dtype,
        input,
        input_len,
        row_len,
        bits,
        group_size,
        codes,
        codes_len,
        scales,
        scales_len,
        mins,
        mins_len,
        method: Method::MinMax as u32,
        scale_dtype: ScaleDtype::F32 as u32,
        importance: std::ptr::null(),
        importance_len: 0,
        axis: Axis::Last as u32,
    }
}

/// Like `pq_quantize`, into one caller-allocated output block of
/// `block_len` bytes at `block` (aligned to 4 bytes) holding, in this order,
/// the `n_groups` scales, the `n_groups` mins and the `codes_len` bytes of
/// codes (sizes from `pq_quantized_sizes`), with no gaps: `block_len` must be
/// at least `8 * n_groups + codes_len`; bytes past that are not written. One
/// pointer instead of three, for callers that allocate one block per result
/// (the Python wrapper's fast path). Errors, threads and the partly-written
/// rule as for `pq_quantize`; the block may not overlap the input.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize_block(
    dtype: u32,
    input: *const c_void,
    input_len: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    threads: usize,
    block: *mut c_void,
    block_len: usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let layout = Layout::new(input_len, row_len, bits, group_size)?;
        let (scales, mins, codes) = carve_block(block, block_len, &layout)?;
        let item = plain_item(
            (dtype, input, input_len),
            (row_len, bits, group_size),
            (codes, layout.codes_len),
            (scales, layout.n_groups),
            (mins, layout.n_groups),
        );
        // A batch of one, like `pq_quantize`: every region check is shared.
        quantize_items(&[item], threads, &[]).map_err(|e| e.error)
    })
}

/// The scales, mins and codes pointers of `pq_quantize_block`'s block, after
/// checking its length and alignment (the pieces are checked again, as any
/// item's outputs, by [`quantize_items`]).
fn carve_block(block: *mut c_void, block_len: usize, layout: &Layout) -> Result<(*mut f32, *mut f32, *mut u8)> {
    let floats = layout.n_groups.checked_mul(4).ok_or_else(|| {
        Error::new(PqStatus::SizeOverflow, format!("block: {} groups of scales and mins overflow", layout.n_groups))
    })?;
    let need = floats.checked_mul(2).and_then(|b| b.checked_add(layout.codes_len)).ok_or_else(|| {
        Error::new(PqStatus::SizeOverflow, "block: scales, mins and codes together overflow the address space")
    })?;
    let block = block as *mut u8;
    Region::new("block", block, block_len)?;
    check_aligned_to("block", block, 4)?;
    if block_len < need {
        return Err(Error::new(
            PqStatus::BufferTooSmall,
            format!("block has {block_len} bytes; scales, mins and codes need {need}"),
        ));
    }
    Ok((block as *mut f32, block.wrapping_add(floats) as *mut f32, block.wrapping_add(2 * floats)))
}

/// Like `pq_quantize`, but first copies the `input_bytes` bytes at `input`
/// into memory that pyquant allocates and frees within the call, then
/// quantizes that copy. `input` needs no alignment and may change after the
/// copy is taken; `input_bytes` must be a multiple of the element size.
/// Same bytes out as `pq_quantize` for the same values; `threads` as there.
/// Buffers are owned by the caller; on error the outputs may be partly
/// written, as for `pq_quantize`.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize_copy(
    dtype: u32,
    input: *const u8,
    input_bytes: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    threads: usize,
    codes: *mut u8,
    codes_len: usize,
    scales: *mut f32,
    scales_len: usize,
    mins: *mut f32,
    mins_len: usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let source = Region::new("input", input, input_bytes)?;
        let dtype = Dtype::try_from(dtype)?;
        if !input_bytes.is_multiple_of(dtype.size()) {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!("input_bytes {input_bytes} is not a multiple of the {} size {}", dtype.name(), dtype.size()),
            ));
        }
        let input_len = input_bytes / dtype.size();
        // Checked before the copy is made, so that a bad layout costs no copy.
        Layout::new(input_len, row_len, bits, group_size)?;
        // SAFETY: checked above; the bytes are only read, once, into the copy.
        let copy = aligned_copy(unsafe { source.as_slice() })?;
        let item = PqQuantizeItem {
            dtype: dtype as u32,
            input: copy.as_ptr() as *const c_void,
            input_len,
            row_len,
            bits,
            group_size,
            codes,
            codes_len,
            scales,
            scales_len,
            mins,
            mins_len,
            method: Method::MinMax as u32,
            scale_dtype: ScaleDtype::F32 as u32,
            importance: std::ptr::null(),
            importance_len: 0,
            axis: 0,
        };
        // The caller's bytes stay an input of the call: no output may overlap them.
        quantize_items(&[item], threads, &[source.span(None, false)]).map_err(|e| e.error)
    })
}

/// `bytes` copied into memory aligned for every dtype (4 bytes), padded with
/// zeros to a whole word.
fn aligned_copy(bytes: &[u8]) -> Result<Vec<u32>> {
    let words = bytes.len().div_ceil(4);
    let mut copy: Vec<u32> = Vec::new();
    copy.try_reserve_exact(words)
        .map_err(|_| Error::new(PqStatus::SizeOverflow, format!("cannot allocate a copy of {} bytes", bytes.len())))?;
    // SAFETY: `copy` has capacity for `words * 4 >= bytes.len()` bytes; the
    // byte-wise copy reads `bytes` without assuming any alignment, and the
    // padding after it is zeroed, so every word is initialized.
    unsafe {
        let dst = copy.as_mut_ptr() as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        std::ptr::write_bytes(dst.add(bytes.len()), 0, words * 4 - bytes.len());
        copy.set_len(words);
    }
    Ok(copy)
}

/// Dequantizes `codes`, `scales` and `mins` (as written by `pq_quantize` for
/// `output_len` values in rows of `row_len` with `bits` and `group_size`)
/// into `output`, `output_len` values of type `dtype` (`mins + q * scales`
/// in f32, rounded to nearest-even for f16 / bf16), using up to `threads`
/// threads as `pq_quantize` does.
///
/// Input lengths must match the layout exactly; `output` must be aligned for
/// `dtype`, at least `output_len` long and not overlap the inputs. Buffers are
/// owned by the caller. On a non-finite scale or min, `output` may be partly
/// written (each run of groups is checked just before it is decoded); on
/// any other error it is untouched.
#[no_mangle]
pub unsafe extern "C" fn pq_dequantize(
    codes: *const u8,
    codes_len: usize,
    scales: *const f32,
    scales_len: usize,
    mins: *const f32,
    mins_len: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    dtype: u32,
    threads: usize,
    output: *mut c_void,
    output_len: usize,
    error: *mut PqError,
) -> PqStatus {
    let item = PqDequantizeItem {
        codes,
        codes_len,
        scales,
        scales_len,
        mins,
        mins_len,
        row_len,
        bits,
        group_size,
        dtype,
        output,
        output_len,
        axis: Axis::Last as u32,
    };
    run(error, || dequantize_items(&[item], threads, &[]).map_err(|e| e.error))
}

/// One tensor of `pq_quantize_batch`: the arguments of `pq_quantize`, with
/// the same meaning and rules, plus the quantization scheme (docs/scheme.md,
/// "Methods and scale dtypes"); an item whose scheme fields are all zero is
/// quantized exactly as `pq_quantize` does. Allocated and owned by the caller, like every
/// buffer it points to.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PqQuantizeItem {
    /// A `PQ_DTYPE_*` code.
    pub dtype: u32,
    /// `input_len` values of `dtype`, aligned for it; only read.
    pub input: *const c_void,
    pub input_len: usize,
    pub row_len: usize,
    pub bits: u32,
    pub group_size: usize,
    pub codes: *mut u8,
    pub codes_len: usize,
    pub scales: *mut f32,
    pub scales_len: usize,
    pub mins: *mut f32,
    pub mins_len: usize,
    /// A `PQ_METHOD_*` code: how each group's scale and min are chosen
    /// (0, `PQ_METHOD_MIN_MAX`, is what `pq_quantize` does).
    pub method: u32,
    /// A `PQ_SCALE_DTYPE_*` code: with `PQ_SCALE_DTYPE_F16` every scale and
    /// min written is exactly a float16 value (store it as one, losslessly);
    /// 0, `PQ_SCALE_DTYPE_F32`, is what `pq_quantize` does.
    pub scale_dtype: u32,
    /// Optional per-column importance weights for `PQ_METHOD_SEARCH`: NULL,
    /// or `row_len` finite, non-negative floats (any other method refuses
    /// them); only read.
    pub importance: *const f32,
    pub importance_len: usize,
    /// A `PQ_AXIS_*` code. 0, `PQ_AXIS_LAST`, is what `pq_quantize` does:
    /// groups along rows of `row_len`. `PQ_AXIS_FIRST` groups down the
    /// columns: `row_len` is then the number of rows of a 2-D input of
    /// `input_len / row_len` columns, and the outputs are exactly those of
    /// its transpose (rows of `row_len`) quantized with `PQ_AXIS_LAST`.
    pub axis: u32,
}

/// One tensor of `pq_dequantize_batch`: the arguments of `pq_dequantize`,
/// with the same meaning and rules. Allocated and owned by the caller, like
/// every buffer it points to.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PqDequantizeItem {
    pub codes: *const u8,
    pub codes_len: usize,
    pub scales: *const f32,
    pub scales_len: usize,
    pub mins: *const f32,
    pub mins_len: usize,
    pub row_len: usize,
    pub bits: u32,
    pub group_size: usize,
    /// A `PQ_DTYPE_*` code: the type of `output`.
    pub dtype: u32,
    /// `output_len` values of `dtype`, aligned for it; written on success.
    pub output: *mut c_void,
    pub output_len: usize,
    /// The `PQ_AXIS_*` code the codes were written with: with
    /// `PQ_AXIS_FIRST` the output is `row_len` rows of `output_len / row_len`
    /// columns (the transpose of what the codes describe). 0 is what
    /// `pq_dequantize` does.
    pub axis: u32,
}

/// Quantizes `items_len` tensors described by `items` in one call, with up
/// to `threads` threads as `pq_quantize` (a large tensor is split across
/// threads, small ones are spread over them). Items may mix dtypes, bit
/// widths and group sizes.
///
/// Every item is checked (pointers, lengths, layout), and no output of any
/// item may overlap any input or output of any item or the `items` array
/// (inputs may overlap each other), before any output is written. Input
/// values are validated in the same pass that quantizes them: on a bad value
/// the outputs of any items may be partly written, and the error is the
/// first bad value in item and group order, the same for every `threads`.
/// Nothing but the items' outputs is ever written. On failure
/// `*failed_item` is set to the index N of the item
/// the problem is about (to `SIZE_MAX` when it is not about one item, and on
/// success); the message describes the problem without naming N, so that a
/// host can name the tensor in its own terms. Checks run in this order: each
/// item's pointers and layout (first bad item), then overlaps, then buffer
/// lengths (first item with a too-short buffer), then values (first bad
/// item, first bad group).
///
/// `items` (NULL only if `items_len` is 0), every buffer it points to, and
/// `failed_item` (nullable, any alignment) are owned by the caller; pyquant
/// keeps no pointer after returning.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize_batch(
    items: *const PqQuantizeItem,
    items_len: usize,
    threads: usize,
    failed_item: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    // SAFETY: the caller provides `items_len` readable items; every bit
    // pattern is a valid PqQuantizeItem (integers and raw pointers).
    unsafe { run_batch(items, items_len, failed_item, error, |list, span| quantize_items(list, threads, span)) }
}

/// Dequantizes `items_len` tensors described by `items` in one call, with up
/// to `threads` threads as `pq_quantize`. Items may mix dtypes, bit widths
/// and group sizes.
///
/// Errors as `pq_quantize_batch`: every item is checked and no output may
/// overlap any buffer of any item or the `items` array, before any output is
/// written; scales and mins are validated as their groups are decoded (on a
/// non-finite one, outputs may be partly written; the error is the first in
/// item and group order); on failure
/// `*failed_item` is the index of the item the problem is about (`SIZE_MAX`
/// when not about one item, and on success).
///
/// `items` (NULL only if `items_len` is 0), every buffer it points to, and
/// `failed_item` (nullable, any alignment) are owned by the caller; pyquant
/// keeps no pointer after returning.
#[no_mangle]
pub unsafe extern "C" fn pq_dequantize_batch(
    items: *const PqDequantizeItem,
    items_len: usize,
    threads: usize,
    failed_item: *mut usize,
    error: *mut PqError,
) -> PqStatus {
    // SAFETY: as in pq_quantize_batch, for PqDequantizeItem.
    unsafe { run_batch(items, items_len, failed_item, error, |list, span| dequantize_items(list, threads, span)) }
}

/// The shared body of the batch functions: the `items` array as a checked
/// region (itself an input of the overlap check), `work` inside the panic
/// boundary, and `*failed_item` on failure.
///
/// # Safety
/// `items` is NULL with length 0, or points to `items_len` readable items of
/// a type every bit pattern of which is valid.
pub(super) unsafe fn run_batch<I>(
    items: *const I,
    items_len: usize,
    failed_item: *mut usize,
    error: *mut PqError,
    work: impl FnOnce(&[I], &[Span]) -> std::result::Result<(), BatchError>,
) -> PqStatus {
    let mut failed = None;
    let status = run(error, || {
        let list = Region::new("items", items, items_len)?;
        // SAFETY: the caller's promise, above.
        let list_items = unsafe { list.as_slice() };
        work(list_items, &[list.span(None, false)]).map_err(|e| {
            failed = e.item;
            e.error
        })
    });
    report_failed_item(failed_item, failed);
    status
}

/// Writes the failed item index (or SIZE_MAX) if the caller asked for it.
fn report_failed_item(failed_item: *mut usize, failed: Option<usize>) {
    if !failed_item.is_null() {
        // SAFETY: the caller passes NULL or a writable size_t; unaligned
        // writes are fine.
        unsafe { failed_item.write_unaligned(failed.unwrap_or(usize::MAX)) };
    }
}

/// The checked regions of one quantize item, before any slice exists.
struct QuantizeRegions {
    input: TensorRegion,
    layout: Layout,
    codes: Region<u8>,
    scales: Region<f32>,
    mins: Region<f32>,
    importance: Option<Region<f32>>,
}

fn quantize_regions(item: &PqQuantizeItem) -> Result<QuantizeRegions> {
    let codes = Region::new("codes", item.codes, item.codes_len)?;
    let scales = Region::new("scales", item.scales, item.scales_len)?;
    let mins = Region::new("mins", item.mins, item.mins_len)?;
    let scheme = Scheme::from_codes(item.method, item.scale_dtype)?;
    let axis = Axis::from_code(item.axis)?;
    let layout =
        Layout::new(item.input_len, item.row_len, item.bits, item.group_size)?.with_scheme(scheme).with_axis(axis);
    let input = TensorRegion::new(item.dtype, "input", item.input, layout.len)?;
    let importance = if item.importance.is_null() && item.importance_len == 0 {
        None
    } else {
        Some(Region::new("importance", item.importance, item.importance_len)?)
    };
    Ok(QuantizeRegions { input, layout, codes, scales, mins, importance })
}

/// Checks every item with `check` (the first bad item fails the call), then
/// every span `spans_of` lists, with the call's other inputs (`extra`: the
/// items array, or the bytes `pq_quantize_copy` copied), for overlaps.
pub(super) fn checked_regions<I, R>(
    items: &[I],
    extra: &[Span],
    check: impl Fn(&I) -> Result<R>,
    spans_of: impl Fn(usize, &R, &mut Vec<Span>),
) -> std::result::Result<Vec<R>, BatchError> {
    let regions = items
        .iter()
        .enumerate()
        .map(|(i, item)| check(item).map_err(|e| BatchError::at(i, e)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut spans = Vec::with_capacity(4 * regions.len() + extra.len());
    spans.extend_from_slice(extra);
    for (i, r) in regions.iter().enumerate() {
        spans_of(i, r, &mut spans);
    }
    check_disjoint(&spans)?;
    Ok(regions)
}

/// Checks every item's regions, then overlaps across all of them, then hands
/// the slices to the batch scheduler (which validates values before writing).
fn quantize_items(items: &[PqQuantizeItem], threads: usize, extra: &[Span]) -> std::result::Result<(), BatchError> {
    let regions = checked_regions(items, extra, quantize_regions, |i, r, spans| {
        spans.push(r.input.span(i, false));
        spans.push(r.codes.span(Some(i), true));
        spans.push(r.scales.span(Some(i), true));
        spans.push(r.mins.span(Some(i), true));
        if let Some(w) = &r.importance {
            spans.push(w.span(Some(i), false));
        }
    })?;
    // SAFETY: every region was checked (NULL, alignment, size) and no output
    // overlaps any other region of the call; the caller promised the memory
    // behind them for the duration of the call.
    let mut safe: Vec<QuantizeItem> = regions
        .iter()
        .map(|r| unsafe {
            QuantizeItem {
                input: r.input.values(),
                layout: r.layout,
                codes: r.codes.as_mut_slice(),
                scales: r.scales.as_mut_slice(),
                mins: r.mins.as_mut_slice(),
                importance: r.importance.as_ref().map(|w| w.as_slice()),
            }
        })
        .collect();
    batch::quantize_batch(&mut safe, threads)
}

/// The checked regions of one dequantize item.
struct DequantizeRegions {
    codes: Region<u8>,
    scales: Region<f32>,
    mins: Region<f32>,
    layout: Layout,
    output: TensorRegion,
}

fn dequantize_regions(item: &PqDequantizeItem) -> Result<DequantizeRegions> {
    let codes = Region::new("codes", item.codes, item.codes_len)?;
    let scales = Region::new("scales", item.scales, item.scales_len)?;
    let mins = Region::new("mins", item.mins, item.mins_len)?;
    let axis = Axis::from_code(item.axis)?;
    let layout = Layout::new(item.output_len, item.row_len, item.bits, item.group_size)?.with_axis(axis);
    let output = TensorRegion::new(item.dtype, "output", item.output, layout.len)?;
    Ok(DequantizeRegions { codes, scales, mins, layout, output })
}

fn dequantize_items(items: &[PqDequantizeItem], threads: usize, extra: &[Span]) -> std::result::Result<(), BatchError> {
    let regions = checked_regions(items, extra, dequantize_regions, |i, r, spans| {
        spans.push(r.codes.span(Some(i), false));
        spans.push(r.scales.span(Some(i), false));
        spans.push(r.mins.span(Some(i), false));
        spans.push(r.output.span(i, true));
    })?;
    // SAFETY: as in quantize_items.
    let mut safe: Vec<DequantizeItem> = regions
        .iter()
        .map(|r| unsafe {
            DequantizeItem {
                codes: r.codes.as_slice(),
                scales: r.scales.as_slice(),
                mins: r.mins.as_slice(),
                layout: r.layout,
                output: r.output.values_mut(),
            }
        })
        .collect();
    batch::dequantize_batch(&mut safe, threads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::PQ_ERROR_MESSAGE_CAPACITY;
    use crate::kernel::reference;
    use half::{bf16, f16};
    use std::ptr;

    /// An item with no buffers (NULL, length 0) and the scheme of
    /// `pq_quantize` (all zero); tests fill in the rest.
    fn empty_item() -> PqQuantizeItem {
        PqQuantizeItem {
            dtype: 0,
            input: ptr::null(),
            input_len: 0,
            row_len: 0,
            bits: 0,
            group_size: 0,
            codes: ptr::null_mut(),
            codes_len: 0,
            scales: ptr::null_mut(),
            scales_len: 0,
            mins: ptr::null_mut(),
            mins_len: 0,
            method: 0,
            scale_dtype: 0,
            importance: ptr::null(),
            importance_len: 0,
            axis: 0,
        }
    }

    fn new_error() -> PqError {
        PqError { status: PqStatus::Ok, message: [0; PQ_ERROR_MESSAGE_CAPACITY] }
    }

    fn message(e: &PqError) -> String {
        let bytes: Vec<u8> = e.message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8(bytes).unwrap()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 10007) as f32 / 1000.0 - 5.0).collect()
    }

    /// A tensor of some dtype with its outputs, filled with sentinels.
    struct Tensor {
        dtype: Dtype,
        input: Vec<u8>,
        len: usize,
        row_len: usize,
        bits: u32,
        group_size: usize,
        codes: Vec<u8>,
        scales: Vec<f32>,
        mins: Vec<f32>,
    }

    const SENTINEL: u8 = 0xA5;

    impl Tensor {
        fn new(dtype: Dtype, x: &[f32], row_len: usize, bits: u32, group_size: usize) -> Tensor {
            let l = Layout::new(x.len(), row_len, bits, group_size).unwrap();
            let input: Vec<u8> = match dtype {
                Dtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
                Dtype::Bf16 => x.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
            };
            Tensor {
                dtype,
                input,
                len: x.len(),
                row_len,
                bits,
                group_size,
                // One spare element each: bytes after the result stay untouched.
                codes: vec![SENTINEL; l.codes_len + 1],
                scales: vec![f32::from_bits(0xA5A5_A5A5); l.n_groups + 1],
                mins: vec![f32::from_bits(0xA5A5_A5A5); l.n_groups + 1],
            }
        }

        /// The input as typed values (copied: `input` is only byte-aligned).
        fn expected(&self) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
            let l = Layout::new(self.len, self.row_len, self.bits, self.group_size).unwrap();
            let mut out = (vec![SENTINEL; l.codes_len + 1], self.scales.clone(), self.mins.clone());
            let (c, s, m) = (&mut out.0[..l.codes_len], &mut out.1[..l.n_groups], &mut out.2[..l.n_groups]);
            let halves = self.input.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
            match self.dtype {
                Dtype::F32 => {
                    let x: Vec<f32> =
                        self.input.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                    reference::quantize(&x, &l, c, s, m).unwrap()
                }
                Dtype::F16 => {
                    reference::quantize(&halves.map(f16::from_bits).collect::<Vec<_>>(), &l, c, s, m).unwrap()
                }
                Dtype::Bf16 => {
                    reference::quantize(&halves.map(bf16::from_bits).collect::<Vec<_>>(), &l, c, s, m).unwrap()
                }
            }
            out
        }

        fn untouched(&self) -> bool {
            self.codes.iter().all(|&b| b == SENTINEL)
                && self.scales.iter().chain(&self.mins).all(|v| v.to_bits() == 0xA5A5_A5A5)
        }

        fn matches_reference(&self) -> bool {
            let (c, s, m) = self.expected();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            c == self.codes && bits(&s) == bits(&self.scales) && bits(&m) == bits(&self.mins)
        }

        /// The C item; `input` is copied into an aligned buffer kept in `keep`.
        fn item(&mut self, keep: &mut Vec<Vec<u64>>) -> PqQuantizeItem {
            let mut aligned = vec![0u64; self.input.len().div_ceil(8)];
            // SAFETY: `aligned` has room for every byte of `input`.
            unsafe { ptr::copy_nonoverlapping(self.input.as_ptr(), aligned.as_mut_ptr() as *mut u8, self.input.len()) };
            let input = aligned.as_ptr() as *const c_void;
            keep.push(aligned);
            PqQuantizeItem {
                dtype: self.dtype as u32,
                input,
                input_len: self.len,
                row_len: self.row_len,
                bits: self.bits,
                group_size: self.group_size,
                codes: self.codes.as_mut_ptr(),
                codes_len: self.codes.len(),
                scales: self.scales.as_mut_ptr(),
                scales_len: self.scales.len(),
                mins: self.mins.as_mut_ptr(),
                mins_len: self.mins.len(),
                ..empty_item()
            }
        }
    }

    fn mixed_tensors() -> Vec<Tensor> {
        vec![
            Tensor::new(Dtype::F32, &values(4096, 1), 512, 4, 128),
            Tensor::new(Dtype::F16, &values(2048, 2), 256, 2, 32),
            Tensor::new(Dtype::Bf16, &values(1024, 3), 1024, 8, 64),
            Tensor::new(Dtype::F32, &values(96, 4), 96, 8, 96),
            // Large enough to be split across threads.
            Tensor::new(Dtype::F16, &values(1 << 20, 5), 4096, 4, 128),
        ]
    }

    unsafe fn quantize_batch(items: &[PqQuantizeItem], threads: usize) -> (PqStatus, usize, String) {
        let mut e = new_error();
        let mut failed = 12345usize;
        let status = pq_quantize_batch(items.as_ptr(), items.len(), threads, &mut failed, &mut e);
        assert_eq!(status, e.status);
        (status, failed, message(&e))
    }

    #[test]
    fn batch_of_mixed_items_matches_reference() {
        for threads in [1, 2, 0] {
            let mut tensors = mixed_tensors();
            let mut keep = vec![];
            let mut items: Vec<PqQuantizeItem> = tensors.iter_mut().map(|t| t.item(&mut keep)).collect();
            // An empty item with NULL pointers is fine.
            items.insert(2, PqQuantizeItem { row_len: 8, bits: 4, group_size: 8, ..empty_item() });
            let (status, failed, msg) = unsafe { quantize_batch(&items, threads) };
            assert_eq!((status, failed, msg.as_str()), (PqStatus::Ok, usize::MAX, ""));
            for (i, t) in tensors.iter().enumerate() {
                assert!(t.matches_reference(), "threads {threads} tensor {i}");
            }
        }
    }

    #[test]
    fn nan_in_item_2_is_the_error_for_every_thread_count() {
        for threads in [1, 2] {
            let mut tensors = mixed_tensors();
            // Item 2 is bfloat16: 0x7FC0 is a NaN. Item 4 also has one; item 2 is first.
            tensors[2].input[2 * 700..2 * 700 + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
            tensors[4].input[2 * 9..2 * 9 + 2].copy_from_slice(&0x7C00u16.to_le_bytes());
            let mut keep = vec![];
            let items: Vec<PqQuantizeItem> = tensors.iter_mut().map(|t| t.item(&mut keep)).collect();
            let (status, failed, msg) = unsafe { quantize_batch(&items, threads) };
            assert_eq!((status, failed), (PqStatus::NonFinite, 2));
            assert!(msg.starts_with("NaN at flat index 700 (row 0, column 700) in group 10"), "{msg}");
            // Items before it are complete; outputs from there on may be partly written.
            assert!(tensors[..2].iter().all(Tensor::matches_reference), "threads {threads}");
        }
    }

    #[test]
    fn failed_item_and_messages_for_each_kind_of_problem() {
        let mut keep = vec![];
        let mut tensors = mixed_tensors();
        let good: Vec<PqQuantizeItem> = tensors.iter_mut().map(|t| t.item(&mut keep)).collect();
        let run = |items: &[PqQuantizeItem]| unsafe { quantize_batch(items, 2) };

        // Too-small output in item 1.
        let mut items = good.clone();
        items[1].codes_len = 10;
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::BufferTooSmall, 1));
        assert!(msg.starts_with("codes has 10 elements, needs at least 512"), "{msg}");
        // Input shorter than the layout says cannot be detected; a wrong
        // layout can: bits 5 in item 3.
        let mut items = good.clone();
        items[3].bits = 5;
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::InvalidBits, 3));
        assert!(msg.starts_with("bits must be 2, 3, 4 or 8"), "{msg}");
        // NULL scales with a length in item 4; unknown dtype in item 0.
        let mut items = good.clone();
        items[4].scales = ptr::null_mut();
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::NullPointer, 4));
        assert!(msg.starts_with("scales is NULL"), "{msg}");
        let mut items = good.clone();
        items[0].dtype = 9;
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::UnsupportedDtype, 0));
        assert!(msg.starts_with("dtype code 9"), "{msg}");
        // Misaligned input in item 3 (f32).
        let mut items = good.clone();
        items[3].input = (items[3].input as *const u8).wrapping_add(2) as *const c_void;
        let (status, failed, _) = run(&items);
        assert_eq!((status, failed), (PqStatus::Misaligned, 3));
        // Outputs of two items overlapping: item 3's mins inside item 1's scales.
        let mut items = good.clone();
        items[3].mins = items[1].scales.wrapping_add(2);
        items[3].mins_len = 2;
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::Overlap, 3));
        assert!(msg.starts_with("mins overlaps scales of item 1:"), "{msg}");
        // An output of item 2 over the input of item 0.
        let mut items = good.clone();
        items[2].codes = items[0].input as *mut u8;
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::Overlap, 2));
        assert!(msg.starts_with("codes overlaps input of item 0:"), "{msg}");
        // An output over the items array itself.
        let mut items = good.clone();
        items[4].mins = items.as_mut_ptr() as *mut f32;
        items[4].mins_len = 4;
        let (status, failed, msg) = run(&items);
        assert_eq!((status, failed), (PqStatus::Overlap, 4));
        assert!(msg.starts_with("mins overlaps items:"), "{msg}");
        drop(tensors);

        // Nothing of the above wrote anything.
        let mut tensors = mixed_tensors();
        let good: Vec<PqQuantizeItem> = tensors.iter_mut().map(|t| t.item(&mut keep)).collect();
        let mut items = good.clone();
        items[1].codes_len = 10;
        run(&items);
        items = good.clone();
        items[3].mins = items[1].scales.wrapping_add(2);
        run(&items);
        assert!(tensors.iter().all(Tensor::untouched));

        // Inputs may overlap each other: two items reading the same input.
        let mut items = good.clone();
        items[1].input = items[4].input;
        items[1].input_len = items[1].input_len.min(items[4].input_len);
        assert_eq!(run(&items).0, PqStatus::Ok);
    }

    #[test]
    fn items_array_null_misaligned_and_failed_item_pointer() {
        let mut e = new_error();
        let mut failed = 7usize;
        unsafe {
            assert_eq!(pq_quantize_batch(ptr::null(), 0, 1, &mut failed, &mut e), PqStatus::Ok);
            assert_eq!(failed, usize::MAX);
            failed = 7;
            assert_eq!(pq_quantize_batch(ptr::null(), 2, 1, &mut failed, &mut e), PqStatus::NullPointer);
            assert_eq!(failed, usize::MAX);
            assert_eq!(message(&e), "items is NULL but its length is 2");
            // failed_item may be NULL, or unaligned.
            assert_eq!(pq_quantize_batch(ptr::null(), 2, 1, ptr::null_mut(), &mut e), PqStatus::NullPointer);
            let mut raw = [0u8; 16];
            let odd = raw.as_mut_ptr().add(1) as *mut usize;
            assert_eq!(pq_dequantize_batch(ptr::null(), 0, 1, odd, ptr::null_mut()), PqStatus::Ok);
            assert_eq!(odd.read_unaligned(), usize::MAX);
            let misaligned = raw.as_ptr().add(4) as *const PqQuantizeItem;
            assert_eq!(pq_quantize_batch(misaligned, 1, 1, &mut failed, &mut e), PqStatus::Misaligned);
        }
    }

    #[test]
    fn many_small_items_in_one_batch() {
        let mut tensors: Vec<Tensor> = (0..2000)
            .map(|i| {
                let dtype = [Dtype::F32, Dtype::F16, Dtype::Bf16][i % 3];
                Tensor::new(dtype, &values(64 * 4, i as u32), 64, [2, 3, 4, 8][i % 4], 32)
            })
            .collect();
        let mut keep = vec![];
        let items: Vec<PqQuantizeItem> = tensors.iter_mut().map(|t| t.item(&mut keep)).collect();
        for threads in [1, 3] {
            let (status, failed, msg) = unsafe { quantize_batch(&items, threads) };
            assert_eq!((status, failed), (PqStatus::Ok, usize::MAX), "{msg}");
            assert!(tensors.iter().all(Tensor::matches_reference));
        }
        // The last item's codes over the first one's: found, named.
        let mut items = items;
        items[1999].codes = items[0].codes;
        let (status, failed, _) = unsafe { quantize_batch(&items, 1) };
        assert_eq!((status, failed), (PqStatus::Overlap, 1999));
    }

    #[test]
    fn single_calls_have_threads_and_unprefixed_messages() {
        let x = values(1 << 19, 9);
        let l = Layout::new(x.len(), 1024, 4, 128).unwrap();
        let mut want = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
        reference::quantize(&x, &l, &mut want.0, &mut want.1, &mut want.2).unwrap();
        for threads in [0, 1, 2, 5] {
            let mut got = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
            let mut e = new_error();
            let status = unsafe {
                pq_quantize(
                    Dtype::F32 as u32,
                    x.as_ptr() as *const c_void,
                    x.len(),
                    1024,
                    4,
                    128,
                    threads,
                    got.0.as_mut_ptr(),
                    got.0.len(),
                    got.1.as_mut_ptr(),
                    got.1.len(),
                    got.2.as_mut_ptr(),
                    got.2.len(),
                    &mut e,
                )
            };
            assert_eq!(status, PqStatus::Ok, "{}", message(&e));
            assert_eq!(got, want);
            let mut copied = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
            let status = unsafe {
                pq_quantize_copy(
                    Dtype::F32 as u32,
                    x.as_ptr() as *const u8,
                    x.len() * 4,
                    1024,
                    4,
                    128,
                    threads,
                    copied.0.as_mut_ptr(),
                    copied.0.len(),
                    copied.1.as_mut_ptr(),
                    copied.1.len(),
                    copied.2.as_mut_ptr(),
                    copied.2.len(),
                    &mut e,
                )
            };
            assert_eq!(status, PqStatus::Ok);
            assert_eq!(copied, want);
            let mut y = vec![0f32; x.len()];
            let status = unsafe {
                pq_dequantize(
                    want.0.as_ptr(),
                    want.0.len(),
                    want.1.as_ptr(),
                    want.1.len(),
                    want.2.as_ptr(),
                    want.2.len(),
                    1024,
                    4,
                    128,
                    Dtype::F32 as u32,
                    threads,
                    y.as_mut_ptr() as *mut c_void,
                    y.len(),
                    &mut e,
                )
            };
            assert_eq!(status, PqStatus::Ok);
            let mut y_ref = vec![0f32; x.len()];
            reference::dequantize(&want.0, &want.1, &want.2, &l, &mut y_ref).unwrap();
            assert_eq!(y, y_ref);
        }
        // Errors of single calls: the same wording as batch items.
        let mut e = new_error();
        let mut codes = vec![0u8; 4];
        let status = unsafe {
            pq_quantize(
                Dtype::F32 as u32,
                codes.as_ptr() as *const c_void,
                1,
                1,
                8,
                1,
                1,
                codes.as_mut_ptr(),
                4,
                ptr::null_mut(),
                0,
                ptr::null_mut(),
                0,
                &mut e,
            )
        };
        assert_eq!(status, PqStatus::Overlap);
        assert_eq!(message(&e), "codes overlaps input: outputs must not share memory with other buffers");
    }

    #[test]
    fn dequantize_batch_errors_and_results() {
        let mut tensors = mixed_tensors();
        let mut keep = vec![];
        let items: Vec<PqQuantizeItem> = tensors.iter_mut().map(|t| t.item(&mut keep)).collect();
        assert_eq!(unsafe { quantize_batch(&items, 2) }.0, PqStatus::Ok);
        let mut outputs: Vec<Vec<u32>> = tensors.iter().map(|t| vec![0xDEAD_BEEF; t.len + 1]).collect();
        let mut ditems: Vec<PqDequantizeItem> = tensors
            .iter()
            .zip(&mut outputs)
            .enumerate()
            .map(|(i, (t, out))| PqDequantizeItem {
                codes: t.codes.as_ptr(),
                codes_len: t.codes.len() - 1,
                scales: t.scales.as_ptr(),
                scales_len: t.scales.len() - 1,
                mins: t.mins.as_ptr(),
                mins_len: t.mins.len() - 1,
                row_len: t.row_len,
                bits: t.bits,
                group_size: t.group_size,
                // Output dtypes differ from the inputs' on purpose.
                dtype: [0, 2, 1, 0, 1][i],
                output: out.as_mut_ptr() as *mut c_void,
                output_len: t.len,
                axis: 0,
            })
            .collect();
        let mut e = new_error();
        let mut failed = 0usize;
        // A non-finite scale in item 1: the error names it; outputs may be
        // partly written, never past their lengths.
        let saved = tensors[1].scales[3];
        tensors[1].scales[3] = f32::INFINITY;
        let status = unsafe { pq_dequantize_batch(ditems.as_ptr(), ditems.len(), 2, &mut failed, &mut e) };
        assert_eq!((status, failed), (PqStatus::NonFinite, 1));
        assert!(message(&e).starts_with("group 3 has a non-finite scale (inf)"), "{}", message(&e));
        assert!(outputs.iter().zip(&tensors).all(|(o, t)| o[t.len] == 0xDEAD_BEEF));
        tensors[1].scales[3] = saved;
        // An output over another item's codes.
        let saved = ditems[0].output;
        ditems[0].output = ditems[3].codes as *mut c_void;
        let status = unsafe { pq_dequantize_batch(ditems.as_ptr(), ditems.len(), 2, &mut failed, &mut e) };
        assert_eq!((status, failed), (PqStatus::Overlap, 0));
        assert!(message(&e).starts_with("output overlaps codes of item 3:"), "{}", message(&e));
        ditems[0].output = saved;
        // Success: each output equals the reference dequantization.
        let status = unsafe { pq_dequantize_batch(ditems.as_ptr(), ditems.len(), 2, &mut failed, &mut e) };
        assert_eq!((status, failed), (PqStatus::Ok, usize::MAX));
        for (i, t) in tensors.iter().enumerate() {
            let l = Layout::new(t.len, t.row_len, t.bits, t.group_size).unwrap();
            let (c, s, m) = (&t.codes[..l.codes_len], &t.scales[..l.n_groups], &t.mins[..l.n_groups]);
            let words: Vec<u32> = match ditems[i].dtype {
                0 => {
                    let mut y = vec![0f32; t.len];
                    reference::dequantize(c, s, m, &l, &mut y).unwrap();
                    y.iter().map(|v| v.to_bits()).collect()
                }
                1 => {
                    let mut y = vec![f16::ZERO; t.len];
                    reference::dequantize(c, s, m, &l, &mut y).unwrap();
                    y.chunks(2)
                        .map(|p| p[0].to_bits() as u32 | (p.get(1).map_or(0xDEAD, |h| h.to_bits()) as u32) << 16)
                        .collect()
                }
                _ => {
                    let mut y = vec![bf16::ZERO; t.len];
                    reference::dequantize(c, s, m, &l, &mut y).unwrap();
                    y.chunks(2)
                        .map(|p| p[0].to_bits() as u32 | (p.get(1).map_or(0xDEAD, |h| h.to_bits()) as u32) << 16)
                        .collect()
                }
            };
            assert_eq!(&outputs[i][..words.len()], &words[..], "item {i}");
            assert!(outputs[i][words.len()..].iter().all(|&w| w == 0xDEAD_BEEF), "item {i}: bytes after the output");
        }
    }
}
