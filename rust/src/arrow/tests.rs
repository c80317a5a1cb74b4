//! Tests of the Arrow path in safe Rust.

use super::format::{quantized_batch, Encoded, RowMeta};
use super::*;
use crate::batch as kernel;
use arrow_array::types::{UInt32Type, UInt8Type};
use arrow_array::{
    FixedSizeListArray, Float16Array, Float32Array, Int8Array, LargeListArray, LargeStringArray, UInt8Array,
};
use half::{bf16, f16};
use std::sync::{Mutex, MutexGuard};

/// Tests that build results hold this, so that [`live_exports`] is theirs alone.
pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `Output::block` fills its memory with before the kernel writes it.
pub(super) static BLOCK_PATTERN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The codes, scales and mins of a result are not zeroed before the kernel
/// writes them: every byte of them (and of the padding between them) must
/// be written, whatever the bits, group size, scheme, axis and split across
/// threads. Two results, one in a block filled with 0x00 and one in a block
/// filled with 0xFF, are then the same bytes.
#[test]
fn every_output_byte_is_written() {
    use crate::layout::ScaleDtype;
    let _g = exclusive();
    // A tensor large enough to be split across threads, and small ones; one
    // group more makes an odd count of scales and of 3-bit codes' bytes,
    // so that pieces end between 8-byte boundaries.
    let big = values(1024 * 512, 1);
    let small = values(24 * 16, 2);
    let input = |one_group: &[i64]| {
        batch(vec![
            ("name", Arc::new(StringArray::from(vec!["big", "small", "one group"])) as ArrayRef),
            ("weights", Arc::new(f32_list(&[&big, &small, &small[..8]]))),
            ("shape", Arc::new(i64_list(&[&[1024, 512], &[24, 16], one_group]))),
        ])
    };
    let schemes = [
        (Method::MinMax, ScaleDtype::F32),
        (Method::MinMax, ScaleDtype::F16),
        (Method::Search, ScaleDtype::F32),
        (Method::Search, ScaleDtype::F16),
    ];
    for bits in [2, 3, 4, 8] {
        for (method, scale_dtype) in schemes {
            for (axis, group) in
                [(Axis::Last, Some(8)), (Axis::Last, None), (Axis::First, Some(8)), (Axis::First, None)]
            {
                if method == Method::Search && bits != 4 {
                    continue; // the search's writes do not depend on bits; keep the test short
                }
                let scheme = Scheme { method, scale_dtype };
                let input = input(if axis == Axis::Last { &[1, 8] } else { &[8, 1] });
                let run = |pattern: u8, threads: usize| {
                    BLOCK_PATTERN.store(pattern, Ordering::Relaxed);
                    let q = quantize(input.clone(), "", bits, group, scheme, axis, &[], threads);
                    BLOCK_PATTERN.store(0, Ordering::Relaxed);
                    q.unwrap()
                };
                let case = format!("bits {bits} {method:?} {scale_dtype:?} {axis:?} group {group:?}");
                assert_eq!(raw_buffers(&run(0x00, 1)), raw_buffers(&run(0xFF, 1)), "{case}");
                assert_eq!(raw_buffers(&run(0x00, 4)), raw_buffers(&run(0xFF, 3)), "{case}, threads");
            }
        }
    }
}

/// Every byte of every buffer of `data` and its children, as exported (not
/// only the bytes the offsets reach, which is what `ArrayData`'s `==` compares).
fn raw_buffers(data: &ArrayData) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = data.buffers().iter().map(|b| b.as_slice().to_vec()).collect();
    out.extend(data.child_data().iter().flat_map(raw_buffers));
    out
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 37.0 - 13.0).collect()
}

fn kernel_bytes(x: &[f32], row: usize, bits: u32, g: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let l = Layout::new(x.len(), row, bits, g).unwrap();
    let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
    kernel::quantize(x, &l, &mut c, &mut s, &mut m).unwrap();
    (c, s, m)
}

/// Row `i` of a quantized batch: (name, codes, scales, mins, shape, dtype, bits, group_size).
type Row = (String, Vec<u8>, Vec<f32>, Vec<f32>, Vec<i64>, String, u8, u32);

