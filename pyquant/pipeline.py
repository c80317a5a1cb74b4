"""Whole files in, whole files out: quantize a safetensors checkpoint (or an
Arrow IPC file of weights) into a quantized checkpoint, and back.

Tensors are read through a memory map and quantized in place, one bounded
batch at a time, and each result goes straight to its place in the output
file, so peak memory follows the largest tensor (or batch), not the model.
Every entry point returns a :class:`Summary` and takes an optional
``progress`` callback (the CLI draws its progress bar from it).
"""

from __future__ import annotations

import mmap
import os
import time
from contextlib import ExitStack, contextmanager
from functools import partial
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from ._atomic import atomic_output, atomic_outputs
from .arrow import _pyarrow, quantize_arrow, quantized_schema
from .core import SUPPORTED_DTYPES, QuantizedTensor, axis_code, quantize_batch, quantize_copy, scheme_codes
from ._text import quoted
from .errors import CheckpointError, QuantizeError, UnsupportedDtypeError
from .formats import FORMATS, check_clashes, metadata, open_quantized, open_sink, outputs, refuse_quantized_input
from .plan import Plan, check_options, plan_tensors
from .safetensors_io import CODE_OF, Checkpoint, OutputTensor, writing

_T = TypeVar("_T")


@dataclass
class Summary:
    """What a file entry point did: tensors quantized (or dequantized) and
    kept, bytes in and out, seconds."""

    quantized: int = 0
    kept: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    kept_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def gb_per_s(self) -> float:
        return self.input_bytes / self.seconds / 1e9 if self.seconds else 0.0


@dataclass(frozen=True)
class Progress:
    """Where a file entry point is, passed to its ``progress`` callback after
    each tensor (or, for an Arrow IPC file, each record batch). ``tensors``
    and ``total_bytes`` are 0 when not known up front."""

    label: str  # "quantizing" or "dequantizing"
    done_tensors: int
    tensors: int
    done_bytes: int
    total_bytes: int


ProgressCallback = Callable[[Progress], None]


