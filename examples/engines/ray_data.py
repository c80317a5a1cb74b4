"""Ray Data: a directory of Parquet tensors quantized block by block with
pyquant.engines.ray_quantize (map_batches, batch_format="pyarrow") on a
local Ray instance, written as Parquet and checked against quantize_ptr."""

import contextlib
from collections.abc import Iterator
from functools import partial

import numpy as np
import ray

import pyquant

import pyquant.engines
from common import BITS, GROUP_SIZE, main


@contextlib.contextmanager
def session() -> Iterator[None]:
    """A local Ray instance on two CPUs (workers inherit PYTHONPATH, and so this pyquant)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        yield
    finally:
        ray.shutdown()


def quantize_dir(src: str, dst: str) -> None:
    ds = ray.data.read_parquet(src)
    pyquant.engines.ray_quantize(ds, bits=BITS, group_size=GROUP_SIZE).write_parquet(dst)


def from_numpy() -> None:
    """Ray's own tensor type (what ray.data.from_numpy makes) keeps its shape,
    in Arrow batches and in Ray's default numpy batches."""
    xs = np.random.default_rng(1).normal(0, 0.02, (6, 4, 128)).astype(np.float32)

    def named(batch: dict) -> dict:
        return {**batch, "name": np.array([f"t{i}" for i in batch["id"]])}

    ds = ray.data.from_items([{"id": i, "data": x} for i, x in enumerate(xs)]).map_batches(named)
    assert "ArrowTensorType" in str(ds.schema()), ds.schema()  # Ray's tensor extension type
    for batch_format in ("pyarrow", "numpy"):
        fn = partial(pyquant.quantize_arrow, columns={"weights": "data"}, bits=BITS, group_size=GROUP_SIZE,
                     threads=1)
        for row in ds.map_batches(fn, batch_format=batch_format).take_all():
            want = pyquant.quantize_ptr(xs[row["id"]], bits=BITS, group_size=GROUP_SIZE)
            assert list(row["shape"]) == [4, 128] and row["codes"] == want.codes.tobytes(), batch_format
    print("ray tensor type (from numpy), pyarrow and numpy batches: OK")


if __name__ == "__main__":
    main("ray", session, quantize_dir, also=from_numpy)
