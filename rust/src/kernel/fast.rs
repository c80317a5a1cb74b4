//! The fast kernels: the same scheme as [`super::reference`], bit for bit,
//! written so that LLVM vectorizes the inner loops.
//!
//! One generic source ([`Lane`] element types, `*_impl` functions, all
//! `#[inline(always)]`) is instantiated three times by [`isa_dispatch!`]:
//! under `#[target_feature(enable = "avx512f,avx512bw,avx512vl")]`, under
//! `avx2`, and for the portable baseline, chosen at run time by [`Isa`]. Only
//! IEEE add, subtract, multiply, divide and compare are used on floats, and
//! Rust never contracts `a * b + c` into an FMA, so every instantiation gives
//! the reference's bytes. Conversions from and to f16 / bf16 are written with
//! integer operations (the `half` crate checks for F16C once per value, which
//! stops vectorization) and are tested against `half` for every bit pattern.
//!
//! The entry points work on a run of whole groups of one tensor (a "piece" of
//! the batch scheduler); `first_group` is the index of the piece's first group
//! in its tensor, so that error messages name the same group and flat index as
//! the reference does.

use half::{bf16, f16};

use super::{search, ROUND_MAGIC};
use crate::element::{Values, ValuesMut};
use crate::error::Result;
use crate::layout::{params_error, Layout, ScaleDtype};

/// The instruction set the kernels run with, detected at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64), or any non-x86 target.
    Portable,
    /// x86-64 with AVX2 and F16C.
    Avx2,
    /// x86-64 with AVX-512 F, BW and VL, and F16C.
    Avx512,
}

impl Isa {
    /// The best instruction set of this CPU. Cheap after the first call (the
    /// standard library caches the CPUID results).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let f16c = std::arch::is_x86_feature_detected!("f16c");
            if f16c
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Isa::Avx512;
            }
            if f16c && std::arch::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run, for tests and benchmarks.
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Portable => vec![Isa::Portable],
            Isa::Avx2 => vec![Isa::Portable, Isa::Avx2],
            Isa::Avx512 => vec![Isa::Portable, Isa::Avx2, Isa::Avx512],
        }
    }
}

