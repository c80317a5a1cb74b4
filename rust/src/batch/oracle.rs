//! The fast kernels against the reference, bit for bit: every instruction
//! set this CPU has, several thread counts and partitions, random shapes,
//! bit widths, group sizes, dtypes and value families.

use super::*;
use crate::element::Element;
use crate::kernel::reference;
use half::{bf16, f16};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Every way of running the fast path that must give the reference's bytes.
fn schedules() -> Vec<(Schedule, usize)> {
    let mut out = vec![];
    for isa in Isa::available() {
        // Serial, and threads with tiny chunks so that even small inputs
        // are split across threads and pieces.
        out.push((Schedule { isa, min_bytes_per_thread: usize::MAX }, 1));
        for threads in [2, 3, 5] {
            out.push((Schedule { isa, min_bytes_per_thread: 1 }, threads));
        }
    }
    out
}

/// One value of a family, as f32 before conversion to the dtype.
fn value(rng: &mut Rng, family: u32, group_pos: usize, qmax: f32) -> f32 {
    match family {
        // Wide spread of magnitudes.
        0 => (rng.unit() - 0.5) * 10f32.powi(rng.below(9) as i32 - 4),
        // Subnormals (f32 ones round to 0 or a subnormal in f16 / bf16).
        1 => f32::from_bits(rng.below(0x0080_0000) as u32) * if rng.below(2) == 0 { 1.0 } else { -1.0 },
        // f16 subnormals and tiny normals.
        2 => (rng.below(4096) as f32) * 2f32.powi(-24) * if rng.below(2) == 0 { 1.0 } else { -1.0 },
        // Exact ties: lo = 0, hi = 2 * qmax, so (x - lo) / scale hits k + 0.5.
        3 => match group_pos {
            0 => 0.0,
            1 => 2.0 * qmax,
            _ => rng.below(2 * qmax as u64 + 1) as f32,
        },
        // Constant groups (the caller copies each group's first value).
        4 => rng.pick(&[0.0, -0.0, 1.0, -3.5, 1e-30, f32::from_bits(1)]),
        // Signed zeros only.
        5 => {
            if rng.below(2) == 0 {
                0.0
            } else {
                -0.0
            }
        }
        // Huge magnitudes: ranges may overflow (an error) or not.
        6 => f32::MAX * (rng.unit() * 2.0 - 1.0),
        7 => f32::MAX * (0.5 + rng.unit() * 0.5),
        // Any finite bit pattern.
        8 => loop {
            let x = f32::from_bits(rng.next() as u32);
            if x.is_finite() {
                break x;
            }
        },
        // Tiny range around 1.0: a few ulps.
        9 => f32::from_bits(1.0f32.to_bits() + rng.below(8) as u32),
        // The smallest f32 subnormals: the scale has few significant bits,
        // so (x - lo) / scale can exceed qmax and the clamp matters.
        10 => f32::from_bits(rng.below(4096) as u32) * if rng.below(4) == 0 { -1.0 } else { 1.0 },
        _ => unreachable!(),
    }
}

fn sentinel_outputs(l: &Layout, rng: &mut Rng) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    // Outputs a little longer than needed: the tail must stay untouched.
    let extra = rng.below(3) as usize;
    (vec![0xA5; l.codes_len + extra], vec![-7.25; l.n_groups + extra], vec![-9.5; l.n_groups + extra])
}

type Quantized = (Vec<u8>, Vec<f32>, Vec<f32>);

fn same_bits(a: &Quantized, b: &Quantized) -> bool {
    let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    a.0 == b.0 && bits(&a.1) == bits(&b.1) && bits(&a.2) == bits(&b.2)
}

fn check_case<T: Element>(x: &[T], l: &Layout, rng: &mut Rng, case: &str) -> Option<Quantized> {
    let mut want = sentinel_outputs(l, rng);
    let want_result = reference::quantize(x, l, &mut want.0, &mut want.1, &mut want.2);
    for (schedule, threads) in schedules() {
        let mut got = (vec![0xA5; want.0.len()], vec![-7.25; want.1.len()], vec![-9.5; want.2.len()]);
        let item = QuantizeItem {
            input: T::values(x),
            layout: *l,
            codes: &mut got.0,
            scales: &mut got.1,
            mins: &mut got.2,
            importance: None,
        };
        let got_result: std::result::Result<(), Error> =
            quantize_batch_with(&mut [item], threads, schedule).map_err(|e| e.error);
        assert_eq!(got_result, want_result, "{case} {schedule:?} threads {threads}");
        if want_result.is_ok() {
            assert!(same_bits(&got, &want), "{case} {schedule:?} threads {threads}: outputs differ");
        } else {
            // On error the outputs may be partly written, but never past the
            // prefix the layout names.
            let tails =
                |q: &Quantized| (q.0[l.codes_len..].to_vec(), q.1[l.n_groups..].to_vec(), q.2[l.n_groups..].to_vec());
            assert!(same_bits(&tails(&got), &tails(&want)), "{case} {schedule:?} threads {threads}: tail written");
        }
    }
    want_result.ok().map(|_| want)
}

