//! Batches of tensors and the threads that quantize them.
//!
//! A call takes any number of items (tensors with their own dtype, bits and
//! group size). Every item's lengths are checked first; then one pass over
//! the data validates each run of groups as it quantizes it (input values)
//! or just before it dequantizes it (scales and mins), so the input is read
//! once.
//!
//! Errors: the error returned is the first bad value in item and group
//! order, the same for every thread count. When it is returned the outputs
//! of the call may have been partly written (any group, of any item); no
//! other memory is touched. A length error is found before anything is
//! written.
//!
//! Threads: the groups of all items form one sequence, cut by bytes into
//! contiguous chunks of about 128 KiB (a large tensor is split, small ones
//! are grouped). Threads claim chunks in order from a counter. Dynamic
//! claiming rather than one fixed share per thread, because a newly spawned
//! thread may start tens of microseconds late or on the caller's CPU; with
//! claiming, whoever runs does the work and the calling thread alone always
//! finishes. Threads are scoped to the call (`std::thread::scope`); there is
//! no pool and no global state. Calls with less than 1 MiB of input
//! (quantize) or 4 MiB of output (dequantize) per thread run on the calling
//! thread alone. Tensors quantized with the search count 16 times their
//! bytes (it takes that much longer per byte), and are split only at
//! multiples of the 16 groups it searches at once. Every group is computed by the same code whatever the
//! partition, so results are identical for every thread count.

use std::any::Any;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::element::{Element, Values, ValuesMut};
use crate::error::{Error, PqStatus, Result};
use crate::kernel::transpose::transpose;
use crate::kernel::{fast, search, Isa};
use crate::layout::{check_len, Axis, Layout, Method};

#[cfg(test)]
mod oracle;

/// Input bytes per thread below which quantize does not add a thread:
/// spawning and waking one costs tens of microseconds.
pub(crate) const QUANTIZE_BYTES_PER_THREAD: usize = 1024 * 1024;
/// How many times more time the search takes per byte than min-max (about
/// 15-25x, measured): its pieces count that many times their bytes, so that
/// threads start for smaller tensors and chunks take about equal time.
const SEARCH_WORK: usize = 16;
/// Output bytes per thread below which dequantize does not add a thread
/// (dequantize does about three times less work per byte than quantize).
pub(crate) const DEQUANTIZE_BYTES_PER_THREAD: usize = 4 * 1024 * 1024;

/// One tensor to quantize: `input` laid out as `layout` (with its scheme),
/// into `codes`, `scales` and `mins` (which may be longer than needed; only
/// the prefix the layout names is written). `importance`: optional
/// per-column weights (one per `row_len` column) for `Method::Search`.
#[derive(Debug)]
pub struct QuantizeItem<'a> {
    pub input: Values<'a>,
    pub layout: Layout,
    pub codes: &'a mut [u8],
    pub scales: &'a mut [f32],
    pub mins: &'a mut [f32],
    pub importance: Option<&'a [f32]>,
}

/// One tensor to dequantize: `codes`, `scales`, `mins` (exact lengths) laid
/// out as `layout`, into `output` (at least `layout.len` values).
#[derive(Debug)]
pub struct DequantizeItem<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub mins: &'a [f32],
    pub layout: Layout,
    pub output: ValuesMut<'a>,
}

/// An error of a batch call: the error, and the index of the item it is
/// about (`None` when it is not about one item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    pub item: Option<usize>,
    pub error: Error,
}

impl BatchError {
    pub fn at(item: usize, error: Error) -> Self {
        BatchError { item: Some(item), error }
    }

    pub fn whole(error: Error) -> Self {
        BatchError { item: None, error }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.item {
            Some(i) => write!(f, "item {i}: {}", self.error.message),
            None => f.write_str(&self.error.message),
        }
    }
}

impl std::error::Error for BatchError {}

impl From<Error> for BatchError {
    fn from(error: Error) -> Self {
        BatchError::whole(error)
    }
}

/// Quantizes `input` laid out as `layout` into `codes`, `scales` and `mins`,
/// on the calling thread: a batch of one (see [`quantize_batch`] for threads).
///
/// Errors name the first non-finite value or overflowing group range; the
/// outputs may then be partly written. Outputs may be longer than needed;
/// only the prefix the layout names is written. Same bytes as the scalar
/// reference (`kernel::reference`, the test oracle).
pub fn quantize<T: Element>(
    input: &[T],
    layout: &Layout,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    let item = QuantizeItem { input: T::values(input), layout: *layout, codes, scales, mins, importance: None };
    quantize_batch(&mut [item], 1).map_err(|e| e.error)
}

/// Dequantizes codes, scales and mins laid out as `layout` into `output`
/// (`mins + q * scales` in f32, then converted to `T`), on the calling thread.
///
/// Non-finite scales or mins are an error (the output may then be partly
/// written). Same bytes as the scalar reference.
pub fn dequantize<T: Element>(
    codes: &[u8],
    scales: &[f32],
    mins: &[f32],
    layout: &Layout,
    output: &mut [T],
) -> Result<()> {
    let item = DequantizeItem { codes, scales, mins, layout: *layout, output: T::values_mut(output) };
    dequantize_batch(&mut [item], 1).map_err(|e| e.error)
}

