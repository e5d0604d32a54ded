"""Every Keras 3 activation of convcli.ops against the float64 formulas of tests/oracles.py,
and the ReLU layer's options against their documented definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from convcli import ops
from convcli.errors import ModelError
from tests.oracles import activation_oracles, relu_layer_naive

# The functions of keras.activations.ALL_OBJECTS in Keras 3.15 (keras/src/activations/
# __init__.py), plus its two aliases swish and hard_swish.
KERAS_3_15_ACTIVATIONS = {
    "relu", "leaky_relu", "relu6", "softmax", "celu", "elu", "selu", "softplus", "softsign",
    "squareplus", "soft_shrink", "sparse_plus", "silu", "gelu", "glu", "tanh", "tanh_shrink",
    "threshold", "sigmoid", "sparse_sigmoid", "exponential", "hard_sigmoid", "hard_silu",
    "hard_tanh", "hard_shrink", "linear", "mish", "log_softmax", "log_sigmoid", "sparsemax",
    "swish", "hard_swish",
}

ELEMENTWISE = sorted(set(ops.ACTIVATIONS) - {"softmax", "log_softmax", "sparsemax", "glu"})
ROWWISE = ["softmax", "log_softmax", "sparsemax", "glu"]

# Values around every kink (0, +-0.5, +-1, +-3, 6) and far out in both tails, where the
# naive formulas overflow or cancel.
GRID = np.array(
    [-80, -30, -12, -6, -3.5, -3, -2.5, -1, -0.999, -0.7, -0.5, -0.49, -0.2, -1e-3, -1e-6, 0,
     1e-6, 1e-3, 0.2, 0.49, 0.5, 0.51, 0.999, 1, 1.5, 2.9, 3, 3.2, 5.9, 6, 6.5, 12, 30, 80],
    np.float32,
)


def test_the_names_are_exactly_keras_3_15s() -> None:
    assert set(ops.ACTIVATIONS) == KERAS_3_15_ACTIVATIONS
    assert len(ops.ACTIVATIONS) == len(set(ops.ACTIVATIONS)) and ops.ACTIVATIONS[0] == "linear"


def _check(name: str, z: np.ndarray, alpha: float | None = None) -> None:
    expected = activation_oracles(alpha)[name](z)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = ops.activate(z.copy(), name, alpha)
    assert out.dtype == np.float32 and out.shape == expected.shape
    # float32 rounding of the result, relative to the float64 oracle; exact zeros where
    # the oracle is smaller than the smallest float32 (e.g. softplus(-120)).
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_activation_matches_its_formula(name: str) -> None:
    _check(name, GRID)


@pytest.mark.parametrize("name,alpha", [
    ("leaky_relu", 0.005), ("leaky_relu", 0.3), ("leaky_relu", 1.7), ("elu", 0.5), ("celu", 2.0),
    ("squareplus", 1.0), ("squareplus", 0.0), ("soft_shrink", 1.0), ("hard_shrink", 2.0), ("threshold", 0.7),
])
def test_activation_parameter(name: str, alpha: float) -> None:
    _check(name, GRID, alpha)


@pytest.mark.parametrize("name", ROWWISE)
def test_rowwise_activation_matches_its_formula(name: str) -> None:
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((3, 5, 8)) * 4).astype(np.float32)
    z[0, 0] = [-1e4, 0, 1e4, 3, 3, 3, -2, 1]  # one logit dominates
    z[0, 1] = [88, 89, 90, 87, 86, 85, 84, 83]  # e^z overflows float32
    z[0, 2] = 1.5  # ties
    _check(name, z)


def test_default_parameters_are_kerass() -> None:
    z = np.array([-2.0, -0.4, 0.4, 2.0], np.float32)
    # leaky_relu the function: slope 0.2 (keras.activations.leaky_relu)
    np.testing.assert_allclose(ops.activate(z, "leaky_relu"), [-0.4, -0.08, 0.4, 2.0], rtol=1e-6)
    # hard_sigmoid in Keras 3 is relu6(z + 3) / 6, not Keras 2's 0.2 z + 0.5
    np.testing.assert_allclose(ops.activate(z, "hard_sigmoid"), [1 / 6, 2.6 / 6, 3.4 / 6, 5 / 6], rtol=1e-6)
    # gelu is the exact (erf) form by default: gelu(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.841344746
    assert ops.activate(np.float32([1.0]), "gelu")[0] == pytest.approx(0.8413447460685429, rel=1e-6)
    np.testing.assert_allclose(ops.activate(z, "gelu"), z * special.ndtr(z.astype(np.float64)), rtol=1e-6)
    # shrinks at 0.5, squareplus with b = 4: squareplus(0) = sqrt(4) / 2 = 1
    np.testing.assert_allclose(ops.activate(z, "soft_shrink"), [-1.5, 0, 0, 1.5], rtol=1e-6)
    np.testing.assert_allclose(ops.activate(z, "hard_shrink"), [-2, 0, 0, 2], rtol=1e-6)
    assert ops.activate(np.float32([0.0]), "squareplus")[0] == 1.0


@pytest.mark.parametrize("name", sorted(ops.ALPHA_DEFAULTS))
def test_alpha_defaults_are_what_activate_uses(name: str) -> None:
    assert name in ops.ACTIVATIONS
    z = GRID.copy()
    np.testing.assert_array_equal(ops.activate(z, name), ops.activate(z, name, ops.ALPHA_DEFAULTS[name]))
    # and alpha changes the result (it is not ignored)
    assert not np.array_equal(ops.activate(z, name), ops.activate(z, name, ops.ALPHA_DEFAULTS[name] + 0.25))


def test_every_exported_name_exists() -> None:
    assert all(hasattr(ops, name) for name in ops.__all__)


def test_stable_far_out() -> None:
    z = np.array([-3e38, -1e30, -1e4, 1e4, 1e30, 3e38], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert ops.activate(z, "softplus").tolist() == [0, 0, 0, 1e4, np.float32(1e30), np.float32(3e38)]
        assert ops.activate(z, "log_sigmoid").tolist() == [np.float32(-3e38), np.float32(-1e30), -1e4, 0, 0, 0]
        assert ops.activate(z, "sigmoid").tolist() == [0, 0, 0, 1, 1, 1]
        np.testing.assert_array_equal(ops.activate(z, "silu"), [-0.0, -0.0, -0.0, 1e4, z[4], z[5]])
        np.testing.assert_array_equal(ops.activate(z, "gelu"), [-0.0, -0.0, -0.0, 1e4, z[4], z[5]])
        np.testing.assert_array_equal(ops.activate(z, "mish"), [-0.0, -0.0, -0.0, 1e4, z[4], z[5]])
        assert ops.activate(z, "elu").tolist() == [-1, -1, -1, 1e4, z[4], z[5]]
        assert ops.activate(z, "exponential")[2] == 0
        squareplus = ops.activate(z, "squareplus")
    # squareplus(-z) ~ 1/z for large z (b = 4): no cancellation to 0
    np.testing.assert_allclose(squareplus[2], 1e-4, rtol=1e-6)
    assert np.isinf(ops.activate(np.float32([100.0]), "exponential")[0])
    # gelu's far negative tail keeps its relative precision: -5 * Phi(-5)
    assert ops.activate(np.float32([-5.0]), "gelu")[0] == pytest.approx(-5 * special.ndtr(-5.0), rel=1e-5)
    assert ops.activate(np.float32([-12.0]), "gelu")[0] == pytest.approx(-12 * special.ndtr(-12.0), rel=1e-5)


def test_rowwise_references_from_scipy() -> None:
    rng = np.random.default_rng(8)
    z = (rng.standard_normal((4, 10)) * 10).astype(np.float32)
    np.testing.assert_allclose(ops.activate(z, "softmax"), special.softmax(z.astype(np.float64), axis=-1), rtol=1e-5)
    np.testing.assert_allclose(ops.activate(z, "log_softmax"), special.log_softmax(z.astype(np.float64), axis=-1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.activate(z, "sigmoid"), special.expit(z.astype(np.float64)), rtol=1e-6)
    # sparsemax rows are on the simplex; by hand: [1, 0, -1] -> tau = 0 -> [1, 0, 0];
    # [0.6, 0.5, -0.5] -> tau = (1.1 - 1) / 2 -> [0.55, 0.45, 0]
    p = ops.activate(z, "sparsemax")
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)
    assert (p >= 0).all()
    np.testing.assert_allclose(ops.activate(np.float32([[1, 0, -1], [0.6, 0.5, -0.5]]), "sparsemax"),
                               [[1, 0, 0], [0.55, 0.45, 0]], rtol=1e-6, atol=1e-7)


def test_glu_halves_the_last_axis() -> None:
    z = np.array([[1.0, -2.0, 0.0, 3.0]], np.float32)
    np.testing.assert_allclose(ops.activate(z, "glu"), [[1 * 0.5, -2 * special.expit(3.0)]], rtol=1e-6)
    with pytest.raises(ModelError, match=r"glu: the last axis must have an even size.*\(1, 3\)"):
        ops.activate(z[:, :3], "glu")
    with pytest.raises(ModelError, match="glu halves the channels"):
        ops.dense(z, np.eye(4, dtype=np.float32), activation="glu")


@pytest.mark.parametrize("name", sorted(set(ops.ACTIVATIONS) - {"glu", "linear"}))
def test_in_place_writes_into_the_input(name: str) -> None:
    rng = np.random.default_rng(9)
    z = (rng.standard_normal((2, 6)) * 3).astype(np.float32)
    expected = ops.activate(z, name)
    assert np.shares_memory(expected, z) is False
    target = z.copy()
    result = ops.activate(target, name, inplace=True)
    assert result is target
    np.testing.assert_array_equal(target, expected)


@pytest.mark.parametrize("name", ["gelu", "hard_silu", "selu", "softmax"])
def test_fused_activation_in_dense(name: str) -> None:
    rng = np.random.default_rng(10)
    x, kernel, bias = (rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (5, 4), (4,)))
    logits = x.astype(np.float64) @ kernel + bias
    np.testing.assert_allclose(ops.dense(x, kernel, bias, activation=name), activation_oracles()[name](logits),
                               rtol=1e-5, atol=1e-6)


def test_unknown_activation_lists_the_allowed_names() -> None:
    with pytest.raises(ModelError, match="Allowed values are: linear, relu, relu6,.*Received: activation=swishy"):
        ops.activate(np.zeros(2, np.float32), "swishy")


RELU_OPTIONS = [
    # (max_value, negative_slope, threshold)
    (None, 0.0, 0.0), (6.0, 0.0, 0.0), (1.0, 0.0, 0.0), (None, 0.1, 0.0), (6.0, 0.1, 0.0),
    (None, 0.0, 0.5), (None, 0.2, 0.5), (6.0, 0.2, 1.0), (2.0, 0.5, 3.0), (0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("max_value,negative_slope,threshold", RELU_OPTIONS)
def test_relu_layer_options(max_value, negative_slope, threshold) -> None:
    z = GRID[(GRID > -20) & (GRID < 20)]
    expected = [relu_layer_naive(float(v), max_value, negative_slope, threshold) for v in z]
    out = ops.relu(z, max_value=max_value, negative_slope=negative_slope, threshold=threshold)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    target = z.copy()
    assert ops.relu(target, max_value=max_value, negative_slope=negative_slope, threshold=threshold,
                    out=target) is target
    np.testing.assert_array_equal(target, out)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=20),
    max_value=st.none() | st.floats(0, 10, width=32),
    negative_slope=st.floats(0, 2, width=32),
    threshold=st.floats(0, 5, width=32),
)
def test_relu_options_hypothesis(values, max_value, negative_slope, threshold) -> None:
    z = np.array(values, np.float32)
    expected = [relu_layer_naive(float(v), max_value, negative_slope, threshold) for v in z]
    out = ops.relu(z, max_value=max_value, negative_slope=negative_slope, threshold=threshold)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)


def test_relu_rejects_negative_options() -> None:
    with pytest.raises(ModelError, match="`max_value` must be a non-negative number. Received: max_value=-1"):
        ops.relu(np.zeros(2, np.float32), max_value=-1)
    with pytest.raises(ModelError, match="negative_slope=-0.5"):
        ops.relu(np.zeros(2, np.float32), negative_slope=-0.5)