/// Defines `$name(isa, args..)` that calls `$imp::<T>(args..)` compiled for
/// the instruction set `isa`. `isa` must come from [`Isa::detect`] or
/// [`Isa::available`]: that is what makes the `unsafe` calls sound.
macro_rules! isa_dispatch {
    ($(#[$m:meta])* fn $name:ident <$T:ident> ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $imp:ident) => {
        $(#[$m])*
        #[inline]
        fn $name<$T: Lane>(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,f16c")]
                unsafe fn avx2<$T: Lane>($($arg: $ty),*) -> $ret {
                    $imp::<$T, F16c>($($arg),*)
                }
                #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
                unsafe fn avx512<$T: Lane>($($arg: $ty),*) -> $ret {
                    $imp::<$T, F16c>($($arg),*)
                }
                match isa {
                    // SAFETY: an Isa other than Portable is only handed out
                    // after run-time detection of its features.
                    Isa::Avx512 => return unsafe { avx512::<$T>($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2::<$T>($($arg),*) },
                    Isa::Portable => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            $imp::<$T, Soft>($($arg),*)
        }
    };
    // A plain function (no element type), e.g. the GGML block quantizers.
    ($(#[$m:meta])* $vis:vis fn $name:ident ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $imp:path) => {
        $(#[$m])*
        #[inline]
        $vis fn $name(isa: $crate::kernel::Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,f16c")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                match isa {
                    // SAFETY: as above.
                    $crate::kernel::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::kernel::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernel::Isa::Portable => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            $imp($($arg),*)
        }
    };
}
pub(crate) use isa_dispatch;

// ---------------------------------------------------------------------------
// Element types

/// What the fast loops need from an element type, written with plain integer
/// and float operations so that it vectorizes.
pub(crate) trait Lane: Copy + Send + Sync + 'static {
    /// Exact conversion to f32 (same value as `Element::to_f32`).
    fn widen<H: HalfCvt>(self) -> f32;
    /// Round-to-nearest-even conversion from f32 (same bits as `Element::from_f32`).
    fn narrow<H: HalfCvt>(x: f32) -> Self;
    /// Writes `min + q * scale` for every code of one group.
    #[inline(always)]
    fn decode_group<H: HalfCvt, const BITS: u32>(codes: &[u8], scale: f32, min: f32, out: &mut [Self]) {
        decode_values::<Self, H, BITS>(codes, scale, min, out)
    }
    /// A signed integer whose order is the order of the (non-NaN) values,
    /// with -0.0 just below +0.0: min / max reductions over it vectorize.
    type Key: Ord + Copy;
    const KEY_MAX: Self::Key;
    const KEY_MIN: Self::Key;
    fn key(self) -> Self::Key;
    /// The value whose key is `k`, as f32.
    fn unkey(k: Self::Key) -> f32;
}

/// Sign-magnitude to two's complement order: negative values have their
/// magnitude bits flipped. The mapping is its own inverse.
macro_rules! ordered_key {
    ($bits:expr, $i:ty, $u:ty) => {{
        let b = $bits as $i;
        b ^ ((b >> (<$i>::BITS - 1)) as $u >> 1) as $i
    }};
}

impl Lane for f32 {
    #[inline(always)]
    fn widen<H: HalfCvt>(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow<H: HalfCvt>(x: f32) -> Self {
        x
    }
    type Key = i32;
    const KEY_MAX: i32 = i32::MAX;
    const KEY_MIN: i32 = i32::MIN;
    #[inline(always)]
    fn key(self) -> i32 {
        ordered_key!(self.to_bits(), i32, u32)
    }
    #[inline(always)]
    fn unkey(k: i32) -> f32 {
        f32::from_bits(ordered_key!(k, i32, u32) as u32)
    }
}

impl Lane for f16 {
    #[inline(always)]
    fn widen<H: HalfCvt>(self) -> f32 {
        H::f16_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn narrow<H: HalfCvt>(x: f32) -> Self {
        f16::from_bits(H::f32_to_f16(x))
    }
    #[inline(always)]
    fn decode_group<H: HalfCvt, const BITS: u32>(codes: &[u8], scale: f32, min: f32, out: &mut [Self]) {
        H::decode_group_f16::<BITS>(codes, scale, min, out)
    }
    type Key = i16;
    const KEY_MAX: i16 = i16::MAX;
    const KEY_MIN: i16 = i16::MIN;
    #[inline(always)]
    fn key(self) -> i16 {
        ordered_key!(self.to_bits(), i16, u16)
    }
    #[inline(always)]
    fn unkey(k: i16) -> f32 {
        f16_bits_to_f32(ordered_key!(k, i16, u16) as u16)
    }
}

impl Lane for bf16 {
    #[inline(always)]
    fn widen<H: HalfCvt>(self) -> f32 {
        // bf16 is the top half of an f32: widening is a shift, always exact.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn narrow<H: HalfCvt>(x: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits(x))
    }
    type Key = i16;
    const KEY_MAX: i16 = i16::MAX;
    const KEY_MIN: i16 = i16::MIN;
    #[inline(always)]
    fn key(self) -> i16 {
        ordered_key!(self.to_bits(), i16, u16)
    }
    #[inline(always)]
    fn unkey(k: i16) -> f32 {
        f32::from_bits((ordered_key!(k, i16, u16) as u16 as u32) << 16)
    }
}

/// How f16 values are converted: [`Soft`] (integer code, any CPU) or
/// [`F16c`] (the F16C instructions, exact IEEE conversions as well).
pub(crate) trait HalfCvt: 'static {
    fn f16_to_f32(h: u16) -> f32;
    fn f32_to_f16(x: f32) -> u16;
    /// [`Lane::decode_group`] for f16 output.
    fn decode_group_f16<const BITS: u32>(codes: &[u8], scale: f32, min: f32, out: &mut [f16]);
}

/// f16 conversions in plain integer / float code, which vectorizes.
pub(crate) struct Soft;

impl HalfCvt for Soft {
    #[inline(always)]
    fn f16_to_f32(h: u16) -> f32 {
        f16_bits_to_f32(h)
    }
    #[inline(always)]
    fn f32_to_f16(x: f32) -> u16 {
        f32_to_f16_bits(x)
    }
    #[inline(always)]
    fn decode_group_f16<const BITS: u32>(codes: &[u8], scale: f32, min: f32, out: &mut [f16]) {
        decode_values::<f16, Soft, BITS>(codes, scale, min, out)
    }
}

/// f16 conversions with F16C. Only instantiated inside the AVX2 / AVX-512
/// wrappers of [`isa_dispatch!`], which enable `f16c` and are only called
/// after its run-time detection: that is what makes the intrinsics sound.
#[cfg(target_arch = "x86_64")]
pub(crate) struct F16c;

#[cfg(target_arch = "x86_64")]
impl HalfCvt for F16c {
    #[inline(always)]
    fn f16_to_f32(h: u16) -> f32 {
        use std::arch::x86_64::*;
        // One lane of VCVTPH2PS; in a loop LLVM widens it to whole vectors.
        // SAFETY: F16C is available (see the type's documentation).
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32))) }
    }
    #[inline(always)]
    fn f32_to_f16(x: f32) -> u16 {
        use std::arch::x86_64::*;
        // SAFETY: as above. Immediate 0: round to nearest even.
        unsafe { _mm_extract_epi16::<0>(_mm_cvtps_ph::<0>(_mm_set_ss(x))) as u16 }
    }
    /// VCVTPS2PH does not come out of auto-vectorization: the group is
    /// decoded to f32 by the generic loops into a small buffer (in L1), then
    /// narrowed 8 values at a time.
    #[inline(always)]
    fn decode_group_f16<const BITS: u32>(codes: &[u8], scale: f32, min: f32, out: &mut [f16]) {
        use std::arch::x86_64::*;
        const CHUNK: usize = 256;
        let mut buf = [0f32; CHUNK];
        for (cc, oc) in codes.chunks(CHUNK * BITS as usize / 8).zip(out.chunks_mut(CHUNK)) {
            let wide = &mut buf[..oc.len()];
            decode_values::<f32, F16c, BITS>(cc, scale, min, wide);
            let mut src = wide.chunks_exact(8);
            let mut dst = oc.chunks_exact_mut(8);
            for (s, d) in (&mut src).zip(&mut dst) {
                // SAFETY: F16C and AVX are available (see the type's
                // documentation); 8 f32 are read from `s` and 8 f16 written
                // to `d`, unaligned accesses. Immediate 0: nearest even.
                unsafe {
                    let h = _mm256_cvtps_ph::<0>(_mm256_loadu_ps(s.as_ptr()));
                    _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, h);
                }
            }
            for (s, d) in src.remainder().iter().zip(dst.into_remainder()) {
                *d = f16::from_bits(Self::f32_to_f16(*s));
            }
        }
    }
}

/// f16 bits to f32, exact, branch-free. Subnormals go through an exact
/// subtraction of two normal f32 values, so the result does not depend on
/// denormals-are-zero / flush-to-zero modes.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let a = h & 0x7FFF;
    let shifted = a << 13;
    // Exponent rebias 15 -> 127, and 31 -> 255 for Inf / NaN.
    let normal = shifted.wrapping_add(112 << 23);
    let special = shifted.wrapping_add(224 << 23);
    // m * 2**-24 = (2**-14 + m * 2**-24) - 2**-14, both normal, difference exact.
    let magic = f32::from_bits(113 << 23);
    let sub = (f32::from_bits(shifted.wrapping_add(113 << 23)) - magic).to_bits();
    let bits = if a >= 0x7C00 {
        special
    } else if a >= 0x0400 {
        normal
    } else {
        sub
    };
    f32::from_bits(bits | sign)
}

