"""What the engine examples share: a directory of Parquet files of tensors
(columns name, weights list<float32>, shape list<int64>), the command line,
and the check that every quantized row read back from the output Parquet
holds the bytes quantize_ptr gives for that tensor."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, ContextManager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pyquant

BITS, GROUP_SIZE = 4, 128


@contextlib.contextmanager
def no_session() -> Iterator[None]:
    """The session of an engine that needs none started (Dask, Daft)."""
    yield


def make_dataset(directory: str, files: int = 4, tensors: int = 6, rows: int = 64, cols: int = 256,
                 seed: int = 0) -> None:
    """``files`` Parquet files of ``tensors`` float32 tensors of ``rows`` x ``cols`` each."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for f in range(files):
        xs = [rng.normal(0, 0.02, (rows, cols)).astype(np.float32) for _ in range(tensors)]
        table = pa.table({
            "name": [f"layer{f}.w{i}" for i in range(tensors)],
            "weights": pa.array([x.ravel() for x in xs], pa.list_(pa.float32())),
            "shape": pa.array([list(x.shape) for x in xs], pa.list_(pa.int64())),
            "layer": pa.array([f] * tensors, pa.int32()),  # a column every engine passes through
        })
        pq.write_table(table, os.path.join(directory, f"part-{f:03d}.parquet"))


def check(src: str, dst: str) -> int:
    """Reads every quantized row in ``dst`` (any Parquet layout an engine
    writes) and compares it with quantize_ptr on the tensor of that name in
    ``src``, byte for byte; returns the number of rows checked."""
    tensors = {}
    for batch in pq.read_table(src).to_batches():
        weights, shapes = batch.column("weights"), batch.column("shape").to_pylist()
        for i, name in enumerate(batch.column("name").to_pylist()):
            tensors[name] = weights[i].values.to_numpy().reshape(shapes[i])
    files = sorted(glob.glob(os.path.join(dst, "**", "*.parquet"), recursive=True))
    out = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    assert sorted(out.column("name").to_pylist()) == sorted(tensors), "not every tensor came back once"
    for row in out.drop_columns([c for c in out.column_names if c not in [*pyquant.quantized_schema().names, "layer"]]).to_pylist():
        want = pyquant.quantize_ptr(tensors[row["name"]], bits=BITS, group_size=GROUP_SIZE)
        assert row["codes"] == want.codes.tobytes(), row["name"]
        assert np.array_equal(np.asarray(row["scales"], np.float32), want.scales.ravel()), row["name"]
        assert np.array_equal(np.asarray(row["mins"], np.float32), want.mins.ravel()), row["name"]
        assert list(row["shape"]) == list(want.shape) and row["bits"] == BITS and row["group_size"] == GROUP_SIZE
        assert row["layer"] == int(row["name"][len("layer"):].split(".")[0]), "layer not passed through"
    # The output reads back through dequantize_arrow as it is (signed widths, binary codes).
    pyquant.dequantize_arrow(out.select(list(pyquant.quantized_schema().names)))
    return out.num_rows


def main(engine: str, session: Callable[[], ContextManager[Any]], quantize_dir: Callable[[str, str], None],
         also: Callable[[], None] | None = None) -> None:
    """``quantize_dir(src, dst)`` inside ``session()`` (the engine started in
    local mode) on a dataset made here (or --input), then the check; then
    ``also()`` in the same session, if given."""
    parser = argparse.ArgumentParser(description=f"quantize a directory of Parquet tensors with {engine}")
    parser.add_argument("--input", help="a directory of Parquet files (default: a small one made here)")
    parser.add_argument("--output", help="the output directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.input or os.path.join(tmp, "in")
        if not args.input:
            make_dataset(src)
        dst = args.output or os.path.join(tmp, "out")
        with session():
            start = time.perf_counter()
            quantize_dir(src, dst)
            seconds = time.perf_counter() - start
            if also is not None:
                also()
        n = check(src, dst)
        print(f"{engine}: {n} tensors quantized in {seconds:.1f} s, identical to quantize_ptr: OK")
