//! Turning (pointer, length) pairs from C into slices, with every check the
//! C ABI promises: NULL with length 0 is empty, NULL otherwise is an error,
//! misalignment is an error, sizes are checked, and outputs may not overlap
//! inputs or each other. Regions are checked before any slice exists, since
//! overlapping `&[T]` and `&mut [T]` would already be undefined behaviour.

use std::ffi::c_void;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::slice;

use crate::batch::BatchError;
use crate::element::{Dtype, Values, ValuesMut};
use crate::error::{Error, PqStatus, Result};

/// A checked (pointer, length) pair, not yet a slice.
pub(crate) struct Region<T> {
    what: &'static str,
    ptr: *mut T,
    len: usize,
    bytes: usize,
}

impl<T> Region<T> {
    /// Checks `ptr`/`len` (a count of `T`) for NULL, alignment and size.
    pub(crate) fn new(what: &'static str, ptr: *const T, len: usize) -> Result<Self> {
        let bytes = check_buffer(what, ptr as *const u8, len, size_of::<T>(), align_of::<T>())?;
        let ptr = if ptr.is_null() { NonNull::dangling().as_ptr() } else { ptr as *mut T };
        Ok(Region { what, ptr, len, bytes })
    }

    /// # Safety
    /// The caller of the C function promised `len` readable values at `ptr`,
    /// unchanged for the duration of the call.
    pub(crate) unsafe fn as_slice<'a>(&self) -> &'a [T] {
        unsafe { slice::from_raw_parts(self.ptr, self.len) }
    }

    /// # Safety
    /// As [`Region::as_slice`], writable; and [`check_disjoint`] passed for
    /// this region among all the regions of the call.
    pub(crate) unsafe fn as_mut_slice<'a>(&self) -> &'a mut [T] {
        unsafe { slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// This region as a buffer of batch item `item` (`None`: not an item's)
    /// for [`check_disjoint`].
    pub(crate) fn span(&self, item: Option<usize>, output: bool) -> Span {
        Span { item, what: self.what, start: self.ptr as usize, bytes: self.bytes, output }
    }
}

/// A checked region of `len` values of a run-time dtype (a `PQ_DTYPE_*` code).
pub(crate) struct TensorRegion {
    dtype: Dtype,
    bytes: Region<u8>,
    len: usize,
}

impl TensorRegion {
    pub(crate) fn new(dtype: u32, what: &'static str, ptr: *const c_void, len: usize) -> Result<Self> {
        let dtype = Dtype::try_from(dtype)?;
        let bytes = check_buffer(what, ptr as *const u8, len, dtype.size(), dtype.size())?;
        // NULL (length 0) becomes a dangling pointer aligned for every dtype.
        let ptr = if ptr.is_null() { NonNull::<u32>::dangling().as_ptr() as *mut u8 } else { ptr as *mut u8 };
        Ok(TensorRegion { dtype, bytes: Region { what, ptr, len: bytes, bytes }, len })
    }

    pub(crate) fn span(&self, item: usize, output: bool) -> Span {
        self.bytes.span(Some(item), output)
    }

    /// # Safety
    /// As [`Region::as_slice`].
    pub(crate) unsafe fn values<'a>(&self) -> Values<'a> {
        // SAFETY: checked non-NULL (or dangling for length 0), aligned and sized for the dtype.
        unsafe { Values::from_raw(self.dtype, self.bytes.ptr, self.len) }
    }

    /// # Safety
    /// As [`Region::as_mut_slice`].
    pub(crate) unsafe fn values_mut<'a>(&self) -> ValuesMut<'a> {
        unsafe { ValuesMut::from_raw(self.dtype, self.bytes.ptr, self.len) }
    }
}

/// The one check of a caller's buffer, for every entry point (plain, batch
/// and Arrow): `len` elements of `size` bytes at `ptr`, aligned to `align`.
/// NULL is allowed only with length 0. Returns the size in bytes.
fn check_buffer(what: &str, ptr: *const u8, len: usize, size: usize, align: usize) -> Result<usize> {
    let bytes = len.checked_mul(size).filter(|&b| b <= isize::MAX as usize).ok_or_else(|| {
        Error::new(PqStatus::SizeOverflow, format!("{what}: length {len} times {size} bytes overflows"))
    })?;
    if ptr.is_null() {
        if len != 0 {
            return Err(Error::new(PqStatus::NullPointer, format!("{what} is NULL but its length is {len}")));
        }
        return Ok(bytes);
    }
    check_aligned_to(what, ptr, align)?;
    if (ptr as usize).checked_add(bytes).is_none() {
        return Err(Error::new(PqStatus::SizeOverflow, format!("{what}: address plus {bytes} bytes wraps around")));
    }
    Ok(bytes)
}

/// Errors unless `ptr` is a multiple of `align`.
pub(crate) fn check_aligned_to<T>(what: impl std::fmt::Display, ptr: *const T, align: usize) -> Result<()> {
    if !(ptr as usize).is_multiple_of(align) {
        return Err(Error::new(
            PqStatus::Misaligned,
            format!("{what} at address {ptr:p} is not aligned to {align} bytes"),
        ));
    }
    Ok(())
}

/// Errors unless `ptr` is aligned for `T`.
pub(crate) fn check_aligned<T>(what: impl std::fmt::Display, ptr: *const T) -> Result<()> {
    check_aligned_to(what, ptr, align_of::<T>())
}

/// Checks a pointer to one caller-owned struct: not NULL, aligned.
pub(crate) fn check_struct<T>(what: &str, ptr: *const T) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::new(PqStatus::NullPointer, format!("{what} is NULL")));
    }
    check_aligned(what, ptr)
}

