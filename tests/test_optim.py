"""The optimizers of convcli.optim against hand computations and, when installed, Keras."""

from __future__ import annotations

import doctest
import math
import os

import numpy as np
import pytest

from convcli import grad, losses, optim
from convcli.errors import InputError, ShapeError


def test_one_sgd_step_on_a_tiny_dense_model_is_the_hand_computation() -> None:
    """x = [[1, 2], [3, 4]], W = [0.5, -0.5]^T, b = 0, targets [1, 0], mse, lr 0.1.

    predictions: 1*0.5 - 2*0.5 = -0.5 and 3*0.5 - 4*0.5 = -0.5
    loss: ((1 + 0.5)^2 + (0 + 0.5)^2) / 2 = (2.25 + 0.25) / 2 = 1.25
    dL/dp = 2 (p - y) / 2 = [-1.5, -0.5]
    dL/dW = x^T dL/dp = [1*-1.5 + 3*-0.5, 2*-1.5 + 4*-0.5] = [-3, -5];  dL/db = -2
    W - 0.1 dW = [0.8, 0.0];  b - 0.1 db = 0.2
    """
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    y = np.array([[1.0], [0.0]], np.float32)
    params = {"kernel": np.array([[0.5], [-0.5]], np.float32), "bias": np.zeros(1, np.float32)}
    p = x @ params["kernel"] + params["bias"]
    assert losses.compute("mse", y, p) == pytest.approx(1.25)
    _, dk, db = grad.dense_backward(x, params["kernel"], grad.loss_gradient("mse", y, p))
    assert db is not None
    sgd = optim.make_optimizer("sgd", 0.1)
    sgd.step(params, {"kernel": dk, "bias": db})
    np.testing.assert_allclose(params["kernel"], [[0.8], [0.0]], atol=1e-7)
    np.testing.assert_allclose(params["bias"], [0.2], atol=1e-7)
    assert params["kernel"].dtype == np.float32 and sgd.iterations == 1


def test_momentum_is_keras_form() -> None:
    # m = 0.9 m - lr g; w += m.  w = 1, g = 1, lr = 0.1:
    # step 1: m = -0.1, w = 0.9;  step 2: m = -0.09 - 0.1 = -0.19, w = 0.71
    params = {"w": np.array([1.0])}
    momentum = optim.make_optimizer("momentum", 0.1)
    momentum.step(params, {"w": np.array([1.0])})
    np.testing.assert_allclose(params["w"], [0.9])
    momentum.step(params, {"w": np.array([1.0])})
    np.testing.assert_allclose(params["w"], [0.71])


def test_adam_steps_are_the_hand_formula() -> None:
    """Keras' Adam (adam.py), written out: two steps with gradients 0.5 then -0.2."""
    lr, b1, b2, eps = 0.001, 0.9, 0.999, 1e-7
    params = {"w": np.array([1.0, -3.0])}
    adam = optim.make_optimizer("adam")
    w, m, v = np.array([1.0, -3.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate((np.array([0.5, 4.0]), np.array([-0.2, 1e-9])), start=1):
        adam.step(params, {"w": g})
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        w = w - alpha * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(params["w"], w, rtol=1e-12)
    # Kingma & Ba: the first step moves every weight by about lr, whatever the gradient's scale
    first = {"w": np.array([0.0, 0.0])}
    optim.Adam().step(first, {"w": np.array([1e-2, -50.0])})
    np.testing.assert_allclose(first["w"], [-0.001, 0.001], rtol=1e-3)


def test_adam_in_float32_stays_float32() -> None:
    params = {"w": np.ones((2, 3), np.float32)}
    adam = optim.Adam(0.01)
    for _ in range(3):
        adam.step(params, {"w": np.full((2, 3), 0.5)})
    assert params["w"].dtype == np.float32
    np.testing.assert_allclose(params["w"], 1 - 3 * 0.01, rtol=1e-5)  # constant gradient: lr per step


def test_make_optimizer_defaults_and_errors() -> None:
    assert optim.make_optimizer("SGD").learning_rate == 0.01
    momentum = optim.make_optimizer("momentum")
    assert isinstance(momentum, optim.SGD) and momentum.momentum == 0.9
    assert optim.make_optimizer("adam").learning_rate == 0.001
    with pytest.raises(InputError, match="Allowed values are: sgd, momentum, adam. Received: optimizer=rmsprop"):
        optim.make_optimizer("rmsprop")
    with pytest.raises(InputError, match="positive number"):
        optim.make_optimizer("sgd", 0.0)
    sgd = optim.SGD()
    params = {"w": np.ones(2)}
    with pytest.raises(ShapeError, match="no gradient for parameter 'w'"):
        sgd.step(params, {})
    with pytest.raises(ShapeError, match=r"has shape \(3,\), the parameter \(2,\)"):
        sgd.step(params, {"w": np.ones(3)})
    np.testing.assert_array_equal(params["w"], [1, 1])  # nothing moved
    assert sgd.iterations == 0


def test_doctests() -> None:
    failures, tried = doctest.testmod(optim)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_steps_match_keras_optimizers(name) -> None:
    """Three steps of Keras' own optimizer (torch backend) on the same float32 variables."""
    pytest.importorskip("torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("needs Keras on its torch backend")
    rng = np.random.default_rng(4)
    start = {"k": rng.standard_normal((3, 2)).astype(np.float32), "b": rng.standard_normal(2).astype(np.float32)}
    steps = [{key: rng.standard_normal(v.shape).astype(np.float32) for key, v in start.items()} for _ in range(3)]
    theirs = {
        "sgd": keras.optimizers.SGD(0.05),
        "momentum": keras.optimizers.SGD(0.05, momentum=0.9),
        "adam": keras.optimizers.Adam(0.05),
    }[name]
    variables = [keras.Variable(start["k"]), keras.Variable(start["b"])]
    ours = optim.make_optimizer(name, 0.05)
    params = {key: value.copy() for key, value in start.items()}
    for g in steps:
        theirs.apply_gradients([(keras.ops.convert_to_tensor(g["k"]), variables[0]),
                                (keras.ops.convert_to_tensor(g["b"]), variables[1])])
        ours.step(params, g)
    for key, variable in zip(("k", "b"), variables):
        np.testing.assert_allclose(params[key], variable.value.detach().cpu().numpy(), rtol=1e-5, atol=1e-6)
