//! The quantization kernels: the affine per-group scheme of docs/scheme.md over
//! safe slices. `fast` holds the vectorized kernels every entry point of
//! pyquant ends in (through the batch scheduler, [`crate::batch`], which
//! checks lengths and splits work across threads); `reference` keeps the
//! original scalar code that defines their bytes, compiled only for tests and
//! for the `reference` feature (the fuzz targets' and the bench's oracle).
//! `search` quantizes with the other schemes (searched scales, float16
//! scales and mins): one scalar implementation that defines their bytes.
//! `transpose` is the blocked transposed copy of axis-0's column tiles.
//!
//! Groups are `group_size` consecutive values; since rows are a multiple of
//! the group size, a flat tensor is just a sequence of groups, and group `i`
//! owns bytes `i * G * bits / 8 ..` of the codes and entry `i` of scales/mins.

pub(crate) mod fast;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
pub(crate) mod search;
pub(crate) mod transpose;

pub use fast::Isa;

/// Packs codes of `bits` bits as one little-endian bit stream: code `i` at
/// bit `i * bits` of the stream, that is from bit `i * bits % 8` of byte
/// `i * bits / 8`, spilling into the next byte when it does not fit (only
/// with 3 bits). `out` must hold exactly `q.len() * bits / 8` bytes.
#[cfg(any(test, feature = "reference"))]
pub(crate) fn pack_codes(q: &[u8], bits: u32, out: &mut [u8]) {
    out.fill(0);
    for (i, &c) in q.iter().enumerate() {
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        out[byte] |= c << shift;
        if shift + bits as usize > 8 {
            out[byte + 1] |= c >> (8 - shift);
        }
    }
}

/// Code `i` of a bit stream packed by [`pack_codes`].
#[cfg(any(test, feature = "reference"))]
pub(crate) fn unpack_code(codes: &[u8], i: usize, bits: u32) -> u8 {
    let bit = i * bits as usize;
    let (byte, shift) = (bit / 8, bit % 8);
    let next = if shift + bits as usize > 8 { codes[byte + 1] as u16 } else { 0 };
    (((codes[byte] as u16 | next << 8) >> shift) & ((1 << bits) - 1)) as u8
}

/// Adding then subtracting 2**23 rounds a float in `[0, 2**23)` to the nearest
/// integer, ties to even (IEEE round-to-nearest on the addition). Unlike
/// `round_ties_even` it needs no SSE4.1 and vectorizes on any x86-64.
pub(crate) const ROUND_MAGIC: f32 = 8_388_608.0;