fn rows(data: &ArrayData) -> Vec<Row> {
    let batch = StructArray::from(data.clone());
    let list_f32 = |c: &str, i: usize| {
        batch.column_by_name(c).unwrap().as_list::<i32>().value(i).as_primitive::<Float32Type>().values().to_vec()
    };
    (0..batch.len())
        .map(|i| {
            (
                batch.column_by_name("name").unwrap().as_string::<i32>().value(i).to_string(),
                batch.column_by_name("codes").unwrap().as_binary::<i64>().value(i).to_vec(),
                list_f32("scales", i),
                list_f32("mins", i),
                batch
                    .column_by_name("shape")
                    .unwrap()
                    .as_list::<i32>()
                    .value(i)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec(),
                batch.column_by_name("dtype").unwrap().as_string::<i32>().value(i).to_string(),
                batch.column_by_name("bits").unwrap().as_primitive::<UInt8Type>().value(i),
                batch.column_by_name("group_size").unwrap().as_primitive::<UInt32Type>().value(i),
            )
        })
        .collect()
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> ArrayData {
    let fields: Vec<Field> = columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    StructArray::new(Fields::from(fields), columns.into_iter().map(|(_, a)| a).collect(), None).into_data()
}

fn f32_list(rows: &[&[f32]]) -> ListArray {
    ListArray::from_iter_primitive::<Float32Type, _, _>(rows.iter().map(|r| Some(r.iter().map(|&v| Some(v)))))
}

fn i64_list(rows: &[&[i64]]) -> ListArray {
    ListArray::from_iter_primitive::<Int64Type, _, _>(rows.iter().map(|r| Some(r.iter().map(|&v| Some(v)))))
}

/// [`quantize`] with the default scheme and axis, no importance, all cores.
fn quantize_plain(input: &ArrayData, name: &str, bits: u32, group_size: Option<usize>) -> Result<ArrayData> {
    quantize(input.clone(), name, bits, group_size, Scheme::default(), Axis::Last, &[], 0)
}

fn status<T>(r: Result<T>) -> PqStatus {
    r.err().map(|e| e.status).unwrap_or(PqStatus::Ok)
}

#[test]
fn lone_array_matches_the_kernel() {
    let _g = exclusive();
    let x = values(256, 1);
    let out = quantize_plain(&Float32Array::from(x.clone()).into_data(), "w", 4, Some(64)).unwrap();
    let (c, s, m) = kernel_bytes(&x, 256, 4, 64);
    assert_eq!(rows(&out), vec![("w".into(), c, s, m, vec![256], "float32".into(), 4, 64)]);
    assert_eq!(live_exports(), 1);
    drop(out);
    assert_eq!(live_exports(), 0);
}

#[test]
fn batch_with_shapes_and_every_list_kind() {
    let _g = exclusive();
    let (a, b) = (values(512, 2), values(96, 3));
    let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
    let shapes: ArrayRef = Arc::new(i64_list(&[&[4, 128], &[2, 48]]));
    let list: ArrayRef = Arc::new(f32_list(&[&a, &b]));
    let large: ArrayRef = Arc::new(LargeListArray::from_iter_primitive::<Float32Type, _, _>(
        [&a, &b].iter().map(|r| Some(r.iter().map(|&v| Some(v)))),
    ));
    for weights in [list, large] {
        let input = batch(vec![("name", names.clone()), ("weights", weights), ("shape", shapes.clone())]);
        let got = rows(&quantize_plain(&input, "", 2, Some(16)).unwrap());
        let ((ca, sa, ma), (cb, sb, mb)) = (kernel_bytes(&a, 128, 2, 16), kernel_bytes(&b, 48, 2, 16));
        assert_eq!(got[0], ("a".into(), ca, sa, ma, vec![4, 128], "float32".into(), 2, 16));
        assert_eq!(got[1], ("b".into(), cb, sb, mb, vec![2, 48], "float32".into(), 2, 16));
        // None: one group per row, along the last axis of each shape.
        let got = rows(&quantize_plain(&input, "", 2, None).unwrap());
        assert_eq!((got[0].7, got[1].7), (128, 48));
        assert_eq!(got[1].1, kernel_bytes(&b, 48, 2, 48).0);
    }
    // fixed_size_list of float16, no shape column: each tensor is one row.
    let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
    let fsl = FixedSizeListArray::new(item(DataType::Float16), 256, Arc::new(Float16Array::from(h.clone())), None);
    let names: ArrayRef = Arc::new(LargeStringArray::from(vec!["x", "y"]));
    let got =
        rows(&quantize_plain(&batch(vec![("name", names), ("weights", Arc::new(fsl))]), "", 8, Some(256)).unwrap());
    let wide: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
    for (row, half) in got.iter().zip(wide.chunks(256)) {
        let (c, s, m) = kernel_bytes(half, 256, 8, 256);
        assert_eq!((&row.1, &row.2, &row.3, &row.4, row.5.as_str()), (&c, &s, &m, &vec![256], "float16"));
    }
    assert_eq!(live_exports(), 0);
}

#[test]
fn sliced_inputs_read_the_slice() {
    let _g = exclusive();
    let x = values(1024, 4);
    let sliced = Float32Array::from(x.clone()).into_data().slice(128, 512);
    let out = quantize_plain(&sliced, "s", 4, Some(128)).unwrap();
    assert_eq!(rows(&out)[0].1, kernel_bytes(&x[128..640], 512, 4, 128).0);
    let rows_in: Vec<&[f32]> = x.chunks(256).collect();
    let names: ArrayRef = Arc::new(StringArray::from(vec!["0", "1", "2", "3"]));
    let full = batch(vec![("name", names), ("weights", Arc::new(f32_list(&rows_in)))]);
    let out = quantize_plain(&full.slice(1, 2), "", 4, Some(64)).unwrap();
    let got = rows(&out);
    assert_eq!((got[0].0.as_str(), &got[0].1), ("1", &kernel_bytes(&x[256..512], 256, 4, 64).0));
    assert_eq!((got[1].0.as_str(), &got[1].1), ("2", &kernel_bytes(&x[512..768], 256, 4, 64).0));
}

#[test]
fn bad_inputs_are_named_errors() {
    let _g = exclusive();
    let nulls = Float32Array::from(vec![Some(1.0), None, Some(2.0), Some(3.0)]).into_data();
    let e = quantize_plain(&nulls, "", 4, Some(2)).unwrap_err();
    assert!(e.status == PqStatus::InvalidArrow && e.message.contains("null"), "{e}");
    assert_eq!(status(check_quantize_type(&DataType::Float64)), PqStatus::UnsupportedDtype);
    assert_eq!(status(check_quantize_type(&DataType::Utf8)), PqStatus::UnsupportedDtype);
    let names: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
    let w: ArrayRef = Arc::new(f32_list(&[&[1.0, 2.0, 3.0, 4.0]]));
    let shape = |dims: &[i64]| -> ArrayRef { Arc::new(i64_list(&[dims])) };
    for (dims, needle) in [(&[3i64][..], "does not match"), (&[][..], "empty"), (&[-4][..], "negative")] {
        let e = quantize_plain(
            &batch(vec![("name", names.clone()), ("weights", w.clone()), ("shape", shape(dims))]),
            "",
            4,
            Some(2),
        )
        .unwrap_err();
        assert!(
            e.status == PqStatus::ShapeMismatch && e.message.contains(needle) && e.message.contains("\"a\""),
            "{e}"
        );
    }
    let e = quantize_plain(&batch(vec![("name", names.clone())]), "", 4, Some(2)).unwrap_err();
    assert!(e.status == PqStatus::InvalidArrow && e.message.contains("weights"), "{e}");
    // Other columns pass through; one named like a result column is an error.
    let e = quantize_plain(
        &batch(vec![("name", names.clone()), ("weights", w.clone()), ("codes", names.clone())]),
        "",
        4,
        Some(2),
    )
    .unwrap_err();
    assert!(e.status == PqStatus::InvalidArrow && e.message.contains("\"codes\" would clash"), "{e}");
    let ints: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>([Some([Some(1i64)])]));
    assert_eq!(
        status(quantize_plain(&batch(vec![("name", names.clone()), ("weights", ints)]), "", 4, Some(2))),
        PqStatus::UnsupportedDtype
    );
    let with_null: ArrayRef =
        Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>([Some([Some(1.0f32), None])]));
    let e = quantize_plain(&batch(vec![("name", names.clone()), ("weights", with_null)]), "", 4, Some(2)).unwrap_err();
    assert!(e.status == PqStatus::InvalidArrow && e.message.contains("row 0"), "{e}");
    let nan: ArrayRef = Arc::new(f32_list(&[&[1.0, f32::NAN]]));
    let e = quantize_plain(&batch(vec![("name", names.clone()), ("weights", nan)]), "", 4, Some(2)).unwrap_err();
    assert!(e.status == PqStatus::NonFinite && e.message.starts_with("tensor \"a\" (row 0)"), "{e}");
    assert_eq!(
        status(quantize_plain(&Float32Array::from(vec![1.0f32; 6]).into_data(), "", 4, Some(4))),
        PqStatus::ShapeMismatch
    );
    assert_eq!(live_exports(), 0);
}

