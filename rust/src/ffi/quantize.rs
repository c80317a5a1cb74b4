//! Exported quantization functions. Each one: check regions, build slices,
//! call [`crate::kernel`], all inside [`run`].

use std::os::raw::{c_char, c_void};

use half::{bf16, f16};

use super::boundary::{run, PqError};
use super::memory::{check_disjoint, Region};
use super::PqDtype;
use crate::element::{Dtype, Element};
use crate::error::{Error, PqStatus, Result};
use crate::kernel;
use crate::layout::Layout;

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
/// per-group `scales` and `mins`.
///
/// `input` must be aligned for `dtype` and must not change during the call
/// (use `pq_quantize_copy` if it may). Output lengths are counts of their
/// element type and must be at least what `pq_quantized_sizes` returns;
/// outputs may not overlap the input or each other. All buffers are owned by
/// the caller; pyquant keeps no pointer after returning. Outputs are written
/// only when the call returns `PQ_STATUS_OK`.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize(
    dtype: u32,
    input: *const c_void,
    input_len: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    codes: *mut u8,
    codes_len: usize,
    scales: *mut f32,
    scales_len: usize,
    mins: *mut f32,
    mins_len: usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let outputs = Outputs::new(codes, codes_len, scales, scales_len, mins, mins_len)?;
        let layout = Layout::new(input_len, row_len, bits, group_size)?;
        match dtype_from_code(dtype)? {
            Dtype::F32 => quantize_in_place::<f32>(input, &layout, &outputs),
            Dtype::F16 => quantize_in_place::<f16>(input, &layout, &outputs),
            Dtype::BF16 => quantize_in_place::<bf16>(input, &layout, &outputs),
        }
    })
}

/// Like `pq_quantize`, but first copies the `input_bytes` bytes at `input`
/// into memory that pyquant allocates and frees within the call, then
/// quantizes that copy. `input` needs no alignment and may change after the
/// copy is taken; `input_bytes` must be a multiple of the element size.
/// Same bytes out as `pq_quantize` for the same values.
#[no_mangle]
pub unsafe extern "C" fn pq_quantize_copy(
    dtype: u32,
    input: *const u8,
    input_bytes: usize,
    row_len: usize,
    bits: u32,
    group_size: usize,
    codes: *mut u8,
    codes_len: usize,
    scales: *mut f32,
    scales_len: usize,
    mins: *mut f32,
    mins_len: usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let outputs = Outputs::new(codes, codes_len, scales, scales_len, mins, mins_len)?;
        let source = Region::new("input", input, input_bytes)?;
        check_disjoint(&[&source], &[&outputs.codes, &outputs.scales, &outputs.mins])?;
        let dtype = dtype_from_code(dtype)?;
        if input_bytes % dtype.size() != 0 {
            return Err(Error::new(
                PqStatus::ShapeMismatch,
                format!("input_bytes {input_bytes} is not a multiple of the {} size {}", dtype.name(), dtype.size()),
            ));
        }
        let layout = Layout::new(input_bytes / dtype.size(), row_len, bits, group_size)?;
        // SAFETY: checked above; the bytes are only read, once, into the copy.
        let bytes = unsafe { source.as_slice() };
        match dtype {
            Dtype::F32 => quantize_copied::<f32>(bytes, &layout, &outputs),
            Dtype::F16 => quantize_copied::<f16>(bytes, &layout, &outputs),
            Dtype::BF16 => quantize_copied::<bf16>(bytes, &layout, &outputs),
        }
    })
}

/// Dequantizes `codes`, `scales` and `mins` (as written by `pq_quantize` for
/// `output_len` values in rows of `row_len` with `bits` and `group_size`)
/// into `output`, `output_len` values of type `dtype` (`mins + q * scales`
/// in f32, rounded to nearest-even for f16 / bf16).
///
/// Input lengths must match the layout exactly; `output` must be aligned for
/// `dtype`, at least `output_len` long and not overlap the inputs. Buffers are
/// owned by the caller. `output` is written only on `PQ_STATUS_OK`.
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
    output: *mut c_void,
    output_len: usize,
    error: *mut PqError,
) -> PqStatus {
    run(error, || {
        let codes = Region::new("codes", codes, codes_len)?;
        let scales = Region::new("scales", scales, scales_len)?;
        let mins = Region::new("mins", mins, mins_len)?;
        let layout = Layout::new(output_len, row_len, bits, group_size)?;
        let inputs = DequantizeInputs { codes, scales, mins };
        match dtype_from_code(dtype)? {
            Dtype::F32 => dequantize_into::<f32>(&inputs, &layout, output),
            Dtype::F16 => dequantize_into::<f16>(&inputs, &layout, output),
            Dtype::BF16 => dequantize_into::<bf16>(&inputs, &layout, output),
        }
    })
}