class _Tracker:
    """Counts tensors and bytes done and reports them to the callback, if any."""

    def __init__(self, callback: ProgressCallback | None, label: str, tensors: int, nbytes: int):
        self.callback, self.label, self.tensors, self.nbytes = callback, label, tensors, nbytes
        self.done_tensors = self.done_bytes = 0

    def update(self, nbytes: int, tensors: int = 1) -> None:
        self.done_tensors += tensors
        self.done_bytes += nbytes
        if self.callback is not None:
            self.callback(Progress(self.label, self.done_tensors, self.tensors, self.done_bytes, self.nbytes))


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    format: str = "safetensors",
    skip: Sequence[str] = (),
    bits_for: Mapping[str, int] | Sequence[tuple[str, int]] = (),
    force: bool = False,
    allow_empty: bool = False,
    progress: ProgressCallback | None = None,
    method: str = "minmax",
    scale_dtype: str = "float32",
    axis: int = -1,
) -> Summary:
    """Quantizes a ``.safetensors`` file or sharded model directory into ``dst``.

    ``format`` is ``"safetensors"`` or ``"arrow"`` (see
    :mod:`pyquant.formats`); which tensors are quantized is decided by
    :func:`pyquant.plan.plan_tensors` (``skip``, ``bits_for``). Copies: none
    for aligned tensors (read in place from the memory map); misaligned
    ones go through :func:`quantize_copy`. Parallelism: consecutive tensors
    are quantized together by :func:`quantize_batch` on all cores, in runs
    of at most the largest tensor's size. Memory: one such run's mapped
    pages and outputs at a time, released after. ``dst`` is written to a
    temporary file and renamed at the end; an error leaves no output.
    ``progress`` is called after each tensor. ``method`` and ``scale_dtype``
    as for :func:`pyquant.quantize_ptr`, for every quantized tensor, recorded
    in the checkpoint's metadata (and the Arrow format's schema). ``axis=0``
    groups the 2-D tensors down their columns (other tensors are kept),
    recorded as ``pyquant.axis`` (and, in the Arrow format, an ``axis``
    column).

    Options are checked before anything is read (:func:`check_options`).
    A run that would quantize no tensor is an error unless ``allow_empty``.
    A pyquant checkpoint (either format) or a GGUF file is refused as input.

    Raises CheckpointError (bad or missing input, an already quantized
    input, nothing to quantize, an existing ``dst`` without ``force``, an
    unwritable output, name clashes), InvalidBitsError and
    InvalidGroupSizeError, and NonFiniteError naming the tensor.
    """
    if format not in FORMATS:
        raise QuantizeError(f"format must be 'safetensors' or 'arrow', got {format!r}")
    check_options(bits, group_size, bits_for)
    scheme_codes(method, scale_dtype)
    axis_code(axis, None)
    t0 = time.perf_counter()
    with Checkpoint(src) as ckpt:
        refuse_quantized_input(ckpt)
        plans = plan_tensors(ckpt, bits=bits, group_size=group_size, skip=skip, bits_for=bits_for, axis=axis)
        if not allow_empty and all(p.bits is None for p in plans):
            first = next((p for p in plans), None)
            example = f" (e.g. {quoted(first.name)}: {first.kept_because})" if first else ""
            raise CheckpointError(f"nothing to quantize: all {len(plans)} tensors would be carried over{example}; "
                                  "--allow-empty / allow_empty=True writes the copy anyway")
        check_clashes(plans, ckpt.where)
        meta = metadata(plans, bits, group_size, ckpt.metadata, method=method, scale_dtype=scale_dtype)
        summary = Summary(input_bytes=ckpt.nbytes,
                          output_bytes=sum(o.nbytes for p in plans for o in outputs(p, scale_dtype)))
        bar = _Tracker(progress, "quantizing", len(plans), ckpt.nbytes)
        sink = open_sink(format, dst, plans, meta, force, ckpt.paths)
        # Quantizable tensors go to quantize_batch in runs of consecutive
        # tensors up to the largest tensor's size: small tensors share a call
        # (all cores busy), and no more than about one large tensor's pages
        # are mapped in at a time (bounded memory).
        limit = max((p.nbytes for p in plans if p.bits is not None), default=0)
        pending: list[Plan] = []

        def done(p: Plan) -> None:
            ckpt.release(p.name)
            summary.quantized += 1
            bar.update(p.nbytes)

        def flush() -> None:
            arrays = {p.name: ckpt.array(p.name) for p in pending}
            params: dict[str, tuple[int, int | None]] = {
                p.name: (p.bits, p.group_size) for p in pending if p.bits is not None  # all of them
            }
            for name, qt in quantize_batch(arrays, params=params, method=method, scale_dtype=scale_dtype,
                                           axis=axis).items():
                sink.quantized(name, qt)
            del arrays
            for p in pending:
                done(p)
            pending.clear()

        with sink:
            for p in plans:
                if p.bits is None:
                    sink.keep(p.name, ckpt.array(p.name))
                    ckpt.release(p.name)
                    summary.kept += 1
                    summary.kept_reasons[p.name] = p.kept_because or ""
                    bar.update(p.nbytes)
                    continue
                if pending and sum(q.nbytes for q in pending) + p.nbytes > limit:
                    flush()
                if ckpt.array(p.name).flags.aligned:
                    pending.append(p)
                    continue
                # A misaligned tensor (possible in hand-made files) takes the copy path.
                try:
                    qt = quantize_copy(ckpt.array(p.name), bits=p.bits, group_size=p.group_size, method=method,
                                       scale_dtype=scale_dtype, axis=axis)
                except QuantizeError as exc:
                    raise type(exc)(f"tensor {p.name!r}: {exc}") from None
                sink.quantized(p.name, qt)
                done(p)
            if pending:
                flush()
    summary.seconds = time.perf_counter() - t0
    return summary


def dequantize_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                    force: bool = False, dtype: str | None = None,
                    progress: ProgressCallback | None = None) -> Summary:
    """Writes a plain safetensors checkpoint with every tensor in its original
    shape, from a pyquant checkpoint in either format; returns a
    :class:`Summary`. Quantized tensors are written in their original dtype,
    or in ``dtype`` (``"float32"``, ``"float16"`` or ``"bfloat16"``, as
    :meth:`QuantizedTensor.dequantize` takes it); carried-over tensors
    unchanged.

    Copies: inputs are read in place from the memory map; each dequantized
    tensor is one output-sized array, written then freed, so memory follows
    the largest tensor. Parallelism: one tensor at a time, each dequantized
    by one native call on all cores with the GIL released. ``dst`` is written
    to a temporary file and renamed at the end (an existing ``dst`` needs
    ``force=True``). ``progress`` is called after each tensor. Raises
    CheckpointError (bad input, existing or unwritable output) and the
    errors of :func:`dequantize`.
    """
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)} (or None: the "
                                    f"original's), got {dtype!r}")
    t0 = time.perf_counter()
    with open_quantized(src) as q:
        names = q.names()
        outs = []
        for n in names:
            if n in q.quantized:
                m = q.quantized[n]
                outs.append(OutputTensor(n, CODE_OF[dtype or m["dtype"]], tuple(m["shape"])))
            else:
                outs.append(OutputTensor(n, *q.kept_info(n)))
        source = q.source_metadata
        summary = Summary(input_bytes=q.size)
        bar = _Tracker(progress, "dequantizing", len(names), sum(o.nbytes for o in outs))
        with writing(dst, outs, source, force=force, inputs=[os.fspath(src)]) as w:
            for n, o in zip(names, outs):
                t = q.get(n)
                if isinstance(t, QuantizedTensor):
                    w.write(n, t.dequantize(dtype))
                    summary.quantized += 1
                else:
                    w.write(n, t)
                    summary.kept += 1
                del t
                q.release(n)
                bar.update(o.nbytes)
    summary.output_bytes = sum(o.nbytes for o in outs)
    summary.seconds = time.perf_counter() - t0
    return summary


