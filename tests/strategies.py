"""Hypothesis strategies for tensors and quantization parameters."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# Largest magnitude per dtype such that any group's range (hi - lo) stays finite in f32.
LIMITS = {"float32": 2.0**123, "float16": 65504.0, "bfloat16": 2.0**123}

SUBNORMALS = [np.float32(np.finfo(np.float32).smallest_subnormal) * k for k in (1, 2, 3, 7, 255, 1000)]


@st.composite
def params(draw):
    """(bits, group_size, row_len) obeying the layout rules; group_size may be None."""
    bits = draw(st.sampled_from([2, 3, 4, 8]))
    unit = 8 if bits == 3 else 8 // bits  # group_size * bits must fill whole bytes
    g = unit * draw(st.integers(1, 48 // unit))
    groups_per_row = draw(st.integers(1, 4))
    per_row = draw(st.booleans()) and draw(st.booleans())
    k = g * groups_per_row
    return bits, (None if per_row else g), k


def elements(dtype: str):
    limit = LIMITS[dtype]
    return st.one_of(
        st.floats(-limit, limit, width=32, allow_nan=False, allow_infinity=False),
        st.floats(-1.0, 1.0, width=32, allow_subnormal=True),
        st.integers(-40, 40).map(float),  # integers make exact .5 ties likely
        st.sampled_from([0.0, -0.0, 0.5, 1.5, 2.5, -2.5]),
        st.sampled_from([float(s) for s in SUBNORMALS] + [-float(s) for s in SUBNORMALS]),
    )


@st.composite
def tensors(draw):
    """(array, dtype name, bits, group_size) with finite values in every group."""
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    bits, group_size, k = draw(params())
    lead = draw(st.lists(st.integers(0 if draw(st.booleans()) else 1, 3), min_size=0, max_size=2))
    shape = tuple(lead) + (k,)
    style = draw(st.sampled_from(["mixed", "constant", "subnormal", "ties"]))
    if style == "constant":
        value = draw(elements(dtype))
        x32 = np.full(shape, value, dtype=np.float32)
    elif style == "subnormal":
        x32 = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(SUBNORMALS + [0.0])))
    elif style == "ties":
        top = 2 * (2**bits - 1)
        x32 = draw(hnp.arrays(np.float32, shape, elements=st.integers(0, top).map(float)))
    else:
        x32 = draw(hnp.arrays(np.float32, shape, elements=elements(dtype)))
    x = x32.astype(DTYPES[dtype])
    return x, dtype, bits, group_size