/// f32 to f16 bits, round to nearest even, branch-free; NaN payloads as the
/// `half` crate's software conversion. The subnormal path adds 0.5 so that
/// the FPU rounds at the f16 subnormal spacing (2**-24); an f32 subnormal
/// input rounds to zero with or without denormals-are-zero.
#[inline(always)]
pub(crate) fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = (b >> 16) & 0x8000;
    let a = b & 0x7FFF_FFFF;
    let sub = (f32::from_bits(a) + 0.5).to_bits().wrapping_sub(0x3F00_0000);
    let odd = (a >> 13) & 1;
    let normal = a.wrapping_sub(112 << 23).wrapping_add(0xFFF + odd) >> 13;
    let nan = 0x7E00 | ((a >> 13) & 0x3FF);
    let h = if a > 0x7F80_0000 {
        nan
    } else if a >= 0x4780_0000 {
        0x7C00 // 2**16 and above (and Inf): Inf
    } else if a >= 0x3880_0000 {
        normal // rounding may carry into the exponent, up to Inf: correct
    } else {
        sub
    };
    (h | sign) as u16
}

/// f32 to bf16 bits, round to nearest even, NaN as the `half` crate does.
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let nan = (b >> 16) | 0x0040;
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    (if b & 0x7FFF_FFFF > 0x7F80_0000 { nan } else { rounded }) as u16
}

