//! llama.cpp's GGML block formats, bit-identical to ggml's C reference
//! (`ggml_quantize_chunk` and `dequantize_row_*` of llama.cpp as shipped in
//! llama-cpp-python 0.3.36; the tests compare against that C code).
//!
//! [`types`] is the table of types, [`search`] the shared scalar helpers
//! (`nearest_int`, `make_qx_quants`, ...), `lanes` the same scale searches
//! run on 16 sub-blocks at once (one per vector lane, bit for bit the
//! scalar ones, which stay as the tests' reference), [`legacy`],
//! [`kquants`] and [`iq4`] the per-type rows. This module validates a whole call first
//! (shape, values, importance matrix) and only then writes, rows in
//! parallel: every row is computed by the same code on whichever thread, so
//! the bytes do not depend on the thread count. The values are checked by
//! the threads, piece by piece, in a first pass that for Q4_0..Q8_0 also
//! computes the block statistics the second pass writes from.

pub mod iq4;
pub mod kquants;
pub(crate) mod lanes;
pub mod legacy;
pub mod search;
pub mod types;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use crate::batch::{self, locked, BatchError};
use crate::element::{Values, ValuesMut};
use crate::error::{Error, PqStatus, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernel::fast::F16c;
use crate::kernel::fast::{isa_dispatch, HalfCvt, Lane, Soft};
use crate::kernel::Isa;
pub use types::{GgmlType, TypeInfo, TYPES};

type QuantizeRow = fn(&[f32], Option<&[f32]>, &mut [u8]);
type DequantizeRow = fn(&[u8], &mut [f32]);

/// Input bytes per thread below which no thread is added (spawning costs
/// tens of microseconds; a Q8_0 row of 4096 values takes about as long).
/// Bytes of the types that search for scales count [`search_weight`] times.
const MIN_BYTES_PER_THREAD: usize = 256 * 1024;

/// How much more work a byte of input is for `ty` than for a plain
/// conversion: the K-quants, IQ4 and the imatrix paths of Q4_0..Q5_1 search
/// many scales per block (measured 200-1000 MB/s on one thread, in lanes,
/// against 2-3 GB/s), so they get threads for 8x smaller tensors.
fn search_weight(ty: GgmlType, imatrix: bool) -> usize {
    use GgmlType::*;
    match ty {
        F32 | F16 | Bf16 | Q8_0 => 1,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 if !imatrix => 1,
        _ => 8,
    }
}

fn quantize_f32(x: &[f32], _: Option<&[f32]>, out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

fn quantize_f16(x: &[f32], _: Option<&[f32]>, out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&search::fp32_to_fp16(*v).to_le_bytes());
    }
}

fn quantize_bf16(x: &[f32], _: Option<&[f32]>, out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&search::fp32_to_bf16(*v).to_le_bytes());
    }
}

fn dequantize_f32(b: &[u8], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    }
}

fn dequantize_f16(b: &[u8], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(b.chunks_exact(2)) {
        *o = search::fp16_to_fp32(u16::from_le_bytes([v[0], v[1]]));
    }
}

fn dequantize_bf16(b: &[u8], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(b.chunks_exact(2)) {
        *o = search::bf16_to_fp32(u16::from_le_bytes([v[0], v[1]]));
    }
}

/// The row kernels of a type.
fn kernels(ty: GgmlType) -> (QuantizeRow, DequantizeRow) {
    use GgmlType::*;
    match ty {
        F32 => (quantize_f32, dequantize_f32),
        F16 => (quantize_f16, dequantize_f16),
        Bf16 => (quantize_bf16, dequantize_bf16),
        Q4_0 => (legacy::quantize_q4_0, legacy::dequantize_q4_0),
        Q4_1 => (legacy::quantize_q4_1, legacy::dequantize_q4_1),
        Q5_0 => (legacy::quantize_q5_0, legacy::dequantize_q5_0),
        Q5_1 => (legacy::quantize_q5_1, legacy::dequantize_q5_1),
        Q8_0 => (legacy::quantize_q8_0, legacy::dequantize_q8_0),
        Q2K => (kquants::quantize_q2_k, kquants::dequantize_q2_k),
        Q3K => (kquants::quantize_q3_k, kquants::dequantize_q3_k),
        Q4K => (kquants::quantize_q4_k, kquants::dequantize_q4_k),
        Q5K => (kquants::quantize_q5_k, kquants::dequantize_q5_k),
        Q6K => (kquants::quantize_q6_k, kquants::dequantize_q6_k),
        Iq4Nl => (iq4::quantize_iq4_nl, iq4::dequantize_iq4_nl),
        Iq4Xs => (iq4::quantize_iq4_xs, iq4::dequantize_iq4_xs),
    }
}