#[test]
fn dequantize_round_trips_through_the_kernel() {
    let _g = exclusive();
    let x = values(384, 5);
    let names: ArrayRef = Arc::new(StringArray::from(vec!["p", "q"]));
    let input = batch(vec![
        ("name", names),
        ("weights", Arc::new(f32_list(&[&x[..256], &x[256..]]))),
        ("shape", Arc::new(i64_list(&[&[2, 128], &[128]]))),
    ]);
    let q = quantize_plain(&input, "", 8, Some(32)).unwrap();
    let d = dequantize(&q, Dequantized::Auto, 0).unwrap();
    let back = StructArray::from(d.clone());
    let weights = back.column_by_name("weights").unwrap().as_list::<i32>();
    for (i, (range, row)) in [(0..256, 128), (256..384, 128)].into_iter().enumerate() {
        let (c, s, m) = kernel_bytes(&x[range.clone()], row, 8, 32);
        let l = Layout::new(range.len(), row, 8, 32).unwrap();
        let mut want = vec![0f32; range.len()];
        kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
        assert_eq!(weights.value(i).as_primitive::<Float32Type>().values().to_vec(), want);
    }
    assert_eq!(
        back.column_by_name("shape").unwrap().as_list::<i32>().value(0).as_primitive::<Int64Type>().values().to_vec(),
        vec![2, 128]
    );
    // The dequantized batch is a valid input again.
    assert!(quantize_plain(&d, "", 8, Some(32)).is_ok());
    assert_eq!(live_exports(), 2);
    drop((q, d, back));
    assert_eq!(live_exports(), 0);
    assert_eq!(
        status(dequantize(&Float32Array::from(vec![1.0f32]).into_data(), Dequantized::Auto, 0)),
        PqStatus::UnsupportedDtype
    );
}

