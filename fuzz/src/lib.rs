//! Shared pieces of the fuzz targets: decoding parameters from the fuzz
//! bytes, an arena that owns every buffer handed to the C ABI (so pointers
//! may overlap without any length being a lie), and the checks on `PqError`.

use std::os::raw::c_char;

use half::{bf16, f16};
use pyquant::ffi::{PqError, PQ_ERROR_MESSAGE_CAPACITY};
use pyquant::PqStatus;

/// Exports `LLVMFuzzerTestOneInput` calling `$f(&[u8])`.
#[macro_export]
macro_rules! fuzz_target {
    ($f:path) => {
        #[no_mangle]
        pub extern "C" fn LLVMFuzzerTestOneInput(data: *const u8, size: usize) -> i32 {
            let bytes: &[u8] = if size == 0 || data.is_null() {
                &[]
            } else {
                // SAFETY: libFuzzer passes `size` readable bytes.
                unsafe { std::slice::from_raw_parts(data, size) }
            };
            $f(bytes);
            0
        }
    };
}

/// Reads parameters from the fuzz input; zeros once it is exhausted.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n
    }

    /// A dtype code: mostly valid (0, 1, 2), sometimes anything.
    pub fn dtype_code(&mut self) -> u32 {
        match self.u8() % 16 {
            0..=4 => 0,
            5..=9 => 1,
            10..=14 => 2,
            _ => self.u32(),
        }
    }

    /// A bit width: mostly 2, 3, 4 or 8, sometimes anything.
    pub fn bits(&mut self) -> u32 {
        match self.u8() % 9 {
            0 | 1 => 2,
            2 => 3,
            3..=5 => 4,
            6 | 7 => 8,
            _ => self.u32(),
        }
    }

    /// A length: mostly small, sometimes 0 or absurd.
    pub fn size(&mut self, small: usize) -> usize {
        match self.u8() % 16 {
            0 => 0,
            1 => usize::MAX - self.below(4),
            2 => 1usize << (self.u8() % 64),
            3 => self.u16() as usize,
            _ => 1 + self.below(small.max(1)),
        }
    }

    /// `n` f32 values for a tensor: raw bit patterns, or small integers
    /// times a power of two (ties, constants, subnormals, huge ranges).
    pub fn values_f32(&mut self, n: usize) -> Vec<f32> {
        let mode = self.u8();
        let exp = (self.u8() % 80) as i32 - 40;
        let spread = 1 + self.u8() as u32;
        let scale = 2f32.powi(exp);
        (0..n)
            .map(|i| match mode % 4 {
                0 => f32::from_bits(self.u32()),
                1 => ((self.u8() as i8) as f32) * scale,
                2 => ((i as u32).wrapping_mul(2654435761u32.wrapping_add(mode as u32)) % spread) as f32 * scale - scale,
                _ => {
                    if self.u8() == 0xFF {
                        f32::from_bits(self.u32())
                    } else {
                        scale
                    }
                }
            })
            .collect()
    }

    /// Element bytes (little endian) of `n` values of dtype `code` (invalid
    /// codes: 4-byte elements); f16/bf16 sometimes as raw bit patterns.
    pub fn element_bytes(&mut self, code: u32, n: usize) -> Vec<u8> {
        let raw16 = self.u8() % 4 == 0;
        let values = self.values_f32(n);
        let mut out = Vec::with_capacity(n * elem_size(code));
        for (i, v) in values.into_iter().enumerate() {
            match code {
                1 | 2 if raw16 => out.extend_from_slice(&((v.to_bits() ^ (i as u32)) as u16).to_le_bytes()),
                1 => out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
                2 => out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes()),
                _ => out.extend_from_slice(&v.to_bits().to_le_bytes()),
            }
        }
        out
    }
}

/// Size of one element of dtype `code` (4 for invalid codes).
pub fn elem_size(code: u32) -> usize {
    match code {
        1 | 2 => 2,
        _ => 4,
    }
}

/// Element bytes of dtype `code` (0, 1 or 2) as f32 values.
pub fn to_f32(code: u32, bytes: &[u8]) -> Vec<f32> {
    match code {
        0 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        1 => bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        2 => bytes.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        _ => unreachable!(),
    }
}

/// Memory owned by the target. Every pointer given to the ABI points into it
/// with a length that fits, so overlapping buffers are real.
pub struct Arena {
    words: Vec<u64>,
}