/// Rows and bytes of `n_values` values of type `ty` in rows of `row_len`:
/// `(rows, bytes per row)`, checking every shape rule.
pub fn shape(ty: GgmlType, n_values: usize, row_len: usize) -> Result<(usize, usize)> {
    let row_bytes = ty.row_bytes(row_len)?;
    if !n_values.is_multiple_of(row_len) {
        return Err(Error::new(
            PqStatus::ShapeMismatch,
            format!("{n_values} values do not split into rows of {row_len}"),
        ));
    }
    let rows = n_values / row_len;
    rows.checked_mul(row_bytes)
        .ok_or_else(|| Error::new(PqStatus::SizeOverflow, format!("{rows} rows of {row_bytes} bytes overflow")))?;
    Ok((rows, row_bytes))
}

/// Bytes of `n_values` values quantized to `ty` in rows of `row_len`.
pub fn quantized_len(ty: GgmlType, n_values: usize, row_len: usize) -> Result<usize> {
    let (rows, row_bytes) = shape(ty, n_values, row_len)?;
    Ok(rows * row_bytes)
}

/// Checks an importance matrix: one finite, non-negative weight per column.
pub fn check_imatrix(ty: GgmlType, imatrix: Option<&[f32]>, row_len: usize) -> Result<()> {
    let Some(w) = imatrix else {
        if ty.info().needs_imatrix {
            return Err(Error::new(PqStatus::InvalidImatrix, format!("{} needs an importance matrix", ty.name())));
        }
        return Ok(());
    };
    check_weights(w, row_len)
}

/// Checks per-column importance weights (an imatrix, for the GGML types and
/// for pyquant's own `search` method): one finite, non-negative weight per
/// column.
pub fn check_weights(w: &[f32], row_len: usize) -> Result<()> {
    if w.len() != row_len {
        return Err(Error::new(
            PqStatus::InvalidImatrix,
            format!("imatrix has {} entries; it needs one per column ({row_len})", w.len()),
        ));
    }
    if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
        return Err(Error::new(
            PqStatus::InvalidImatrix,
            format!("imatrix entry {i} is {v}; entries must be finite and non-negative"),
        ));
    }
    Ok(())
}

/// The first non-finite value of `s` and its index. A branch-free test
/// per chunk (it vectorizes); only a chunk that fails is searched.
#[inline(always)]
fn first_bad_impl<T: Lane, H: HalfCvt>(s: &[T]) -> Option<(usize, f32)> {
    const CHUNK: usize = 256;
    s.chunks(CHUNK).enumerate().find_map(
        #[inline(always)]
        |(c, chunk)| {
            // A count, not `fold(true, ok & is_finite)`: valgrind ran that
            // loop's AVX2 code wrong (a NaN passed; correct on the CPU).
            if chunk.iter().map(|v| u32::from(!v.widen::<H>().is_finite())).sum::<u32>() == 0 {
                return None;
            }
            let (i, v) = chunk.iter().map(|v| v.widen::<H>()).enumerate().find(|(_, v)| !v.is_finite())?;
            Some((c * CHUNK + i, v))
        },
    )
}

// Checked with the CPU's widest vectors (and F16C for f16): at SSE width
// the check cost a third of Q4_0's time.
isa_dispatch!(fn first_bad<T>(s: &[T]) -> Option<(usize, f32)> = first_bad_impl);

/// `out[i] = x[i]` as f32 (exact).
#[inline(always)]
fn widen_impl<T: Lane, H: HalfCvt>(x: &[T], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.widen::<H>();
    }
}