def quantize_arrow_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    bits: int = 4,
    group_size: int | None = 128,
    force: bool = False,
    progress: ProgressCallback | None = None,
    method: str = "minmax",
    scale_dtype: str = "float32",
    axis: int = -1,
) -> Summary:
    """Quantizes an Arrow IPC file of weight batches into an IPC file of
    quantized batches (schema ``quantized_schema(method, scale_dtype,
    axis)``; ``axis=0`` needs every tensor 2-D, as :func:`quantize_arrow`);
    returns a :class:`Summary` (every row is a quantized tensor).

    ``src`` is memory-mapped and read batch by batch without copying; after
    each batch its pages are dropped from this process (``MADV_DONTNEED``),
    so peak memory is about one input batch plus its result, not the file.
    The output goes to a temporary file beside ``dst`` that is renamed onto
    ``dst`` only when complete; on any error it is removed and an existing
    ``dst`` is untouched. An existing ``dst`` is an error unless ``force``.
    ``progress`` is called after each batch.

    Copies: none of the values (each batch goes through
    :func:`quantize_arrow`). Parallelism: one native call per batch, all
    cores, GIL released. Raises CheckpointError (unreadable source, existing
    ``dst``), pyarrow's errors for a file that is not Arrow IPC, and the
    errors of :func:`quantize_arrow`, naming the tensor.
    """
    pa = _pyarrow()
    import pyarrow.ipc  # noqa: F401  (a submodule, loaded on demand)

    t0 = time.perf_counter()
    src = os.fspath(src)
    scheme_codes(method, scale_dtype)  # a bad name fails before dst is touched
    axis_code(axis, None)
    with atomic_output(dst, force=force, inputs=[src]) as tmp:
        with open(src, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            summary = _quantize_mapped(pa, mapped, tmp, bits, group_size, progress, (method, scale_dtype, axis))
        finally:
            _close_mapping(mapped)
        summary.output_bytes = os.path.getsize(tmp)
    summary.seconds = time.perf_counter() - t0
    return summary


def _quantize_mapped(pa: Any, mapped: mmap.mmap, tmp: str, bits: int, group_size: int | None,
                     progress: ProgressCallback | None, scheme: tuple[str, str, int]) -> Summary:
    method, scale_dtype, axis = scheme
    reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped)))
    summary = Summary(input_bytes=len(mapped))
    bar = _Tracker(progress, "quantizing", 0, len(mapped))
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, quantized_schema(method, scale_dtype, axis)) as writer:
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            nbytes = batch.nbytes
            result = quantize_arrow(batch, bits=bits, group_size=group_size, method=method, scale_dtype=scale_dtype,
                                    axis=axis)
            del batch
            writer.write_batch(result)
            summary.quantized += result.num_rows
            bar.update(nbytes, result.num_rows)
            del result
            # The batch's pages are read; give them back (they stay in the page cache).
            mapped.madvise(mmap.MADV_DONTNEED)
    del reader
    return summary


def _close_mapping(mapped: mmap.mmap) -> None:
    try:
        mapped.close()
    except BufferError:  # pragma: no cover - a pyarrow object still views it; GC closes it
        pass


@contextmanager
def _gguf_output(dst: str | os.PathLike[str], force: bool, inputs: Sequence[str], pairs: Iterable[bytes],
                 outs: list[Any], alignment: int) -> Iterator[Any]:
    """A GGUF :class:`~pyquant.gguf_file.Writer` on a temporary file, flushed to
    disk and published onto ``dst`` when the block ends without an error."""
    with _gguf_outputs([(dst, pairs, outs)], force, inputs, alignment) as (writer,):
        yield writer