/// Test hook: panics inside the panic boundary, to show that a panic becomes
/// `PQ_STATUS_PANIC` with a message instead of aborting the host.
#[no_mangle]
pub unsafe extern "C" fn pq_debug_panic(error: *mut PqError) -> PqStatus {
    run(error, || panic!("pq_debug_panic was called"))
}

fn dtype_from_code(code: u32) -> Result<Dtype> {
    const F32: u32 = PqDtype::F32 as u32;
    const F16: u32 = PqDtype::F16 as u32;
    const BF16: u32 = PqDtype::Bf16 as u32;
    match code {
        F32 => Ok(Dtype::F32),
        F16 => Ok(Dtype::F16),
        BF16 => Ok(Dtype::BF16),
        other => Err(Error::new(
            PqStatus::UnsupportedDtype,
            format!("dtype code {other} is not one of PQ_DTYPE_F32 (0), PQ_DTYPE_F16 (1), PQ_DTYPE_BF16 (2)"),
        )),
    }
}

/// The three output regions of a quantize call.
struct Outputs {
    codes: Region<u8>,
    scales: Region<f32>,
    mins: Region<f32>,
}

impl Outputs {
    fn new(
        codes: *mut u8,
        codes_len: usize,
        scales: *mut f32,
        scales_len: usize,
        mins: *mut f32,
        mins_len: usize,
    ) -> Result<Self> {
        Ok(Outputs {
            codes: Region::new("codes", codes, codes_len)?,
            scales: Region::new("scales", scales, scales_len)?,
            mins: Region::new("mins", mins, mins_len)?,
        })
    }

    /// # Safety
    /// The regions were checked disjoint from each other and from the input.
    unsafe fn quantize<T: Element>(&self, input: &[T], layout: &Layout) -> Result<()> {
        kernel::quantize(
            input,
            layout,
            self.codes.as_mut_slice(),
            self.scales.as_mut_slice(),
            self.mins.as_mut_slice(),
        )
    }
}

fn quantize_in_place<T: Element>(input: *const c_void, layout: &Layout, out: &Outputs) -> Result<()> {
    let input = Region::new("input", input as *const T, layout.len)?;
    check_disjoint(&[&input], &[&out.codes, &out.scales, &out.mins])?;
    // SAFETY: regions checked (NULL, alignment, size, overlap); the caller
    // promised the memory behind them for the duration of the call.
    unsafe { out.quantize(input.as_slice(), layout) }
}

fn quantize_copied<T: Element>(bytes: &[u8], layout: &Layout, out: &Outputs) -> Result<()> {
    let mut copy: Vec<T> = Vec::new();
    copy.try_reserve_exact(layout.len).map_err(|_| {
        Error::new(PqStatus::SizeOverflow, format!("cannot allocate a copy of {} bytes", bytes.len()))
    })?;
    // SAFETY: `copy` has capacity for `layout.len` values, which is exactly
    // `bytes.len()` bytes; every bit pattern is a valid f32 / f16 / bf16. The
    // byte-wise copy reads `bytes` without assuming any alignment.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy.as_mut_ptr() as *mut u8, bytes.len());
        copy.set_len(layout.len);
        out.quantize(&copy, layout)
    }
}

struct DequantizeInputs {
    codes: Region<u8>,
    scales: Region<f32>,
    mins: Region<f32>,
}

fn dequantize_into<T: Element>(inputs: &DequantizeInputs, layout: &Layout, output: *mut c_void) -> Result<()> {
    let output = Region::new("output", output as *const T, layout.len)?;
    check_disjoint(&[&inputs.codes, &inputs.scales, &inputs.mins], &[&output])?;
    // SAFETY: regions checked; `output` overlaps no input.
    unsafe {
        kernel::dequantize(
            inputs.codes.as_slice(),
            inputs.scales.as_slice(),
            inputs.mins.as_slice(),
            layout,
            output.as_mut_slice(),
        )
    }
}