// ---------------------------------------------------------------------------
// Entry points (dtype-erased, per piece)

/// Quantizes every group of `input` (a piece whose first group is group
/// `first_group` of its tensor): writes scales, mins and codes, validating
/// each block of groups as it goes. Errors exactly as the reference would,
/// naming the first non-finite value or overflowing range; on error the
/// outputs of the groups before it (and of its block's scales and mins) may
/// have been written. Outputs have exactly the lengths of these groups.
pub(crate) fn encode(
    isa: Isa,
    input: Values<'_>,
    layout: &Layout,
    first_group: usize,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    match input {
        Values::F32(x) => encode_isa(isa, x, layout, first_group, codes, scales, mins),
        Values::F16(x) => encode_isa(isa, x, layout, first_group, codes, scales, mins),
        Values::BF16(x) => encode_isa(isa, x, layout, first_group, codes, scales, mins),
    }
}

/// Dequantize's check of a piece, made just before it is decoded: errors on
/// the first non-finite scale or min.
pub(crate) fn check_params(scales: &[f32], mins: &[f32], first_group: usize) -> Result<()> {
    // Tiny (one pair per group) and vectorizes as is.
    let mut m = 0u32;
    for (s, n) in scales.iter().zip(mins) {
        m = m.max(s.to_bits() & 0x7FFF_FFFF).max(n.to_bits() & 0x7FFF_FFFF);
    }
    if m < 0x7F80_0000 {
        return Ok(());
    }
    let i = (0..scales.len())
        .find(|&i| !(scales[i].is_finite() && mins[i].is_finite()))
        .expect("a non-finite scale or min was seen");
    Err(params_error(first_group + i, scales[i], mins[i]))
}

/// Dequantize: writes `mins + q * scales` for every group.
pub(crate) fn decode(isa: Isa, codes: &[u8], scales: &[f32], mins: &[f32], layout: &Layout, output: ValuesMut<'_>) {
    match output {
        ValuesMut::F32(y) => decode_isa(isa, codes, scales, mins, layout, y),
        ValuesMut::F16(y) => decode_isa(isa, codes, scales, mins, layout, y),
        ValuesMut::BF16(y) => decode_isa(isa, codes, scales, mins, layout, y),
    }
}

isa_dispatch!(fn encode_isa<T>(x: &[T], layout: &Layout, first_group: usize, codes: &mut [u8], scales: &mut [f32], mins: &mut [f32]) -> Result<()> = encode_impl);
isa_dispatch!(fn decode_isa<T>(codes: &[u8], scales: &[f32], mins: &[f32], layout: &Layout, y: &mut [T]) -> () = decode_impl);

// ---------------------------------------------------------------------------
// Generic inner loops

/// The reference's check of the groups of one block, naming the first bad
/// value or range: only reached for a block whose scales are not all finite.
#[cold]
#[inline(never)]
fn check_groups_exactly<T: Lane>(block: &[T], layout: &Layout, first_group: usize) -> Result<()> {
    for (j, group) in block.chunks_exact(layout.group_size).enumerate() {
        if let Some(offset) = group.iter().position(|v| !v.widen::<Soft>().is_finite()) {
            return Err(layout.value_error(first_group + j, offset, group[offset].widen::<Soft>()));
        }
        let (lo, hi) = min_max(group);
        let (lo, hi) = (lo + 0.0, hi + 0.0);
        if !(hi - lo).is_finite() {
            return Err(layout.range_error(first_group + j, lo, hi));
        }
    }
    Ok(())
}

