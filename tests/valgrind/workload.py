"""A representative workload for tests/test_valgrind.py: every Python path
through the native library, success and error, once each, small."""

import tempfile

import numpy as np
import pyarrow as pa

import pyquant
from pyquant._lib import ffi, lib

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 256)).astype(np.float32)

qt = pyquant.quantize_ptr(x)
qt.dequantize()
pyquant.quantize_copy(x[:, ::2].astype(">f4"), group_size=64)
got = pyquant.quantize_batch({"a": x, "b": x.astype(np.float16)}, params={"b": (2, 64)}, threads=2)
pyquant.dequantize_batch(got, threads=2)
for bad in (np.where(np.arange(256) == 3, np.nan, x).astype(np.float32), x[:, :100].copy()):
    try:
        pyquant.quantize_batch({"ok": x, "bad": bad})
    except pyquant.QuantizeError:
        pass
err = ffi.new("PqError *")
assert lib.pq_debug_panic(err) == lib.PQ_STATUS_PANIC

batch = pa.RecordBatch.from_arrays(
    [pa.array(["w", "v"]), pa.array([x.ravel(), x[:2].ravel()], pa.list_(pa.float32())),
     pa.array([[64, 256], [2, 256]], pa.list_(pa.int64()))], ["name", "weights", "shape"])
result = pyquant.quantize_arrow(batch.slice(1, 1))
pyquant.dequantize_arrow(pyquant.quantize_arrow(batch))
try:
    pyquant.quantize_arrow(pa.array([1.0, 2.0], pa.float64()))
except pyquant.QuantizeError:
    pass
capsules = batch.__arrow_c_array__()  # never consumed: released by the capsules
del capsules, result

with tempfile.TemporaryDirectory() as tmp:
    from pyquant.safetensors_io import OutputTensor, writing

    with writing(f"{tmp}/m.safetensors", [OutputTensor("w", "F32", x.shape)], {}) as w:
        w.write("w", x)
    pyquant.quantize_file(f"{tmp}/m.safetensors", f"{tmp}/q.safetensors")
    pyquant.dequantize_file(f"{tmp}/q.safetensors", f"{tmp}/d.safetensors")

import gc

gc.collect()
print("workload ok, live exports", lib.pq_arrow_live_exports())
