//! The transposed copy axis-0 quantize and dequantize make of a tile of
//! columns (`crate::batch`): `dst[c * dst_stride + r] = src[r * src_stride + c]`.
//! Element by element this is a strided load or store per value; here it
//! runs in 8 x 8 blocks, each read as 8 row pieces and written as 8 column
//! pieces, transposed in registers (AVX for 4-byte values, SSE2 for 2-byte
//! ones). It only moves bits, so every instruction set gives the same bytes.

use super::Isa;
use crate::element::Element;

/// Block side: 8 values of a row piece are one AVX (f32) or SSE (f16) register.
const B: usize = 8;

/// Writes `dst[c * dst_stride + r] = src[r * src_stride + c]` for
/// `r < rows`, `c < cols`.
///
/// # Panics
/// If `src` or `dst` is too short for those positions (a caller's bug).
pub(crate) fn transpose<T: Element>(
    isa: Isa,
    (src, src_stride): (&[T], usize),
    (dst, dst_stride): (&mut [T], usize),
    rows: usize,
    cols: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src.len() >= (rows - 1) * src_stride + cols, "transpose: source too short");
    assert!(dst.len() >= (cols - 1) * dst_stride + rows, "transpose: destination too short");
    // Blocks along the longer side first: every cache line of the long,
    // strided side is then read (or written) whole in one visit.
    let (row_blocks, col_blocks) = (rows / B, cols / B);
    let mut block = |rb: usize, cb: usize| {
        let (r0, c0) = (rb * B, cb * B);
        // SAFETY: `r0 + B <= rows` and `c0 + B <= cols`, so with the asserts
        // above every row piece `src[(r0 + i) * src_stride + c0..][..B]` and
        // column piece `dst[(c0 + j) * dst_stride + r0..][..B]` is in bounds;
        // `block8` is only called for the instruction sets it needs.
        unsafe {
            block8(
                isa,
                src.as_ptr().add(r0 * src_stride + c0),
                src_stride,
                dst.as_mut_ptr().add(c0 * dst_stride + r0),
                dst_stride,
            )
        }
    };
    if rows >= cols {
        for rb in 0..row_blocks {
            prefetch_rows(src, src_stride, (rb + AHEAD) * B, rows, cols);
            for cb in 0..col_blocks {
                block(rb, cb);
            }
        }
    } else {
        for cb in 0..col_blocks {
            for rb in 0..row_blocks {
                block(rb, cb);
            }
        }
    }
    // The edges that do not fill a block.
    let scalar = |dst: &mut [T], rs: std::ops::Range<usize>, cs: std::ops::Range<usize>| {
        for r in rs {
            for c in cs.clone() {
                dst[c * dst_stride + r] = src[r * src_stride + c];
            }
        }
    };
    scalar(dst, row_blocks * B..rows, 0..cols);
    scalar(dst, 0..row_blocks * B, col_blocks * B..cols);
}

/// Blocks of rows read ahead of the one being transposed: rows far apart
/// are in different pages, which the hardware prefetchers do not cross.
const AHEAD: usize = 4;

/// Asks for the cache lines of `src`'s rows `r0..r0 + B` (columns
/// `..cols`), those that exist.
#[inline(always)]
fn prefetch_rows<T>(src: &[T], src_stride: usize, r0: usize, rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    for r in r0..rows.min(r0 + B) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let row = &src[r * src_stride..][..cols];
        for at in (0..cols).step_by(64 / std::mem::size_of::<T>()).chain([cols - 1]) {
            // SAFETY: a prefetch has no effect but on caches; the address is
            // in `src`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row[at..].as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, src_stride, r0, rows, cols);
}

/// One 8 x 8 block: row `i` is the 8 values at `src + i * src_stride`, and
/// column `j` goes to the 8 values at `dst + j * dst_stride`.
///
/// # Safety
/// Those 16 runs of 8 values must be in bounds; `isa` must be available.
#[inline(always)]
unsafe fn block8<T: Element>(isa: Isa, src: *const T, src_stride: usize, dst: *mut T, dst_stride: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::any::TypeId;
        let t = TypeId::of::<T>();
        // SAFETY (both): the caller's; f32, f16 and bf16 are plain bits of
        // their size, which is all the register code moves (other types, if
        // any implement `Element`, take the loop below).
        if t == TypeId::of::<f32>() && isa != Isa::Portable {
            return unsafe { block8_avx(src.cast(), src_stride, dst.cast(), dst_stride) };
        }
        if t == TypeId::of::<half::f16>() || t == TypeId::of::<half::bf16>() {
            return unsafe { block8_sse2(src.cast(), src_stride, dst.cast(), dst_stride) };
        }
    }
    let _ = isa;
    for i in 0..B {
        for j in 0..B {
            // SAFETY: the caller's.
            unsafe { *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j) };
        }
    }
}

