//! pq_quantize_arrow / pq_dequantize_arrow on Arrow arrays built from the
//! fuzz input with arrow-rs (float32 / float16 arrays, or struct batches of
//! name / weights (list, large_list or fixed_size_list) / optional shape;
//! sliced; with or without nulls), exported through the C Data Interface
//! and then optionally corrupted field by field.
//!
//! Corruptions keep the producer honest about memory: counts and pointer
//! arrays are replaced by arrays this target owns (of the claimed size),
//! offset + length never exceed what the buffers hold, and the producer's
//! release (which frees through its private data) stays sound.
//!
//! Checks: the input is released exactly once (its release is wrapped and
//! counted); an uncorrupted input succeeds exactly when the reference
//! quantizes every tensor, with the reference's bytes; a success imports
//! back, validates, dequantizes to the reference's values; and
//! pq_arrow_live_exports() is 0 once everything is released.
#![no_main]

use std::os::raw::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, UInt32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, GenericListArray, Int64Array, ListArray, StringArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{DataType, Field};
use half::f16;
use pyquant::ffi::{
    pq_arrow_check_quantized, pq_arrow_live_exports, pq_dequantize_arrow, pq_quantize_arrow, PQ_DEQUANTIZED_AUTO,
    PQ_GROUP_SIZE_PER_ROW,
};
use pyquant::kernel::reference;
use pyquant::{Layout, PqStatus};
use pyquant_fuzz::*;

pyquant_fuzz::fuzz_target!(run);

/// `struct ArrowArray` as the C Data Interface lays it out.
#[repr(C)]
struct RawArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut RawArray,
    dictionary: *mut RawArray,
    release: Option<unsafe extern "C" fn(*mut RawArray)>,
    private_data: *mut c_void,
}

static RELEASED: AtomicUsize = AtomicUsize::new(0);

struct Wrapped {
    release: Option<unsafe extern "C" fn(*mut RawArray)>,
    private_data: *mut c_void,
}

/// Counts the release, then hands the struct back to the producer's release.
unsafe extern "C" fn counting_release(a: *mut RawArray) {
    RELEASED.fetch_add(1, Ordering::SeqCst);
    unsafe {
        let w = Box::from_raw((*a).private_data as *mut Wrapped);
        (*a).private_data = w.private_data;
        (*a).release = w.release;
        (w.release.unwrap())(a);
        assert!((*a).release.is_none(), "the producer's release did not mark the struct released");
    }
}

/// A tensor as this target built it: what the reference quantizes.
struct Tensor {
    name: String,
    values: Vec<f32>,
    row_len: usize,
}

struct Input {
    array: ArrayRef,
    field_name: String,
    tensors: Vec<Tensor>,
    /// Nulls, or a shape that does not fit, inside the sliced view.
    expect_error: bool,
    /// Either outcome is fine (see `build`).
    arrow_rs_empty_slice: bool,
}

fn nulls(r: &mut Reader, n: usize) -> Option<NullBuffer> {
    if r.u8() % 4 != 0 {
        return None;
    }
    let bits: Vec<bool> = (0..n).map(|_| r.u8() % 8 != 0).collect();
    Some(NullBuffer::from(bits))
}

fn float_array(f16s: bool, values: &[f32], nulls: Option<NullBuffer>) -> ArrayRef {
    if f16s {
        Arc::new(Float16Array::new(values.iter().map(|&v| f16::from_f32(v)).collect(), nulls))
    } else {
        Arc::new(Float32Array::new(values.to_vec().into(), nulls))
    }
}

/// Values as the array holds them (f16 rounding applied).
fn stored(f16s: bool, values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| if f16s { f16::from_f32(v).to_f32() } else { v }).collect()
}

