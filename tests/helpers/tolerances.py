"""Float comparisons sized to the rounding of the computation compared.

Two float32 programs that compute the same math (another XLA compilation, another CPU's
kernels, another summation order) agree to a few float32 ulp of the *tensor's scale*, not of
each element: a value near zero carries the rounding of the large values it was computed
from. So tolerances here are relative to the largest magnitude of the expected tensor, the
rule the parity tests use too.
"""

from __future__ import annotations

import numpy as np

# float32 ulp at 1.0 is 1.2e-7; a network's forward pass accumulates ~1e2 of them.
FLOAT32_PROGRAM = 1e-5


def assert_close_to_scale(actual, expected, rel: float = FLOAT32_PROGRAM, err_msg: str = ""):
    """|actual - expected| <= rel * max|expected|, elementwise (shapes must match)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(
        actual, expected, rtol=0, atol=rel * max(scale, 1e-30), err_msg=err_msg
    )