// f16 / bf16 rows are widened at the dispatched ISA's width: converted one
// value at a time, f16 input ran at a tenth of f32's speed.
isa_dispatch!(fn widen<T>(x: &[T], out: &mut [f32]) -> () = widen_impl);

/// The first non-finite value of `input` and its index.
fn first_bad_value(isa: Isa, input: Values<'_>) -> Option<(usize, f32)> {
    match input {
        Values::F32(s) => first_bad(isa, s),
        Values::F16(s) => first_bad(isa, s),
        Values::BF16(s) => first_bad(isa, s),
    }
}

fn non_finite(i: usize, v: f32) -> Error {
    Error::new(PqStatus::NonFinite, format!("input value {i} is {v}; GGML types need finite values"))
}

fn check_finite(input: Values<'_>) -> Result<()> {
    first_bad_value(Isa::detect(), input).map_or(Ok(()), |(i, v)| Err(non_finite(i, v)))
}

/// Rows per piece of work for rows of `row_bytes` input bytes: pieces of
/// about `PIECE_BYTES`, whole rows.
fn rows_per_piece(row_bytes: usize) -> usize {
    (PIECE_BYTES / row_bytes.max(1)).max(1)
}

/// Input bytes per piece that a thread claims at a time: small enough to
/// balance threads that start late, large enough that claiming costs nothing.
const PIECE_BYTES: usize = 64 * 1024;

/// A piece of a batch: `check` (the first pass: its values) and `run`
/// (the second: it writes).
trait Piece: Send {
    fn check(&mut self) -> std::result::Result<(), BatchError> {
        Ok(())
    }
    fn run(self);
}

/// Runs [`Piece::check`] on every piece, then, if none failed,
/// [`Piece::run`] on every piece, on the calling thread and up to
/// `threads` - 1 more (0 = one per core, see [`batch::thread_count`]; at
/// most one per piece) that claim pieces in order. Each piece is computed
/// by the same code whoever claims it, and the error is the first failing
/// piece's, so neither depends on the threads.
fn run_pieces<P: Piece>(mut pieces: Vec<P>, threads: usize, bytes: usize) -> std::result::Result<(), BatchError> {
    let (known, cap) = batch::thread_count(threads, bytes, MIN_BYTES_PER_THREAD);
    let cap = cap.min(pieces.len());
    let known = known.map(|k| k.min(cap));
    if cap <= 1 || known == Some(1) {
        pieces.iter_mut().try_for_each(P::check)?;
        pieces.into_iter().for_each(P::run);
        return Ok(());
    }
    let n = pieces.len();
    let slots: Vec<Mutex<Option<P>>> = pieces.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let (to_check, to_run) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let checked = Checked { count: AtomicUsize::new(0), stop: AtomicBool::new(false) };
    let failure = Mutex::new(None::<(usize, BatchError)>);
    batch::participate_on(known, cap, &|| {
        loop {
            let k = to_check.fetch_add(1, Ordering::SeqCst);
            if k >= n {
                break;
            }
            let _done = CheckedOne(&checked);
            if let Err(e) = locked(&slots[k]).as_mut().expect("checked once").check() {
                let mut slot = locked(&failure);
                if slot.as_ref().is_none_or(|(first, _)| k < *first) {
                    *slot = Some((k, e));
                }
                checked.stop.store(true, Ordering::SeqCst);
            }
        }
        // The second pass waits for the first to end on every thread. A
        // piece takes microseconds: yielding, not sleeping on a condition
        // variable (waking a thread can take longer than a piece).
        while checked.count.load(Ordering::SeqCst) < n {
            thread::yield_now();
        }
        while !checked.stop.load(Ordering::SeqCst) {
            let k = to_run.fetch_add(1, Ordering::SeqCst);
            if k >= n {
                break;
            }
            let piece = locked(&slots[k]).take().expect("run once");
            piece.run();
        }
    });
    match failure.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// How many pieces the first pass has done; `stop`: a piece failed or
/// panicked, the second pass writes nothing.
struct Checked {
    count: AtomicUsize,
    stop: AtomicBool,
}

/// Counts a piece as checked when dropped, also when its check panicked
/// (the other threads must not wait forever; the panic then propagates
/// from the scope).
struct CheckedOne<'a>(&'a Checked);

