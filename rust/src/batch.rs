//! Batches of tensors and the threads that quantize them.
//!
//! A call takes any number of items (tensors with their own dtype, bits and
//! group size) and runs in two phases:
//!
//! 1. every item's lengths are checked, then every input value (quantize) or
//!    every scale and min (dequantize) is validated;
//! 2. only if all of that passed, outputs are written.
//!
//! So an error anywhere leaves every output of every item untouched.
//!
//! Threads: the groups of all items form one sequence, cut by bytes into
//! contiguous shares, one per thread (a large tensor is split across threads,
//! small ones are spread over them). Each thread validates its share, waits
//! for the others at a gate, and writes its share only if no thread found an
//! error. Threads are scoped to the call (`std::thread::scope`); there is no
//! pool and no global state. Calls smaller than [`MIN_BYTES_PER_THREAD`] per
//! thread run on the calling thread alone. Every group is computed by the
//! same code whatever the partition, and the error reported is the first one
//! in item and group order, so results are identical for every thread count.

use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{self, AssertUnwindSafe};
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::element::{Values, ValuesMut};
use crate::error::Error;
use crate::kernel::fast;
use crate::kernel::reference::check_len;
use crate::kernel::Isa;
use crate::layout::Layout;

/// Input bytes (quantize) or output bytes (dequantize) below which adding a
/// thread does not pay for spawning it (tens of microseconds).
pub const MIN_BYTES_PER_THREAD: usize = 1024 * 1024;

/// One tensor to quantize: `input` laid out as `layout`, into `codes`,
/// `scales` and `mins` (which may be longer than needed; only the prefix the
/// layout names is written).
#[derive(Debug)]
pub struct QuantizeItem<'a> {
    pub input: Values<'a>,
    pub layout: Layout,
    pub codes: &'a mut [u8],
    pub scales: &'a mut [f32],
    pub mins: &'a mut [f32],
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

    /// The error with its message prefixed by `item N: ` when it names an item.
    pub fn into_prefixed(self) -> Error {
        match self.item {
            Some(i) => Error::new(self.error.status, format!("item {i}: {}", self.error.message)),
            None => self.error,
        }
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

/// How a call is run; tests use other values than the default.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub isa: Isa,
    pub min_bytes_per_thread: usize,
}

impl Schedule {
    fn detect() -> Self {
        Schedule { isa: Isa::detect(), min_bytes_per_thread: MIN_BYTES_PER_THREAD }
    }
}

