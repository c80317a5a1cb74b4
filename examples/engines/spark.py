"""Spark: a directory of Parquet tensors quantized with mapInArrow and
pyquant.engines.spark_quantize (signed columns, SPARK_SCHEMA) in local mode
(needs a Java runtime), written as Parquet and checked against quantize_ptr."""

import contextlib
import os
import sys
from collections.abc import Iterator
from functools import partial

from pyspark.sql import SparkSession

import pyquant.engines
from common import BITS, GROUP_SIZE, main


@contextlib.contextmanager
def session() -> Iterator[None]:
    """One local Spark session on two cores, its Python workers this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName("pyquant")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield
    finally:
        spark.stop()


def quantize_dir(src: str, dst: str) -> None:
    df = SparkSession.getActiveSession().read.parquet(src)
    fn = partial(pyquant.engines.spark_quantize, bits=BITS, group_size=GROUP_SIZE)
    # The column passed through is declared after the quantized ones.
    schema = pyquant.engines.SPARK_SCHEMA + ", layer INT"
    df.mapInArrow(fn, schema).write.mode("overwrite").parquet(dst)


if __name__ == "__main__":
    main("spark", session, quantize_dir)
