"""An Arrow table of weights, quantized and dequantized without copying the
values (needs pyarrow: pip install '.[arrow]' from the source tree)."""

import numpy as np
import pyarrow as pa

import pyquant

rng = np.random.default_rng(2)
tensors = {"q_proj": rng.normal(0, 0.02, (128, 256)), "k_proj": rng.normal(0, 0.02, (64, 256))}
tensors = {k: v.astype(np.float32) for k, v in tensors.items()}

batch = pa.record_batch({
    "name": list(tensors),
    "weights": pa.array([t.ravel() for t in tensors.values()], pa.list_(pa.float32())),
    "shape": pa.array([list(t.shape) for t in tensors.values()], pa.list_(pa.int64())),
})
table = pa.Table.from_batches([batch])

print(pyquant.explain(table))
quantized = pyquant.quantize(table, bits=4, group_size=128)        # a pyarrow Table
print("columns:", ", ".join(quantized.column_names))
restored = pyquant.dequantize_arrow(quantized)                     # name, weights, shape

for row, codes in zip(restored.to_pylist(), quantized["codes"].to_pylist()):
    x = tensors[row["name"]]
    x_hat = np.asarray(row["weights"], np.float32).reshape(row["shape"])
    print(f"{row['name']:8} shape {tuple(row['shape'])}  max abs error {np.abs(x_hat - x).max():.3e}")
    # Each row holds the same bytes as quantize_ptr on that tensor.
    assert codes == pyquant.quantize_ptr(x, bits=4, group_size=128).codes.tobytes()

print(f"arrow round trip of {restored.num_rows} tensors: OK")
