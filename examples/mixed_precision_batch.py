"""A batch of layers with mixed precision: one native call for all of them,
8 bits for the sensitive down projections, 4 bits (or 2) elsewhere."""

import numpy as np

import pyquant

rng = np.random.default_rng(1)
layers = {
    f"layers.{i}.{part}": rng.normal(0, 0.02, size=shape).astype(np.float32)
    for i in range(2)
    for part, shape in [("attn.q_proj", (256, 256)), ("mlp.up_proj", (512, 256)), ("mlp.down_proj", (256, 512))]
}
layers["embed"] = rng.normal(0, 0.02, size=(1000, 256)).astype(np.float16)


def params(name: str) -> tuple[int, int | None] | None:
    """(bits, group_size) for a layer, or None for the call's defaults."""
    if name.endswith("down_proj"):
        return 8, 128
    if name == "embed":
        return 2, 64
    return None


print(pyquant.explain(layers, params=params))
qts = pyquant.quantize(layers, bits=4, group_size=128, params=params)
back = pyquant.dequantize_batch(qts)

for name, qt in qts.items():
    x = layers[name].astype(np.float32)
    err = np.sqrt(np.mean((back[name].astype(np.float32) - x) ** 2)) / np.sqrt(np.mean(x**2))
    print(f"{name:22} {qt.dtype:8} {qt.bits} bits  {qt.compression_ratio:5.2f}x  rel RMSE {err:.4f}")

total = sum(q.original_nbytes for q in qts.values()) / sum(q.nbytes for q in qts.values())
print(f"batch of {len(qts)} tensors, overall compression {total:.2f}x")
