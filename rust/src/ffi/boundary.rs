//! The panic boundary and the caller-allocated error struct.

use std::any::Any;
use std::os::raw::c_char;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use super::PQ_ERROR_MESSAGE_CAPACITY;
use crate::error::{Error, PqStatus, Result};

/// Error details, allocated by the caller (on the stack is fine) and passed
/// as the last, nullable argument of a fallible function. pyquant writes it
/// on every call: `status` equals the return value and `message` is a
/// NUL-terminated UTF-8 text naming the problem (empty on success).
#[repr(C)]
pub struct PqError {
    pub status: PqStatus,
    pub message: [c_char; PQ_ERROR_MESSAGE_CAPACITY],
}

/// Runs `body` so that neither an error nor a panic escapes as anything but
/// a status code, and fills `*error` (if not NULL) to match.
pub(crate) fn run(error: *mut PqError, body: impl FnOnce() -> Result<()>) -> PqStatus {
    let outcome = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            Err(Error::new(PqStatus::Panic, format!("internal error (caught panic): {}", panic_message(&payload))))
        }
    };
    let (status, message) = match &outcome {
        Ok(()) => (PqStatus::Ok, ""),
        Err(e) => (e.status, e.message.as_str()),
    };
    if !error.is_null() {
        // SAFETY: the caller passes NULL or a valid, writable PqError. Fields
        // are written through raw places: the caller's struct may hold any
        // bits, so no reference to it is made.
        unsafe {
            ptr::addr_of_mut!((*error).status).write(status);
            let dst = ptr::addr_of_mut!((*error).message) as *mut u8;
            let text = truncate_utf8(message, PQ_ERROR_MESSAGE_CAPACITY - 1);
            ptr::copy_nonoverlapping(text.as_ptr(), dst, text.len());
            dst.add(text.len()).write(0);
        }
    }
    status
}

fn panic_message(payload: &Box<dyn Any + Send>) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic payload"
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: &PqError) -> String {
        let bytes: Vec<u8> = e.message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn errors_panics_and_success_fill_the_struct() {
        let mut e = PqError { status: PqStatus::Ok, message: [1; PQ_ERROR_MESSAGE_CAPACITY] };
        let s = run(&mut e, || Err(Error::new(PqStatus::InvalidBits, "bits must be 2, 4 or 8")));
        assert_eq!((s, e.status), (PqStatus::InvalidBits, PqStatus::InvalidBits));
        assert_eq!(message(&e), "bits must be 2, 4 or 8");
        let s = run(&mut e, || panic!("boom"));
        assert_eq!(s, PqStatus::Panic);
        assert!(message(&e).contains("boom"));
        assert_eq!(run(&mut e, || Ok(())), PqStatus::Ok);
        assert_eq!(message(&e), "");
        assert_eq!(run(ptr::null_mut(), || Err(Error::new(PqStatus::Overlap, "x"))), PqStatus::Overlap);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let mut e = PqError { status: PqStatus::Ok, message: [0; PQ_ERROR_MESSAGE_CAPACITY] };
        let long = "é".repeat(300);
        run(&mut e, || Err(Error::new(PqStatus::Panic, long.clone())));
        let m = message(&e);
        assert_eq!(m.len(), 254);
        assert!(long.starts_with(&m));
    }
}
