"""convcli.losses against hand computations, published Keras values and loop oracles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from convcli import losses
from convcli.errors import InputError

EPS = 1e-7


# --- the lecture's student: y = 1, p = 0.87 -------------------------------------------


def test_lecture_student_absolute_error_is_0_13() -> None:
    # "the actual loss here would be 1.00 - 0.87 = 0.13"
    assert losses.compute("mae", [1.0], [0.87]) == pytest.approx(0.13, abs=1e-12)


def test_lecture_student_binary_crossentropy_is_minus_ln_0_87() -> None:
    # -[1 * ln(0.87) + 0 * ln(0.13)] = -ln 0.87 = 0.139262...
    value = losses.compute("binary-crossentropy", [1.0], [0.87])
    assert value == pytest.approx(0.1393, abs=5e-5)
    assert value == pytest.approx(-math.log(0.87), rel=1e-12)


def test_lecture_student_squared_error() -> None:
    assert losses.compute("mse", [1.0], [0.87]) == pytest.approx(0.13**2, rel=1e-12)


# --- published Keras values (docstrings of keras.losses.*) ----------------------------

KERAS_EXAMPLES = [
    # keras.losses.MeanSquaredError
    ("mse", [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], 0.5, 1e-9),
    # keras.losses.MeanAbsoluteError
    ("mae", [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], 0.5, 1e-9),
    # keras.losses.MeanAbsolutePercentageError
    ("mape", [[2.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 0.0]], 50.0, 1e-9),
    # keras.losses.MeanAbsolutePercentageError (y = 0 divides by epsilon): 5e+08
    ("mape", [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], 5e8, 100.0),
    # keras.losses.MeanSquaredLogarithmicError: 0.240
    ("msle", [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], 0.240, 5e-4),
    # keras.losses.BinaryCrossentropy: 0.815
    ("binary-crossentropy", [[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]], 0.815, 5e-4),
    # keras.losses.CategoricalCrossentropy: 1.177
    (
        "categorical-crossentropy",
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]],
        1.177,
        5e-4,
    ),
]


@pytest.mark.parametrize(("name", "y", "p", "expected", "tolerance"), KERAS_EXAMPLES)
def test_published_keras_values(name: str, y: list, p: list, expected: float, tolerance: float) -> None:
    # Keras prints these to 3 decimals: the tolerance is half of the last digit
    assert losses.compute(name, y, p) == pytest.approx(expected, abs=tolerance)


def test_keras_categorical_crossentropy_per_sample() -> None:
    # keras.losses.categorical_crossentropy docstring: array([0.0513, 2.303])
    values = losses.per_sample(
        "categorical-crossentropy", [[0, 1, 0], [0, 0, 1]], [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]
    )
    assert values.shape == (2,)
    np.testing.assert_allclose(values, [0.0513, 2.303], rtol=1e-3)


# --- hand computations of the Keras details ------------------------------------------


def test_binary_crossentropy_clips_probabilities() -> None:
    # p = 0 with y = 1 is clipped to 1e-7: -ln(1e-7) = 16.118...
    assert losses.compute("binary-crossentropy", [1.0], [0.0]) == pytest.approx(7 * math.log(10))
    # p = 1 with y = 1 is clipped to 1 - 1e-7: -ln(1 - 1e-7) ~ 1e-7
    assert losses.compute("binary-crossentropy", [1.0], [1.0]) == pytest.approx(1e-7, rel=1e-6)


def test_binary_crossentropy_averages_over_the_last_axis() -> None:
    # one sample with two outputs: mean of -ln 0.9 and -ln 0.8
    expected = (-math.log(0.9) - math.log(0.8)) / 2
    assert losses.compute("binary-crossentropy", [1.0, 0.0], [0.9, 0.2]) == pytest.approx(expected)


def test_categorical_crossentropy_sums_over_classes_with_natural_log() -> None:
    # one sample, true class 1 with p = 0.5: -ln 0.5 (a sum, not a mean over 3 classes)
    assert losses.compute("categorical-crossentropy", [0, 1, 0], [0.25, 0.5, 0.25]) == pytest.approx(
        math.log(2)
    )


def test_categorical_crossentropy_normalises_predictions() -> None:
    # scores 1, 2, 1 become 0.25, 0.5, 0.25
    assert losses.compute("categorical-crossentropy", [0, 1, 0], [1, 2, 1]) == pytest.approx(math.log(2))


def test_categorical_crossentropy_clips_zero_probability() -> None:
    assert losses.compute("categorical-crossentropy", [1, 0], [0.0, 1.0]) == pytest.approx(
        7 * math.log(10)
    )


def test_mape_divides_by_abs_true_value() -> None:
    # |-2 - (-1)| / |-2| = 0.5 -> 50 %
    assert losses.compute("mape", [-2.0], [-1.0]) == pytest.approx(50.0)


def test_msle_raises_negative_values_to_epsilon() -> None:
    # y = -5 counts as 1e-7, p = e - 1: (ln e - ln(1 + 1e-7))^2
    expected = (1.0 - math.log1p(EPS)) ** 2
    assert losses.compute("msle", [-5.0], [math.e - 1.0]) == pytest.approx(expected)


def test_per_sample_shape_is_all_but_last_axis() -> None:
    rng = np.random.default_rng(3)
    y = rng.random((4, 5, 3))
    p = rng.random((4, 5, 3))
    values = losses.per_sample("mse", y, p)
    assert values.shape == (4, 5)
    assert losses.compute("mse", y, p) == pytest.approx(float(np.mean((y - p) ** 2)))


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("mean_squared_error", "mse"),
        ("MSE", "mse"),
        ("mean-absolute-percentage-error", "mape"),
        ("binary_crossentropy", "binary-crossentropy"),
        ("categorical_crossentropy", "categorical-crossentropy"),
        ("msle", "msle"),
    ],
)
def test_keras_names_are_accepted(alias: str, canonical: str) -> None:
    assert losses.resolve_name(alias) == canonical


# --- loop oracles: Keras' formulas written element by element ------------------------


def oracle(name: str, y: np.ndarray, p: np.ndarray) -> float:
    """Keras' definitions, one sample (row) at a time, with the math module."""
    rows_y = y.reshape(-1, y.shape[-1]).tolist()
    rows_p = p.reshape(-1, p.shape[-1]).tolist()
    per_row = []
    for ys, ps in zip(rows_y, rows_p):
        n = len(ys)
        if name == "mse":
            per_row.append(sum((a - b) ** 2 for a, b in zip(ys, ps)) / n)
        elif name == "mae":
            per_row.append(sum(abs(a - b) for a, b in zip(ys, ps)) / n)
        elif name == "mape":
            per_row.append(100 * sum(abs(a - b) / max(abs(a), EPS) for a, b in zip(ys, ps)) / n)
        elif name == "msle":
            per_row.append(
                sum((math.log(max(b, EPS) + 1) - math.log(max(a, EPS) + 1)) ** 2 for a, b in zip(ys, ps))
                / n
            )
        elif name == "binary-crossentropy":
            total = 0.0
            for a, b in zip(ys, ps):
                b = min(max(b, EPS), 1 - EPS)
                total += -(a * math.log(b) + (1 - a) * math.log(1 - b))
            per_row.append(total / n)
        elif name == "categorical-crossentropy":
            s = sum(ps)
            per_row.append(-sum(a * math.log(min(max(b / s, EPS), 1 - EPS)) for a, b in zip(ys, ps)))
    return sum(per_row) / len(per_row)