/// How a call is run; tests use other values than the default.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub isa: Isa,
    pub min_bytes_per_thread: usize,
}

impl Schedule {
    fn detect(min_bytes_per_thread: usize) -> Self {
        Schedule { isa: Isa::detect(), min_bytes_per_thread }
    }
}

/// Quantizes every item, with `threads` threads: 0 = all available cores,
/// 1 = only the calling thread, n = at most n threads (fewer for small work).
///
/// Lengths of all items are checked before any output is written; values are
/// checked as they are quantized. The error is the first in item and group
/// order, for every thread count; outputs may then be partly written.
pub fn quantize_batch(items: &mut [QuantizeItem<'_>], threads: usize) -> std::result::Result<(), BatchError> {
    quantize_batch_with(items, threads, Schedule::detect(QUANTIZE_BYTES_PER_THREAD))
}

/// Dequantizes every item, with `threads` as in [`quantize_batch`].
///
/// Errors as [`quantize_batch`]: lengths first, then scales and mins as
/// each run of groups is decoded.
pub fn dequantize_batch(items: &mut [DequantizeItem<'_>], threads: usize) -> std::result::Result<(), BatchError> {
    dequantize_batch_with(items, threads, Schedule::detect(DEQUANTIZE_BYTES_PER_THREAD))
}

pub(crate) fn quantize_batch_with(
    items: &mut [QuantizeItem<'_>],
    threads: usize,
    schedule: Schedule,
) -> std::result::Result<(), BatchError> {
    let mut pieces = Vec::with_capacity(items.len());
    for (i, item) in items.iter_mut().enumerate() {
        let l = item.layout;
        let at = |e| BatchError::at(i, e);
        check_len("input", item.input.len(), l.len, true).map_err(at)?;
        check_len("codes", item.codes.len(), l.codes_len, false).map_err(at)?;
        check_len("scales", item.scales.len(), l.n_groups, false).map_err(at)?;
        check_len("mins", item.mins.len(), l.n_groups, false).map_err(at)?;
        check_importance(&l, item.importance).map_err(at)?;
        if l.len > 0 {
            pieces.push(QuantizePiece {
                item: i,
                first_group: 0,
                layout: l,
                input: item.input,
                importance: item.importance,
                codes: &mut item.codes[..l.codes_len],
                scales: &mut item.scales[..l.n_groups],
                mins: &mut item.mins[..l.n_groups],
            });
        }
    }
    let isa = schedule.isa;
    run_pieces(pieces, threads, schedule.min_bytes_per_thread, |p| {
        let item = p.item;
        match (p.layout.axis, p.input) {
            (Axis::Last, input) => encode(isa, input, p.first_group, p),
            (Axis::First, Values::F32(x)) => encode_columns(isa, x, p),
            (Axis::First, Values::F16(x)) => encode_columns(isa, x, p),
            (Axis::First, Values::BF16(x)) => encode_columns(isa, x, p),
        }
        .map_err(|e| BatchError::at(item, e))
    })
}

/// Output rows an axis-0 tile gathers at a time: 64 f32 columns are four
/// cache lines of every input row, read on one visit to its page (rows a
/// power of two apart were a page and TLB miss each with 16; measured 2.4x
/// faster on 4096 x 4096 f32).
const TILE_ROWS: usize = 64;

/// Quantizes `input` (the piece's groups, contiguous) with the piece's method.
fn encode(isa: Isa, input: Values<'_>, first_group: usize, p: QuantizePiece<'_>) -> Result<()> {
    if p.layout.scheme.method == Method::MinMax {
        fast::encode(isa, input, &p.layout, first_group, p.codes, p.scales, p.mins)
    } else {
        search::encode(isa, input, &p.layout, first_group, p.importance, p.codes, p.scales, p.mins)
    }
}

/// An axis-0 piece: output row `c` is column `c` of the `row_len` x `rows()`
/// input `x`. A tile of columns at a time is copied into a small buffer and
/// quantized there by the same kernel, so no transposed copy of the whole
/// input is made and the bytes are those of the transpose.
fn encode_columns<T: Element>(isa: Isa, x: &[T], p: QuantizePiece<'_>) -> Result<()> {
    let l = p.layout;
    let (height, width) = (l.row_len, l.rows());
    let groups_per_row = height / l.group_size;
    let row_bytes = height * l.bits as usize / 8;
    let rows = p.scales.len() / groups_per_row;
    let first_row = p.first_group / groups_per_row;
    let mut buf = vec![x[0]; TILE_ROWS.min(rows) * height];
    for t0 in (0..rows).step_by(TILE_ROWS) {
        let t = TILE_ROWS.min(rows - t0);
        let c0 = first_row + t0;
        transpose(isa, (&x[c0..], width), (&mut buf, height), height, t);
        let (g0, g1) = (t0 * groups_per_row, (t0 + t) * groups_per_row);
        let tile = QuantizePiece {
            layout: l.first_rows(t),
            codes: &mut p.codes[t0 * row_bytes..(t0 + t) * row_bytes],
            scales: &mut p.scales[g0..g1],
            mins: &mut p.mins[g0..g1],
            ..p
        };
        encode(isa, T::values(&buf[..t * height]), c0 * groups_per_row, tile)?;
    }
    Ok(())
}

/// Importance weights are only used by the search, and need one finite,
/// non-negative weight per column.
fn check_importance(layout: &Layout, importance: Option<&[f32]>) -> Result<()> {
    let Some(w) = importance else { return Ok(()) };
    if layout.scheme.method != Method::Search {
        return Err(Error::new(PqStatus::InvalidScheme, "importance weights are only used by method search"));
    }
    crate::ggml::check_weights(w, layout.row_len)
}

pub(crate) fn dequantize_batch_with(
    items: &mut [DequantizeItem<'_>],
    threads: usize,
    schedule: Schedule,
) -> std::result::Result<(), BatchError> {
    let mut pieces = Vec::with_capacity(items.len());
    // An axis-0 piece reads every output row's scales, so an axis-0 item's
    // are all checked first; the first bad one ends the call after the
    // items before it.
    let mut bad_params = None;
    for (i, item) in items.iter_mut().enumerate() {
        let l = item.layout;
        let at = |e| BatchError::at(i, e);
        check_len("codes", item.codes.len(), l.codes_len, true).map_err(at)?;
        check_len("scales", item.scales.len(), l.n_groups, true).map_err(at)?;
        check_len("mins", item.mins.len(), l.n_groups, true).map_err(at)?;
        check_len("output", item.output.len(), l.len, false).map_err(at)?;
        if bad_params.is_none() && l.axis == Axis::First {
            bad_params = fast::check_params(item.scales, item.mins, 0).err().map(at);
        }
        if l.len > 0 && bad_params.is_none() {
            let output = std::mem::replace(&mut item.output, ValuesMut::F32(&mut []));
            let (output, rest) = output.split_at(l.len);
            item.output = rest;
            pieces.push(DequantizePiece {
                item: i,
                first_group: 0,
                layout: l,
                codes: item.codes,
                scales: item.scales,
                mins: item.mins,
                output,
            });
        }
    }
    let isa = schedule.isa;
    run_pieces(pieces, threads, schedule.min_bytes_per_thread, |mut p| {
        if p.layout.axis == Axis::First {
            match std::mem::replace(&mut p.output, ValuesMut::F32(&mut [])) {
                ValuesMut::F32(y) => decode_columns(isa, &p, y),
                ValuesMut::F16(y) => decode_columns(isa, &p, y),
                ValuesMut::BF16(y) => decode_columns(isa, &p, y),
            }
            return Ok(());
        }
        // Scales and mins are one pair per group: checking a piece's just
        // before decoding it reads them from cache.
        fast::check_params(p.scales, p.mins, p.first_group).map_err(|e| BatchError::at(p.item, e))?;
        fast::decode(isa, p.codes, p.scales, p.mins, &p.layout, p.output);
        Ok(())
    })?;
    bad_params.map_or(Ok(()), Err)
}

/// An axis-0 piece: `y` is a band of whole rows of the `row_len` x `rows()`
/// output, starting at group `first_group` of every quantized row. A tile of
/// quantized rows at a time is decoded into a small buffer, then written
/// into the band's columns.
fn decode_columns<T: Element>(isa: Isa, p: &DequantizePiece<'_>, y: &mut [T]) {
    let l = p.layout;
    let width = l.rows();
    let groups_per_row = l.row_len / l.group_size;
    let (height, row_bytes) = (y.len() / width, l.row_len * l.bits as usize / 8);
    let (g0, groups) = (p.first_group, height / l.group_size);
    let band = Layout { row_len: height, axis: Axis::Last, ..l }.first_rows(1);
    let mut buf = vec![T::from_f32(0.0); TILE_ROWS.min(width) * height];
    for c0 in (0..width).step_by(TILE_ROWS) {
        let t = TILE_ROWS.min(width - c0);
        for (k, out) in buf.chunks_exact_mut(height).take(t).enumerate() {
            let (c, gcb) = (c0 + k, l.group_code_bytes());
            let codes = &p.codes[c * row_bytes + g0 * gcb..][..groups * gcb];
            let params = c * groups_per_row + g0..c * groups_per_row + g0 + groups;
            fast::decode(isa, codes, &p.scales[params.clone()], &p.mins[params], &band, T::values_mut(out));
        }
        transpose(isa, (&buf, height), (&mut y[c0..], width), t, height);
    }
}

/// A run of whole split units of one item (a group, or with axis 0 an
/// output row of groups): the unit a thread works on.
trait Piece: Send + Sized {
    /// Split units in the piece.
    fn groups(&self) -> usize;
    /// Bytes of the tensor per split unit, the measure of work (weighted by
    /// [`SEARCH_WORK`] for the search).
    fn group_bytes(&self) -> usize;
    /// Pieces are best split at multiples of this many units.
    fn split_groups(&self) -> usize {
        1
    }
    /// The first `groups` groups and the rest.
    fn split(self, groups: usize) -> (Self, Self);
}

struct QuantizePiece<'a> {
    item: usize,
    first_group: usize,
    layout: Layout,
    input: Values<'a>,
    /// The whole tensor's per-column weights (not split with the piece).
    importance: Option<&'a [f32]>,
    codes: &'a mut [u8],
    scales: &'a mut [f32],
    mins: &'a mut [f32],
}

/// Groups a piece is split by: one, or with axis 0 a whole output row (an
/// axis-0 piece is a run of output rows and keeps the whole input).
fn split_unit(l: &Layout) -> usize {
    match l.axis {
        Axis::Last => 1,
        Axis::First => l.row_len / l.group_size,
    }
}

impl Piece for QuantizePiece<'_> {
    fn groups(&self) -> usize {
        self.scales.len() / split_unit(&self.layout)
    }

    fn group_bytes(&self) -> usize {
        let work = if self.layout.scheme.method == Method::Search { SEARCH_WORK } else { 1 };
        split_unit(&self.layout) * self.layout.group_size * self.input.dtype().size() * work
    }

    /// The search works on `LANES` groups at once: a split elsewhere leaves
    /// two part-filled runs of lanes (an axis-0 unit is a whole output row).
    fn split_groups(&self) -> usize {
        if self.layout.scheme.method == Method::Search && self.layout.axis == Axis::Last {
            search::LANES
        } else {
            1
        }
    }

    fn split(self, units: usize) -> (Self, Self) {
        let l = self.layout;
        let groups = units * split_unit(&l);
        let (input_a, input_b) = match l.axis {
            Axis::Last => self.input.split_at(groups * l.group_size),
            Axis::First => (self.input, self.input),
        };
        let (codes_a, codes_b) = self.codes.split_at_mut(groups * l.group_code_bytes());
        let (scales_a, scales_b) = self.scales.split_at_mut(groups);
        let (mins_a, mins_b) = self.mins.split_at_mut(groups);
        let a = QuantizePiece { input: input_a, codes: codes_a, scales: scales_a, mins: mins_a, ..self };
        let b = QuantizePiece {
            first_group: self.first_group + groups,
            input: input_b,
            codes: codes_b,
            scales: scales_b,
            mins: mins_b,
            ..self
        };
        (a, b)
    }
}

/// With axis 0, a band of whole output rows (a multiple of the group size):
/// `first_group` is its first group in every quantized row, and the codes,
/// scales and mins are the whole item's.
struct DequantizePiece<'a> {
    item: usize,
    first_group: usize,
    layout: Layout,
    codes: &'a [u8],
    scales: &'a [f32],
    mins: &'a [f32],
    output: ValuesMut<'a>,
}

impl DequantizePiece<'_> {
    /// Output values per unit of work: a group, or with axis 0 a group's
    /// height of whole output rows.
    fn unit_len(&self) -> usize {
        match self.layout.axis {
            Axis::Last => self.layout.group_size,
            Axis::First => self.layout.group_size * self.layout.rows(),
        }
    }
}