/// One batch of the rows of one-row batches made by [`row`].
fn concat(batches: &[ArrayData]) -> ArrayData {
    let parts: Vec<Row> = batches.iter().flat_map(rows).collect();
    let metas: Vec<RowMeta> = parts
        .iter()
        .map(|p| RowMeta { name: &p.0, dtype: &p.5, shape: p.4.clone(), bits: p.6, group_size: p.7 })
        .collect();
    let (mut codes, mut groups, mut scales, mut mins) = ((vec![0i64], vec![]), vec![0i32], vec![], vec![]);
    for p in &parts {
        codes.1.extend_from_slice(&p.1);
        codes.0.push(codes.1.len() as i64);
        scales.extend_from_slice(&p.2);
        mins.extend_from_slice(&p.3);
        groups.push(scales.len() as i32);
    }
    let out = Output::new();
    let encoded = Encoded {
        codes: (codes.0, out.buffer(codes.1)),
        group_offsets: groups,
        scales: out.scalars(scales),
        mins: out.scalars(mins),
    };
    quantized_batch(&out, Scheme::default(), Axis::Last, &metas, encoded).unwrap()
}

fn quantized_row(name: &str, x: &[f32], dtype: Dtype, shape: &[i64], bits: u32, g: usize) -> ArrayData {
    let row_len = *shape.last().unwrap() as usize;
    let l = Layout::new(x.len(), row_len, bits, g).unwrap();
    let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
    match dtype {
        Dtype::F32 => kernel::quantize(x, &l, &mut c, &mut s, &mut m),
        Dtype::F16 => {
            kernel::quantize(&x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(), &l, &mut c, &mut s, &mut m)
        }
        Dtype::Bf16 => {
            kernel::quantize(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), &l, &mut c, &mut s, &mut m)
        }
    }
    .unwrap();
    let parts = RowParts {
        name,
        dtype: dtype.name(),
        shape,
        bits: bits as u8,
        group_size: g as u32,
        codes: &c,
        scales: &s,
        mins: &m,
        scheme: Scheme::default(),
        axis: Axis::Last,
    };
    row(&parts).unwrap()
}

fn carried_row(name: &str, dtype: &str, shape: &[i64], bytes: &[u8]) -> ArrayData {
    row(&RowParts {
        name,
        dtype,
        shape,
        bits: 0,
        group_size: 0,
        codes: bytes,
        scales: &[],
        mins: &[],
        scheme: Scheme::default(),
        axis: Axis::Last,
    })
    .unwrap()
}

#[test]
fn carried_over_and_bfloat16_rows_dequantize_exactly_in_the_raw_form() {
    let _g = exclusive();
    let x = values(256, 9);
    let ints: Vec<u8> = (0..5i64).flat_map(|v| (v * 1_000_000_007 - 3).to_le_bytes()).collect();
    let odd = [1u8, 2, 3]; // int8, 3 values: the next row starts misaligned
    let q = concat(&[
        carried_row("ints", "int64", &[5], &ints),
        carried_row("odd", "int8", &[3], &odd),
        quantized_row("w32", &x, Dtype::F32, &[2, 128], 4, 32),
        quantized_row("wbf", &x, Dtype::Bf16, &[4, 64], 8, 64),
        carried_row("bias", "bfloat16", &[2], &[0x80, 0x3F, 0x00, 0xC0]),
    ]);
    for form in [Dequantized::Auto, Dequantized::Raw] {
        let d = StructArray::from(dequantize(&q, form, 2).unwrap());
        assert_eq!(d.fields(), &raw_fields(), "{form:?}: mixed rows come back raw");
        let data = d.column_by_name("data").unwrap().as_binary::<i64>();
        let dtypes = d.column_by_name("dtype").unwrap().as_string::<i32>();
        assert_eq!(data.value(0), &ints[..]);
        assert_eq!(data.value(1), &odd[..]);
        assert_eq!(data.value(4), &[0x80, 0x3F, 0x00, 0xC0]);
        assert_eq!((dtypes.value(0), dtypes.value(3), dtypes.value(4)), ("int64", "bfloat16", "bfloat16"));
        let l = Layout::new(256, 128, 4, 32).unwrap();
        let (c, s, m) = kernel_bytes(&x, 128, 4, 32);
        let mut want = vec![0f32; 256];
        kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
        let want: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(data.value(2), &want[..]);
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let l = Layout::new(256, 64, 8, 64).unwrap();
        let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        kernel::quantize(&xb, &l, &mut c, &mut s, &mut m).unwrap();
        let mut want = vec![bf16::ZERO; 256];
        kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
        let want: Vec<u8> = want.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        assert_eq!(data.value(3), &want[..]);
    }
    // Float32 rows only: the Auto form keeps weights lists; Raw still raw.
    let only = concat(&[quantized_row("a", &x, Dtype::F32, &[256], 2, 16)]);
    let auto = StructArray::from(dequantize(&only, Dequantized::Auto, 0).unwrap());
    assert_eq!(auto.fields(), &dequantized_fields(DataType::Float32));
    let raw = StructArray::from(dequantize(&only, Dequantized::Raw, 0).unwrap());
    assert_eq!(raw.fields(), &raw_fields());
    drop((q, only, auto, raw));
    assert_eq!(live_exports(), 0);
}