shapes = st.tuples(st.integers(1, 4), st.integers(2, 5))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(["mse", "mae", "mape", "msle"]))
def test_regression_losses_match_loop_oracle(data: st.DataObject, name: str) -> None:
    shape = data.draw(shapes)
    values = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
    y = data.draw(arrays(np.float64, shape, elements=values))
    p = data.draw(arrays(np.float64, shape, elements=values))
    assert losses.compute(name, y, p) == pytest.approx(oracle(name, y, p), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(["binary-crossentropy", "categorical-crossentropy"]))
def test_crossentropies_match_loop_oracle(data: st.DataObject, name: str) -> None:
    shape = data.draw(shapes)
    probs = st.floats(0.0, 1.0, allow_nan=False)
    y = data.draw(arrays(np.float64, shape, elements=probs))
    p = data.draw(arrays(np.float64, shape, elements=st.floats(0.001, 1.0)))
    assert losses.compute(name, y, p) == pytest.approx(oracle(name, y, p), rel=1e-9, abs=1e-12)


# --- errors ---------------------------------------------------------------------------


def test_unknown_name_lists_allowed_values() -> None:
    with pytest.raises(InputError, match=r"Allowed values are: mse, mae, mape, msle.*Received: loss=hinge"):
        losses.compute("hinge", [1.0], [1.0])


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InputError, match=r"true shape=\(2, 3\), pred shape=\(3, 2\)"):
        losses.compute("mse", np.zeros((2, 3)), np.zeros((3, 2)))