/// Min and max of a group of finite values, as f32. Computed on order keys
/// (integer min / max reductions vectorize; float ones need fast-math).
/// Min and max are exact, so this is the reference's `lo` and `hi` up to the
/// sign of a zero, which the caller removes with `+ 0.0`.
#[inline(always)]
fn min_max<T: Lane>(xs: &[T]) -> (f32, f32) {
    let (lo, hi) = min_max_keys(xs);
    (T::unkey(lo), T::unkey(hi))
}

/// The keys of the min and max of a group.
#[inline(always)]
pub(crate) fn min_max_keys<T: Lane>(xs: &[T]) -> (T::Key, T::Key) {
    let mut lo = T::KEY_MAX;
    let mut hi = T::KEY_MIN;
    for &v in xs {
        let k = v.key();
        lo = lo.min(k);
        hi = hi.max(k);
    }
    (lo, hi)
}

#[inline(always)]
fn encode_impl<T: Lane, H: HalfCvt>(
    x: &[T],
    layout: &Layout,
    first_group: usize,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    match layout.bits {
        2 => encode_bits::<T, H, 2>(x, layout, first_group, codes, scales, mins),
        3 => encode_bits::<T, H, 3>(x, layout, first_group, codes, scales, mins),
        4 => encode_bits::<T, H, 4>(x, layout, first_group, codes, scales, mins),
        8 => encode_bits::<T, H, 8>(x, layout, first_group, codes, scales, mins),
        _ => unreachable!("Layout only admits 2, 3, 4 or 8 bits"),
    }
}

/// Groups whose scales and mins are found before their codes, so that the
/// scale divisions of a block run as one vector operation.
const GROUPS_PER_BLOCK: usize = 16;

#[inline(always)]
fn encode_bits<T: Lane, H: HalfCvt, const BITS: u32>(
    x: &[T],
    layout: &Layout,
    first_group: usize,
    codes: &mut [u8],
    scales: &mut [f32],
    mins: &mut [f32],
) -> Result<()> {
    let g = layout.group_size;
    let qmax = ((1u32 << BITS) - 1) as f32;
    let code_bytes = g * BITS as usize / 8;
    let blocks = x
        .chunks(g * GROUPS_PER_BLOCK)
        .zip(codes.chunks_mut(code_bytes * GROUPS_PER_BLOCK))
        .zip(scales.chunks_mut(GROUPS_PER_BLOCK).zip(mins.chunks_mut(GROUPS_PER_BLOCK)));
    for (b, ((xb, cb), (sb, mb))) in blocks.enumerate() {
        // Keys of every group's min and max, then scales and mins of all of
        // them in one vector loop (no scalar divide per group).
        let mut lo_keys = [T::KEY_MAX; GROUPS_PER_BLOCK];
        let mut hi_keys = [T::KEY_MIN; GROUPS_PER_BLOCK];
        for ((group, lo), hi) in xb.chunks_exact(g).zip(lo_keys.iter_mut()).zip(hi_keys.iter_mut()) {
            (*lo, *hi) = min_max_keys(group);
        }
        for (((scale_out, min_out), &lo), &hi) in sb.iter_mut().zip(mb.iter_mut()).zip(&lo_keys).zip(&hi_keys) {
            // + 0.0: -0.0 behaves like 0.0 and the stored min is never -0.0.
            let (lo, hi) = (T::unkey(lo) + 0.0, T::unkey(hi) + 0.0);
            *scale_out = (hi - lo) / qmax;
            *min_out = lo;
        }
        // The validation, in the same pass: a non-finite value makes the
        // group's max or min key non-finite, so every error of the
        // reference (a non-finite value, or a range `hi - lo` that
        // overflows) shows as a non-finite scale, and only then.
        if sb.iter().fold(0u32, |m, s| m.max(s.to_bits() & 0x7FFF_FFFF)) >= 0x7F80_0000 {
            check_groups_exactly(xb, layout, first_group + b * GROUPS_PER_BLOCK)?;
            unreachable!("a non-finite scale comes from a bad value or range");
        }
        if layout.scheme.scale_dtype == ScaleDtype::F16 {
            // The block has no bad value (checked above), so an overflow here
            // is the first error, as in the search kernel's group order.
            for (j, (s, m)) in sb.iter_mut().zip(mb.iter_mut()).enumerate() {
                (*s, *m) = search::stored(ScaleDtype::F16, *s, *m)
                    .ok_or_else(|| search::f16_error(first_group + b * GROUPS_PER_BLOCK + j, *m, *s))?;
            }
        }
        for ((group, out), (&scale, &lo)) in
            xb.chunks_exact(g).zip(cb.chunks_exact_mut(code_bytes)).zip(sb.iter().zip(mb.iter()))
        {
            group_codes::<T, H>(BITS, group, lo, scale, out);
        }
    }
    Ok(())
}