impl Drop for CheckedOne<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stop.store(true, Ordering::SeqCst);
        }
        self.0.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// One tensor of a [`quantize_batch`] call.
#[derive(Debug)]
pub struct GgmlQuantizeItem<'a> {
    pub ty: GgmlType,
    pub input: Values<'a>,
    pub row_len: usize,
    /// One non-negative weight per column, or `None`.
    pub imatrix: Option<&'a [f32]>,
    /// At least [`quantized_len`] bytes; only that prefix is written.
    pub output: &'a mut [u8],
}

impl GgmlQuantizeItem<'_> {
    /// The checks of the item's lengths and imatrix (its values are
    /// checked by its pieces).
    fn check(&self) -> Result<(usize, usize)> {
        let (rows, row_bytes) = shape(self.ty, self.input.len(), self.row_len)?;
        let needed = rows * row_bytes;
        if self.output.len() < needed {
            return Err(Error::new(
                PqStatus::BufferTooSmall,
                format!(
                    "output has {} bytes; {} values of {} need {needed}",
                    self.output.len(),
                    self.input.len(),
                    self.ty.name()
                ),
            ));
        }
        check_imatrix(self.ty, self.imatrix, self.row_len)?;
        Ok((rows, row_bytes))
    }

    /// Whether the item is quantized in two passes through
    /// [`legacy::Stat`]s: Q4_0..Q8_0, f32 input, no importance matrix.
    fn has_stats(&self) -> bool {
        legacy::has_block_stats(self.ty) && self.imatrix.is_none() && matches!(self.input, Values::F32(_))
    }
}

/// Rows of one item to quantize on one thread.
struct QuantizePiece<'a> {
    ty: GgmlType,
    /// The item's index and that of the piece's first value in its input.
    item: usize,
    first: usize,
    input: Values<'a>,
    row_len: usize,
    row_bytes: usize,
    imatrix: Option<&'a [f32]>,
    output: &'a mut [u8],
    /// One per block when the item [`GgmlQuantizeItem::has_stats`], else empty.
    stats: &'a mut [legacy::Stat],
}

impl Piece for QuantizePiece<'_> {
    /// Finds the piece's first non-finite value: for an item with
    /// statistics, only if they see one.
    fn check(&mut self) -> std::result::Result<(), BatchError> {
        let isa = Isa::detect();
        let bad = match self.input {
            Values::F32(x) if !self.stats.is_empty() => {
                if legacy::block_stats(isa, self.ty, x, self.stats) {
                    None
                } else {
                    first_bad(isa, x)
                }
            }
            input => first_bad_value(isa, input),
        };
        bad.map_or(Ok(()), |(i, v)| Err(BatchError::at(self.item, non_finite(self.first + i, v))))
    }

    fn run(self) {
        if let (Values::F32(x), false) = (self.input, self.stats.is_empty()) {
            legacy::write_blocks(Isa::detect(), self.ty, x, self.stats, self.output);
            return;
        }
        fn rows<T: crate::Element + Lane>(x: &[T], p: QuantizePiece<'_>) {
            // Without an importance matrix a row is only its blocks, each
            // quantized on its own, so rows go to the kernel many at a time:
            // float32 all at once, f16 / bf16 widened about `WIDEN` values
            // at a time (Q3_K pools work across super-blocks: longer calls
            // are faster). With one, the quant weights are per row.
            const WIDEN: usize = 1 << 14;
            let quantize_row = kernels(p.ty).0;
            let per = if p.imatrix.is_some() { 1 } else { (WIDEN / p.row_len).max(1) };
            if p.imatrix.is_none() {
                if let Values::F32(all) = T::values(x) {
                    quantize_row(all, None, p.output);
                    return;
                }
            }
            let isa = Isa::detect();
            let n = x.len().min(per * p.row_len);
            let mut buf = vec![0f32; n]; // f16 / bf16 rows widened here
            let out_rows = p.output.chunks_mut(per * p.row_bytes);
            for (xr, or) in x.chunks(per * p.row_len).zip(out_rows) {
                let row = match T::values(xr) {
                    Values::F32(r) => r,
                    _ => {
                        widen(isa, xr, &mut buf[..xr.len()]);
                        &buf[..xr.len()]
                    }
                };
                quantize_row(row, p.imatrix, or);
            }
        }
        match self.input {
            Values::F32(s) => rows(s, self),
            Values::F16(s) => rows(s, self),
            Values::BF16(s) => rows(s, self),
        }
    }
}