def test_categorical_crossentropy_needs_two_classes() -> None:
    with pytest.raises(InputError, match=r"at least 2 classes.*shape=\(3, 1\).*binary-crossentropy"):
        losses.compute("categorical-crossentropy", np.ones((3, 1)), np.ones((3, 1)))


def test_categorical_crossentropy_rejects_zero_sum_row() -> None:
    with pytest.raises(InputError, match=r"row 1 sums to 0"):
        losses.compute("categorical-crossentropy", [[1, 0], [0, 1]], [[0.5, 0.5], [0.0, 0.0]])


def test_nan_is_rejected() -> None:
    with pytest.raises(InputError, match="NaN or infinite"):
        losses.compute("mse", [1.0, np.nan], [1.0, 1.0])


# --- reading values -------------------------------------------------------------------


def test_parse_inline_rows_and_single_value() -> None:
    np.testing.assert_array_equal(losses.parse_values("1 0 0; 0 1 0"), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(losses.parse_values("1,0,0\n0,1,0\n"), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(losses.parse_values("0.87"), [0.87])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2; 3", r"rows have different lengths \(2, 1\)"),
        ("1 two", r"'two' is not a number"),
        ("y\n1\nthree", r"'three' is not a number"),
        ("1 inf", r"'inf' is not a finite number"),
        (" ;  ", r"no numbers found"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        losses.parse_values(text, label="--true")


def test_read_csv_and_npy_files(tmp_path: Path) -> None:
    csv = tmp_path / "y.csv"
    csv.write_text("# labels\n1,0,0\n0,1,0\n")
    npy = tmp_path / "p.npy"
    np.save(npy, np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32))
    y = losses.read_values(str(csv))
    p = losses.read_values(str(npy))
    assert y.shape == p.shape == (2, 3)
    expected = (-math.log(0.7) - math.log(0.8)) / 2
    assert losses.compute("categorical-crossentropy", y, p) == pytest.approx(expected, rel=1e-6)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file: .*missing\.npy"):
        losses.read_values(str(tmp_path / "missing.npy"), label="--pred")


def test_npy_of_strings_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    np.save(path, np.array(["a", "b"]))
    with pytest.raises(InputError, match="must hold real numbers"):
        losses.read_values(str(path))


def test_values_from_bytes_reads_npy_and_text() -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(losses.values_from_bytes(buffer.getvalue()), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(losses.values_from_bytes(b"1 2\n3 4\n"), [[1, 2], [3, 4]])
    with pytest.raises(InputError, match="no input"):
        losses.values_from_bytes(b"  \n")


def test_column_against_vector_is_n_samples_like_keras() -> None:
    # Keras' squeeze_or_expand_to_same_rank: (N, 1) against (N,) is N samples of one value
    values = losses.per_sample("binary-crossentropy", [[1.0], [0.0]], [0.87, 0.2])
    np.testing.assert_allclose(values, [-math.log(0.87), -math.log(0.8)])


def test_leading_axis_of_one_is_one_sample() -> None:
    y, p = losses.prepare([[0.0, 1.0, 0.0]], [0.2, 0.5, 0.3])
    assert y.shape == p.shape == (1, 3)
    with pytest.raises(InputError, match=r"true shape=\(3, 1\), pred shape=\(1, 3\)"):
        losses.prepare(np.ones((3, 1)), np.ones((1, 3)))


def test_csv_header_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "y.csv"
    path.write_text("cat,dog\n1,0\n0,1\n")
    np.testing.assert_array_equal(losses.read_values(str(path)), [[1, 0], [0, 1]])


def test_long_inline_values_are_not_taken_for_a_path() -> None:
    # 2,000 numbers make a string longer than any file name (ENAMETOOLONG from stat)
    values = losses.read_values(" ".join(["0.5"] * 2000), label="--pred")
    assert values.shape == (2000,) and (values == 0.5).all()


def test_npy_content_under_another_name_is_read_as_an_array(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    with path.open("wb") as stream:
        np.save(stream, np.array([[0.25, 0.75]]))
    np.testing.assert_array_equal(losses.read_values(str(path)), [[0.25, 0.75]])