@contextmanager
def _gguf_outputs(files: Sequence[tuple[str | os.PathLike[str], Iterable[bytes], list[Any]]], force: bool,
                  inputs: Sequence[str], alignment: int) -> Iterator[list[Any]]:
    """A GGUF Writer for each ``(dst, pairs, tensors)`` of a set of files,
    published together (:func:`~pyquant._atomic.atomic_outputs`) when the
    block ends without an error, each flushed to disk first."""
    from .gguf_file import Writer

    with atomic_outputs([dst for dst, _, _ in files], force=force, inputs=inputs) as tmps, ExitStack() as stack:
        handles = [stack.enter_context(open(tmp, "wb")) for tmp in tmps]
        yield [Writer(out, pairs, outs, alignment) for out, (_, pairs, outs) in zip(handles, files)]
        for out in handles:
            out.flush()
            os.fsync(out.fileno())


def _each(items: Sequence[_T], release: Callable[[_T], None], bar: _Tracker,
          nbytes: Callable[[_T], int]) -> Iterator[_T]:
    """``items`` one at a time; after each, its input pages are released and the progress bar moves."""
    for item in items:
        yield item
        release(item)
        bar.update(nbytes(item))


def quantize_gguf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    preset: str,
    imatrix: str | os.PathLike[str] | None = None,
    include_weights: Sequence[str] = (),
    exclude_weights: Sequence[str] = (),
    tensor_types: Sequence[tuple[str, str]] = (),
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    leave_output_tensor: bool = False,
    pure: bool = False,
    allow_requantize: bool = False,
    override_kv: Sequence[str] = (),
    keep_split: bool = False,
    prune_layers: Sequence[int] = (),
    dry_run: bool = False,
    force: bool = False,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Quantizes a GGUF model into a GGUF file as llama-quantize does:
    ``preset`` (``"Q4_K_M"``, see :data:`pyquant.llama_quant.PRESETS`, or
    ``"COPY"``: every tensor copied unchanged, ``general.file_type`` the input's), each
    tensor's type chosen by :func:`pyquant.llama_quant.choose_types`, the
    bytes of ggml's own quantizers (:mod:`pyquant.gguf`), the file laid out
    as llama-quantize lays it out (its tensor order, every key-value pair
    carried over byte for byte, ``general.quantization_version`` and
    ``general.file_type`` set last). Options as llama-quantize's:
    ``imatrix`` (a llama.cpp importance-matrix file, GGUF or legacy) with
    ``include_weights`` / ``exclude_weights`` (use only / drop its entries
    whose name contains one of these strings; not both), ``tensor_types``
    (``--tensor-type PATTERN=TYPE``), ``output_tensor_type``,
    ``token_embedding_type``, ``leave_output_tensor``, ``pure``,
    ``allow_requantize`` (an input whose tensors are already quantized: each
    is dequantized as ggml does, then quantized), ``override_kv``
    (``"KEY=TYPE:VALUE"`` strings, TYPE ``int``, ``float``, ``bool`` or
    ``str``, set in the output and seen by the type choice), ``prune_layers``
    (block numbers left out, the blocks after them numbered down and
    ``ARCH.block_count`` set; use with care, as llama-quantize warns),
    ``dry_run`` (nothing written, ``dst`` unused: the :class:`Summary` says
    how many tensors would change type and the tensor bytes of the output).

    A model split over several files (``NAME-00001-of-00003.gguf``, as
    llama.cpp's gguf-split writes it) is read from all of them, given its
    first file; the output is one file, or with ``keep_split`` one per input
    file, named ``DST-00001-of-00003.gguf`` (``dst`` without ``.gguf``), as
    llama-quantize names them (also for an input in one file).

    The input is memory-mapped and read one tensor at a time; the output is
    written to a temporary file and published atomically. Raises
    CheckpointError for a bad or truncated input, and for quantized tensors
    without ``allow_requantize``; QuantizeError for bad options.
    """
    from . import gguf as ggml
    from .gguf_file import (
        FLOAT_DTYPES, INT32, SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS, UINT16, GGUFModel, kv_scalar, kv_u32, split_path,
    )
    from .gguf_file import OutputTensor as GGUFTensor
    from .llama_quant import (
        COPY, QUANTIZATION_VERSION, Options, choose_types, copy_ftype, filter_imatrix, find_preset, ggml_type,
        llama_order, load_imatrix, model_of, parse_kv_override,
    )
    from .llama_quant import prune_layers as prune_names

    copy = preset.upper() == COPY  # llama-quantize's COPY: every tensor as it is
    _, ftype, default = find_preset("F32" if copy else preset)
    opts = Options(
        ftype, default,
        output_tensor_type=None if output_tensor_type is None else ggml_type(output_tensor_type,
                                                                               "output_tensor_type"),
        token_embedding_type=None if token_embedding_type is None else ggml_type(token_embedding_type,
                                                                                   "token_embedding_type"),
        quantize_output_tensor=not leave_output_tensor, pure=pure,
        tensor_types=[(p.lower(), ggml_type(t, f"tensor type {p!r}")) for p, t in tensor_types],
    )
    overrides = [parse_kv_override(o) for o in override_kv]
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in prune_layers):
        raise QuantizeError(f"prune_layers: block numbers must be integers >= 0, got {list(prune_layers)!r}")
    prune = sorted(set(prune_layers))
    if include_weights and exclude_weights:
        raise QuantizeError("include_weights and exclude_weights cannot be used together")
    if (include_weights or exclude_weights) and imatrix is None:
        raise QuantizeError("include_weights / exclude_weights select entries of an imatrix: give imatrix too")
    weights = None if imatrix is None else load_imatrix(os.fspath(imatrix))
    if weights is not None:
        weights = filter_imatrix(weights, include_weights, exclude_weights)
    if weights is not None and not weights.data:
        weights = None  # llama-quantize: an empty matrix is no matrix (no keys, no promotions)
    opts.has_imatrix = weights is not None
    t0 = time.perf_counter()
    with GGUFModel(src) as f:
        # llama-quantize's order: its weights_map's (block number, then name), or
        # with keep_split each input file's tensors in file order.
        weights_map = [f.tensors[i] for i in llama_order([t.name for t in f.tensors])]
        order = sorted(f.tensors, key=lambda t: (t.split, t.offset)) if keep_split else weights_map
        # prune_layers: tensors of pruned blocks left out, the others renamed
        # (the imatrix is still looked up by the old name, as remap_imatrix does).
        renamed, n_blocks = prune_names([t.name for t in weights_map], prune)
        order = [t for t in order if renamed[t.name] is not None]
        names = [str(renamed[t.name]) for t in order]
        seen = {o.key: o.value for o in overrides}  # the loader reads the hyperparameters through them
        model = model_of(lambda key, default=None: seen[key] if key in seen else f.value(key, default))
        if copy:  # the file type is the input's, as the loader reads or guesses it
            targets = [t.type_id for t in order]
            ftype = copy_ftype(seen.get("general.file_type", f.value("general.file_type")),
                               [t.type_id for t in weights_map])
        else:
            targets, _notes = choose_types([(n, t.shape, t.type_id) for n, t in zip(names, order)], model, opts)
        for t, new in zip(order, targets):
            if new == t.type_id or t.type_id in FLOAT_DTYPES or dry_run:
                continue
            if not allow_requantize:
                raise CheckpointError(f"{f.path}: tensor {t.name!r}: requantizing from type {t.type_name} is "
                                      "disabled (allow_requantize=True / --allow-requantize enables it)")
            if t.type_name not in ggml.SUPPORTED_TYPES:
                raise CheckpointError(f"{f.path}: tensor {t.name!r}: cannot requantize from {t.type_name} "
                                      "(pyquant has no dequantizer for it)")
        # The pairs as llama-quantize's gguf_set_* leave them: a key set again
        # is removed and appended; the split keys are removed.
        pairs = {key: raw for key, (_, _, raw) in f.kv.items()}
        updates = [("general.quantization_version", kv_u32("general.quantization_version", QUANTIZATION_VERSION)),
                   ("general.file_type", kv_u32("general.file_type", ftype))]
        updates += [(o.key, o.raw) for o in overrides]
        updates += [] if weights is None else weights.kv_pairs()
        for key in (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS):
            pairs.pop(key, None)
        if prune:
            updates.append((f"{model.arch}.block_count", kv_u32(f"{model.arch}.block_count", n_blocks)))
        for key, raw in updates:
            pairs.pop(key, None)
            pairs[key] = raw
        outs = [GGUFTensor(n, t.shape, new) for n, t, new in zip(names, order, targets)]
        summary = Summary(input_bytes=sum(t.nbytes for t in order), output_bytes=sum(o.nbytes for o in outs))
        if dry_run:
            summary.quantized = sum(new != t.type_id for t, new in zip(order, targets))
            summary.kept = len(order) - summary.quantized
            summary.seconds = time.perf_counter() - t0
            return summary
        bar = _Tracker(progress, "quantizing", len(order), summary.input_bytes)
        new_type = dict(zip((t.name for t in order), targets))
        # keep_split: one output per input file, PREFIX-0000i-of-0000N.gguf; the
        # first holds the pairs, each the split keys (when N > 1) last.
        n_split = max(t.split for t in order) + 1 if keep_split and order else 1
        prefix = os.fspath(dst)[:-5] if os.fspath(dst).endswith(".gguf") else os.fspath(dst)
        files = []
        for i in range(n_split):
            kv = list(pairs.values()) if i == 0 else []
            if n_split > 1:
                kv += [kv_scalar(SPLIT_NO, UINT16, i), kv_scalar(SPLIT_COUNT, UINT16, n_split),
                       kv_scalar(SPLIT_TENSORS, INT32, len(order))]
            part = [o for o, t in zip(outs, order) if t.split == i or not keep_split]
            files.append((split_path(prefix, i, n_split) if keep_split else dst, kv, part))
        with ExitStack() as stack:
            writers = stack.enter_context(_gguf_outputs(files, force, f.paths, f.alignment))
            behind = stack.enter_context(_write_behind([(t.shape[0], new) for t, new in zip(order, targets)
                                                        if new != t.type_id]))
            for t in _each(order, f.release, bar, lambda t: t.nbytes):
                w = writers[t.split if keep_split else 0]
                new = new_type[t.name]
                if new == t.type_id:
                    behind.write(w.tensor, f.raw(t))
                    summary.kept += 1
                    summary.kept_reasons[t.name] = f"stays {t.type_name}"
                    continue
                if t.type_id in FLOAT_DTYPES:
                    x = f.array(t)
                    done = partial(_release_rows, f.release, t, x)
                else:  # requantizing: ggml's dequantize_row_* first, as llama_tensor_dequantize_impl
                    x = ggml.dequantize(np.frombuffer(f.raw(t), np.uint8).reshape(t.n_values // t.shape[0], -1),
                                        t.type_id, threads=threads)
                    done = None
                try:
                    _quantize_tensor(ggml, behind, w.part, x, t, new, weights, threads, done)
                except QuantizeError as exc:
                    raise type(exc)(f"tensor {t.name!r}: {exc}") from None
                summary.quantized += 1
                del x
    summary.seconds = time.perf_counter() - t0
    return summary


# The output of a quantized tensor is made this many bytes at a time (a whole
# row at least), in a few reused buffers written behind the kernels.
_CHUNK_BYTES = 8 << 20


def _write_behind(rows: Iterable[tuple[int, int]]) -> Any:
    """A :class:`~pyquant._write_behind.WriteBehind` whose buffers hold at
    least one row of each ``(row length, GGML type)`` of ``rows``."""
    from ._write_behind import WriteBehind
    from .gguf_file import row_bytes

    row = max((row_bytes(t, n) for n, t in rows), default=0)
    return WriteBehind(max(_CHUNK_BYTES, row))


def _release_rows(release: Callable[..., None], t: Any, x: Any, start: int, end: int) -> None:
    """Gives back the input pages of rows ``start:end`` of ``x`` (tensor ``t`` in its file)."""
    row = x.nbytes // x.shape[0]
    release(t, start * row, end * row)


def _quantize_tensor(ggml: Any, behind: Any, write: Callable[[Any], None], x: Any, t: Any, type_id: int,
                     weights: Any, threads: int | None, done: Callable[[int, int], None] | None) -> None:
    """One GGUF tensor (rows ``x``) to ``type_id``, with its importance matrix (llama-quantize's
    lookup: absent is fine, a wrong size is an error except for token_embd)."""
    w = None if weights is None else weights.data.get(t.name)
    experts = t.n_values // (t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1))
    if w is not None and w.size != t.shape[0] * experts:
        if t.name not in ("token_embd.weight", "per_layer_token_embd.weight"):
            raise CheckpointError(f"imatrix size {w.size} is different from tensor size "
                                  f"{t.shape[0] * experts} for {t.name}")
        w = None
    if w is None or experts == 1:
        _quantize_rows(ggml, behind, write, x, type_id, w, threads, done)
        return
    per, n = x.shape[0] // experts, t.shape[0]  # rows per expert, each with its own weights
    for e in range(experts):
        _quantize_rows(ggml, behind, write, x[e * per:(e + 1) * per], type_id, w[e * n:(e + 1) * n], threads,
                       None if done is None else partial(_shifted, done, e * per))


def _shifted(done: Callable[[int, int], None], first: int, start: int, end: int) -> None:
    done(first + start, first + end)


def _quantize_rows(ggml: Any, behind: Any, write: Callable[[Any], None], x: Any, type_id: int, imatrix: Any,
                   threads: int | None, done: Callable[[int, int], None] | None) -> None:
    """Quantizes the rows ``x`` chunk by chunk into ``behind``'s buffers, each
    queued to ``write`` when made (ggml quantizes row by row: the bytes are
    those of one call); ``done(start, end)`` after each chunk of rows."""
    from .gguf_file import row_bytes

    row = row_bytes(type_id, x.shape[1])
    step = max(1, behind.size // row)
    if not x.shape[0]:
        ggml.quantize(x, type_id, imatrix=imatrix, threads=threads)  # its checks
        behind.write(write, b"")
    for start in range(0, x.shape[0], step):
        buf = behind.buffer()
        end = min(x.shape[0], start + step)
        out = buf[:(end - start) * row].reshape(end - start, row)
        ggml.quantize(x[start:end], type_id, imatrix=imatrix, threads=threads, out=out)
        behind.write(write, out, buf)
        if done is not None:
            done(start, end)


def safetensors_to_gguf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    qtype: str,
    arch: str | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Writes a safetensors file or model directory (a tensor collection, e.g.
    a diffusion model) as a GGUF file with float tensors of 2+ dimensions
    quantized to the GGML type ``qtype`` (``"Q4_K"``, ``"Q8_0"``, ...; see
    :data:`pyquant.gguf.SUPPORTED_TYPES`), as ComfyUI-GGUF's tools lay it out:
    names kept, GGUF shapes reversed (row length first), tensor order kept.
    1-D tensors and tensors whose rows do not hold whole blocks are carried
    over in their dtype (``Summary.kept_reasons`` says why); so are integer
    tensors. ``arch`` is written as ``general.architecture``.

    Memory-mapped input, one tensor at a time; atomic output.
    """
    from . import gguf as ggml
    from .dtypes import BY_SAFETENSORS
    from .gguf_file import DEFAULT_ALIGNMENT, GGML_TYPES, kv_string, kv_u32
    from .gguf_file import OutputTensor as GGUFTensor
    from .llama_quant import QUANTIZATION_VERSION, ggml_type

    type_id = ggml_type(qtype, "qtype")
    if GGML_TYPES[type_id][0] not in ggml.SUPPORTED_TYPES:
        raise QuantizeError(f"qtype: pyquant cannot write {qtype!r}; supported: {', '.join(ggml.SUPPORTED_TYPES)}")
    block = GGML_TYPES[type_id][1]
    t0 = time.perf_counter()
    with Checkpoint(src) as ckpt:
        refuse_quantized_input(ckpt)
        plans: list[tuple[str, tuple[int, ...], int, str | None]] = []  # name, GGUF shape, type, kept because
        for name in ckpt.names():
            info = ckpt.info(name)
            d = BY_SAFETENSORS[info.dtype]
            if d.ggml_type is None:
                raise CheckpointError(f"tensor {name!r}: dtype {d.name} has no GGUF type")
            shape = tuple(reversed(info.shape)) or (1,)
            why = ("not a float tensor" if not d.quantizable else "1-D" if len(info.shape) < 2
                   else f"rows of {shape[0]} do not hold whole {qtype.upper()} blocks of {block}"
                   if shape[0] % block else None)
            plans.append((name, shape, d.ggml_type if why else type_id, why))
        pairs = [kv_string("general.architecture", arch or "unknown"),
                 kv_u32("general.quantization_version", QUANTIZATION_VERSION)]
        outs = [GGUFTensor(n, s, t) for n, s, t, _ in plans]
        summary = Summary(input_bytes=ckpt.nbytes, output_bytes=sum(o.nbytes for o in outs))
        bar = _Tracker(progress, "quantizing", len(plans), ckpt.nbytes)
        with _gguf_output(dst, force, ckpt.paths, pairs, outs, DEFAULT_ALIGNMENT) as w, \
                _write_behind([(shape[0], t) for _, shape, t, why in plans if why is None]) as behind:
            for name, shape, t, why in _each(plans, lambda p: ckpt.release(p[0]), bar,
                                             lambda p: ckpt.info(p[0]).nbytes):
                x = ckpt.array(name)
                if why is not None:
                    behind.write(w.tensor, np.ascontiguousarray(x).reshape(-1))
                    summary.kept += 1
                    summary.kept_reasons[name] = why
                else:
                    try:
                        _quantize_rows(ggml, behind, w.part, x.reshape(-1, shape[0]), t, None, threads, None)
                    except QuantizeError as exc:
                        raise type(exc)(f"tensor {name!r}: {exc}") from None
                    summary.quantized += 1
                del x
    summary.seconds = time.perf_counter() - t0
    return summary


def dequantize_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, dtype: str = "F32",
                    format: str | None = None, force: bool = False, threads: int | None = None,
                    progress: ProgressCallback | None = None) -> Summary:
    """Turns a quantized GGUF file back into float tensors: every tensor of a
    GGML type pyquant implements becomes ``dtype`` (``"F32"``, ``"F16"`` or
    ``"BF16"``; values from ggml's ``dequantize_row_*``, rounded as ggml
    rounds), other tensors are copied.

    ``format`` is ``"gguf"`` or ``"safetensors"`` (default: ``"safetensors"``
    for a ``dst`` named ``*.safetensors``, else ``"gguf"``). A GGUF output
    keeps the pairs, tensor order and alignment, and ``general.file_type``
    says the new type (llama.cpp's ALL_F32 / MOSTLY_F16 / MOSTLY_BF16). A
    safetensors output holds the tensors under their GGUF names in numpy
    order (GGUF shapes reversed); a tensor of a GGML type pyquant cannot
    dequantize is then an error (safetensors has no such dtype).
    A split model (given its first file) becomes one file. Memory-mapped
    input, one tensor at a time; atomic output.
    """
    from . import gguf as ggml
    from .dtypes import ALL
    from .gguf_file import FLOAT_DTYPES, SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS, TYPE_IDS, GGUFModel, kv_u32
    from .gguf_file import OutputTensor as GGUFTensor

    file_types = {"F32": 0, "F16": 1, "BF16": 32}
    key = dtype.upper()
    if key not in file_types:
        raise QuantizeError(f"dtype must be F32, F16 or BF16, got {dtype!r}")
    if format is None:
        format = "safetensors" if os.fspath(dst).lower().endswith(".safetensors") else "gguf"
    if format not in ("gguf", "safetensors"):
        raise QuantizeError(f"format must be 'gguf' or 'safetensors', got {format!r}")
    to = TYPE_IDS[key]
    st_code = {d.ggml_type: d.safetensors for d in ALL if d.ggml_type is not None}
    t0 = time.perf_counter()
    with GGUFModel(src) as f:
        convert = {t.name: t.type_id not in FLOAT_DTYPES and t.type_name in ggml.SUPPORTED_TYPES for t in f.tensors}
        types = {t.name: to if convert[t.name] else t.type_id for t in f.tensors}
        summary = Summary(input_bytes=sum(t.nbytes for t in f.tensors))
        bar = _Tracker(progress, "dequantizing", len(f.tensors), summary.input_bytes)

        def values(t: Any) -> Any:
            """The tensor's output bytes: dequantized, or as stored."""
            if not convert[t.name]:
                summary.kept += 1
                return np.frombuffer(f.raw(t), np.uint8)
            summary.quantized += 1
            x = ggml.dequantize(np.frombuffer(f.raw(t), np.uint8).reshape(t.n_values // t.shape[0], -1), t.type_id,
                                threads=threads)
            return x if key == "F32" else ggml.quantize(x, key, threads=threads)

        if format == "gguf":
            drop = ("general.file_type", SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)  # a split model becomes one file
            pairs = [raw for k, (_, _, raw) in f.kv.items() if k not in drop]
            pairs.append(kv_u32("general.file_type", file_types[key]))
            outs = [GGUFTensor(t.name, t.shape, types[t.name]) for t in f.tensors]
            with _gguf_output(dst, force, f.paths, pairs, outs, f.alignment) as w:
                for t in _each(f.tensors, f.release, bar, lambda t: t.nbytes):
                    w.tensor(values(t))
        else:
            bad = next((t for t in f.tensors if types[t.name] not in st_code), None)
            if bad is not None:
                raise CheckpointError(f"{f.path}: tensor {bad.name!r} is {bad.type_name}, which pyquant cannot "
                                      "dequantize and safetensors cannot hold")
            st_outs = [OutputTensor(t.name, st_code[types[t.name]], tuple(reversed(t.shape))) for t in f.tensors]
            outs = [GGUFTensor(t.name, t.shape, types[t.name]) for t in f.tensors]
            with writing(dst, st_outs, {"format": "pt"}, force=force, inputs=f.paths) as sw:
                for t in _each(f.tensors, f.release, bar, lambda t: t.nbytes):
                    sw.write(t.name, values(t))
        summary.output_bytes = sum(o.nbytes for o in outs)
    summary.seconds = time.perf_counter() - t0
    return summary