fn check_dequantize<T: Element + PartialEq + std::fmt::Debug>(q: &Quantized, l: &Layout, case: &str) {
    let (codes, scales, mins) = (&q.0[..l.codes_len], &q.1[..l.n_groups], &q.2[..l.n_groups]);
    let mut want = vec![T::from_f32(-1.5); l.len + 1];
    let want_result = reference::dequantize(codes, scales, mins, l, &mut want);
    for (schedule, threads) in schedules() {
        let mut got = vec![T::from_f32(-1.5); l.len + 1];
        let item = DequantizeItem { codes, scales, mins, layout: *l, output: T::values_mut(&mut got) };
        let got_result = dequantize_batch_with(&mut [item], threads, schedule).map_err(|e| e.error);
        assert_eq!(got_result, want_result, "{case} {schedule:?} threads {threads}");
        // Compare bits (NaN never occurs in a successful dequantize, but
        // -0.0 vs 0.0 would be a difference).
        let bits = |v: &[T]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
        // On error the output may be partly written, never past its prefix.
        let upto = if want_result.is_ok() { 0 } else { l.len };
        assert_eq!(bits(&got[upto..]), bits(&want[upto..]), "{case} {schedule:?} threads {threads}");
    }
}

fn run_case<T: Element + PartialEq + std::fmt::Debug>(rng: &mut Rng, case_no: usize) {
    let bits = rng.pick(&[2u32, 3, 4, 8]);
    // The smallest group that fills whole bytes.
    let unit = if bits == 3 { 8 } else { 8 / bits as usize };
    let g = match rng.below(4) {
        0 => unit,
        1 => rng.pick(&[32, 64, 128, 256]),
        2 => unit * (1 + rng.below(80) as usize),
        _ => unit * (1 + rng.below(700) as usize),
    };
    let row_len = g * (1 + rng.below(3) as usize);
    let rows = rng.below(5) as usize;
    let l = Layout::new(rows * row_len, row_len, bits, g).unwrap();
    let family = rng.below(11) as u32;
    let qmax = l.qmax() as f32;
    let mix = rng.below(3) == 0;
    let mut x: Vec<T> = (0..l.len)
        .map(|i| {
            // In some tensors, mix in values of other families.
            let f = if mix && rng.below(8) == 0 { rng.below(11) as u32 } else { family };
            T::from_f32(value(rng, f, i % g, qmax))
        })
        .collect();
    if family == 4 {
        // Whole constant groups.
        for group in x.chunks_mut(g) {
            let c = group[0];
            group.fill(c);
        }
    }
    if !x.is_empty() && rng.below(12) == 0 {
        let i = rng.below(x.len() as u64) as usize;
        x[i] = T::from_f32(rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]));
    }
    let case = format!("case {case_no}: {:?} bits {bits} g {g} row {row_len} rows {rows} family {family}", T::DTYPE);
    if let Some(q) = check_case(&x, &l, rng, &case) {
        check_dequantize::<f32>(&q, &l, &case);
        check_dequantize::<f16>(&q, &l, &case);
        check_dequantize::<bf16>(&q, &l, &case);
    }
}

#[test]
fn fast_matches_reference_randomized() {
    let mut rng = Rng(0x5EED_0001);
    for case in 0..450 {
        match case % 3 {
            0 => run_case::<f32>(&mut rng, case),
            1 => run_case::<f16>(&mut rng, case),
            _ => run_case::<bf16>(&mut rng, case),
        }
    }
}

/// Dequantize with arbitrary finite scales and mins: results spanning
/// subnormals, rounding boundaries of f16 / bf16, overflow to infinity.
#[test]
fn dequantize_matches_reference_on_arbitrary_parameters() {
    let mut rng = Rng(0x5EED_0002);
    for case in 0..60 {
        let bits = rng.pick(&[2u32, 3, 4, 8]);
        let g = rng.pick(&[8usize, 16, 64, 128]);
        let l = Layout::new(g * 24, g * 4, bits, g).unwrap();
        let finite = |rng: &mut Rng| loop {
            let x = match rng.below(3) {
                0 => f32::from_bits(rng.next() as u32),
                1 => (rng.unit() - 0.5) * 2f32.powi(rng.below(40) as i32 - 30),
                _ => (rng.unit() - 0.5) * 70000.0,
            };
            if x.is_finite() {
                break x;
            }
        };
        let codes: Vec<u8> = (0..l.codes_len).map(|_| rng.next() as u8).collect();
        let scales: Vec<f32> = (0..l.n_groups).map(|_| finite(&mut rng)).collect();
        let mins: Vec<f32> = (0..l.n_groups).map(|_| finite(&mut rng)).collect();
        let q = (codes, scales, mins);
        let case = format!("dequantize case {case}: bits {bits} g {g}");
        check_dequantize::<f32>(&q, &l, &case);
        check_dequantize::<f16>(&q, &l, &case);
        check_dequantize::<bf16>(&q, &l, &case);
    }
    // A non-finite parameter: same error, nothing written.
    let l = Layout::new(64, 64, 4, 16).unwrap();
    let mut q = (vec![0x21u8; 32], vec![1.0f32; 4], vec![0.0f32; 4]);
    q.1[2] = f32::NAN;
    check_dequantize::<f32>(&q, &l, "nan scale");
    q.1[2] = 1.0;
    q.2[3] = f32::NEG_INFINITY;
    check_dequantize::<bf16>(&q, &l, "inf min");
}