#[test]
fn rows_break_the_rules_with_named_errors() {
    let _g = exclusive();
    let bad = |parts: RowParts| row(&parts).unwrap_err();
    let base = RowParts {
        name: "t",
        dtype: "int64",
        shape: &[2],
        bits: 0,
        group_size: 0,
        codes: &[0; 16],
        scales: &[],
        mins: &[],
        scheme: Scheme::default(),
        axis: Axis::Last,
    };
    assert!(row(&base).is_ok());
    let e = bad(RowParts { codes: &[0; 15], ..base });
    assert!(
        e.status == PqStatus::ShapeMismatch && e.message.starts_with("tensor \"t\" (row 0): codes hold 15 bytes"),
        "{e}"
    );
    let e = bad(RowParts { dtype: "complex64", ..base });
    assert_eq!(e.status, PqStatus::UnsupportedDtype, "{e}");
    let e = bad(RowParts { group_size: 4, ..base });
    assert_eq!(e.status, PqStatus::InvalidArrow, "{e}");
    let e = bad(RowParts { bits: 4, group_size: 2, ..base });
    assert!(e.status == PqStatus::UnsupportedDtype && e.message.contains("float32, float16 or bfloat16"), "{e}");
    let e = bad(RowParts {
        dtype: "float32",
        bits: 4,
        group_size: 2,
        codes: &[0; 2],
        scales: &[1.0],
        mins: &[0.0],
        ..base
    });
    assert_eq!(e.status, PqStatus::BufferTooSmall, "{e}");
    let e = bad(RowParts { dtype: "float32", bits: 5, group_size: 2, ..base });
    assert_eq!(e.status, PqStatus::InvalidBits, "{e}");
    let e = bad(RowParts { shape: &[-2], ..base });
    assert_eq!(e.status, PqStatus::ShapeMismatch, "{e}");
    assert_eq!(live_exports(), 0);
}

/// What polars, duckdb and other producers write: utf8_view names, list
/// views and large lists, shapes of any integer type; the same bytes as a
/// plain list<float32> / list<int64> batch. And back: a quantized batch
/// with binary_view codes and view / large columns dequantizes alike.
#[test]
fn view_and_integer_types_of_other_producers() {
    use arrow_array::types::{Int32Type, UInt64Type};
    use arrow_array::{BinaryViewArray, LargeListViewArray, ListViewArray, StringViewArray};
    let _g = exclusive();
    let (a, b) = (values(512, 7), values(256, 8));
    let plain = batch(vec![
        ("name", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ("weights", Arc::new(f32_list(&[&a, &b]))),
        ("shape", Arc::new(i64_list(&[&[4, 128], &[2, 128]]))),
    ]);
    let want = rows(&quantize_plain(&plain, "", 4, Some(64)).unwrap());
    let all: Vec<f32> = a.iter().chain(&b).copied().collect();
    let values: ArrayRef = Arc::new(Float32Array::from(all));
    let f = item(DataType::Float32);
    // Rows of a list view in reverse order of their values: offsets need not grow.
    let view: ArrayRef = Arc::new(ListViewArray::new(
        f.clone(),
        ScalarBuffer::from(vec![0i32, 512]),
        ScalarBuffer::from(vec![512i32, 256]),
        values.clone(),
        None,
    ));
    let large_view: ArrayRef = Arc::new(LargeListViewArray::new(
        f,
        ScalarBuffer::from(vec![0i64, 512]),
        ScalarBuffer::from(vec![512i64, 256]),
        values,
        None,
    ));
    let int32_shape: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
        [[4, 128], [2, 128]].iter().map(|r| Some(r.iter().map(|&v| Some(v)))),
    ));
    let uint64_shape: ArrayRef = Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
        [[4u64, 128], [2, 128]].iter().map(|r| Some(r.iter().map(|&v| Some(v)))),
    ));
    let names: ArrayRef = Arc::new(StringViewArray::from(vec!["a", "b"]));
    for (weights, shape) in [(view, int32_shape), (large_view, uint64_shape)] {
        let input = batch(vec![("name", names.clone()), ("weights", weights), ("shape", shape)]);
        assert_eq!(rows(&quantize_plain(&input, "", 4, Some(64)).unwrap()), want);
    }
    // A dimension that does not fit i64 is a shape error, not a wrap-around.
    let huge: ArrayRef = Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
        [[u64::MAX], [256]].iter().map(|r| Some(r.iter().map(|&v| Some(v)))),
    ));
    let input = batch(vec![("name", names.clone()), ("weights", Arc::new(f32_list(&[&a, &b]))), ("shape", huge)]);
    assert_eq!(status(quantize_plain(&input, "", 4, Some(64))), PqStatus::ShapeMismatch);
    // Float64 weights: an error that says how to cast.
    let doubles: ArrayRef = Arc::new(ListArray::from_iter_primitive::<arrow_array::types::Float64Type, _, _>([
        Some(vec![Some(1.0f64)]),
        Some(vec![Some(2.0)]),
    ]));
    let e = quantize_plain(&batch(vec![("name", names.clone()), ("weights", doubles)]), "", 4, None).unwrap_err();
    assert!(e.status == PqStatus::UnsupportedDtype && e.message.contains("cast to float32"), "{}", e.message);
    let lone = arrow_array::Float64Array::from(vec![1.0]).into_data();
    assert!(quantize_plain(&lone, "w", 4, None).unwrap_err().message.contains("cast to float32"));

    // The quantized batch with view / large columns, as polars writes it back.
    let q = StructArray::from(quantize_plain(&plain, "", 4, Some(64)).unwrap());
    let col = |n: &str| q.column_by_name(n).unwrap().clone();
    let codes: Vec<&[u8]> = (0..2).map(|i| q.column_by_name("codes").unwrap().as_binary::<i64>().value(i)).collect();
    let shape_u64: ArrayRef = Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
        [[4u64, 128], [2, 128]].iter().map(|r| Some(r.iter().map(|&v| Some(v)))),
    ));
    let viewed = batch(vec![
        ("name", Arc::new(StringViewArray::from(vec!["a", "b"])) as ArrayRef),
        ("codes", Arc::new(BinaryViewArray::from(codes))),
        ("scales", col("scales")),
        ("mins", col("mins")),
        ("shape", shape_u64),
        ("dtype", Arc::new(StringViewArray::from(vec!["float32", "float32"]))),
        ("bits", col("bits")),
        ("group_size", col("group_size")),
    ]);
    let (d1, d2) =
        (dequantize(&q.into_data(), Dequantized::Raw, 0).unwrap(), dequantize(&viewed, Dequantized::Raw, 0).unwrap());
    assert_eq!(d1, d2);
    drop((d1, d2, viewed));
    assert_eq!(live_exports(), 0);
}