/// The code of one value, as the reference computes it: subtraction and
/// division each rounded to f32, clamp, round half to even by adding 2**23.
/// The low byte of the sum's bits is the rounded integer (it is below 256).
/// The clamp at 0 only acts for a min rounded to float16 above the group's
/// minimum (with the group's own minimum `v - lo >= 0`).
#[inline(always)]
fn code<T: Lane, H: HalfCvt>(v: T, lo: f32, scale: f32, qmax: f32) -> u8 {
    let t = (v.widen::<H>() - lo) / scale;
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < qmax { t } else { qmax };
    (t + ROUND_MAGIC).to_bits() as u8
}

/// The codes of one group for a stored `lo` (min) and `scale`: all 0 when
/// `scale` is 0 (a constant group, or a searched scale of 0), else [`code`]
/// of every value.
#[inline(always)]
pub(crate) fn group_codes<T: Lane, H: HalfCvt>(bits: u32, xs: &[T], lo: f32, scale: f32, codes: &mut [u8]) {
    if scale == 0.0 {
        codes.fill(0);
        return;
    }
    match bits {
        2 => encode_group::<T, H, 2>(xs, lo, scale, codes),
        3 => encode_group::<T, H, 3>(xs, lo, scale, codes),
        4 => encode_group::<T, H, 4>(xs, lo, scale, codes),
        8 => encode_group::<T, H, 8>(xs, lo, scale, codes),
        _ => unreachable!("Layout only admits 2, 3, 4 or 8 bits"),
    }
}

#[inline(always)]
fn encode_group<T: Lane, H: HalfCvt, const BITS: u32>(xs: &[T], lo: f32, scale: f32, codes: &mut [u8]) {
    let qmax = ((1u32 << BITS) - 1) as f32;
    let c = |v: T| code::<T, H>(v, lo, scale, qmax);
    match BITS {
        8 => {
            for (o, &v) in codes.iter_mut().zip(xs) {
                *o = c(v);
            }
        }
        4 => {
            for (o, v) in codes.iter_mut().zip(xs.chunks_exact(2)) {
                *o = c(v[0]) | (c(v[1]) << 4);
            }
        }
        2 => {
            for (o, v) in codes.iter_mut().zip(xs.chunks_exact(4)) {
                *o = c(v[0]) | (c(v[1]) << 2) | (c(v[2]) << 4) | (c(v[3]) << 6);
            }
        }
        3 => {
            // Eight 3-bit codes are one 24-bit little-endian word.
            for (o, v) in codes.chunks_exact_mut(3).zip(xs.chunks_exact(8)) {
                let mut w = 0u32;
                for (k, &x) in v.iter().enumerate() {
                    w |= (c(x) as u32) << (3 * k);
                }
                o[0] = w as u8;
                o[1] = (w >> 8) as u8;
                o[2] = (w >> 16) as u8;
            }
        }
        _ => unreachable!(),
    }
}

#[inline(always)]
fn decode_impl<T: Lane, H: HalfCvt>(codes: &[u8], scales: &[f32], mins: &[f32], layout: &Layout, y: &mut [T]) {
    match layout.bits {
        2 => decode_bits::<T, H, 2>(codes, scales, mins, layout.group_size, y),
        3 => decode_bits::<T, H, 3>(codes, scales, mins, layout.group_size, y),
        4 => decode_bits::<T, H, 4>(codes, scales, mins, layout.group_size, y),
        8 => decode_bits::<T, H, 8>(codes, scales, mins, layout.group_size, y),
        _ => unreachable!("Layout only admits 2, 3, 4 or 8 bits"),
    }
}