/// One buffer of a call, for the overlap check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    /// The batch item the buffer belongs to (`None`: e.g. the item array).
    pub item: Option<usize>,
    pub what: &'static str,
    pub start: usize,
    pub bytes: usize,
    pub output: bool,
}

/// Errors if any output overlaps any other buffer of the call, input or
/// output, of the same or of another item. Inputs may overlap each other
/// (they are only read). Empty buffers overlap nothing.
///
/// O(n log n) for n buffers: sorted by start address, a sweep keeps the
/// furthest end seen over all buffers and over outputs only. A buffer that
/// starts before the furthest end of an earlier one overlaps that one; an
/// output must not overlap anything, an input no output. Any overlapping pair
/// is found this way: when the later-starting one is swept, the earlier one
/// (or another that ends even later) has set the relevant maximum.
///
/// The error names the item of the output involved (the later item if both
/// are outputs).
pub(crate) fn check_disjoint(spans: &[Span]) -> std::result::Result<(), BatchError> {
    // Sorted by start, ties in the caller's order (the index breaks them), so
    // the reported pair is deterministic. Sorting (start, index) pairs rather
    // than the spans: 16 bytes each and no merge buffer (a batch of 1000
    // items has 4000 spans; big temporary buffers cost page faults per call).
    // A one-tensor call (up to 5 spans and the item array) sorts on the stack.
    let (mut small, mut large) = ([(0, 0); 8], Vec::new());
    let order: &mut [(usize, usize)] = if spans.len() <= small.len() {
        &mut small[..spans.len()]
    } else {
        large.resize(spans.len(), (0, 0));
        &mut large
    };
    for (o, (i, s)) in order.iter_mut().zip(spans.iter().enumerate()) {
        *o = (s.start, i);
    }
    order.sort_unstable();
    let mut furthest: Option<(usize, usize)> = None; // (end, index) over all
    let mut furthest_output: Option<(usize, usize)> = None; // over outputs
    for &(_, i) in order.iter() {
        let s = &spans[i];
        if s.bytes == 0 {
            continue;
        }
        // Region::new checked that start + bytes does not wrap.
        let end = s.start + s.bytes;
        let earlier = if s.output { furthest } else { furthest_output };
        if let Some((e, j)) = earlier {
            if s.start < e {
                return Err(overlap_error(&spans[j], s));
            }
        }
        if furthest.is_none_or(|(e, _)| end > e) {
            furthest = Some((end, i));
        }
        if s.output && furthest_output.is_none_or(|(e, _)| end > e) {
            furthest_output = Some((end, i));
        }
    }
    Ok(())
}

