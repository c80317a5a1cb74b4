"""Zero-copy vs copy on one tensor: what pyquant.quantize picks, what it
copies, and that both paths give the same bytes."""

import time

import numpy as np

import pyquant

w = np.random.default_rng(0).normal(0, 0.02, size=(1024, 1024)).astype(np.float32)

for name, x in [("contiguous", w), ("transposed view", w.T)]:
    choice = pyquant.explain(x)
    t0 = time.perf_counter()
    qt = pyquant.quantize(x, bits=4, group_size=128)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"{name:16} -> path={choice.path:4}  copied={choice.bytes_copied:>9,} B  {ms:6.2f} ms  {qt}")

# The copy path gives exactly the bytes of the zero-copy path on a contiguous copy.
a = pyquant.quantize_copy(w.T)
b = pyquant.quantize_ptr(np.ascontiguousarray(w.T))
assert a.codes.tobytes() == b.codes.tobytes() and a.scales.tobytes() == b.scales.tobytes()

# Forcing the zero-copy path on an input that needs a copy is an error, not a silent copy.
try:
    pyquant.quantize(w.T, path="ptr")
except pyquant.CopyRequiredError as exc:
    print(f"path='ptr' on a transposed view: CopyRequiredError: {exc}")

print("same bytes from ptr and copy: OK")