#[inline(always)]
fn decode_bits<T: Lane, H: HalfCvt, const BITS: u32>(
    codes: &[u8],
    scales: &[f32],
    mins: &[f32],
    g: usize,
    y: &mut [T],
) {
    let groups = codes.chunks_exact(g * BITS as usize / 8).zip(y.chunks_exact_mut(g)).zip(scales.iter().zip(mins));
    for ((group_codes, out), (&scale, &min)) in groups {
        T::decode_group::<H, BITS>(group_codes, scale, min, out);
    }
}

/// `min + q * scale` for the codes of (part of) a group, unpacked in
/// registers with interleaved stores.
#[inline(always)]
fn decode_values<T: Lane, H: HalfCvt, const BITS: u32>(codes: &[u8], scale: f32, min: f32, out: &mut [T]) {
    // Multiply then add, each rounded: Rust never fuses them.
    let value = |q: u8| T::narrow::<H>(min + q as f32 * scale);
    match BITS {
        8 => {
            for (o, &b) in out.iter_mut().zip(codes) {
                *o = value(b);
            }
        }
        4 => {
            for (o, &b) in out.chunks_exact_mut(2).zip(codes) {
                o[0] = value(b & 0x0F);
                o[1] = value(b >> 4);
            }
        }
        2 => {
            for (o, &b) in out.chunks_exact_mut(4).zip(codes) {
                o[0] = value(b & 0x03);
                o[1] = value((b >> 2) & 0x03);
                o[2] = value((b >> 4) & 0x03);
                o[3] = value(b >> 6);
            }
        }
        3 => {
            for (o, b) in out.chunks_exact_mut(8).zip(codes.chunks_exact(3)) {
                let w = b[0] as u32 | (b[1] as u32) << 8 | (b[2] as u32) << 16;
                for (k, o) in o.iter_mut().enumerate() {
                    *o = value(((w >> (3 * k)) & 7) as u8);
                }
            }
        }
        _ => unreachable!(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::Element;

    #[test]
    fn f16_to_f32_matches_half_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    /// Checks the f32 -> f16 / bf16 conversions on every `step`-th bit
    /// pattern plus the neighbourhood of every f16 / bf16 rounding boundary.
    fn check_narrowing(step: usize) {
        let check = |b: u32| {
            let x = f32::from_bits(b);
            let (h, want) = (f32_to_f16_bits(x), f16::from_f32(x).to_bits());
            let h_nan = want & 0x7C00 == 0x7C00 && want & 0x03FF != 0;
            assert!(
                h == want || (h_nan && h & 0x7C00 == 0x7C00 && h & 0x3FF != 0),
                "f16 {b:#010x}: {h:#06x} vs {want:#06x}"
            );
            let (r, want) = (f32_to_bf16_bits(x), <bf16 as Element>::from_f32(x).to_bits());
            assert_eq!(r, want, "bf16 {b:#010x}");
        };
        for b in (0..=u32::MAX).step_by(step) {
            check(b);
        }
        for top in 0..=u16::MAX as u32 {
            // bf16 boundaries (bit 15) and, through the exponents, f16 ones.
            for low in [0u32, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                check((top << 16) | low);
            }
        }
        for e in 0..256u32 {
            for m in [0u32, 1, 0xFFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7FE000, 0x7FEFFF, 0x7FF000, 0x7FF001, 0x7FFFFF]
            {
                check((e << 23) | m);
                check(0x8000_0000 | (e << 23) | m);
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn f16c_conversions_match_soft_ones() {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        for h in 0..=u16::MAX {
            let (a, b) = (F16c::f16_to_f32(h), Soft::f16_to_f32(h));
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{h:#06x}");
        }
        for b in (0..=u32::MAX).step_by(997).chain((0..=0xFFFFu32).map(|t| t << 16 | 0x1000)) {
            let x = f32::from_bits(b);
            let (a, c) = (F16c::f32_to_f16(x), Soft::f32_to_f16(x));
            let nan = |h: u16| h & 0x7C00 == 0x7C00 && h & 0x3FF != 0;
            assert!(a == c || (nan(a) && nan(c)), "{b:#010x}: {a:#06x} vs {c:#06x}");
        }
    }

    #[test]
    fn narrowing_matches_half_sampled() {
        check_narrowing(4099);
    }

    /// Every f32 bit pattern: about 30 s in release mode.
    #[test]
    #[ignore]
    fn narrowing_matches_half_exhaustive() {
        check_narrowing(1);
    }
}
