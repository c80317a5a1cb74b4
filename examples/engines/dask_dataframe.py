"""Dask: a directory of Parquet tensors quantized partition by partition
with pyquant.engines.dask_quantize (local threaded scheduler), written as
Parquet and checked against quantize_ptr."""

import dask
import dask.dataframe as dd

import pyquant.engines
from common import BITS, GROUP_SIZE, main, no_session


def quantize_dir(src: str, dst: str) -> None:
    ddf = dd.read_parquet(src, dtype_backend="pyarrow")
    out = ddf.map_partitions(pyquant.engines.dask_quantize, bits=BITS, group_size=GROUP_SIZE,
                             meta=pyquant.engines.dask_meta(ddf))
    with dask.config.set(scheduler="threads"):
        out.to_parquet(dst, write_index=False)


session = no_session

if __name__ == "__main__":
    main("dask", session, quantize_dir)