/// Every scheme through the Arrow path: the kernel's bytes, float16 scales
/// stored as float16, a `method` column only for the search, and back.
#[test]
fn schemes_give_the_kernels_bytes_and_travel_in_the_schema() {
    use crate::layout::ScaleDtype;
    let _g = exclusive();
    let x = values(512, 5);
    for (method, scale_dtype) in [
        (Method::MinMax, ScaleDtype::F32),
        (Method::MinMax, ScaleDtype::F16),
        (Method::Search, ScaleDtype::F32),
        (Method::Search, ScaleDtype::F16),
    ] {
        let scheme = Scheme { method, scale_dtype };
        let l = Layout::new(512, 128, 3, 32).unwrap().with_scheme(scheme);
        let (mut c, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        kernel::quantize(&x, &l, &mut c, &mut s, &mut m).unwrap();
        let input = batch(vec![
            ("name", Arc::new(StringArray::from(vec!["w"])) as ArrayRef),
            ("weights", Arc::new(f32_list(&[&x]))),
            ("shape", Arc::new(i64_list(&[&[4, 128]]))),
        ]);
        let q = quantize(input.clone(), "", 3, Some(32), scheme, Axis::Last, &[], 2).unwrap();
        let out = StructArray::from(q.clone());
        assert_eq!(out.fields(), &quantized_fields(scheme, Axis::Last), "{scheme:?}");
        assert_eq!(out.column_by_name("codes").unwrap().as_binary::<i64>().value(0), &c[..]);
        let list = |name: &str| -> Vec<f32> {
            let v = out.column_by_name(name).unwrap().as_list::<i32>().value(0);
            match scale_dtype {
                ScaleDtype::F32 => v.as_primitive::<Float32Type>().values().to_vec(),
                ScaleDtype::F16 => v.as_primitive::<Float16Type>().values().iter().map(|h| h.to_f32()).collect(),
            }
        };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&list("scales")), bits(&list("mins"))), (bits(&s), bits(&m)), "{scheme:?}");
        let method_column = out.column_by_name("method").map(|a| a.as_string::<i32>().value(0).to_string());
        assert_eq!(method_column.as_deref(), (method == Method::Search).then_some("search"));
        // Back: the kernel's dequantized values, and a row built from the same parts.
        let mut want = vec![0f32; 512];
        kernel::dequantize(&c, &s, &m, &l, &mut want).unwrap();
        let d = StructArray::from(dequantize(&q, Dequantized::Auto, 0).unwrap());
        let got = d.column_by_name("weights").unwrap().as_list::<i32>().value(0);
        assert_eq!(bits(got.as_primitive::<Float32Type>().values()), bits(&want));
        let parts = RowParts {
            name: "w",
            dtype: "float32",
            shape: &[4, 128],
            bits: 3,
            group_size: 32,
            codes: &c,
            scales: &s,
            mins: &m,
            scheme,
            axis: Axis::Last,
        };
        assert_eq!(row(&parts).unwrap(), q, "{scheme:?}");
        assert!(check_quantized(&q).is_ok());
    }
    // A float16 row needs float16 values.
    let parts = RowParts {
        name: "t",
        dtype: "float32",
        shape: &[8],
        bits: 8,
        group_size: 8,
        codes: &[0; 8],
        scales: &[0.1],
        mins: &[0.0],
        scheme: Scheme { scale_dtype: ScaleDtype::F16, ..Scheme::default() },
        axis: Axis::Last,
    };
    let e = row(&parts).unwrap_err();
    assert!(e.status == PqStatus::InvalidScheme && e.message.contains("scales[0]"), "{e}");
    assert!(row(&RowParts { scales: &[0.5], ..parts }).is_ok());
    assert_eq!(live_exports(), 0);
}