#[test]
fn every_thread_count_gives_the_same_bytes() {
    let mut rng = Rng(7);
    let l = Layout::new(1024 * 1024, 1024, 4, 128).unwrap();
    let x: Vec<f32> = (0..l.len).map(|_| value(&mut rng, 0, 0, 15.0)).collect();
    let mut want = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
    reference::quantize(&x, &l, &mut want.0, &mut want.1, &mut want.2).unwrap();
    for threads in [0, 1, 2, 3, 4, 8] {
        let mut got = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
        let item = QuantizeItem {
            input: Values::F32(&x),
            layout: l,
            codes: &mut got.0,
            scales: &mut got.1,
            mins: &mut got.2,
            importance: None,
        };
        quantize_batch(&mut [item], threads).unwrap();
        assert!(same_bits(&got, &want), "threads {threads}");
        let mut y = vec![0f32; l.len];
        let mut y_ref = vec![0f32; l.len];
        reference::dequantize(&want.0, &want.1, &want.2, &l, &mut y_ref).unwrap();
        let item = DequantizeItem {
            codes: &want.0,
            scales: &want.1,
            mins: &want.2,
            layout: l,
            output: ValuesMut::F32(&mut y),
        };
        dequantize_batch(&mut [item], threads).unwrap();
        assert!(y.iter().zip(&y_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "threads {threads}");
    }
}

#[test]
fn errors_name_the_same_group_as_the_reference_with_threads() {
    // Several bad values: the first one must be reported, whatever the
    // threads and chunks did.
    let l = Layout::new(256 * 1024, 1024, 8, 64).unwrap();
    let mut x: Vec<f32> = (0..l.len).map(|i| (i % 1000) as f32).collect();
    for i in [200_000, 150_001, 250_000] {
        x[i] = f32::NAN;
    }
    x[90_000] = f32::MAX;
    x[90_001] = -f32::MAX;
    let mut c = vec![0u8; l.codes_len];
    let (mut s, mut m) = (vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
    let want = reference::quantize(&x, &l, &mut c, &mut s, &mut m).unwrap_err();
    assert!(want.message.contains("overflows"), "{}", want.message);
    for (schedule, threads) in schedules() {
        let item = QuantizeItem {
            input: Values::F32(&x),
            layout: l,
            codes: &mut c,
            scales: &mut s,
            mins: &mut m,
            importance: None,
        };
        let got = quantize_batch_with(&mut [item], threads, schedule).unwrap_err();
        assert_eq!((got.item, got.error.clone()), (Some(0), want.clone()), "{schedule:?} {threads}");
    }
    x[90_001] = 0.0;
    let want = reference::quantize(&x, &l, &mut c, &mut s, &mut m).unwrap_err();
    assert!(want.message.contains("flat index 150001"), "{}", want.message);
    for (schedule, threads) in schedules() {
        let item = QuantizeItem {
            input: Values::F32(&x),
            layout: l,
            codes: &mut c,
            scales: &mut s,
            mins: &mut m,
            importance: None,
        };
        let got = quantize_batch_with(&mut [item], threads, schedule).unwrap_err();
        assert_eq!(got.error, want, "{schedule:?} {threads}");
    }
}

#[test]
fn clamp_matters_for_subnormal_scales() {
    let x = [0.0f32, f32::from_bits(4095)];
    let l = Layout::new(2, 2, 8, 2).unwrap();
    let mut rng = Rng(1);
    let q = check_case(&x, &l, &mut rng, "clamp").unwrap();
    assert_eq!(q.0[1], 255);
}

#[test]
fn public_single_tensor_api_matches_reference() {
    let x: Vec<f32> = (0..4096).map(|i| ((i * 37) % 101) as f32 * 0.25 - 7.0).collect();
    let l = Layout::new(4096, 512, 2, 32).unwrap();
    let mut a = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
    let mut b = a.clone();
    quantize(&x, &l, &mut a.0, &mut a.1, &mut a.2).unwrap();
    reference::quantize(&x, &l, &mut b.0, &mut b.1, &mut b.2).unwrap();
    assert!(same_bits(&a, &b));
    let (mut y, mut z) = (vec![f16::ZERO; 4096], vec![f16::ZERO; 4096]);
    dequantize(&a.0, &a.1, &a.2, &l, &mut y).unwrap();
    reference::dequantize(&b.0, &b.1, &b.2, &l, &mut z).unwrap();
    assert_eq!(y, z);
}
