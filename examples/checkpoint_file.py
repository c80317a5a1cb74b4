"""A whole checkpoint: write a tiny safetensors model, quantize the file,
inspect it, measure the error, and dequantize it back."""

import os
import tempfile

import numpy as np

import pyquant
from pyquant.safetensors_io import CODE_OF, OutputTensor, writing

rng = np.random.default_rng(3)
model = {
    "embed.weight": rng.normal(0, 0.02, (512, 128)).astype(np.float32),
    "layers.0.q_proj.weight": rng.normal(0, 0.02, (128, 128)).astype(np.float32),
    "layers.0.mlp.down_proj.weight": rng.normal(0, 0.02, (128, 256)).astype(np.float32),
    "layers.0.norm.weight": np.ones(128, np.float32),  # 1-D: carried over unchanged
}

with tempfile.TemporaryDirectory() as tmp:
    src, dst, back = (os.path.join(tmp, n) for n in ("model.safetensors", "q4.safetensors", "back.safetensors"))
    # Any safetensors writer works (e.g. safetensors.numpy.save_file); this is pyquant's own.
    with writing(src, [OutputTensor(n, CODE_OF[str(a.dtype)], a.shape) for n, a in model.items()], {}) as w:
        for n, a in model.items():
            w.write(n, a)

    print(pyquant.explain(src))
    summary = pyquant.quantize(src, dst=dst, bits=4, group_size=128)
    print(f"quantized {summary.quantized}, kept {summary.kept}: "
          f"{summary.input_bytes:,} B -> {summary.output_bytes:,} B")

    for name, t in pyquant.load_quantized(dst).items():   # zero-copy views of the file
        print(f"  {name:32} {t!r}" if isinstance(t, pyquant.QuantizedTensor) else f"  {name:32} kept {t.dtype} {t.shape}")

    report = pyquant.error_report(src, dst).summary()
    print(f"mean rel RMSE {report['mean_rel_rmse']:.4f}, worst {report['worst_tensor']}")

    pyquant.dequantize_file(dst, back)           # plain safetensors, original dtypes
    with pyquant.safetensors_io.Checkpoint(back) as ckpt:
        assert ckpt.array("layers.0.norm.weight").tobytes() == model["layers.0.norm.weight"].tobytes()
        assert ckpt.array("embed.weight").shape == (512, 128)

print("checkpoint file round trip: OK")
