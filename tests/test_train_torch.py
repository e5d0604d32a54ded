"""Training against PyTorch: the same model (the lecture's conv, batch norm, leaky ReLU,
pools, dense, softmax, categorical cross-entropy), the same initial weights and full batch;
after one SGD step and after one and three Adam steps (Keras' defaults: beta_1 0.9, beta_2
0.999, epsilon 1e-7; PyTorch's epsilon set to Keras' placement), every array convcli writes
is within 1e-4 of PyTorch's, relative to the array's magnitude: both in float64 (the
algorithms alone), and convcli in float32 (as ``convcli train`` runs) against PyTorch in
float64. In float32 the two conv biases that feed a batch norm (true gradient zero) are
checked as what they are, rounding noise (an absolute bound). The reasons, and the measured numbers:
``benchmarks/train_parity.py``, which holds the computation and prints it as a table.
Skipped when torch is not installed (convcli never needs it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

_spec = importlib.util.spec_from_file_location(
    "train_parity", Path(__file__).resolve().parent.parent / "benchmarks" / "train_parity.py"
)
assert _spec is not None and _spec.loader is not None
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


@pytest.mark.parametrize(("name", "lr", "steps"), parity.CASES)
def test_weights_match_pytorch_both_in_float64(name: str, lr: float, steps: int) -> None:
    rows = parity.comparison(name, lr, steps, "float64", "float64")
    assert len(rows) == 14
    assert max(difference for _, difference, _ in rows) <= parity.TOLERANCE, rows
    for key, difference, moved in rows:
        if key in parity.BN_FED_BIASES:
            assert moved < 1e-9, (key, moved)  # a zero gradient leaves them where they were
        else:
            # the comparison can fail: every other array moved several times the tolerance
            # (a step of the wrong size or sign would be caught), and agrees to 1e-6 of its step
            assert moved > 5 * parity.TOLERANCE and difference < moved * 1e-6, (key, difference, moved)


@pytest.mark.parametrize(("name", "lr", "steps"), parity.CASES)
def test_float32_training_matches_pytorch_float64_to_rounding(name: str, lr: float, steps: int) -> None:
    rows = parity.comparison(name, lr, steps, "float32", "float64")
    checked = {key: difference for key, difference, _ in rows if key not in parity.BN_FED_BIASES}
    assert len(checked) == 12 and max(checked.values()) <= parity.TOLERANCE, checked
    # the two biases whose true gradient is zero move by float32 rounding noise only
    start, _, _ = parity.starting_point()
    ours = parity.convcli_after(name, lr, steps)
    for key in parity.BN_FED_BIASES:
        assert np.max(np.abs(ours[key] - start[key])) < parity.noise_bound(name, lr, steps), key