fn build(r: &mut Reader) -> Input {
    let kind = r.u8() % 3;
    let f16s = r.bool();
    if kind < 2 {
        let n = r.below(65);
        let values = r.values_f32(n);
        let array = float_array(f16s, &values, nulls(r, n));
        let off = r.below(n + 1);
        let len = r.below(n - off + 1);
        let array = array.slice(off, len);
        let all = stored(f16s, &values);
        return Input {
            expect_error: array.null_count() > 0,
            tensors: vec![Tensor { name: "w".into(), values: all[off..off + len].to_vec(), row_len: len }],
            array,
            field_name: "w".into(),
            arrow_rs_empty_slice: false,
        };
    }
    // A batch: rows of (rows_k x row_len) tensors.
    let n = r.below(5);
    let list_kind = r.u8() % 3;
    let fixed_len = 4 * (1 + r.below(4));
    let mut tensors = vec![];
    let mut shapes: Vec<Vec<i64>> = vec![];
    for i in 0..n {
        let (rows, row_len) = if list_kind == 2 {
            (1, fixed_len)
        } else {
            (r.below(4), [4, 8, 12, 16, 6][r.below(5)])
        };
        let values = r.values_f32(rows * row_len);
        let mut shape = match r.u8() % 8 {
            0 => vec![(rows * row_len) as i64],
            1 => vec![1, rows as i64, row_len as i64],
            _ => vec![rows as i64, row_len as i64],
        };
        let tensor_row = if shape.len() == 1 { rows * row_len } else { row_len };
        if r.u8() % 16 == 0 {
            shape[0] = -1 - r.below(3) as i64; // a bad shape
        }
        shapes.push(shape);
        tensors.push(Tensor { name: format!("t{i}"), values: stored(f16s, &values), row_len: tensor_row });
    }
    let all: Vec<f32> = tensors.iter().flat_map(|t| t.values.iter().copied()).collect();
    let value_nulls = nulls(r, all.len());
    let values = float_array(f16s, &all, value_nulls);
    let item = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let lens: Vec<usize> = tensors.iter().map(|t| t.values.len()).collect();
    let list_nulls = nulls(r, n);
    let weights: ArrayRef = match list_kind {
        0 => Arc::new(ListArray::new(item, OffsetBuffer::from_lengths(lens), values, list_nulls)),
        1 => Arc::new(GenericListArray::<i64>::new(item, OffsetBuffer::from_lengths(lens), values, list_nulls)),
        _ => Arc::new(FixedSizeListArray::new(item, fixed_len as i32, values, list_nulls)),
    };
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(tensors.iter().map(|t| t.name.clone())));
    let mut fields = vec![Field::new("name", DataType::Utf8, false), Field::new("weights", weights.data_type().clone(), true)];
    let mut columns = vec![names, weights];
    let with_shape = r.bool();
    if with_shape {
        let dims: Vec<i64> = shapes.iter().flatten().copied().collect();
        let shape = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int64, true)),
            OffsetBuffer::from_lengths(shapes.iter().map(|s| s.len())),
            Arc::new(Int64Array::from(dims)),
            None,
        );
        fields.push(Field::new("shape", shape.data_type().clone(), false));
        columns.push(Arc::new(shape));
    }
    if r.bool() {
        fields.reverse();
        columns.reverse();
    }
    let struct_nulls = nulls(r, n);
    let batch: ArrayRef = Arc::new(StructArray::new(fields.into(), columns, struct_nulls));
    let off = r.below(n + 1);
    let len = r.below(n - off + 1);
    let batch = batch.slice(off, len);
    let mut tensors: Vec<Tensor> = tensors.drain(off..off + len).collect();
    // Without a shape column every tensor is 1-D.
    if !with_shape {
        tensors.iter_mut().for_each(|t| t.row_len = t.values.len());
    }
    let s = batch.as_struct();
    let w = s.column_by_name("weights").unwrap();
    let mut expect_error = s.null_count() > 0 || w.null_count() > 0;
    for i in 0..len {
        let row: ArrayRef = match w.data_type() {
            DataType::List(_) => w.as_list::<i32>().value(i),
            DataType::LargeList(_) => w.as_list::<i64>().value(i),
            _ => w.as_fixed_size_list().value(i),
        };
        expect_error |= row.null_count() > 0;
    }
    if with_shape {
        expect_error |= shapes[off..off + len].iter().any(|s| s[0] < 0);
    }
    // arrow-rs exports an empty slice of a string column as offset 0, length
    // 0 and offsets [k] (k > 0 past the first row), imports it with an empty
    // data buffer, and its validate_full then refuses the offset: pyquant
    // may refuse such an (empty) batch. Seen by this target; left alone.
    let arrow_rs_empty_slice = len == 0 && off > 0;
    Input { array: batch, field_name: "batch".into(), tensors, expect_error, arrow_rs_empty_slice }
}

/// The reference's codes, scales and mins for every tensor, or None if
/// any tensor must fail.
fn reference_of(tensors: &[Tensor], bits: u32, group: usize) -> Option<Vec<(Layout, Vec<u8>, Vec<f32>, Vec<f32>)>> {
    tensors
        .iter()
        .map(|t| {
            if t.row_len == 0 && t.values.is_empty() {
                return None; // a 0-length row: the layout refuses it
            }
            let g = if group == PQ_GROUP_SIZE_PER_ROW { t.row_len } else { group };
            let l = Layout::new(t.values.len(), t.row_len, bits, g).ok()?;
            u32::try_from(l.group_size).ok()?;
            let (mut c, mut s, mut m) = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
            reference::quantize(&t.values, &l, &mut c, &mut s, &mut m).ok()?;
            Some((l, c, s, m))
        })
        .collect()
}