/// What a reader refuses: an unknown method, scales and mins of different
/// float types, a method column that is not strings.
#[test]
fn bad_schemes_in_a_batch_are_named_errors() {
    let _g = exclusive();
    let good = quantized_row("w", &values(64, 1), Dtype::F32, &[64], 4, 32);
    let (fields, columns, _) = StructArray::from(good.clone()).into_parts();
    let with = |name: &str, col: ArrayRef| {
        let mut f: Vec<Field> = fields.iter().map(|f| f.as_ref().clone()).collect();
        let mut c = columns.clone();
        match f.iter().position(|x| x.name() == name) {
            Some(i) => {
                f[i] = Field::new(name, col.data_type().clone(), false);
                c[i] = col;
            }
            None => {
                f.push(Field::new(name, col.data_type().clone(), false));
                c.push(col);
            }
        }
        StructArray::new(Fields::from(f), c, None).into_data()
    };
    let e = check_quantized(&with("method", Arc::new(StringArray::from(vec!["best"])))).unwrap_err();
    assert!(e.status == PqStatus::InvalidScheme && e.message.contains("\"best\""), "{e}");
    assert!(check_quantized(&with("method", Arc::new(StringArray::from(vec!["minmax"])))).is_ok());
    let e = check_quantized(&with("method", Arc::new(UInt8Array::from(vec![1u8])))).unwrap_err();
    assert_eq!(e.status, PqStatus::UnsupportedDtype, "{e}");
    let halves = ListArray::from_iter_primitive::<Float16Type, _, _>([Some(vec![Some(f16::ONE), Some(f16::ONE)])]);
    let e = check_quantized(&with("scales", Arc::new(halves.clone()))).unwrap_err();
    assert!(e.status == PqStatus::UnsupportedDtype && e.message.contains("both"), "{e}");
    drop((good, columns, halves));
    assert_eq!(live_exports(), 0);
}

