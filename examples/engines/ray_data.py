"""Ray Data: a directory of Parquet tensors quantized block by block with
pyquant.engines.ray_quantize (map_batches, batch_format="pyarrow") on a
local Ray instance, written as Parquet and checked against quantize_ptr."""

import ray

import pyquant.engines
from common import BITS, GROUP_SIZE, main


def run(src: str, dst: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ds = ray.data.read_parquet(src)
        pyquant.engines.ray_quantize(ds, bits=BITS, group_size=GROUP_SIZE).write_parquet(dst)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main("ray", run)