/// Replaces `a.buffers` / `a.children` with arrays owned by `keep`.
struct Keep {
    buffers: Vec<Vec<*const c_void>>,
    children: Vec<Vec<*mut RawArray>>,
}

/// One corruption of the raw struct `a`, of `capacity` = its exported offset + length.
unsafe fn corrupt(r: &mut Reader, a: *mut RawArray, keep: &mut Keep) {
    let a = unsafe { &mut *a };
    let capacity = a.offset + a.length;
    match r.u8() % 8 {
        0 => a.length = [-1, i64::MIN, i64::MAX, i64::MAX - a.offset][r.below(4)],
        1 => a.length = r.below(capacity as usize + 1) as i64 - a.offset,
        2 => a.offset = [-1, i64::MAX, i64::MAX / 8][r.below(3)],
        3 => {
            a.offset = r.below(capacity as usize + 1) as i64;
            a.length = r.below((capacity - a.offset) as usize + 1) as i64;
        }
        4 => a.null_count = [-1, 0, 1, -7, i64::MAX, a.length + 1][r.below(6)],
        5 => {
            let n = r.below(4);
            let mut own: Vec<*const c_void> =
                (0..n).map(|i| if (i as i64) < a.n_buffers { unsafe { *a.buffers.add(i) } } else { ptr::null() }).collect();
            a.n_buffers = n as i64;
            a.buffers = own.as_mut_ptr();
            keep.buffers.push(own);
        }
        6 => {
            let n = r.below(3);
            let mut own: Vec<*mut RawArray> = (0..n)
                .map(|i| if (i as i64) < a.n_children && r.u8() % 4 != 0 { unsafe { *a.children.add(i) } } else { ptr::null_mut() })
                .collect();
            a.n_children = n as i64;
            a.children = own.as_mut_ptr();
            keep.children.push(own);
        }
        _ => {
            if a.n_buffers > 0 {
                let mut own: Vec<*const c_void> = (0..a.n_buffers as usize).map(|i| unsafe { *a.buffers.add(i) }).collect();
                let i = r.below(own.len());
                own[i] = ptr::null();
                a.buffers = own.as_mut_ptr();
                keep.buffers.push(own);
            }
        }
    }
}

fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let input = build(&mut r);
    let bits = r.bits();
    let group = match r.u8() % 4 {
        0 => PQ_GROUP_SIZE_PER_ROW,
        1 => 4,
        2 => 8,
        _ => r.size(64),
    };
    let threads = 1 + r.below(3);
    let field = Field::new(&input.field_name, input.array.data_type().clone(), true);
    let schema = FFI_ArrowSchema::try_from(&field).unwrap();
    let mut in_array = Box::new(FFI_ArrowArray::new(&input.array.to_data()));
    let raw = &mut *in_array as *mut FFI_ArrowArray as *mut RawArray;
    let mut keep = Keep { buffers: vec![], children: vec![] };
    let corrupted = r.u8() % 3 == 0;
    if corrupted {
        // The top level, or a child (or grandchild) through its parent.
        let mut target = raw;
        for _ in 0..r.below(3) {
            let t = unsafe { &*target };
            if t.n_children == 0 {
                break;
            }
            target = unsafe { *t.children.add(r.below(t.n_children as usize)) };
        }
        unsafe { corrupt(&mut r, target, &mut keep) };
    }
    // Wrap the producer's release, to count it.
    unsafe {
        let w = Box::new(Wrapped { release: (*raw).release, private_data: (*raw).private_data });
        (*raw).private_data = Box::into_raw(w) as *mut c_void;
        (*raw).release = Some(counting_release);
    }

    let before = RELEASED.load(Ordering::SeqCst);
    let (mut out_a, mut out_s) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
    let mut e = new_error();
    let status = unsafe { pq_quantize_arrow(&mut *in_array, &schema, bits, group, 0, 0, 0, std::ptr::null(), 0, threads, &mut out_a, &mut out_s, &mut e) };
    let msg = check_error(status, &e);
    trace(if corrupted { "pq_quantize_arrow(corrupted)" } else { "pq_quantize_arrow" }, status);
    assert_eq!(RELEASED.load(Ordering::SeqCst) - before, 1, "the input was not released exactly once ({status:?}: {msg})");
    assert!(unsafe { (*raw).release.is_none() }, "the input struct was not moved from");
    drop(in_array);
    drop(keep);

    let expected = if input.expect_error { None } else { reference_of(&input.tensors, bits, group) };
    if !corrupted && !(input.arrow_rs_empty_slice && status == PqStatus::InvalidArrow) {
        assert_eq!(status == PqStatus::Ok, expected.is_some(), "{status:?}: {msg}");
    }
    if status != PqStatus::Ok {
        // `release` is the eighth pointer-sized field of struct ArrowSchema.
        let schema_release = unsafe { (*(&out_s as *const FFI_ArrowSchema as *const [usize; 9]))[7] };
        assert!(out_a.is_released() && schema_release == 0, "outputs written on error");
        assert_eq!(pq_arrow_live_exports(), 0);
        return;
    }

    // Dequantize the result (moves out_a), then check both.
    let quantized = unsafe { arrow_array::ffi::from_ffi(FFI_ArrowArray::from_raw(&mut out_a), &out_s) }.expect("the result does not import");
    quantized.validate_full().expect("the result is not valid Arrow");
    if let (false, Some(expected)) = (corrupted, &expected) {
        let q = arrow_array::make_array(quantized.clone());
        let q = q.as_struct();
        assert_eq!(q.len(), expected.len());
        let codes = q.column_by_name("codes").unwrap().as_binary::<i64>();
        let scales = q.column_by_name("scales").unwrap().as_list::<i32>();
        let mins = q.column_by_name("mins").unwrap().as_list::<i32>();
        let bits_col = q.column_by_name("bits").unwrap().as_primitive::<UInt8Type>();
        let groups_col = q.column_by_name("group_size").unwrap().as_primitive::<UInt32Type>();
        let names = q.column_by_name("name").unwrap().as_string::<i32>();
        for (i, (l, c, s, m)) in expected.iter().enumerate() {
            assert_eq!(names.value(i), if input.tensors.len() == 1 && input.field_name == "w" { "w" } else { &input.tensors[i].name });
            assert_eq!(codes.value(i), &c[..], "codes of tensor {i}");
            let f32s = |a: ArrayRef| a.as_primitive::<Float32Type>().values().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(f32s(scales.value(i)), s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "scales of tensor {i}");
            assert_eq!(f32s(mins.value(i)), m.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "mins of tensor {i}");
            assert_eq!((bits_col.value(i) as u32, groups_col.value(i) as usize), (l.bits, l.group_size));
        }
    }
    // Every row of a result follows the row rules the checkpoint reader applies.
    let mut e = new_error();
    let mut to_check = FFI_ArrowArray::new(&quantized);
    let status = unsafe { pq_arrow_check_quantized(&mut to_check, &out_s, &mut e) };
    let msg = check_error(status, &e);
    assert!(status == PqStatus::Ok && to_check.is_released(), "a fresh result breaks the row rules: {msg}");
    // Exported again (the same buffers), for the way back.
    let mut again = FFI_ArrowArray::new(&quantized);
    drop(quantized);

    let mut e = new_error();
    let (mut deq_a, mut deq_s) = (FFI_ArrowArray::empty(), FFI_ArrowSchema::empty());
    let status = unsafe { pq_dequantize_arrow(&mut again, &out_s, PQ_DEQUANTIZED_AUTO, threads, &mut deq_a, &mut deq_s, &mut e) };
    let msg = check_error(status, &e);
    trace("pq_dequantize_arrow", status);
    assert!(again.is_released(), "pq_dequantize_arrow did not move its input");
    drop(out_s);
    // One float dtype per batch here: the AUTO form gives weights lists.
    assert_eq!(status, PqStatus::Ok, "dequantizing a fresh result failed: {msg}");
    let deq = unsafe { arrow_array::ffi::from_ffi(FFI_ArrowArray::from_raw(&mut deq_a), &deq_s) }.expect("the dequantized result does not import");
    deq.validate_full().expect("the dequantized result is not valid Arrow");
    if let (false, Some(expected)) = (corrupted, &expected) {
        let d = arrow_array::make_array(deq.clone());
        let weights = d.as_struct().column_by_name("weights").unwrap().as_list::<i32>();
        for (i, (l, c, s, m)) in expected.iter().enumerate() {
            let got: Vec<u32> = match weights.value(i).data_type() {
                DataType::Float32 => weights.value(i).as_primitive::<Float32Type>().values().iter().map(|v| v.to_bits()).collect(),
                _ => weights.value(i).as_primitive::<Float16Type>().values().iter().map(|v| v.to_bits() as u32).collect(),
            };
            let want: Vec<u32> = if matches!(weights.value(i).data_type(), DataType::Float32) {
                let mut y = vec![0f32; l.len];
                reference::dequantize(c, s, m, l, &mut y).unwrap();
                y.iter().map(|v| v.to_bits()).collect()
            } else {
                let mut y = vec![f16::ZERO; l.len];
                reference::dequantize(c, s, m, l, &mut y).unwrap();
                y.iter().map(|v| v.to_bits() as u32).collect()
            };
            assert_eq!(got, want, "dequantized tensor {i}");
        }
    }
    drop(deq);
    drop(deq_s);
    assert_eq!(pq_arrow_live_exports(), 0, "exports still alive after every release");
}
