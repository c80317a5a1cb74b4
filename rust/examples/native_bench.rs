//! Times the safe Rust API (no FFI) and a plain memory copy of the same bytes.
//!
//! ```text
//! cargo run --release --locked --features reference --example native_bench -- \
//!     --scenario S1|S2|S3|S4 --repeats N --threads T
//!     [--dtype float32|float16|bfloat16] [--bits 2|3|4|8] [--group-size G]
//!     [--kernel fast|reference] [--method minmax|search] [--axis -1|0]
//! ```
//!
//! Scenarios: S1 = one 1024x1024 tensor; S2 = 100 tensors of 1024x1024 as
//! one batch; S3 = 1000 tensors of 32x128 (16 KB) as one batch; S4 = one
//! 4096x4096 tensor. `--axis 0` groups down the columns (docs/scheme.md,
//! "Axis"; the fast kernels only). Defaults: float32,
//! bits 4, group size 128 (clamped to the row length if larger),
//! threads 1, repeats 10, kernel fast, method minmax. `--kernel reference`
//! times the original scalar code (`reference::quantize`, or
//! `reference::search_quantize` for method search), one tensor after the
//! other on one thread.
//!
//! Prints one JSON object on stdout: median seconds of quantize, dequantize
//! and memcpy (the input bytes copied into a second buffer with the same
//! number of threads), each over `repeats` timed runs after one warm-up run,
//! and throughputs in GB/s of input (quantize) or output (dequantize) bytes.

use std::hint::black_box;
use std::process::exit;
use std::thread;
use std::time::Instant;

use half::{bf16, f16};
use pyquant::kernel::{reference, Isa};
use pyquant::layout::{Axis, Method, Scheme};
use pyquant::{dequantize_batch, quantize_batch, DequantizeItem, Element, Layout, QuantizeItem};

struct Args {
    scenario: String,
    repeats: usize,
    threads: usize,
    dtype: String,
    bits: u32,
    group_size: Option<usize>,
    reference: bool,
    method: Method,
    axis: Axis,
}

fn usage(msg: &str) -> ! {
    eprintln!("native_bench: {msg}");
    eprintln!(
        "usage: native_bench --scenario S1|S2|S3|S4 --repeats N --threads T \
         [--dtype float32|float16|bfloat16] [--bits 2|3|4|8] [--group-size G] [--kernel fast|reference] [--method minmax|search] [--axis -1|0]"
    );
    exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        scenario: "S1".into(),
        repeats: 10,
        threads: 1,
        dtype: "float32".into(),
        bits: 4,
        group_size: None,
        reference: false,
        method: Method::MinMax,
        axis: Axis::Last,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: String| v.parse::<usize>().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")));
        match flag.as_str() {
            "--scenario" => a.scenario = value().to_uppercase(),
            "--repeats" => a.repeats = number(value()).max(1),
            "--threads" => a.threads = number(value()),
            "--dtype" => a.dtype = value(),
            "--bits" => a.bits = number(value()) as u32,
            "--group-size" => a.group_size = Some(number(value())),
            "--kernel" => {
                a.reference = match value().as_str() {
                    "fast" => false,
                    "reference" => true,
                    other => usage(&format!("unknown kernel {other}")),
                }
            }
            "--method" => {
                a.method = match value().as_str() {
                    "minmax" => Method::MinMax,
                    "search" => Method::Search,
                    other => usage(&format!("unknown method {other}")),
                }
            }
            "--axis" => {
                a.axis = match value().as_str() {
                    "-1" => Axis::Last,
                    "0" => Axis::First,
                    other => usage(&format!("unknown axis {other}")),
                }
            }
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a.dtype = match a.dtype.as_str() {
        "float32" | "f32" => "float32",
        "float16" | "f16" => "float16",
        "bfloat16" | "bf16" => "bfloat16",
        other => usage(&format!("unknown dtype {other}")),
    }
    .into();
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Deterministic, roughly normal weights (sum of uniforms), different per tensor.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| (next() + next() + next() - 1.5) * 0.05).collect()
}

/// Bytes per thread below which the memcpy baseline adds no thread (as
/// pyquant does for quantize).
const COPY_BYTES_PER_THREAD: usize = 1024 * 1024;

/// Copies `src` into `dst` on up to `threads` threads, split by bytes.
fn parallel_copy(src: &[u8], dst: &mut [u8], threads: usize) {
    let n = threads.min(src.len() / COPY_BYTES_PER_THREAD).max(1);
    if n == 1 {
        dst.copy_from_slice(src);
        return;
    }
    let chunk = src.len().div_ceil(n);
    thread::scope(|s| {
        let mut pairs = src.chunks(chunk).zip(dst.chunks_mut(chunk));
        let first = pairs.next().unwrap();
        for (a, b) in pairs {
            s.spawn(move || b.copy_from_slice(a));
        }
        first.1.copy_from_slice(first.0);
    });
}

struct Tensors<T> {
    inputs: Vec<Vec<T>>,
    codes: Vec<Vec<u8>>,
    scales: Vec<Vec<f32>>,
    mins: Vec<Vec<f32>>,
    outputs: Vec<Vec<T>>,
    layout: Layout,
}

