//! pq_quantize, pq_quantize_copy and pq_dequantize on parameters and buffers
//! decoded from the fuzz input, against `pyquant::kernel::reference`.
//!
//! Every buffer lives in one arena owned here: NULL, too short, misaligned
//! and overlapping buffers are real, and no length passed is a lie. An
//! oracle predicts from the parameters alone whether a call must succeed;
//! on success the arena must hold exactly the reference's output (and
//! nothing else changed); on error it must be untouched, except that after a
//! bad value (`NonFinite`) the call's outputs may be partly written.
#![no_main]

use std::os::raw::c_void;

use half::{bf16, f16};
use pyquant::ffi::{pq_dequantize, pq_quantize, pq_quantize_copy};
use pyquant::kernel::reference;
use pyquant::{Layout, PqStatus};
use pyquant_fuzz::*;

pyquant_fuzz::fuzz_target!(run);

/// Largest tensor (in values) the target allocates; larger ones are passed
/// as NULL with their length.
const MAX_VALUES: usize = 4096;

fn valid_dtype(code: u32) -> bool {
    code <= 2
}

/// Places buffers one after another in a future arena, 8-aligned plus a
/// chosen misalignment, with canary gaps between them.
struct Placer {
    next: usize,
    placed: Vec<Buf>,
}

impl Placer {
    fn new() -> Placer {
        Placer { next: 8, placed: vec![] }
    }

    fn own(&mut self, len: usize, elem: usize, misalign: usize) -> Buf {
        let at = self.next.next_multiple_of(8) + misalign;
        let b = Buf { at: Some(at), len, elem };
        self.next = at + b.bytes() + 8;
        self.placed.push(b);
        b
    }

    /// An output buffer of `need` elements, in a mode chosen by the input.
    fn output(&mut self, r: &mut Reader, need: usize, elem: usize) -> Buf {
        let mode = r.u8() % 16;
        if need > MAX_VALUES * 4 {
            return Buf::null(if mode % 2 == 0 { need } else { 0 }, elem);
        }
        match mode {
            0 => Buf::null(need, elem),
            1 => Buf::null(0, elem),
            2 => self.own(need.saturating_sub(1 + r.below(3)), elem, 0),
            3 => self.own(need + r.below(8), elem, 0),
            4 | 5 => {
                // Inside (or right after) a buffer placed before.
                let targets: Vec<Buf> = self.placed.iter().copied().filter(|b| b.at.is_some()).collect();
                if targets.is_empty() {
                    return self.own(need, elem, 0);
                }
                let t = targets[r.below(targets.len())];
                let mut at = t.at.unwrap() + r.below(t.bytes() + 1);
                if mode == 4 {
                    at -= at % elem; // aligned, so that the overlap is what is refused
                }
                let b = Buf { at: Some(at), len: need, elem };
                self.next = self.next.max(at + b.bytes() + 8);
                self.placed.push(b);
                b
            }
            6 => self.own(need, elem, 1 + r.below(3)),
            _ => self.own(need, elem, 0),
        }
    }

    fn arena(&self) -> Arena {
        Arena::new(self.next + 16)
    }
}

fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let dtype = r.dtype_code();
    let es = elem_size(dtype);
    let bits = r.bits();
    let row_len = r.size(64);
    let rows = r.below(9);
    let group_size = match r.u8() % 4 {
        0 => row_len,
        1 => r.size(64),
        _ => [1, 2, 4, 8, 16, 32, 64][r.below(7)],
    };
    let mut input_len = rows.checked_mul(row_len).unwrap_or(usize::MAX);
    if r.u8() % 8 == 0 {
        input_len = input_len.wrapping_add(r.below(3)).wrapping_sub(1);
    }
    let misalign = r.below(8);
    let threads = 1 + r.below(3);

    let layout = Layout::new(input_len, row_len, bits, group_size);
    let (need_codes, need_groups) = match &layout {
        Ok(l) => (l.codes_len, l.n_groups),
        Err(_) => (input_len.min(MAX_VALUES) / 2, input_len.min(MAX_VALUES) / group_size.max(1)),
    };

    let mut p = Placer::new();
    let input = if input_len <= MAX_VALUES {
        p.own(input_len, es, if r.u8() % 4 == 0 { misalign } else { 0 })
    } else {
        Buf::null(input_len, es)
    };
    let codes = p.output(&mut r, need_codes, 1);
    let scales = p.output(&mut r, need_groups, 4);
    let mins = p.output(&mut r, need_groups, 4);
    let copy_extra = usize::from(input.at.is_some() && r.u8() % 8 == 0);
    let mut arena = p.arena();
    let base = arena.base() as usize;

    let input_bytes = match input.at {
        Some(at) => {
            let bytes = r.element_bytes(dtype, input_len);
            arena.bytes_mut()[at..at + bytes.len()].copy_from_slice(&bytes);
            bytes
        }
        None => vec![],
    };
    let snapshot = arena.snapshot();

    // What the reference makes of it, if the layout and the values are fine.
    let reference_out = match (&layout, valid_dtype(dtype) && input.at.is_some() || input_len == 0) {
        (Ok(l), true) => {
            let x = if input_len == 0 { vec![] } else { to_f32(dtype, &input_bytes) };
            let (mut c, mut s, mut m) = (vec![0u8; l.codes_len], vec![0f32; l.n_groups], vec![0f32; l.n_groups]);
            reference::quantize(&x, l, &mut c, &mut s, &mut m).ok().map(|_| (c, s, m))
        }
        _ => None,
    };
    let outputs_ok = layout.is_ok()
        && !codes.bad_pointer(1, base)
        && !scales.bad_pointer(4, base)
        && !mins.bad_pointer(4, base)
        && codes.len >= need_codes
        && scales.len >= need_groups
        && mins.len >= need_groups;
    let disjoint = |input: Buf| {
        !any_overlap(&[(input.range(), false), (codes.range(), true), (scales.range(), true), (mins.range(), true)])
    };
    let mut expected = snapshot.clone();
    if let Some((c, s, m)) = &reference_out {
        if outputs_ok && disjoint(input) {
            let put = |e: &mut Vec<u8>, b: Buf, bytes: &[u8]| {
                if let Some(at) = b.at {
                    e[at..at + bytes.len()].copy_from_slice(bytes);
                }
            };
            put(&mut expected, codes, c);
            put(&mut expected, scales, &s.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
            put(&mut expected, mins, &m.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
        }
    }

    // pq_quantize: in place.
    let want_ok = valid_dtype(dtype)
        && outputs_ok
        && !input.bad_pointer(es, base)
        && disjoint(input)
        && reference_out.is_some();
    let mut e = new_error();
    let status = unsafe {
        pq_quantize(
            dtype,
            input.ptr::<c_void>(&mut arena),
            input.len,
            row_len,
            bits,
            group_size,
            threads,
            codes.ptr(&mut arena),
            codes.len,
            scales.ptr(&mut arena),
            scales.len,
            mins.ptr(&mut arena),
            mins.len,
            &mut e,
        )
    };
    let msg = check_error(status, &e);
    let outputs = [codes.range(), scales.range(), mins.range()];
    check_outcome("pq_quantize", status, &msg, want_ok, &arena, &snapshot, &expected, &outputs);

    // pq_quantize_copy: any alignment; a byte count.
    arena.restore(&snapshot);
    let copy_in = Buf { at: input.at, len: input.bytes().saturating_add(copy_extra), elem: 1 };
    let copy_layout_ok = copy_in.len % es == 0
        && Layout::new(copy_in.len / es, row_len, bits, group_size).is_ok_and(|l| Ok(l) == layout);
    let want_ok = valid_dtype(dtype)
        && copy_layout_ok
        && outputs_ok
        && !copy_in.bad_pointer(1, base)
        && disjoint(copy_in)
        && reference_out.is_some();
    let mut e = new_error();
    let status = unsafe {
        pq_quantize_copy(
            dtype,
            copy_in.ptr(&mut arena),
            copy_in.len,
            row_len,
            bits,
            group_size,
            threads,
            codes.ptr(&mut arena),
            codes.len,
            scales.ptr(&mut arena),
            scales.len,
            mins.ptr(&mut arena),
            mins.len,
            &mut e,
        )
    };
    let msg = check_error(status, &e);
    let copy_ok_ref = copy_extra == 0; // with an odd byte the expected arena is the snapshot
    check_outcome(
        "pq_quantize_copy",
        status,
        &msg,
        want_ok,
        &arena,
        &snapshot,
        if copy_ok_ref { &expected } else { &snapshot },
        &outputs,
    );

    if let (Some((c, s, m)), Ok(l)) = (reference_out, layout) {
        dequantize(&mut r, l, c, s, m, threads);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_outcome(
    what: &str,
    status: PqStatus,
    msg: &str,
    want_ok: bool,
    arena: &Arena,
    snapshot: &[u8],
    expected: &[u8],
    outputs: &[std::ops::Range<usize>],
) {
    trace(what, status);
    if want_ok {
        assert_eq!(status, PqStatus::Ok, "{what}: expected success, got {status:?}: {msg}");
        if let Some(i) = first_diff(arena.bytes(), expected) {
            panic!("{what}: arena byte {i} is {:#x}, expected {:#x} (reference output, or an untouched canary)", arena.bytes()[i], expected[i]);
        }
    } else {
        assert_ne!(status, PqStatus::Ok, "{what}: expected an error, got success");
        let writable = if status == PqStatus::NonFinite { outputs } else { &[] };
        if let Some(i) = first_diff_outside(arena.bytes(), snapshot, writable) {
            panic!("{what}: failed with {status:?} ({msg}) but changed arena byte {i}");
        }
    }
}

/// pq_dequantize of the reference's output, parameters and buffers perturbed.
fn dequantize(r: &mut Reader, l: Layout, codes_v: Vec<u8>, mut scales_v: Vec<f32>, mut mins_v: Vec<f32>, threads: usize) {
    if r.is_empty() {
        return;
    }
    if !scales_v.is_empty() && r.u8() % 4 == 0 {
        let k = r.below(scales_v.len());
        let v = f32::from_bits(r.u32());
        if r.bool() { scales_v[k] = v } else { mins_v[k] = v }
    }
    let dtype = r.dtype_code();
    let es = elem_size(dtype);
    let (mut row_len, mut bits, mut group_size, mut out_len) = (l.row_len, l.bits, l.group_size, l.len);
    match r.u8() % 8 {
        0 => bits = r.bits(),
        1 => group_size = r.size(64),
        2 => row_len = r.size(64),
        3 => out_len = out_len.wrapping_add(r.below(3)).wrapping_sub(1),
        _ => {}
    }
    let len_delta = |r: &mut Reader, n: usize| if r.u8() % 8 == 0 { (n + r.below(3)).saturating_sub(1) } else { n };
    let mut p = Placer::new();
    let codes = p.own(len_delta(r, codes_v.len()), 1, 0);
    let scales = p.own(len_delta(r, scales_v.len()), 4, 0);
    let mins = p.own(len_delta(r, mins_v.len()), 4, 0);
    // The output's length is also the layout's: no separate buffer size.
    let output = if out_len > MAX_VALUES { Buf::null(out_len, es) } else { p.output(r, out_len, es) };
    let out_len = output.len;
    let mut arena = p.arena();
    let base = arena.base() as usize;
    {
        let a = arena.bytes_mut();
        let fill = |a: &mut [u8], b: Buf, bytes: &[u8]| {
            let at = b.at.unwrap();
            let n = bytes.len().min(b.bytes());
            a[at..at + n].copy_from_slice(&bytes[..n]);
        };
        fill(a, codes, &codes_v);
        fill(a, scales, &scales_v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
        fill(a, mins, &mins_v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    }
    let snapshot = arena.snapshot();
    let read = |b: Buf, a: &Arena| a.bytes()[b.range()].to_vec();
    let (cb, sb, mb) = (read(codes, &arena), read(scales, &arena), read(mins, &arena));
    let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<f32>>();
    let (sv, mv) = (f32s(&sb), f32s(&mb));

    let layout = Layout::new(out_len, row_len, bits, group_size);
    let reference_out: Option<Vec<u8>> = match (&layout, dtype) {
        (Ok(l), 0..=2) => {
            match dtype {
                0 => {
                    let mut y = vec![0f32; l.len];
                    reference::dequantize(&cb, &sv, &mv, l, &mut y).ok().map(|_| y.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
                1 => {
                    let mut y = vec![f16::ZERO; l.len];
                    reference::dequantize(&cb, &sv, &mv, l, &mut y).ok().map(|_| y.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
                _ => {
                    let mut y = vec![bf16::ZERO; l.len];
                    reference::dequantize(&cb, &sv, &mv, l, &mut y).ok().map(|_| y.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
            }
        }
        _ => None,
    };
    let want_ok = reference_out.is_some()
        && !output.bad_pointer(es, base)
        && !any_overlap(&[(codes.range(), false), (scales.range(), false), (mins.range(), false), (output.range(), true)]);
    let mut expected = snapshot.clone();
    if let (true, Some(y), Some(at)) = (want_ok, &reference_out, output.at) {
        expected[at..at + y.len()].copy_from_slice(y);
    }
    let mut e = new_error();
    let status = unsafe {
        pq_dequantize(
            codes.ptr(&mut arena),
            codes.len,
            scales.ptr(&mut arena),
            scales.len,
            mins.ptr(&mut arena),
            mins.len,
            row_len,
            bits,
            group_size,
            dtype,
            threads,
            output.ptr::<c_void>(&mut arena),
            out_len,
            &mut e,
        )
    };
    let msg = check_error(status, &e);
    check_outcome("pq_dequantize", status, &msg, want_ok, &arena, &snapshot, &expected, &[output.range()]);
}