/// Quantizes many tensors of mixed GGML types and dtypes in one call on up
/// to `threads` threads (0 = all cores): large tensors are split by rows,
/// small ones spread over the threads. All or nothing: every item is checked
/// (in item order) before any output is written; the error names the item.
pub fn quantize_batch(items: &mut [GgmlQuantizeItem<'_>], threads: usize) -> std::result::Result<(), BatchError> {
    let blocks = |item: &GgmlQuantizeItem<'_>| if item.has_stats() { item.input.len() / legacy::QK } else { 0 };
    let mut stats = vec![[0f32; 2]; items.iter().map(blocks).sum()];
    let mut stats = &mut stats[..];
    let check = |item: &GgmlQuantizeItem<'_>| item.check();
    let values = |item: &GgmlQuantizeItem<'_>| check_finite(item.input);
    run_batch(items, threads, check, values, |i, item, (rows, row_bytes), pieces| {
        // Saturating: with zero rows the row length may be anything.
        let in_row_bytes = item.row_len.saturating_mul(item.input.dtype().size());
        let per = rows_per_piece(in_row_bytes);
        let (mut input, mut output) = (item.input, &mut std::mem::take(&mut item.output)[..rows * row_bytes]);
        let mut item_stats = std::mem::take(&mut stats).split_at_mut(blocks(item));
        stats = item_stats.1;
        let mut first = 0;
        while !input.is_empty() {
            let take = input.len().min(per * item.row_len);
            let (now, rest) = input.split_at(take);
            let (out_now, out_rest) = std::mem::take(&mut output).split_at_mut(take / item.row_len * row_bytes);
            let (stats_now, stats_rest) =
                std::mem::take(&mut item_stats.0).split_at_mut(if item.has_stats() { take / legacy::QK } else { 0 });
            pieces.push(QuantizePiece {
                ty: item.ty,
                item: i,
                first,
                input: now,
                row_len: item.row_len,
                row_bytes,
                imatrix: item.imatrix,
                output: out_now,
                stats: stats_now,
            });
            (input, output, item_stats.0, first) = (rest, out_rest, stats_rest, first + take);
        }
        rows * in_row_bytes * search_weight(item.ty, item.imatrix.is_some())
    })
}

/// The shared body of the batch calls: `check` every item's lengths (in
/// order; the first error names its item), `cut` each (`(index, item,
/// shape, pieces)`) into pieces of whole rows (returning its bytes of
/// work), then [`run_pieces`]. The pieces check the values; only when an
/// item fails `check` are the items before it checked here with `values`,
/// so that the error is the first in item order.
fn run_batch<I, P: Piece>(
    items: &mut [I],
    threads: usize,
    check: impl Fn(&I) -> Result<(usize, usize)>,
    values: impl Fn(&I) -> Result<()>,
    mut cut: impl FnMut(usize, &mut I, (usize, usize), &mut Vec<P>) -> usize,
) -> std::result::Result<(), BatchError> {
    let mut shapes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match check(item) {
            Ok(shape) => shapes.push(shape),
            Err(e) => {
                let earlier = items[..i].iter().enumerate().find_map(|(j, item)| Some((j, values(item).err()?)));
                let (j, e) = earlier.unwrap_or((i, e));
                return Err(BatchError::at(j, e));
            }
        }
    }
    let mut pieces = Vec::new();
    let mut bytes = 0;
    for (i, (item, shape)) in items.iter_mut().zip(shapes).enumerate() {
        bytes += cut(i, item, shape, &mut pieces);
    }
    run_pieces(pieces, threads, bytes)
}