#[cold]
fn overlap_error(a: &Span, b: &Span) -> BatchError {
    // `out` is an output; if both are, the one of the later item.
    let (out, other) = if !a.output || (b.output && b.item >= a.item) { (b, a) } else { (a, b) };
    let whose = match other.item {
        Some(j) if other.item != out.item => format!(" of item {j}"),
        _ => String::new(),
    };
    let error = Error::new(
        PqStatus::Overlap,
        format!("{} overlaps {}{whose}: outputs must not share memory with other buffers", out.what, other.what),
    );
    BatchError { item: out.item, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    fn status<T>(r: Result<T>) -> PqStatus {
        r.err().map(|e| e.status).unwrap_or(PqStatus::Ok)
    }

    #[test]
    fn null_alignment_and_size() {
        assert_eq!(status(Region::<f32>::new("input", ptr::null(), 0)), PqStatus::Ok);
        assert_eq!(status(Region::<f32>::new("input", ptr::null(), 1)), PqStatus::NullPointer);
        let buf = [0u32; 4];
        let odd = (buf.as_ptr() as *const u8).wrapping_add(1) as *const f32;
        assert_eq!(status(Region::new("input", odd, 1)), PqStatus::Misaligned);
        assert_eq!(status(Region::new("input", buf.as_ptr() as *const f32, usize::MAX / 2)), PqStatus::SizeOverflow);
        assert_eq!(status(Region::new("input", buf.as_ptr() as *const f32, 4)), PqStatus::Ok);
    }

    fn spans_of(list: &[(Option<usize>, &'static str, *const f32, usize, bool)]) -> Vec<Span> {
        list.iter().map(|&(item, what, p, len, output)| Region::new(what, p, len).unwrap().span(item, output)).collect()
    }

    #[test]
    fn overlaps() {
        let buf = [0f32; 16];
        let p = buf.as_ptr();
        let check = |list: &[(Option<usize>, &'static str, *const f32, usize, bool)]| {
            check_disjoint(&spans_of(list)).map_err(|e| (e.item, e.error.status, e.error.message))
        };
        let input = (Some(0), "input", p, 8, false);
        // An output inside the input, touching it, and empty.
        let e = check(&[input, (Some(0), "scales", p.wrapping_add(7), 2, true)]).unwrap_err();
        assert_eq!((e.0, e.1), (Some(0), PqStatus::Overlap));
        assert!(e.2.starts_with("scales overlaps input:"), "{}", e.2);
        assert!(check(&[input, (Some(0), "mins", p.wrapping_add(8), 8, true)]).is_ok());
        assert!(check(&[input, (Some(0), "codes", p, 0, true)]).is_ok());
        // Two outputs; inputs may overlap each other.
        assert!(check(&[
            (Some(0), "scales", p.wrapping_add(7), 2, true),
            (Some(0), "mins", p.wrapping_add(8), 8, true)
        ])
        .is_err());
        assert!(check(&[
            input,
            (Some(1), "input", p.wrapping_add(4), 8, false),
            (None, "the items array", p, 16, false)
        ])
        .is_ok());
        // Across items: the output's item is named, the other item too.
        let e =
            check(&[(Some(3), "codes", p.wrapping_add(12), 4, true), (Some(1), "input", p.wrapping_add(4), 9, false)])
                .unwrap_err();
        assert_eq!(e.0, Some(3));
        assert!(e.2.starts_with("codes overlaps input of item 1:"), "{}", e.2);
        // Both outputs: the later item.
        let e = check(&[(Some(5), "mins", p.wrapping_add(2), 1, true), (Some(2), "scales", p, 3, true)]).unwrap_err();
        assert_eq!(e.0, Some(5));
        // A long earlier buffer still covers a later one after shorter ones.
        let e = check(&[
            (Some(0), "codes", p, 16, true),
            (Some(1), "input", p.wrapping_add(1), 1, false),
            (Some(2), "input", p.wrapping_add(2), 1, false),
            (Some(3), "input", p.wrapping_add(15), 1, false),
        ])
        .unwrap_err();
        assert_eq!(e.0, Some(0));
        // An output overlapping the item array.
        let e = check(&[(None, "the items array", p, 2, false), (Some(4), "mins", p.wrapping_add(1), 1, true)])
            .unwrap_err();
        assert_eq!(e.0, Some(4));
        assert!(e.2.starts_with("mins overlaps the items array:"), "{}", e.2);
    }

    /// The sweep against the quadratic definition on random layouts.
    #[test]
    fn sweep_matches_pairwise_definition() {
        let mut s = 12345u64;
        let mut next = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..3000 {
            let n = 1 + next(12) as usize;
            let spans: Vec<Span> = (0..n)
                .map(|i| Span {
                    item: Some(i / 3),
                    what: "x",
                    start: 1000 + next(64) as usize,
                    bytes: next(10) as usize,
                    output: next(2) == 0,
                })
                .collect();
            let pairwise = (0..n).any(|a| {
                (0..n).any(|b| {
                    let (x, y) = (&spans[a], &spans[b]);
                    a != b
                        && x.output
                        && x.bytes > 0
                        && y.bytes > 0
                        && x.start < y.start + y.bytes
                        && y.start < x.start + x.bytes
                })
            });
            assert_eq!(check_disjoint(&spans).is_err(), pairwise, "{spans:?}");
        }
    }

    #[test]
    fn sweep_is_fast_for_many_buffers() {
        // 100k disjoint buffers in reverse order, then one overlap at the end.
        let mut spans: Vec<Span> = (0..100_000usize)
            .rev()
            .map(|i| Span { item: Some(i), what: "codes", start: 4096 + i * 64, bytes: 64, output: i % 2 == 0 })
            .collect();
        assert!(check_disjoint(&spans).is_ok());
        spans.push(Span { item: Some(7), what: "input", start: 4096 + 99_998 * 64 + 3, bytes: 1, output: false });
        assert_eq!(check_disjoint(&spans).unwrap_err().item, Some(99_998));
    }
}
