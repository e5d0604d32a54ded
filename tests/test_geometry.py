"""Layer arithmetic against the lecture's figures and hand computations."""

from __future__ import annotations

import doctest
from fractions import Fraction

import pytest

from convcli import geometry
from convcli.errors import ShapeError


def test_doctests() -> None:
    failures, tried = doctest.testmod(geometry)
    assert tried > 10 and failures == 0


@pytest.mark.parametrize(
    ("n", "f", "s", "p", "expected"),
    [
        (227, 11, 4, 0, 55),  # lecture: AlexNet conv1
        (5, 3, 2, 1, 3),  # cs231n demo: 5x5 input, F=3, P=1, S=2
        (224, 2, 2, 0, 112),  # pooling 224 -> 112
        (32, 5, 1, 0, 28),  # LeNet-5 C1
        (7, 3, 1, 0, 5),
        (7, 7, 1, 0, 1),
    ],
)
def test_conv_output_length(n: int, f: int, s: int, p: int, expected: int) -> None:
    assert geometry.conv_output_length(n, f, s, p) == expected


def test_lecture_four_and_a_half_does_not_fit() -> None:
    assert geometry.exact_output_length(10, 3, 2, 0) == Fraction(9, 2)
    with pytest.raises(ShapeError, match=r"4\.5 is not an integer"):
        geometry.conv_output_length(10, 3, 2, 0)
    assert geometry.fitting_strides(10, 3, 0) == [1, 7]


@pytest.mark.parametrize(
    ("n", "f", "s", "expected_out"),
    [(n, f, s, -(-n // s)) for n in (1, 5, 8, 13, 224, 227) for f in (1, 2, 3, 5, 11) for s in (1, 2, 3, 4)],
)
def test_same_padding_gives_ceil_n_over_s(n: int, f: int, s: int, expected_out: int) -> None:
    before, after = geometry.same_padding(n, f, s)
    assert after - before in (0, 1)  # extra pixel bottom/right, as Keras
    assert geometry.conv_output_length(n, f, s, "same") == expected_out
    # window starts 0, s, 2s, ... that fit in the padded input: exactly ceil(n/s) when the
    # padding is the least that makes room for them (TensorFlow's SAME)
    starts = range(0, n + before + after - f + 1, s)
    assert len(starts) >= expected_out
    assert before + after == 0 or starts[expected_out - 1] + f == n + before + after


def test_dilation_extends_the_kernel() -> None:
    # a 3x3 kernel with dilation 2 covers 5x5: 10 -> 6
    assert geometry.conv_output_length(10, 3, 1, 0, dilation=2) == 6


def test_alexnet_parameter_counts() -> None:
    assert geometry.conv_params(11, 11, 3, 96) == 34_944
    assert geometry.local_params(55, 55, 11, 11, 3, 96) == 105_705_600


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_sizes_are_refused(bad: int) -> None:
    with pytest.raises(ShapeError, match="stride must be a positive integer"):
        geometry.conv_output_length(10, 3, bad)


def test_kernel_larger_than_input() -> None:
    with pytest.raises(ShapeError, match="larger than the padded input"):
        geometry.conv_output_length(3, 5)