impl Piece for DequantizePiece<'_> {
    fn groups(&self) -> usize {
        self.output.len() / self.unit_len()
    }

    fn group_bytes(&self) -> usize {
        self.unit_len() * self.output.dtype().size()
    }

    fn split(self, groups: usize) -> (Self, Self) {
        let l = self.layout;
        let unit_len = self.unit_len();
        let (output_a, output_b) = self.output.split_at(groups * unit_len);
        let ((codes_a, codes_b), (scales_a, scales_b), (mins_a, mins_b)) = match l.axis {
            Axis::Last => (
                self.codes.split_at(groups * l.group_code_bytes()),
                self.scales.split_at(groups),
                self.mins.split_at(groups),
            ),
            Axis::First => ((self.codes, self.codes), (self.scales, self.scales), (self.mins, self.mins)),
        };
        let a = DequantizePiece { codes: codes_a, scales: scales_a, mins: mins_a, output: output_a, ..self };
        let b = DequantizePiece {
            first_group: self.first_group + groups,
            codes: codes_b,
            scales: scales_b,
            mins: mins_b,
            output: output_b,
            ..self
        };
        (a, b)
    }
}

/// How many threads `bytes` of work gets: `Some(n)`, or `None` for "as many
/// as there are cores, up to `cap`" (`threads == 0`), which is resolved off
/// the calling thread since `available_parallelism` can take tens of
/// microseconds (it reads cgroup files on Linux).
pub(crate) fn thread_count(requested: usize, bytes: usize, min_bytes_per_thread: usize) -> (Option<usize>, usize) {
    let by_size = bytes / min_bytes_per_thread.max(1);
    match requested {
        _ if by_size < 2 => (Some(1), 1),
        1 => (Some(1), 1),
        // Two threads at most: no need to count the cores.
        0 if by_size == 2 => (Some(2), 2),
        0 => (None, by_size),
        n => (Some(n.min(by_size)), n.min(by_size)),
    }
}