pub const CANARY: u8 = 0xA5;

impl Arena {
    pub fn new(bytes: usize) -> Arena {
        let mut a = Arena { words: vec![0; bytes.div_ceil(8) + 1] };
        a.bytes_mut().fill(CANARY);
        a
    }
    pub fn len(&self) -> usize {
        self.words.len() * 8
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: u64 words viewed as bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len()) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len();
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, n) }
    }
    pub fn base(&mut self) -> *mut u8 {
        self.words.as_mut_ptr() as *mut u8
    }
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
    pub fn restore(&mut self, snap: &[u8]) {
        self.bytes_mut().copy_from_slice(snap);
    }
}

/// A buffer handed to the ABI: byte offset in the arena (`None`: NULL) and
/// its length in elements of `elem` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub at: Option<usize>,
    pub len: usize,
    pub elem: usize,
}

impl Buf {
    pub fn null(len: usize, elem: usize) -> Buf {
        Buf { at: None, len, elem }
    }
    pub fn bytes(&self) -> usize {
        self.len.saturating_mul(self.elem)
    }
    /// The pointer for the call (NULL or inside `arena`).
    pub fn ptr<T>(&self, arena: &mut Arena) -> *mut T {
        match self.at {
            None => std::ptr::null_mut(),
            Some(at) => {
                assert!(at + self.bytes() <= arena.len(), "target bug: buffer outside the arena");
                arena.base().wrapping_add(at) as *mut T
            }
        }
    }
    /// NULL with a length, or misaligned for `align`: the ABI must refuse it.
    pub fn bad_pointer(&self, align: usize, arena_base: usize) -> bool {
        match self.at {
            None => self.len != 0,
            Some(at) => (arena_base + at) % align != 0,
        }
    }
    /// Byte range, empty for NULL or len 0.
    pub fn range(&self) -> std::ops::Range<usize> {
        match self.at {
            Some(at) if self.len > 0 => at..at + self.bytes(),
            _ => 0..0,
        }
    }
}

pub fn overlaps(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

/// Whether any output range overlaps any other range (inputs may overlap
/// each other).
pub fn any_overlap(ranges: &[(std::ops::Range<usize>, bool)]) -> bool {
    ranges.iter().enumerate().any(|(i, (a, out_a))| {
        ranges.iter().enumerate().any(|(j, (b, out_b))| i != j && (*out_a || *out_b) && overlaps(a, b))
    })
}

pub fn new_error() -> PqError {
    PqError { status: PqStatus::Panic, message: [0x55; PQ_ERROR_MESSAGE_CAPACITY] }
}

/// The message as text; panics unless it is NUL-terminated UTF-8.
pub fn message(e: &PqError) -> String {
    let bytes: Vec<u8> = e.message.iter().map(|&c: &c_char| c as u8).collect();
    let end = bytes.iter().position(|&b| b == 0).expect("PqError message is not NUL-terminated");
    String::from_utf8(bytes[..end].to_vec()).expect("PqError message is not UTF-8")
}

/// Checks the error struct against the returned status: same status; empty
/// message on success, non-empty on error. Returns the message.
pub fn check_error(status: PqStatus, e: &PqError) -> String {
    assert_eq!(e.status, status, "PqError.status differs from the returned status");
    let m = message(e);
    if status == PqStatus::Ok {
        assert!(m.is_empty(), "message on success: {m:?}");
    } else {
        assert!(!m.is_empty(), "empty message for {status:?}");
    }
    assert_ne!(status, PqStatus::Panic, "caught panic: {m}");
    m
}

/// Index of the first byte where `a` and `b` differ.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// The first byte where `a` and `b` differ outside every range of `outputs`
/// (after a bad value the call's outputs may be partly written, nothing else).
pub fn first_diff_outside(a: &[u8], b: &[u8], outputs: &[std::ops::Range<usize>]) -> Option<usize> {
    a.iter().zip(b).enumerate().position(|(i, (x, y))| x != y && !outputs.iter().any(|r| r.contains(&i)))
}

/// With PQFUZZ_TRACE set, prints each call's status (to see which paths a
/// corpus reaches: `PQFUZZ_TRACE=1 target -runs=0 corpus 2>&1 | sort | uniq -c`).
pub fn trace(what: &str, status: PqStatus) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("PQFUZZ_TRACE").is_some()) {
        eprintln!("trace {what} {status:?}");
    }
}