/// Quantizes every item, with `threads` threads: 0 = all available cores,
/// 1 = only the calling thread, n = at most n threads (fewer for small work).
///
/// Lengths and values of all items are checked before any output is written;
/// on error nothing is written and the error names the first offending item.
pub fn quantize_batch(items: &mut [QuantizeItem<'_>], threads: usize) -> std::result::Result<(), BatchError> {
    quantize_batch_with(items, threads, Schedule::detect())
}

/// Dequantizes every item, with `threads` as in [`quantize_batch`].
///
/// Lengths, scales and mins of all items are checked before any output is
/// written; on error nothing is written.
pub fn dequantize_batch(items: &mut [DequantizeItem<'_>], threads: usize) -> std::result::Result<(), BatchError> {
    dequantize_batch_with(items, threads, Schedule::detect())
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
        if l.len > 0 {
            pieces.push(QuantizePiece {
                item: i,
                first_group: 0,
                layout: l,
                input: item.input,
                codes: &mut item.codes[..l.codes_len],
                scales: &mut item.scales[..l.n_groups],
                mins: &mut item.mins[..l.n_groups],
            });
        }
    }
    let isa = schedule.isa;
    run_two_phase(
        pieces,
        threads,
        schedule.min_bytes_per_thread,
        |p| fast::check_values(isa, p.input, &p.layout, p.first_group).map_err(|e| BatchError::at(p.item, e)),
        |p| fast::encode(isa, p.input, &p.layout, p.codes, p.scales, p.mins),
    )
}

pub(crate) fn dequantize_batch_with(
    items: &mut [DequantizeItem<'_>],
    threads: usize,
    schedule: Schedule,
) -> std::result::Result<(), BatchError> {
    let mut pieces = Vec::with_capacity(items.len());
    for (i, item) in items.iter_mut().enumerate() {
        let l = item.layout;
        let at = |e| BatchError::at(i, e);
        check_len("codes", item.codes.len(), l.codes_len, true).map_err(at)?;
        check_len("scales", item.scales.len(), l.n_groups, true).map_err(at)?;
        check_len("mins", item.mins.len(), l.n_groups, true).map_err(at)?;
        check_len("output", item.output.len(), l.len, false).map_err(at)?;
        if l.len > 0 {
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
    run_two_phase(
        pieces,
        threads,
        schedule.min_bytes_per_thread,
        |p| fast::check_params(p.scales, p.mins, p.first_group).map_err(|e| BatchError::at(p.item, e)),
        |p| fast::decode(isa, p.codes, p.scales, p.mins, &p.layout, p.output),
    )
}

/// A run of whole groups of one item: the unit a thread works on.
trait Piece: Send + Sized {
    fn groups(&self) -> usize;
    /// Bytes of the tensor per group, the measure of work.
    fn group_bytes(&self) -> usize;
    /// The first `groups` groups and the rest.
    fn split(self, groups: usize) -> (Self, Self);
}

struct QuantizePiece<'a> {
    item: usize,
    first_group: usize,
    layout: Layout,
    input: Values<'a>,
    codes: &'a mut [u8],
    scales: &'a mut [f32],
    mins: &'a mut [f32],
}

impl Piece for QuantizePiece<'_> {
    fn groups(&self) -> usize {
        self.scales.len()
    }

    fn group_bytes(&self) -> usize {
        self.layout.group_size * self.input.dtype().size()
    }

    fn split(self, groups: usize) -> (Self, Self) {
        let l = self.layout;
        let (input_a, input_b) = self.input.split_at(groups * l.group_size);
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

struct DequantizePiece<'a> {
    item: usize,
    first_group: usize,
    layout: Layout,
    codes: &'a [u8],
    scales: &'a [f32],
    mins: &'a [f32],
    output: ValuesMut<'a>,
}

impl Piece for DequantizePiece<'_> {
    fn groups(&self) -> usize {
        self.scales.len()
    }

    fn group_bytes(&self) -> usize {
        self.layout.group_size * self.output.dtype().size()
    }

    fn split(self, groups: usize) -> (Self, Self) {
        let l = self.layout;
        let (codes_a, codes_b) = self.codes.split_at(groups * l.group_code_bytes());
        let (scales_a, scales_b) = self.scales.split_at(groups);
        let (mins_a, mins_b) = self.mins.split_at(groups);
        let (output_a, output_b) = self.output.split_at(groups * l.group_size);
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

/// The number of threads for `bytes` of work: 1 unless there are at least
/// two threads' worth (`available_parallelism` is only asked then).
fn thread_count(requested: usize, bytes: usize, min_bytes_per_thread: usize) -> usize {
    let by_size = bytes / min_bytes_per_thread.max(1);
    if requested == 1 || by_size < 2 {
        return 1;
    }
    let limit = match requested {
        0 => thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    };
    limit.min(by_size)
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
            let fit = end.saturating_sub(pos) / unit;
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

/// Runs `check` on every piece, then, if all passed, `write` on every piece,
/// on up to `threads` threads (see the module documentation).
fn run_two_phase<P, C, W>(
    pieces: Vec<P>,
    threads: usize,
    min_bytes_per_thread: usize,
    check: C,
    write: W,
) -> std::result::Result<(), BatchError>
where
    P: Piece,
    C: Fn(&P) -> std::result::Result<(), BatchError> + Sync,
    W: Fn(P) + Sync,
{
    let total = pieces.iter().map(|p| p.groups() * p.group_bytes()).sum();
    let n = thread_count(threads, total, min_bytes_per_thread);
    if n == 1 {
        pieces.iter().try_for_each(&check)?;
        pieces.into_iter().for_each(write);
        return Ok(());
    }
    let chunks = (total / CHUNK_BYTES).clamp(n * 4, MAX_CHUNKS.max(n * 4));
    let job = Job::new(partition(pieces, chunks, total));
    thread::scope(|scope| {
        for _ in 1..n {
            // If a thread cannot be spawned, the others (at least the calling
            // thread) simply claim its share of the chunks.
            let _ = thread::Builder::new()
                .name("pyquant".into())
                .spawn_scoped(scope, || job.participate(&check, &write));
        }
        job.participate(&check, &write);
    });
    job.outcome()
}

/// Bytes of work per chunk claimed by a thread: small enough that a thread
/// starting late or being descheduled delays the others by little, large
/// enough that claiming (one atomic add) costs nothing.
const CHUNK_BYTES: usize = 128 * 1024;
/// At most this many chunks (more only for more than 1024 threads).
const MAX_CHUNKS: usize = 4096;

/// The shared state of one parallel call. Chunks are contiguous runs of
/// pieces in item and group order, claimed in increasing order from
/// counters. Every chunk is checked before any is written: a thread that
/// runs out of chunks to check waits until all are checked (or one failed).
/// Because claims are in order, when chunk `k` fails every chunk before it
/// was claimed and is checked to the end, so the first error in chunk order
/// is the first error of the batch, whatever the threads did.
struct Job<P> {
    chunks: Vec<Mutex<Vec<P>>>,
    next_check: AtomicUsize,
    checked: AtomicUsize,
    next_write: AtomicUsize,
    /// Set when a check failed or panicked: nothing more is checked and
    /// nothing is written.
    stop: AtomicBool,
    /// The failure of the lowest chunk.
    failure: Mutex<Option<(usize, Failure)>>,
    write_panic: Mutex<Option<Box<dyn Any + Send>>>,
}

enum Failure {
    Error(BatchError),
    Panic(Box<dyn Any + Send>),
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<P: Piece> Job<P> {
    fn new(chunks: Vec<Vec<P>>) -> Self {
        Job {
            chunks: chunks.into_iter().map(Mutex::new).collect(),
            next_check: AtomicUsize::new(0),
            checked: AtomicUsize::new(0),
            next_write: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            write_panic: Mutex::new(None),
        }
    }

    /// The work of one thread. Panics are caught and kept for [`Job::outcome`].
    fn participate<C, W>(&self, check: &C, write: &W)
    where
        C: Fn(&P) -> std::result::Result<(), BatchError> + Sync,
        W: Fn(P) + Sync,
    {
        let n = self.chunks.len();
        while !self.stop.load(Ordering::SeqCst) {
            let k = self.next_check.fetch_add(1, Ordering::SeqCst);
            if k >= n {
                break;
            }
            let checked = panic::catch_unwind(AssertUnwindSafe(|| locked(&self.chunks[k]).iter().try_for_each(check)));
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.fail(k, Failure::Error(e)),
                Err(payload) => self.fail(k, Failure::Panic(payload)),
            }
            // After `fail`: whoever sees all chunks checked also sees `stop`.
            self.checked.fetch_add(1, Ordering::SeqCst);
        }
        // Wait for the chunks others are still checking: at most one each.
        let mut spins = 0u32;
        while self.checked.load(Ordering::SeqCst) < n {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                // Lets a thread that holds a chunk run if it shares our CPU.
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        loop {
            let k = self.next_write.fetch_add(1, Ordering::SeqCst);
            if k >= n {
                break;
            }
            let pieces = std::mem::take(&mut *locked(&self.chunks[k]));
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| pieces.into_iter().for_each(write))) {
                locked(&self.write_panic).get_or_insert(payload);
            }
        }
    }

    fn fail(&self, chunk: usize, failure: Failure) {
        let mut slot = locked(&self.failure);
        if slot.as_ref().is_none_or(|(k, _)| chunk < *k) {
            *slot = Some((chunk, failure));
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The result once every thread is done; re-raises a caught panic.
    fn outcome(self) -> std::result::Result<(), BatchError> {
        if let Some(payload) = self.write_panic.into_inner().unwrap_or_else(PoisonError::into_inner) {
            panic::resume_unwind(payload);
        }
        match self.failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some((_, Failure::Error(e))) => Err(e),
            Some((_, Failure::Panic(payload))) => panic::resume_unwind(payload),
        }
    }
}