/// Cuts the sequence of pieces into `n` contiguous shares of about equal
/// bytes, splitting pieces at group boundaries. Shares keep the order of the
/// sequence; empty shares are dropped.
fn partition<P: Piece>(pieces: Vec<P>, n: usize, total: usize) -> Vec<Vec<P>> {
    let mut shares: Vec<Vec<P>> = (0..n).map(|_| Vec::new()).collect();
    // End of share `s` in bytes; u128 so that `total * n` cannot overflow.
    let end_of = |s: usize| (total as u128 * (s as u128 + 1) / n as u128) as usize;
    let mut share = 0;
    let mut pos = 0usize;
    for mut piece in pieces {
        loop {
            let unit = piece.group_bytes();
            let cost = piece.groups() * unit;
            let end = end_of(share);
            if share == n - 1 || pos + cost <= end {
                pos += cost;
                shares[share].push(piece);
                break;
            }
            let align = piece.split_groups();
            let fit = end.saturating_sub(pos) / unit / align * align;
            if fit > 0 {
                let (front, rest) = piece.split(fit);
                pos += fit * unit;
                shares[share].push(front);
                piece = rest;
            }
            share += 1;
        }
    }
    shares.retain(|s| !s.is_empty());
    shares
}

/// Runs `work` on every piece, on up to `threads` threads (see the module
/// documentation), stopping at the first error.
fn run_pieces<P, W>(
    pieces: Vec<P>,
    threads: usize,
    min_bytes_per_thread: usize,
    work: W,
) -> std::result::Result<(), BatchError>
where
    P: Piece,
    W: Fn(P) -> std::result::Result<(), BatchError> + Sync,
{
    let total = pieces.iter().map(|p| p.groups() * p.group_bytes()).sum();
    let (known, cap) = thread_count(threads, total, min_bytes_per_thread);
    if known == Some(1) {
        return pieces.into_iter().try_for_each(work);
    }
    let chunks = (total / CHUNK_BYTES).clamp(cap * 4, MAX_CHUNKS.max(cap * 4));
    let job = Job::new(partition(pieces, chunks, total));
    participate_on(known, cap, &|| job.participate(&work));
    job.outcome()
}