/// Axis 0 through the Arrow path: the bytes of the transpose quantized
/// along its rows (the kernel's), an `axis` column of 0, and back to the
/// tensor's own shape; importance weights by name are the kernel's too.
#[test]
fn axis_and_importance_give_the_kernels_bytes() {
    let _g = exclusive();
    let (r, c) = (64usize, 6usize);
    let x = values(r * c, 9);
    let xt: Vec<f32> = (0..c).flat_map(|j| x.iter().skip(j).step_by(c).copied().collect::<Vec<_>>()).collect();
    let w: Vec<f32> = (0..r).map(|i| (i % 5) as f32 * 0.5).collect();
    let scheme = Scheme { method: Method::Search, ..Scheme::default() };
    let want = |importance: Option<&[f32]>| {
        let l = Layout::new(r * c, r, 4, 32).unwrap().with_scheme(scheme);
        let (mut codes, mut s, mut m) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
        let mut items = [QuantizeItem {
            input: Values::F32(&xt),
            layout: l,
            codes: &mut codes,
            scales: &mut s,
            mins: &mut m,
            importance,
        }];
        quantize_batch(&mut items, 1).unwrap();
        (codes, s, m)
    };
    let input = batch(vec![
        ("name", Arc::new(StringArray::from(vec!["w", "v"])) as ArrayRef),
        ("weights", Arc::new(f32_list(&[&x, &x]))),
        ("shape", Arc::new(i64_list(&[&[r as i64, c as i64], &[r as i64, c as i64]]))),
    ]);
    let importance: &Importance = &[("w", &w), ("not in this batch", &[1.0])];
    let q = quantize(input.clone(), "", 4, Some(32), scheme, Axis::First, importance, 3).unwrap();
    let out = StructArray::from(q.clone());
    assert_eq!(out.fields(), &quantized_fields(scheme, Axis::First));
    assert_eq!(out.column_by_name("axis").unwrap().as_primitive::<arrow_array::types::Int8Type>().values(), &[0, 0]);
    let got = rows(&q);
    for (i, weights) in [(0, Some(&w[..])), (1, None)] {
        let (codes, s, m) = want(weights);
        assert_eq!((&got[i].1, &got[i].2, &got[i].3), (&codes, &s, &m), "row {i}");
        assert_eq!(got[i].4, vec![r as i64, c as i64]);
    }
    assert_ne!(got[0].1, got[1].1, "the importance weights changed the codes");
    // Back: the tensor in its own shape, as the kernel dequantizes axis 0.
    let l = Layout::new(r * c, r, 4, 32).unwrap().with_scheme(scheme).with_axis(Axis::First);
    let mut y = vec![0f32; r * c];
    let mut items = [DequantizeItem {
        codes: &got[0].1,
        scales: &got[0].2,
        mins: &got[0].3,
        layout: l,
        output: ValuesMut::F32(&mut y),
    }];
    dequantize_batch(&mut items, 1).unwrap();
    let d = StructArray::from(dequantize(&q, Dequantized::Auto, 2).unwrap());
    let back = d.column_by_name("weights").unwrap().as_list::<i32>().value(0);
    assert_eq!(back.as_primitive::<Float32Type>().values(), &y[..]);
    // A row built from the same parts is the same batch's first row.
    let parts = RowParts {
        name: "w",
        dtype: "float32",
        shape: &[r as i64, c as i64],
        bits: 4,
        group_size: 32,
        codes: &got[0].1,
        scales: &got[0].2,
        mins: &got[0].3,
        scheme,
        axis: Axis::First,
    };
    assert_eq!(row(&parts).unwrap(), q.slice(0, 1));
    // Rules: axis 0 is for 2-D tensors; group sizes divide the rows.
    assert_eq!(status(row(&RowParts { shape: &[(r * c) as i64], ..parts })), PqStatus::ShapeMismatch);
    let lone = Float32Array::from(x.clone()).into_data();
    let e = quantize(lone.clone(), "t", 4, Some(32), scheme, Axis::First, &[], 0).unwrap_err();
    assert!(e.status == PqStatus::ShapeMismatch && e.message.contains("2-D"), "{e}");
    assert_eq!(
        status(quantize(input.clone(), "", 4, Some(128), scheme, Axis::First, &[], 0)),
        PqStatus::InvalidGroupSize
    );
    // Importance: checked as for every item, named, and only for the search.
    let bad: [(&Importance, PqStatus); 4] = [
        (&[("v", &w[..4])], PqStatus::InvalidImatrix),
        (&[("v", &[-1.0; 64])], PqStatus::InvalidImatrix),
        (&[("v", &[f32::NAN; 64])], PqStatus::InvalidImatrix),
        (&[("v", &w), ("v", &w)], PqStatus::InvalidImatrix),
    ];
    for (importance, want) in bad {
        let e = quantize(input.clone(), "", 4, Some(32), scheme, Axis::First, importance, 0).unwrap_err();
        assert_eq!(e.status, want, "{e}");
        assert!(e.message.contains("\"v\""), "{e}");
    }
    let e = quantize(input.clone(), "", 4, Some(32), Scheme::default(), Axis::First, &[("w", &w)], 0).unwrap_err();
    assert_eq!(e.status, PqStatus::InvalidScheme, "{e}");
    drop((q, out, d, back));
    assert_eq!(live_exports(), 0);
}

/// A quantized batch's `axis` column: integers -1 or 0 only.
#[test]
fn bad_axes_in_a_batch_are_named_errors() {
    let _g = exclusive();
    let good = quantized_row("w", &values(64, 1), Dtype::F32, &[2, 32], 4, 32);
    let (fields, mut columns, _) = StructArray::from(good.clone()).into_parts();
    let mut f: Vec<Field> = fields.iter().map(|f| f.as_ref().clone()).collect();
    let with = |col: ArrayRef, f: &mut Vec<Field>, c: &mut Vec<ArrayRef>| {
        f.push(Field::new("axis", col.data_type().clone(), false));
        c.push(col);
        let batch = StructArray::new(Fields::from(f.clone()), c.clone(), None).into_data();
        f.pop();
        c.pop();
        batch
    };
    assert!(check_quantized(&with(Arc::new(arrow_array::Int64Array::from(vec![-1])), &mut f, &mut columns)).is_ok());
    let e = check_quantized(&with(Arc::new(Int8Array::from(vec![1])), &mut f, &mut columns)).unwrap_err();
    assert!(e.status == PqStatus::InvalidScheme && e.message.contains("axis 1"), "{e}");
    // Axis 0 on this row: its 2 x 32 transpose has rows of 2, shorter than a group.
    let e = check_quantized(&with(Arc::new(Int8Array::from(vec![0])), &mut f, &mut columns)).unwrap_err();
    assert_eq!(e.status, PqStatus::InvalidGroupSize, "{e}");
    let e = check_quantized(&with(Arc::new(StringArray::from(vec!["0"])), &mut f, &mut columns)).unwrap_err();
    assert_eq!(e.status, PqStatus::UnsupportedDtype, "{e}");
    drop((good, columns));
    assert_eq!(live_exports(), 0);
}