fn run<T: Element>(a: &Args, count: usize, rows: usize, cols: usize) -> String {
    let g = a.group_size.unwrap_or(if cols >= 128 { 128 } else { cols });
    let layout = Layout::new(rows * cols, cols, a.bits, g)
        .unwrap_or_else(|e| usage(&e.message))
        .with_scheme(Scheme { method: a.method, ..Scheme::default() })
        .with_axis(a.axis);
    let n = layout.len;
    let mut t = Tensors::<T> {
        inputs: (0..count).map(|i| weights(n, i as u64 + 1).into_iter().map(T::from_f32).collect()).collect(),
        codes: (0..count).map(|_| vec![0u8; layout.codes_len]).collect(),
        scales: (0..count).map(|_| vec![0f32; layout.n_groups]).collect(),
        mins: (0..count).map(|_| vec![0f32; layout.n_groups]).collect(),
        outputs: (0..count).map(|_| vec![T::from_f32(0.0); n]).collect(),
        layout,
    };
    let threads = match a.threads {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let bytes = count * n * std::mem::size_of::<T>();

    let quantize_once = |t: &mut Tensors<T>| {
        let start = Instant::now();
        if a.reference {
            for i in 0..count {
                let (x, l, c, s, m) = (&t.inputs[i], &t.layout, &mut t.codes[i], &mut t.scales[i], &mut t.mins[i]);
                match a.method {
                    Method::MinMax => reference::quantize(x, l, c, s, m),
                    Method::Search => reference::search_quantize(x, l, None, c, s, m),
                }
                .unwrap();
            }
        } else {
            let mut items: Vec<QuantizeItem> = t
                .inputs
                .iter()
                .zip(&mut t.codes)
                .zip(t.scales.iter_mut().zip(&mut t.mins))
                .map(|((x, c), (s, m))| QuantizeItem {
                    input: T::values(x),
                    layout: t.layout,
                    codes: c,
                    scales: s,
                    mins: m,
                    importance: None,
                })
                .collect();
            quantize_batch(black_box(&mut items), a.threads).unwrap();
        }
        black_box(&mut t.codes);
        start.elapsed().as_secs_f64()
    };
    let dequantize_once = |t: &mut Tensors<T>| {
        let start = Instant::now();
        if a.reference {
            for i in 0..count {
                reference::dequantize(&t.codes[i], &t.scales[i], &t.mins[i], &t.layout, &mut t.outputs[i]).unwrap();
            }
        } else {
            let mut items: Vec<DequantizeItem> = t
                .codes
                .iter()
                .zip(t.scales.iter().zip(&t.mins))
                .zip(&mut t.outputs)
                .map(|((c, (s, m)), y)| DequantizeItem {
                    codes: c,
                    scales: s,
                    mins: m,
                    layout: t.layout,
                    output: T::values_mut(y),
                })
                .collect();
            dequantize_batch(black_box(&mut items), a.threads).unwrap();
        }
        black_box(&mut t.outputs);
        start.elapsed().as_secs_f64()
    };
    // memcpy: the input bytes of every tensor into a buffer of the same size.
    let src: Vec<u8> = t.inputs.iter().flat_map(|x| as_bytes(x).iter().copied()).collect();
    let mut dst = vec![0u8; src.len()];
    let memcpy_once = |dst: &mut Vec<u8>| {
        let start = Instant::now();
        parallel_copy(black_box(&src), dst, if a.reference { 1 } else { threads });
        black_box(&mut *dst);
        start.elapsed().as_secs_f64()
    };

    quantize_once(&mut t);
    dequantize_once(&mut t);
    memcpy_once(&mut dst);
    let (mut q, mut d, mut m) = (vec![], vec![], vec![]);
    for _ in 0..a.repeats {
        q.push(quantize_once(&mut t));
        d.push(dequantize_once(&mut t));
        m.push(memcpy_once(&mut dst));
    }
    let (q, d, m) = (median(q), median(d), median(m));
    let gbps = |s: f64| bytes as f64 / s / 1e9;
    format!(
        concat!(
            "{{\"scenario\": \"{}\", \"kernel\": \"{}\", \"method\": \"{}\", \"isa\": \"{:?}\", \"dtype\": \"{}\", \"bits\": {}, ",
            "\"group_size\": {}, \"tensors\": {}, \"shape\": [{}, {}], \"threads\": {}, \"threads_resolved\": {}, ",
            "\"repeats\": {}, \"input_bytes\": {}, \"quantize_s\": {:.6e}, \"dequantize_s\": {:.6e}, ",
            "\"memcpy_s\": {:.6e}, \"quantize_gbps\": {:.3}, \"dequantize_gbps\": {:.3}, \"memcpy_gbps\": {:.3}, ",
            "\"quantize_over_memcpy\": {:.3}, \"dequantize_over_memcpy\": {:.3}}}"
        ),
        a.scenario,
        if a.reference { "reference" } else { "fast" },
        if a.method == Method::Search { "search" } else { "minmax" },
        if a.reference { Isa::Portable } else { Isa::detect() },
        a.dtype,
        a.bits,
        g,
        count,
        rows,
        cols,
        a.threads,
        if a.reference { 1 } else { threads },
        a.repeats,
        bytes,
        q,
        d,
        m,
        gbps(q),
        gbps(d),
        gbps(m),
        q / m,
        d / m,
    )
}

fn as_bytes<T: Element>(x: &[T]) -> &[u8] {
    // SAFETY: f32, f16 and bf16 are plain data without padding.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

fn main() {
    let a = parse_args();
    let (count, rows, cols) = match a.scenario.as_str() {
        "S1" => (1, 1024, 1024),
        "S2" => (100, 1024, 1024),
        "S3" => (1000, 32, 128),
        "S4" => (1, 4096, 4096),
        other => usage(&format!("unknown scenario {other}")),
    };
    let json = match a.dtype.as_str() {
        "float32" => run::<f32>(&a, count, rows, cols),
        "float16" => run::<f16>(&a, count, rows, cols),
        _ => run::<bf16>(&a, count, rows, cols),
    };
    println!("{json}");
}