/// Runs `participate` on the calling thread and on more threads: `known`
/// in all, or with `None` one per core up to `cap` (see [`thread_count`]);
/// returns when every thread is done.
pub(crate) fn participate_on(known: Option<usize>, cap: usize, participate: &(dyn Fn() + Sync)) {
    thread::scope(|scope| {
        match known {
            Some(n) => (1..n).for_each(|_| spawn(scope, participate)),
            None => spawn(scope, move || {
                // threads == 0: this helper counts the cores while the
                // calling thread already works, then spawns the rest.
                let cores = thread::available_parallelism().map_or(1, NonZeroUsize::get);
                (2..cores.min(cap)).for_each(|_| spawn(scope, participate));
                participate();
            }),
        }
        participate();
    });
}

/// Spawns a scoped thread. If it cannot be spawned, nothing is lost: the
/// other threads (at least the calling one) claim its share of the chunks.
fn spawn<'scope, F: FnOnce() + Send + 'scope>(scope: &'scope thread::Scope<'scope, '_>, f: F) {
    let _ = thread::Builder::new().name("pyquant".into()).spawn_scoped(scope, f);
}

/// Bytes of work per chunk claimed by a thread: small enough that a thread
/// starting late or being descheduled delays the others by little, large
/// enough that claiming (one atomic add) costs nothing.
const CHUNK_BYTES: usize = 128 * 1024;
/// At most this many chunks (more only for more than 1024 threads).
const MAX_CHUNKS: usize = 4096;

