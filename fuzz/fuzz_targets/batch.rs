//! pq_quantize_batch / pq_dequantize_batch on several items decoded from the
//! fuzz input (mixed dtypes, bits and groups, some invalid, buffers shared
//! between items), against one single call per item.
//!
//! All buffers, and the items array itself, live in one arena owned here.
//! The batch must agree with the single calls: the first item with a bad
//! pointer / length / layout fails the batch with that item's status and
//! index; else any overlap (across items too, or with the items array)
//! fails it with PQ_STATUS_OVERLAP; else the first item with a buffer too
//! short for its layout; else the first with a bad value;
//! else it succeeds and writes exactly what the single calls write, one
//! after the other. On failure nothing in the arena changes.
#![no_main]

use std::mem::size_of;
use std::ops::Range;
use std::os::raw::c_void;

use pyquant::ffi::{pq_dequantize, pq_dequantize_batch, pq_quantize, pq_quantize_batch, PqDequantizeItem, PqQuantizeItem};
use pyquant::{Layout, PqStatus};
use pyquant_fuzz::*;

pyquant_fuzz::fuzz_target!(run);

const MAX_VALUES: usize = 1024;

/// One item's buffers, in the order of the C struct, and whether each is an output.
struct Desc {
    dtype: u32,
    row_len: usize,
    bits: u32,
    group_size: usize,
    bufs: [(Buf, bool); 4],
}

struct Placer {
    next: usize,
    placed: Vec<Buf>,
}

impl Placer {
    fn own(&mut self, len: usize, elem: usize, misalign: usize) -> Buf {
        let at = self.next.next_multiple_of(8) + misalign;
        let b = Buf { at: Some(at), len, elem };
        self.next = at + b.bytes() + 8;
        self.placed.push(b);
        b
    }

    /// A buffer of `need` elements: usually its own, sometimes NULL, short,
    /// misaligned, or inside an earlier buffer (of this item or another).
    fn buffer(&mut self, r: &mut Reader, need: usize, elem: usize) -> Buf {
        if need > MAX_VALUES * 4 {
            return Buf::null(need, elem);
        }
        match r.u8() % 24 {
            0 => Buf::null(need, elem),
            1 => Buf::null(0, elem),
            2 => self.own(need.saturating_sub(1), elem, 0),
            3 => self.own(need + 1, elem, 0),
            4..=6 => {
                let t = self.placed[r.below(self.placed.len())];
                let mut at = t.at.unwrap() + r.below(t.bytes() + 1);
                at -= at % elem;
                let b = Buf { at: Some(at), len: need, elem };
                self.next = self.next.max(at + b.bytes() + 8);
                self.placed.push(b);
                b
            }
            7 => self.own(need, elem, 1),
            _ => self.own(need, elem, 0),
        }
    }
}

fn params(r: &mut Reader) -> (u32, u32, usize, usize, usize) {
    let dtype = r.dtype_code();
    let bits = r.bits();
    let row_len = if r.u8() % 8 == 0 { r.size(64) } else { [8, 16, 32, 64, 24, 12][r.below(6)] };
    let group_size = match r.u8() % 4 {
        0 => row_len,
        1 => r.size(64),
        _ => [4, 8, 16, 32][r.below(4)],
    };
    let len = if row_len > MAX_VALUES { row_len } else { row_len * r.below(5) };
    (dtype, bits, row_len, group_size, len)
}

fn needs(len: usize, row_len: usize, bits: u32, group_size: usize) -> (usize, usize) {
    match Layout::new(len, row_len, bits, group_size) {
        Ok(l) => (l.codes_len, l.n_groups),
        Err(_) => (len.min(MAX_VALUES) / 2, len.min(MAX_VALUES) / group_size.clamp(1, 64)),
    }
}

fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let dequantize = r.bool();
    let threads = 1 + r.below(3);
    let n = r.below(6);
    let item_size = if dequantize { size_of::<PqDequantizeItem>() } else { size_of::<PqQuantizeItem>() };
    let mut p = Placer { next: 8, placed: vec![] };
    // The items array is a buffer of the call too (an input).
    let items_buf = p.own(n, item_size, 0);
    let items_null = n > 0 && r.u8() == 0xFF;

    let mut descs = vec![];
    let mut fills: Vec<(Buf, Vec<u8>)> = vec![];
    for _ in 0..n {
        let (dtype, bits, row_len, group_size, len) = params(&mut r);
        let es = elem_size(dtype);
        let (need_codes, need_groups) = needs(len, row_len, bits, group_size);
        let d = if !dequantize {
            let input = if r.u8() % 8 == 0 && p.placed.len() > 1 && len <= MAX_VALUES {
                // The same memory as an earlier buffer (inputs may overlap).
                let t = p.placed[1 + r.below(p.placed.len() - 1)];
                let b = Buf { at: t.at.map(|a| a - a % es), len, elem: es };
                p.next = p.next.max(b.at.unwrap() + b.bytes() + 8);
                b
            } else {
                p.buffer(&mut r, len, es)
            };
            if input.at.is_some() && input.len <= MAX_VALUES {
                fills.push((input, r.element_bytes(dtype, input.len)));
            }
            let codes = p.buffer(&mut r, need_codes, 1);
            let scales = p.buffer(&mut r, need_groups, 4);
            let mins = p.buffer(&mut r, need_groups, 4);
            Desc { dtype, row_len, bits, group_size, bufs: [(input, false), (codes, true), (scales, true), (mins, true)] }
        } else {
            let codes = p.buffer(&mut r, need_codes, 1);
            let scales = p.buffer(&mut r, need_groups, 4);
            let mins = p.buffer(&mut r, need_groups, 4);
            if codes.at.is_some() && codes.len <= MAX_VALUES * 4 {
                fills.push((codes, (0..codes.len).map(|_| r.u8()).collect()));
            }
            for b in [scales, mins] {
                if b.at.is_some() && b.len <= MAX_VALUES {
                    let v = r.values_f32(b.len);
                    fills.push((b, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
                }
            }
            let output = p.buffer(&mut r, len, es);
            Desc { dtype, row_len, bits, group_size, bufs: [(codes, false), (scales, false), (mins, false), (output, true)] }
        };
        descs.push(d);
    }

    let mut arena = Arena::new(p.next + 16);
    for (b, bytes) in &fills {
        let at = b.at.unwrap();
        arena.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
    }
    // The C items, written into the arena (after the data, which they may overlap).
    let items_ptr = items_buf.ptr::<u8>(&mut arena);
    for (i, d) in descs.iter().enumerate() {
        let [a, b, c, o] = d.bufs.map(|(b, _)| b);
        unsafe {
            let at = items_ptr.add(i * item_size);
            if dequantize {
                let item = PqDequantizeItem {
                    codes: a.ptr(&mut arena),
                    codes_len: a.len,
                    scales: b.ptr(&mut arena),
                    scales_len: b.len,
                    mins: c.ptr(&mut arena),
                    mins_len: c.len,
                    row_len: d.row_len,
                    bits: d.bits,
                    group_size: d.group_size,
                    dtype: d.dtype,
                    output: o.ptr(&mut arena),
                    output_len: o.len,
                    axis: 0,
                };
                (at as *mut PqDequantizeItem).write_unaligned(item);
            } else {
                let item = PqQuantizeItem {
                    dtype: d.dtype,
                    input: a.ptr(&mut arena),
                    input_len: a.len,
                    row_len: d.row_len,
                    bits: d.bits,
                    group_size: d.group_size,
                    codes: b.ptr(&mut arena),
                    codes_len: b.len,
                    scales: c.ptr(&mut arena),
                    scales_len: c.len,
                    mins: o.ptr(&mut arena),
                    mins_len: o.len,
                    // Min-max, f32 scales: the fuzzed oracle is the min-max reference.
                    method: 0,
                    scale_dtype: 0,
                    importance: std::ptr::null(),
                    importance_len: 0,
                    axis: 0,
                };
                (at as *mut PqQuantizeItem).write_unaligned(item);
            }
        }
    }
    let snapshot = arena.snapshot();
    // Items are read from the snapshot: a single call may write over the
    // items array (which a batch would refuse).
    let read_item = |i: usize| -> [u8; 128] {
        let mut raw = [0u8; 128];
        let at = items_buf.at.unwrap() + i * item_size;
        raw[..item_size].copy_from_slice(&snapshot[at..at + item_size]);
        raw
    };

    // Single calls, one per item, each on the untouched arena.
    let single = |i: usize| -> PqStatus {
        let raw = read_item(i);
        let mut e = new_error();
        let status = unsafe {
            if dequantize {
                let t = (raw.as_ptr() as *const PqDequantizeItem).read_unaligned();
                pq_dequantize(t.codes, t.codes_len, t.scales, t.scales_len, t.mins, t.mins_len, t.row_len, t.bits, t.group_size, t.dtype, threads, t.output, t.output_len, &mut e)
            } else {
                let t = (raw.as_ptr() as *const PqQuantizeItem).read_unaligned();
                pq_quantize(t.dtype, t.input, t.input_len, t.row_len, t.bits, t.group_size, threads, t.codes, t.codes_len, t.scales, t.scales_len, t.mins, t.mins_len, &mut e)
            }
        };
        check_error(status, &e);
        status
    };
    let mut statuses = vec![];
    for i in 0..n {
        arena.restore(&snapshot);
        let s = single(i);
        if s != PqStatus::Ok {
            // After a bad value the item's outputs may be partly written.
            let outputs: Vec<Range<usize>> = match s {
                PqStatus::NonFinite => descs[i].bufs.iter().filter(|(_, out)| *out).map(|(b, _)| b.range()).collect(),
                _ => vec![],
            };
            let changed = first_diff_outside(arena.bytes(), &snapshot, &outputs);
            assert!(changed.is_none(), "single call of item {i} failed with {s:?} but wrote");
        }
        statuses.push(s);
    }
    // The single calls one after the other: what a successful batch writes.
    arena.restore(&snapshot);
    for i in 0..n {
        single(i);
    }
    let sequential = arena.snapshot();

    // The oracle.
    let mut ranges: Vec<(Range<usize>, bool)> = vec![(items_buf.range(), false)];
    for d in &descs {
        for (b, out) in d.bufs {
            ranges.push((b.range(), out));
        }
    }
    // Buffer lengths against the layout are checked with the values, after
    // the overlaps (crate::batch); pointers, dtype and layout before them.
    let is_region_error =
        |s: PqStatus| !matches!(s, PqStatus::Ok | PqStatus::Overlap | PqStatus::BufferTooSmall | PqStatus::NonFinite);
    let want: (PqStatus, Option<usize>) = if items_null {
        (PqStatus::NullPointer, None)
    } else if let Some(i) = statuses.iter().position(|&s| is_region_error(s)) {
        (statuses[i], Some(i))
    } else if any_overlap(&ranges) {
        (PqStatus::Overlap, None) // the item is one of those involved
    } else if let Some(i) = statuses.iter().position(|&s| s == PqStatus::BufferTooSmall) {
        (PqStatus::BufferTooSmall, Some(i))
    } else if let Some(i) = statuses.iter().position(|&s| s == PqStatus::NonFinite) {
        (PqStatus::NonFinite, Some(i))
    } else {
        assert!(statuses.iter().all(|&s| s == PqStatus::Ok), "{statuses:?}");
        (PqStatus::Ok, None)
    };

    arena.restore(&snapshot);
    let items_arg = if items_null { std::ptr::null() } else { items_ptr as *const c_void };
    let mut e = new_error();
    let mut failed: usize = 12345;
    let status = unsafe {
        if dequantize {
            pq_dequantize_batch(items_arg as *const PqDequantizeItem, n, threads, &mut failed, &mut e)
        } else {
            pq_quantize_batch(items_arg as *const PqQuantizeItem, n, threads, &mut failed, &mut e)
        }
    };
    let msg = check_error(status, &e);
    trace(if dequantize { "pq_dequantize_batch" } else { "pq_quantize_batch" }, status);
    assert_eq!(status, want.0, "batch status ({msg}); single statuses {statuses:?}");
    if status == PqStatus::Ok {
        assert_eq!(failed, usize::MAX);
        if let Some(i) = first_diff(arena.bytes(), &sequential) {
            panic!("batch output differs from the single calls at arena byte {i}");
        }
        return;
    }
    // After a bad value the outputs of any items may be partly written.
    let outputs: Vec<std::ops::Range<usize>> = if status == PqStatus::NonFinite {
        ranges.iter().filter(|(_, out)| *out).map(|(r, _)| r.clone()).collect()
    } else {
        vec![]
    };
    if let Some(i) = first_diff_outside(arena.bytes(), &snapshot, &outputs) {
        panic!("batch failed ({msg}) but changed arena byte {i}");
    }
    match want {
        (_, Some(i)) => assert_eq!(failed, i, "{msg}"),
        (PqStatus::Overlap, None) => assert!(failed < n, "overlap not attributed to an item: {failed} ({msg})"),
        _ => assert_eq!(failed, usize::MAX, "{msg}"),
    }
    if failed != usize::MAX {
        // The index is in *failed_item; the message does not repeat it.
        assert!(!msg.starts_with("item "), "{msg}");
        // The output named is one of this item's.
        if status == PqStatus::Overlap {
            let mine = 1 + failed * 4..1 + failed * 4 + 4;
            let involved = mine.clone().any(|k| {
                ranges[k].1 && ranges.iter().enumerate().any(|(j, (r, _))| j != k && overlaps(r, &ranges[k].0))
            });
            assert!(involved, "item {failed} has no overlapping output: {msg}");
        }
    }
}
