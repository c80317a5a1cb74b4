"""Daft: a directory of Parquet tensors quantized with the batch UDF of
pyquant.engines.daft_quantize on Daft's local (native) runner, written as
Parquet and checked against quantize_ptr."""

import daft

import pyquant.engines
from common import BITS, GROUP_SIZE, main, no_session


def quantize_dir(src: str, dst: str) -> None:
    df = daft.read_parquet(src)
    pyquant.engines.daft_quantize(df, bits=BITS, group_size=GROUP_SIZE).write_parquet(dst)


session = no_session

if __name__ == "__main__":
    main("daft", session, quantize_dir)