/// The shared state of one parallel call. Chunks are contiguous runs of
/// pieces in item and group order, claimed in increasing order from a
/// counter; a chunk once claimed is worked to its end or its first error.
/// Because claims are in order, when chunk `k` fails every chunk before it
/// was claimed and is worked to the end, so the error of the lowest failed
/// chunk is the first error of the batch, whatever the threads did.
struct Job<P> {
    chunks: Vec<Mutex<Vec<P>>>,
    next: AtomicUsize,
    /// Set when a chunk failed or panicked: no more chunks are claimed.
    stop: AtomicBool,
    /// The error of the lowest failed chunk.
    failure: Mutex<Option<(usize, BatchError)>>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<P: Piece> Job<P> {
    fn new(chunks: Vec<Vec<P>>) -> Self {
        Job {
            chunks: chunks.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            panic: Mutex::new(None),
        }
    }

    /// The work of one thread. Panics are caught and kept for [`Job::outcome`].
    fn participate<W>(&self, work: &W)
    where
        W: Fn(P) -> std::result::Result<(), BatchError> + Sync,
    {
        let n = self.chunks.len();
        while !self.stop.load(Ordering::SeqCst) {
            let k = self.next.fetch_add(1, Ordering::SeqCst);
            if k >= n {
                break;
            }
            let pieces = std::mem::take(&mut *locked(&self.chunks[k]));
            match panic::catch_unwind(AssertUnwindSafe(|| pieces.into_iter().try_for_each(work))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let mut slot = locked(&self.failure);
                    if slot.as_ref().is_none_or(|(first, _)| k < *first) {
                        *slot = Some((k, e));
                    }
                    self.stop.store(true, Ordering::SeqCst);
                }
                Err(payload) => {
                    locked(&self.panic).get_or_insert(payload);
                    self.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// The result once every thread is done; re-raises a caught panic.
    fn outcome(self) -> std::result::Result<(), BatchError> {
        if let Some(payload) = self.panic.into_inner().unwrap_or_else(PoisonError::into_inner) {
            panic::resume_unwind(payload);
        }
        match self.failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some((_, e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::reference;
    use crate::layout::Scheme;
    use crate::PqStatus;
    use half::{bf16, f16};

    fn forced(threads: usize) -> (usize, Schedule) {
        (threads, Schedule { isa: Isa::detect(), min_bytes_per_thread: 1 })
    }

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104729) % 4099) as f32 * 0.01 - 20.0).collect()
    }

    /// Searched and float16 schemes, with importance weights, through the
    /// threaded scheduler: the same bytes for every thread count and split.
    #[test]
    fn schemes_give_the_same_bytes_for_every_thread_count() {
        let x = data(1 << 16, 3);
        let w: Vec<f32> = (0..512).map(|c| (c % 7) as f32 * 0.5).collect();
        for (method, scale_dtype, importance) in [
            (Method::Search, crate::layout::ScaleDtype::F32, None),
            (Method::Search, crate::layout::ScaleDtype::F16, Some(&w[..])),
            (Method::MinMax, crate::layout::ScaleDtype::F16, None),
        ] {
            let l = Layout::new(x.len(), 512, 2, 64).unwrap().with_scheme(Scheme { method, scale_dtype });
            let mut first = None;
            for (threads, schedule) in [forced(1), forced(3), forced(7)] {
                let (mut c, mut s, mut m) = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
                let item = QuantizeItem {
                    input: Values::F32(&x),
                    layout: l,
                    codes: &mut c,
                    scales: &mut s,
                    mins: &mut m,
                    importance,
                };
                quantize_batch_with(&mut [item], threads, schedule).unwrap();
                let got = (
                    c,
                    s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    m.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                );
                assert_eq!(
                    first.get_or_insert_with(|| got.clone()),
                    &got,
                    "{method:?} {scale_dtype:?} threads {threads}"
                );
            }
        }
        // Importance weights are refused by min-max and checked for length.
        let l = Layout::new(1024, 512, 4, 64).unwrap();
        let (mut c, mut s, mut m) = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
        let item = QuantizeItem {
            input: Values::F32(&x[..1024]),
            layout: l,
            codes: &mut c,
            scales: &mut s,
            mins: &mut m,
            importance: Some(&w),
        };
        assert_eq!(quantize_batch(&mut [item], 1).unwrap_err().error.status, PqStatus::InvalidScheme);
        let l = l.with_scheme(Scheme { method: Method::Search, ..Scheme::default() });
        let item = QuantizeItem {
            input: Values::F32(&x[..1024]),
            layout: l,
            codes: &mut c,
            scales: &mut s,
            mins: &mut m,
            importance: Some(&w[..3]),
        };
        assert_eq!(quantize_batch(&mut [item], 1).unwrap_err().error.status, PqStatus::InvalidImatrix);
    }

    /// Axis 0 gives the bytes of the transpose quantized along its rows, and
    /// dequantizes back into the input's shape, for every thread count.
    #[test]
    fn axis_first_is_the_transpose() {
        let (height, width) = (256usize, 37usize);
        let x = data(height * width, 5);
        let xt: Vec<f16> = (0..width * height).map(|k| f16::from_f32(x[(k % height) * width + k / height])).collect();
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        for (method, scale_dtype, bits) in [
            (Method::MinMax, crate::layout::ScaleDtype::F32, 4),
            (Method::Search, crate::layout::ScaleDtype::F16, 3),
            (Method::MinMax, crate::layout::ScaleDtype::F16, 2),
        ] {
            let scheme = Scheme { method, scale_dtype };
            let lt = Layout::new(xt.len(), height, bits, 32).unwrap().with_scheme(scheme);
            let l = Layout::new(x.len(), height, bits, 32).unwrap().with_scheme(scheme).with_axis(Axis::First);
            let fresh = || (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
            let mut want = fresh();
            let item = QuantizeItem {
                input: Values::F16(&xt),
                layout: lt,
                codes: &mut want.0,
                scales: &mut want.1,
                mins: &mut want.2,
                importance: None,
            };
            quantize_batch(&mut [item], 1).unwrap();
            let mut yt = vec![f16::ZERO; xt.len()];
            dequantize(&want.0, &want.1, &want.2, &lt, &mut yt).unwrap();
            for (threads, schedule) in [forced(1), forced(3), forced(8)] {
                let mut got = fresh();
                let (c, s, m) = &mut got;
                let item =
                    QuantizeItem { input: Values::F16(&xh), layout: l, codes: c, scales: s, mins: m, importance: None };
                quantize_batch_with(&mut [item], threads, schedule).unwrap();
                assert_eq!(got, want, "{method:?} {bits} threads {threads}");
                let mut y = vec![f16::ZERO; x.len()];
                let item = DequantizeItem {
                    codes: &got.0,
                    scales: &got.1,
                    mins: &got.2,
                    layout: l,
                    output: ValuesMut::F16(&mut y),
                };
                dequantize_batch_with(&mut [item], threads, schedule).unwrap();
                assert!((0..x.len()).all(|k| y[k] == yt[(k % width) * height + k / width]), "threads {threads}");
            }
        }
        // A bad scale is found before anything is written.
        let l = Layout::new(x.len(), height, 8, 32).unwrap().with_axis(Axis::First);
        let (c, mut s, m) = (vec![0u8; l.codes_len], vec![1f32; l.n_groups], vec![0f32; l.n_groups]);
        s[40] = f32::NAN;
        let mut y = vec![7f32; x.len()];
        let e = dequantize(&c, &s, &m, &l, &mut y).unwrap_err();
        assert!(e.message.starts_with("group 40 "), "{}", e.message);
        assert!(y.iter().all(|&v| v == 7.0));
    }

    #[test]
    fn partition_keeps_order_and_covers_everything() {
        let x = data(1 << 14, 0);
        for (sizes, shares) in
            [(vec![4096usize, 8192, 64, 4032], 3usize), (vec![16384], 7), (vec![64; 256], 5), (vec![128, 16256], 64)]
        {
            let layouts: Vec<Layout> = sizes.iter().map(|&n| Layout::new(n, 64, 8, 32).unwrap()).collect();
            let mut outs: Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> =
                layouts.iter().map(|l| (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups])).collect();
            let mut offset = 0;
            let pieces: Vec<QuantizePiece> = layouts
                .iter()
                .zip(&mut outs)
                .enumerate()
                .map(|(i, (l, (c, s, m)))| {
                    let input = Values::F32(&x[offset..offset + l.len]);
                    offset += l.len;
                    QuantizePiece {
                        item: i,
                        first_group: 0,
                        layout: *l,
                        input,
                        codes: c,
                        scales: s,
                        mins: m,
                        importance: None,
                    }
                })
                .collect();
            let total: usize = pieces.iter().map(|p| p.groups() * p.group_bytes()).sum();
            let parts = partition(pieces, shares, total);
            assert!(parts.len() <= shares);
            let flat: Vec<&QuantizePiece> = parts.iter().flatten().collect();
            // In order, contiguous, every group once.
            let mut expect = (0usize, 0usize);
            for p in &flat {
                if p.item != expect.0 {
                    assert_eq!(expect.1, layouts[expect.0].n_groups);
                    expect = (p.item, 0);
                }
                assert_eq!(p.first_group, expect.1);
                assert_eq!(p.input.len(), p.groups() * 32);
                assert_eq!(p.codes.len(), p.groups() * 32);
                expect.1 += p.groups();
            }
            assert_eq!(expect, (layouts.len() - 1, layouts.last().unwrap().n_groups));
            // Balanced to within one group of the largest item per share.
            let per = total / shares;
            for part in &parts[..parts.len() - 1] {
                let bytes: usize = part.iter().map(|p| p.groups() * p.group_bytes()).sum();
                assert!(bytes <= per + 128 && bytes + 2 * 128 >= per, "{bytes} vs {per}");
            }
        }
    }

    #[test]
    fn mixed_batch_matches_reference_for_every_thread_count() {
        let x32 = data(64 * 1024, 1);
        let xh: Vec<f16> = data(32 * 1024, 2).into_iter().map(f16::from_f32).collect();
        let xb: Vec<bf16> = data(48 * 1024, 3).into_iter().map(bf16::from_f32).collect();
        let specs =
            [(Values::F32(&x32), 1024, 4, 128), (Values::F16(&xh), 256, 2, 16), (Values::BF16(&xb), 3072, 8, 3072)];
        let layouts: Vec<Layout> =
            specs.iter().map(|(v, row, bits, g)| Layout::new(v.len(), *row, *bits, *g).unwrap()).collect();
        let fresh = || -> Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> {
            layouts.iter().map(|l| (vec![1; l.codes_len], vec![1.0; l.n_groups], vec![1.0; l.n_groups])).collect()
        };
        let mut want = fresh();
        {
            let (c, s, m) = &mut want[0];
            reference::quantize(&x32, &layouts[0], c, s, m).unwrap();
        }
        {
            let (c, s, m) = &mut want[1];
            reference::quantize(&xh, &layouts[1], c, s, m).unwrap();
        }
        {
            let (c, s, m) = &mut want[2];
            reference::quantize(&xb, &layouts[2], c, s, m).unwrap();
        }
        for (threads, schedule) in
            [forced(1), forced(2), forced(3), forced(8), (0, Schedule::detect(QUANTIZE_BYTES_PER_THREAD))]
        {
            let mut got = fresh();
            let mut items: Vec<QuantizeItem> = specs
                .iter()
                .zip(&layouts)
                .zip(&mut got)
                .map(|(((v, ..), l), (c, s, m))| QuantizeItem {
                    input: *v,
                    layout: *l,
                    codes: c,
                    scales: s,
                    mins: m,
                    importance: None,
                })
                .collect();
            quantize_batch_with(&mut items, threads, schedule).unwrap();
            assert_eq!(got, want, "threads {threads}");
            // Dequantize the batch back, mixing output dtypes.
            let mut y32 = vec![0f32; x32.len()];
            let mut yh = vec![bf16::ZERO; xh.len()];
            let mut yb = vec![f16::ZERO; xb.len() + 3];
            let outputs = [ValuesMut::F32(&mut y32), ValuesMut::BF16(&mut yh), ValuesMut::F16(&mut yb)];
            let mut ditems: Vec<DequantizeItem> = outputs
                .into_iter()
                .zip(&layouts)
                .zip(&got)
                .map(|((o, l), (c, s, m))| DequantizeItem { codes: c, scales: s, mins: m, layout: *l, output: o })
                .collect();
            dequantize_batch_with(&mut ditems, threads, schedule).unwrap();
            let mut r32 = vec![0f32; x32.len()];
            let mut rh = vec![bf16::ZERO; xh.len()];
            let mut rb = vec![f16::ZERO; xb.len() + 3];
            reference::dequantize(&got[0].0, &got[0].1, &got[0].2, &layouts[0], &mut r32).unwrap();
            reference::dequantize(&got[1].0, &got[1].1, &got[1].2, &layouts[1], &mut rh).unwrap();
            reference::dequantize(&got[2].0, &got[2].1, &got[2].2, &layouts[2], &mut rb).unwrap();
            assert_eq!((y32, yh, yb), (r32, rh, rb), "threads {threads}");
        }
    }

    #[test]
    fn a_bad_item_stops_the_whole_batch() {
        let xs: Vec<Vec<f32>> = (0..6).map(|i| data(64 * 1024, i)).collect();
        let l = Layout::new(64 * 1024, 1024, 4, 64).unwrap();
        for (bad_item, bad_index) in [(2usize, 5000usize), (0, 0), (5, 65535)] {
            for (threads, schedule) in [forced(1), forced(2), forced(5)] {
                let mut xs = xs.clone();
                xs[bad_item][bad_index] = f32::INFINITY;
                xs[4][10] = f32::NAN; // a later one, in item 4: must not be the one reported (unless first)
                let mut outs: Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> =
                    (0..6).map(|_| (vec![9; l.codes_len], vec![9.0; l.n_groups], vec![9.0; l.n_groups])).collect();
                let mut items: Vec<QuantizeItem> = xs
                    .iter()
                    .zip(&mut outs)
                    .map(|(x, (c, s, m))| QuantizeItem {
                        input: Values::F32(x),
                        layout: l,
                        codes: c,
                        scales: s,
                        mins: m,
                        importance: None,
                    })
                    .collect();
                let e = quantize_batch_with(&mut items, threads, schedule).unwrap_err();
                let first = if bad_item < 4 { bad_item } else { 4 };
                assert_eq!((e.item, e.error.status), (Some(first), PqStatus::NonFinite), "{e}");
                assert!(e.to_string().starts_with(&format!("item {first}: ")));
                // Items before the first bad one are complete (outputs may be
                // partly written from there on).
                for (x, (c, s, m)) in xs.iter().zip(&outs).take(first) {
                    let (mut rc, mut rs, mut rm) = (vec![0; l.codes_len], vec![0.0; l.n_groups], vec![0.0; l.n_groups]);
                    reference::quantize(x, &l, &mut rc, &mut rs, &mut rm).unwrap();
                    assert!((c, s, m) == (&rc, &rs, &rm), "item before {first}, threads {threads}");
                }
            }
        }
        // A too-small output in item 3 is found before any value is looked at.
        let mut outs: Vec<(Vec<u8>, Vec<f32>, Vec<f32>)> =
            (0..6).map(|_| (vec![9; l.codes_len], vec![9.0; l.n_groups], vec![9.0; l.n_groups])).collect();
        outs[3].1.pop();
        let mut items: Vec<QuantizeItem> = xs
            .iter()
            .zip(&mut outs)
            .map(|(x, (c, s, m))| QuantizeItem {
                input: Values::F32(x),
                layout: l,
                codes: c,
                scales: s,
                mins: m,
                importance: None,
            })
            .collect();
        let e = quantize_batch(&mut items, 2).unwrap_err();
        assert_eq!((e.item, e.error.status), (Some(3), PqStatus::BufferTooSmall));
        assert_eq!(e.to_string(), "item 3: scales has 1023 elements, needs at least 1024");
    }

    #[test]
    fn thread_count_rules() {
        assert_eq!(thread_count(0, 100, 1024), (Some(1), 1));
        assert_eq!(thread_count(8, 1 << 30, 1 << 20), (Some(8), 8));
        assert_eq!(thread_count(8, 3 << 20, 1 << 20), (Some(3), 3));
        assert_eq!(thread_count(1, 1 << 30, 1 << 20), (Some(1), 1));
        assert_eq!(thread_count(0, 2 << 20, 1 << 20), (Some(2), 2));
        assert_eq!(thread_count(0, 5 << 20, 1 << 20), (None, 5));
    }
}
