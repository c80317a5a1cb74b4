"""Spark: a directory of Parquet tensors quantized with mapInArrow and
pyquant.engines.spark_quantize (signed columns, SPARK_SCHEMA) in local mode
(needs a Java runtime), written as Parquet and checked against quantize_ptr."""

import os
import sys
from functools import partial

from pyspark.sql import SparkSession

import pyquant.engines
from common import BITS, GROUP_SIZE, main


def run(src: str, dst: str) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter
    spark = (SparkSession.builder.master("local[2]").appName("pyquant")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.read.parquet(src)
        fn = partial(pyquant.engines.spark_quantize, bits=BITS, group_size=GROUP_SIZE)
        df.mapInArrow(fn, pyquant.engines.SPARK_SCHEMA).write.mode("overwrite").parquet(dst)
    finally:
        spark.stop()


if __name__ == "__main__":
    main("spark", run)