/// Quantizes `input` (rows of `row_len` values) to `ty` into the first
/// [`quantized_len`] bytes of `out`, with `imatrix` (one weight per column)
/// if given, on up to `threads` threads (0 = all cores): a batch of one.
/// Same bytes as ggml's `ggml_quantize_chunk` for every thread count.
/// Checks everything first; on error `out` is untouched.
pub fn quantize(
    ty: GgmlType,
    input: Values<'_>,
    row_len: usize,
    imatrix: Option<&[f32]>,
    threads: usize,
    out: &mut [u8],
) -> Result<()> {
    let item = GgmlQuantizeItem { ty, input, row_len, imatrix, output: out };
    quantize_batch(&mut [item], threads).map_err(|e| e.error)
}

/// One tensor of a [`dequantize_batch`] call.
#[derive(Debug)]
pub struct GgmlDequantizeItem<'a> {
    pub ty: GgmlType,
    /// Exactly [`quantized_len`] bytes for `output.len()` values.
    pub input: &'a [u8],
    pub row_len: usize,
    pub output: ValuesMut<'a>,
}

impl GgmlDequantizeItem<'_> {
    fn check(&self) -> Result<(usize, usize)> {
        let n = self.output.len();
        let (rows, row_bytes) = shape(self.ty, n, self.row_len)?;
        if self.input.len() != rows * row_bytes {
            return Err(Error::new(
                PqStatus::BufferTooSmall,
                format!(
                    "input has {} bytes; {n} values of {} need {}",
                    self.input.len(),
                    self.ty.name(),
                    rows * row_bytes
                ),
            ));
        }
        Ok((rows, row_bytes))
    }
}

/// Rows of one item to dequantize on one thread.
struct DequantizePiece<'a> {
    dequantize_row: DequantizeRow,
    input: &'a [u8],
    row_len: usize,
    row_bytes: usize,
    output: ValuesMut<'a>,
}

impl Piece for DequantizePiece<'_> {
    fn run(self) {
        fn rows<T: crate::Element>(out: &mut [T], p: &DequantizePiece<'_>) {
            let mut buf = vec![0f32; p.row_len];
            let in_rows = p.input.chunks_exact(p.row_bytes);
            for (br, or) in in_rows.zip(out.chunks_exact_mut(p.row_len)) {
                (p.dequantize_row)(br, &mut buf);
                for (o, v) in or.iter_mut().zip(&buf) {
                    *o = T::from_f32(*v);
                }
            }
        }
        let mut p = self;
        match std::mem::replace(&mut p.output, ValuesMut::F32(&mut [])) {
            ValuesMut::F32(s) => rows(s, &p),
            ValuesMut::F16(s) => rows(s, &p),
            ValuesMut::BF16(s) => rows(s, &p),
        }
    }
}

