//! Turning (pointer, length) pairs from C into slices, with every check the
//! C ABI promises: NULL with length 0 is empty, NULL otherwise is an error,
//! misalignment is an error, sizes are checked, and outputs may not overlap
//! inputs or each other. Regions are checked before any slice exists, since
//! overlapping `&[T]` and `&mut [T]` would already be undefined behaviour.

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::slice;

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
        let bytes = len
            .checked_mul(size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| {
                Error::new(
                    PqStatus::SizeOverflow,
                    format!("{what}: length {len} times {} bytes overflows", size_of::<T>()),
                )
            })?;
        if ptr.is_null() {
            if len != 0 {
                return Err(Error::new(
                    PqStatus::NullPointer,
                    format!("{what} is NULL but its length is {len}"),
                ));
            }
            return Ok(Region { what, ptr: NonNull::dangling().as_ptr(), len, bytes });
        }
        if (ptr as usize) % align_of::<T>() != 0 {
            return Err(Error::new(
                PqStatus::Misaligned,
                format!(
                    "{what} at address {ptr:p} is not aligned to {} bytes",
                    align_of::<T>()
                ),
            ));
        }
        if (ptr as usize).checked_add(bytes).is_none() {
            return Err(Error::new(
                PqStatus::SizeOverflow,
                format!("{what}: address plus {bytes} bytes wraps around"),
            ));
        }
        Ok(Region { what, ptr: ptr as *mut T, len, bytes })
    }

    /// # Safety
    /// The caller of the C function promised `len` readable values at `ptr`,
    /// unchanged for the duration of the call.
    pub(crate) unsafe fn as_slice<'a>(&self) -> &'a [T] {
        slice::from_raw_parts(self.ptr, self.len)
    }

    /// # Safety
    /// As [`Region::as_slice`], writable; and [`check_disjoint`] passed for
    /// this region against every other region of the call.
    pub(crate) unsafe fn as_mut_slice<'a>(&self) -> &'a mut [T] {
        slice::from_raw_parts_mut(self.ptr, self.len)
    }
}

/// A type-erased view of a region for the overlap check.
pub(crate) trait Span {
    fn span(&self) -> (&'static str, usize, usize);
}

impl<T> Span for Region<T> {
    fn span(&self) -> (&'static str, usize, usize) {
        (self.what, self.ptr as usize, self.bytes)
    }
}

/// Errors if any output overlaps an input or another output. Empty regions
/// overlap nothing.
pub(crate) fn check_disjoint(inputs: &[&dyn Span], outputs: &[&dyn Span]) -> Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        let others = inputs.iter().chain(&outputs[..i]).chain(&outputs[i + 1..]);
        for other in others {
            let (a_name, a, a_len) = out.span();
            let (b_name, b, b_len) = other.span();
            if a_len > 0 && b_len > 0 && a < b + b_len && b < a + a_len {
                return Err(Error::new(
                    PqStatus::Overlap,
                    format!("{a_name} overlaps {b_name}: outputs must not share memory with other buffers"),
                ));
            }
        }
    }
    Ok(())
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

    #[test]
    fn overlaps() {
        let buf = [0f32; 16];
        let p = buf.as_ptr();
        let a = Region::new("input", p, 8).unwrap();
        let b = Region::new("scales", p.wrapping_add(7), 2).unwrap();
        let c = Region::new("mins", p.wrapping_add(8), 8).unwrap();
        let e = Region::new("codes", p, 0).unwrap();
        assert_eq!(status(check_disjoint(&[&a], &[&b])), PqStatus::Overlap);
        assert_eq!(status(check_disjoint(&[&a], &[&c])), PqStatus::Ok);
        assert_eq!(status(check_disjoint(&[], &[&b, &c])), PqStatus::Overlap);
        assert_eq!(status(check_disjoint(&[&a], &[&e])), PqStatus::Ok);
    }
}
