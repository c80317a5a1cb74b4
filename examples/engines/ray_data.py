"""Ray Data: a directory of Parquet tensors quantized block by block with
pyquant.engines.ray_quantize (map_batches, batch_format="pyarrow") on a
local Ray instance, written as Parquet and checked against quantize_ptr."""

import contextlib
from collections.abc import Iterator

import ray

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


if __name__ == "__main__":
    main("ray", session, quantize_dir)