/// Dequantizes many tensors of mixed GGML types into mixed dtypes in one
/// call, as ggml's `dequantize_row_*` (f32; rounded to nearest-even for
/// f16 / bf16 outputs), on up to `threads` threads. All or nothing: every
/// item's lengths are checked before any output is written.
pub fn dequantize_batch(items: &mut [GgmlDequantizeItem<'_>], threads: usize) -> std::result::Result<(), BatchError> {
    let check = |item: &GgmlDequantizeItem<'_>| item.check();
    run_batch(
        items,
        threads,
        check,
        |_| Ok(()),
        |_, item, (rows, row_bytes), pieces| {
            let out_row_bytes = item.row_len.saturating_mul(4); // f32 rows are the work
            let per = rows_per_piece(out_row_bytes);
            let mut input = item.input;
            let mut output = std::mem::replace(&mut item.output, ValuesMut::F32(&mut []));
            while !input.is_empty() {
                let take = input.len().min(per * row_bytes);
                let (now, rest) = input.split_at(take);
                let (out_now, out_rest) = output.split_at(take / row_bytes * item.row_len);
                pieces.push(DequantizePiece {
                    dequantize_row: kernels(item.ty).1,
                    input: now,
                    row_len: item.row_len,
                    row_bytes,
                    output: out_now,
                });
                (input, output) = (rest, out_rest);
            }
            rows * out_row_bytes
        },
    )
}

/// Dequantizes `input` (exactly [`quantized_len`] bytes of type `ty` for
/// `output.len()` values in rows of `row_len`) into `output`: a batch of one.
pub fn dequantize(ty: GgmlType, input: &[u8], row_len: usize, output: ValuesMut<'_>, threads: usize) -> Result<()> {
    let item = GgmlDequantizeItem { ty, input, row_len, output };
    dequantize_batch(&mut [item], threads).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic values in [-2, 2) without a rand crate.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 22) as f32 - 2.0
            })
            .collect()
    }

    fn run(ty: GgmlType, x: &[f32], row_len: usize, imatrix: Option<&[f32]>, threads: usize) -> Result<Vec<u8>> {
        let mut out = vec![0xAB; quantized_len(ty, x.len(), row_len)?];
        quantize(ty, Values::F32(x), row_len, imatrix, threads, &mut out)?;
        Ok(out)
    }

    #[test]
    fn every_thread_count_writes_the_same_bytes() {
        let (rows, row_len) = (160, 4096); // 2.5 MiB: several threads' worth
        let x = data(rows * row_len, 1);
        let w: Vec<f32> = data(row_len, 2).iter().map(|v| v.abs()).collect();
        for info in TYPES {
            let one = run(info.ty, &x, row_len, Some(&w), 1).unwrap();
            for threads in [2, 3, 7, 0] {
                assert!(one == run(info.ty, &x, row_len, Some(&w), threads).unwrap(), "{}", info.ty.name());
            }
        }
    }

    #[test]
    fn half_inputs_are_widened_exactly() {
        let x: Vec<f16> = data(512, 3).iter().map(|&v| f16::from_f32(v)).collect();
        let wide: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        for info in TYPES {
            let mut out = vec![0; quantized_len(info.ty, 512, 256).unwrap()];
            quantize(info.ty, Values::F16(&x), 256, None, 1, &mut out).unwrap();
            assert_eq!(out, run(info.ty, &wide, 256, None, 1).unwrap(), "{}", info.ty.name());
        }
    }

    #[test]
    fn dequantize_inverts_plain_conversions_and_checks_lengths() {
        let x = data(512, 4);
        for ty in [GgmlType::F32, GgmlType::Bf16, GgmlType::Q8_0] {
            let q = run(ty, &x, 256, None, 1).unwrap();
            let mut back = vec![0f32; 512];
            dequantize(ty, &q, 256, ValuesMut::F32(&mut back), 2).unwrap();
            let tol = if ty == GgmlType::F32 { 0.0 } else { 0.02 };
            assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() <= tol), "{}", ty.name());
            let e = dequantize(ty, &q[1..], 256, ValuesMut::F32(&mut back), 1).unwrap_err();
            assert_eq!(e.status, PqStatus::BufferTooSmall);
        }
    }

    #[test]
    fn the_finite_check_finds_the_first_bad_value_on_every_isa() {
        for &isa in super::lanes::isas() {
            for at in [0, 7, 255, 256, 700, 999] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut x = data(1000, at as u32);
                    x[at] = bad;
                    if at + 40 < x.len() {
                        x[at + 40] = f32::NAN; // a later one is not reported
                    }
                    let got = first_bad(isa, &x).map(|(i, v)| (i, v.to_bits()));
                    assert_eq!(got, Some((at, bad.to_bits())), "{isa:?} {at}");
                }
            }
            assert_eq!(first_bad(isa, &data(1000, 1)), None);
        }
    }

    #[test]
    fn every_f16_and_bf16_value_is_widened_and_checked_exactly_on_every_isa() {
        let h: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let b: Vec<half::bf16> = (0..=u16::MAX).map(half::bf16::from_bits).collect();
        let first_nan_or_inf = |v: &[f32]| v.iter().position(|x| !x.is_finite());
        // NaN payloads may differ (a NaN is refused before any row is widened).
        let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for &isa in super::lanes::isas() {
            let mut out = vec![0f32; h.len()];
            widen(isa, &h, &mut out);
            let want: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            assert!(out.iter().zip(&want).all(|(a, b)| same(a, b)), "f16 {isa:?}");
            assert_eq!(first_bad(isa, &h).map(|(i, _)| i), first_nan_or_inf(&want), "f16 {isa:?}");
            widen(isa, &b, &mut out);
            let want: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            assert!(out.iter().zip(&want).all(|(a, b)| same(a, b)), "bf16 {isa:?}");
            assert_eq!(first_bad(isa, &b).map(|(i, _)| i), first_nan_or_inf(&want), "bf16 {isa:?}");
        }
    }

    #[test]
    fn the_first_bad_value_is_reported_for_every_thread_count_and_nothing_is_written() {
        let (rows, row_len) = (160, 4096); // 40 pieces of 64 KiB
        let mut x = data(rows * row_len, 6);
        x[30 * 16384 + 77] = f32::NAN;
        x[20 * 16384 + 5] = f32::NEG_INFINITY; // the first, in a later-claimed piece
        x[20 * 16384 + 9] = f32::NAN;
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::F16] {
            for threads in [1, 2, 3, 0] {
                let mut out = vec![0xAB; quantized_len(ty, x.len(), row_len).unwrap()];
                let e = quantize(ty, Values::F32(&x), row_len, None, threads, &mut out).unwrap_err();
                let want = format!("input value {} is -inf", 20 * 16384 + 5);
                assert!(e.message.contains(&want), "{} {threads}: {}", ty.name(), e.message);
                assert!(out.iter().all(|&b| b == 0xAB), "{} {threads}", ty.name());
            }
        }
    }

    #[test]
    fn a_batch_reports_the_first_error_in_item_order() {
        let (good, mut bad) = (data(1024, 7), data(1024, 8));
        bad[700] = f32::INFINITY;
        let mut outs = vec![vec![0xAB; 1024 / 32 * 18]; 3];
        let run = |inputs: [&[f32]; 3], lens: [usize; 3], outs: &mut Vec<Vec<u8>>| {
            let mut items: Vec<GgmlQuantizeItem<'_>> = inputs
                .iter()
                .zip(lens)
                .zip(outs.iter_mut())
                .map(|((x, row_len), output)| GgmlQuantizeItem {
                    ty: GgmlType::Q4_0,
                    input: Values::F32(x),
                    row_len,
                    imatrix: None,
                    output,
                })
                .collect();
            let e = quantize_batch(&mut items, 2).unwrap_err();
            (e.item, e.error.status)
        };
        // A bad value before an item of the wrong shape, and after one.
        assert_eq!(run([&good, &bad, &good], [256, 256, 100], &mut outs), (Some(1), PqStatus::NonFinite));
        assert_eq!(run([&good, &good, &bad], [256, 100, 256], &mut outs), (Some(1), PqStatus::ShapeMismatch));
        assert_eq!(run([&good, &good, &bad], [256, 256, 256], &mut outs), (Some(2), PqStatus::NonFinite));
        assert!(outs.iter().flatten().all(|&b| b == 0xAB));
    }

    #[test]
    fn bad_inputs_are_refused_and_nothing_is_written() {
        let mut x = data(512, 5);
        let ty = GgmlType::Q4K;
        let mut out = vec![0xAB; 288];
        let status = |r: Result<()>| r.unwrap_err().status;
        assert_eq!(status(quantize(ty, Values::F32(&x), 128, None, 1, &mut out)), PqStatus::ShapeMismatch);
        assert_eq!(status(quantize(ty, Values::F32(&x), 256, None, 1, &mut out[..287])), PqStatus::BufferTooSmall);
        let short = [1.0f32; 255];
        assert_eq!(status(quantize(ty, Values::F32(&x), 256, Some(&short), 1, &mut out)), PqStatus::InvalidImatrix);
        let mut w = [1.0f32; 256];
        w[9] = -0.5;
        let e = quantize(ty, Values::F32(&x), 256, Some(&w), 1, &mut out).unwrap_err();
        assert_eq!((e.status, e.message.contains("entry 9 is -0.5")), (PqStatus::InvalidImatrix, true));
        x[300] = f32::NAN;
        let e = quantize(ty, Values::F32(&x), 256, None, 1, &mut out).unwrap_err();
        assert_eq!((e.status, e.message.contains("input value 300 is NaN")), (PqStatus::NonFinite, true));
        assert!(out.iter().all(|&b| b == 0xAB));
        assert_eq!(status(shape(ty, 512, 0).map(|_| ())), PqStatus::ShapeMismatch);
        assert_eq!(status(shape(ty, 500, 256).map(|_| ())), PqStatus::ShapeMismatch);
    }
}