/// [`block8`] of 4-byte values: the classic AVX 8 x 8 transpose
/// (unpack pairs, shuffle quads, swap 128-bit halves).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block8_avx(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's (8 runs of 8 f32 each side, AVX available).
    unsafe {
        let r: [__m256; B] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for j in 0..4 {
            _mm256_storeu_ps(dst.add(j * dst_stride), _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]));
            _mm256_storeu_ps(dst.add((j + 4) * dst_stride), _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]));
        }
    }
}

/// [`block8`] of 2-byte values with SSE2 (x86-64's baseline): interleave
/// 16-, 32- and 64-bit pieces.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block8_sse2(src: *const u16, src_stride: usize, dst: *mut u16, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's (8 runs of 8 u16 each side); SSE2 is baseline.
    unsafe {
        let r: [__m128i; B] = std::array::from_fn(|i| _mm_loadu_si128(src.add(i * src_stride).cast()));
        let a = [
            _mm_unpacklo_epi16(r[0], r[1]),
            _mm_unpackhi_epi16(r[0], r[1]),
            _mm_unpacklo_epi16(r[2], r[3]),
            _mm_unpackhi_epi16(r[2], r[3]),
            _mm_unpacklo_epi16(r[4], r[5]),
            _mm_unpackhi_epi16(r[4], r[5]),
            _mm_unpacklo_epi16(r[6], r[7]),
            _mm_unpackhi_epi16(r[6], r[7]),
        ];
        let b = [
            _mm_unpacklo_epi32(a[0], a[2]),
            _mm_unpackhi_epi32(a[0], a[2]),
            _mm_unpacklo_epi32(a[1], a[3]),
            _mm_unpackhi_epi32(a[1], a[3]),
            _mm_unpacklo_epi32(a[4], a[6]),
            _mm_unpackhi_epi32(a[4], a[6]),
            _mm_unpacklo_epi32(a[5], a[7]),
            _mm_unpackhi_epi32(a[5], a[7]),
        ];
        for j in 0..4 {
            _mm_storeu_si128(dst.add(2 * j * dst_stride).cast(), _mm_unpacklo_epi64(b[j], b[j + 4]));
            _mm_storeu_si128(dst.add((2 * j + 1) * dst_stride).cast(), _mm_unpackhi_epi64(b[j], b[j + 4]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn check<T: Element + PartialEq + std::fmt::Debug>(make: impl Fn(usize) -> T) {
        for (rows, cols) in [(1, 1), (8, 8), (16, 16), (13, 5), (5, 29), (64, 16), (16, 64), (24, 17), (3, 40)] {
            for (src_pad, dst_pad) in [(0, 0), (3, 11)] {
                let (ss, ds) = (cols + src_pad, rows + dst_pad);
                let src: Vec<T> = (0..rows * ss).map(&make).collect();
                let fill = make(usize::MAX / 2);
                let mut want = vec![fill; cols * ds];
                for r in 0..rows {
                    for c in 0..cols {
                        want[c * ds + r] = src[r * ss + c];
                    }
                }
                for isa in Isa::available() {
                    let mut got = vec![fill; cols * ds];
                    transpose(isa, (&src, ss), (&mut got, ds), rows, cols);
                    assert_eq!(got, want, "{rows} x {cols} pads {src_pad} {dst_pad} {isa:?}");
                }
            }
        }
    }

    #[test]
    fn every_isa_transposes_every_shape() {
        check(|i| i as f32 * 0.5 - 3.0);
        // Finite values only (NaN != NaN): exponent bits below all ones.
        check(|i| f16::from_bits((i as u16 ^ 0x5a5a) & 0x3fff));
        check(|i| bf16::from_bits((i as u16).rotate_left(3) & 0x3fff));
    }
}
