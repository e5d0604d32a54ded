"""Pure integer arithmetic of convolution and pooling layers (no numpy).

The lecture's formula for the output length of a CONV layer is (W - F + 2P) / S + 1.
Everything here is exact: a size that is not an integer raises :class:`ShapeError`
carrying the fraction, as the lecture's W=10, F=3, P=0, S=2 example (4.5) does.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

from convcli.errors import ShapeError

Padding = int | tuple[int, int] | Literal["same", "valid"]


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent of a dilated kernel: ``(kernel - 1) * dilation + 1``.

    >>> effective_kernel(3, 2)
    5
    """
    return (kernel - 1) * dilation + 1


def same_padding(n: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """Padding before and after for Keras' ``padding="same"``.

    The output length is ceil(n / stride); when the total padding is odd the extra
    row or column goes after (bottom/right), as in Keras and TensorFlow.

    >>> same_padding(5, 3)
    (1, 1)
    >>> same_padding(224, 2, 2)
    (0, 0)
    >>> same_padding(224, 11, 4)
    (3, 4)
    """
    out = -(-n // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - n, 0)
    return total // 2, total - total // 2


def padding_amounts(
    n: int, kernel: int, stride: int = 1, padding: Padding = 0, dilation: int = 1
) -> tuple[int, int]:
    """Padding (before, after) for an integer, a ``(before, after)`` pair, ``"valid"`` or ``"same"``.

    >>> padding_amounts(7, 3, padding=(0, 1))
    (0, 1)
    """
    if isinstance(padding, tuple):
        if len(padding) == 2 and all(isinstance(p, int) and p >= 0 for p in padding):
            return padding[0], padding[1]
    elif padding == "same":
        return same_padding(n, kernel, stride, dilation)
    elif padding == "valid":
        return 0, 0
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return padding, padding
    raise ShapeError(
        f"Unknown value for padding. Allowed values are: a non-negative integer, a (before, after) "
        f"pair, same, valid. "
        f"Received: padding={padding!r}"
    )


def exact_output_length(
    n: int, kernel: int, stride: int = 1, padding: Padding = 0, dilation: int = 1
) -> Fraction:
    """The lecture's (W - F + 2P) / S + 1 as an exact fraction (may be non-integer).

    >>> exact_output_length(10, 3, 2)
    Fraction(9, 2)
    >>> exact_output_length(227, 11, 4)
    Fraction(55, 1)
    """
    _check_positive(n=n, kernel=kernel, stride=stride, dilation=dilation)
    before, after = padding_amounts(n, kernel, stride, padding, dilation)
    return Fraction(n + before + after - effective_kernel(kernel, dilation), stride) + 1


def conv_output_length(
    n: int, kernel: int, stride: int = 1, padding: Padding = 0, dilation: int = 1, *, floor: bool = False
) -> int:
    """Output length of a convolution or pooling window sliding over ``n`` positions.

    With ``floor=False`` (the lecture's rule, used for arrow notation and TOML models) a
    fractional size is refused; with ``floor=True`` (Keras and PyTorch, used for imported
    Keras models) the last partial window is dropped.

    Raises:
        ShapeError: when the kernel is larger than the padded input, or when the
            neurons do not fit (the exact size is not an integer and ``floor`` is False).

    >>> conv_output_length(227, 11, 4)
    55
    >>> conv_output_length(10, 3, 2, floor=True)
    4
    >>> conv_output_length(10, 3, 2)
    Traceback (most recent call last):
    ...
    convcli.errors.ShapeError: output size (10 - 3 + 2*0)/2 + 1 = 4.5 is not an integer: the neurons do not fit
    """
    exact = exact_output_length(n, kernel, stride, padding, dilation)
    if padding == "same":
        # "same" pads just enough for ceil(n / stride) windows; trailing input the last
        # window skips (stride > kernel) is dropped, as in Keras.
        return -(-n // stride)
    before, after = padding_amounts(n, kernel, stride, padding, dilation)
    k = effective_kernel(kernel, dilation)
    if n + before + after < k:
        raise ShapeError(
            f"kernel of size {k} is larger than the padded input of size {n + before + after}"
        )
    if exact.denominator != 1 and not floor:
        pad_text = f"{before}+{after}" if before != after else f"2*{before}"
        raise ShapeError(
            f"output size ({n} - {k} + {pad_text})/{stride} + 1 = {format_fraction(exact)} "
            "is not an integer: the neurons do not fit"
        )
    return int(exact.__floor__())


def unreached(n: int, kernel: int, stride: int = 1, padding: Padding = 0, dilation: int = 1) -> int:
    """Rows (or columns) at the end of the padded input that no window reaches when the
    size is floored (0 when the windows fit exactly, and for ``same`` padding).

    >>> unreached(10, 3, 2)  # windows start at 0, 2, 4, 6: the last row is never read
    1
    >>> unreached(7, 2, 2)  # MaxPooling2D(2) on 7 rows ignores the 7th
    1
    """
    if padding == "same":
        return 0
    before, after = padding_amounts(n, kernel, stride, padding, dilation)
    span = n + before + after - effective_kernel(kernel, dilation)
    return span % stride if span >= 0 else 0


def conv_transpose_output_length(
    n: int, kernel: int, stride: int = 1, padding: Literal["same", "valid"] = "valid",
    output_padding: int | None = None, dilation: int = 1,
) -> int:
    """Output length of a transposed convolution, as Keras' ``Conv2DTranspose`` computes it
    (``keras/src/ops/operation_utils.py``, ``compute_conv_transpose_output_length``).

    >>> conv_transpose_output_length(7, 3, 2)  # valid: 7 * 2 + max(3 - 2, 0)
    15
    >>> conv_transpose_output_length(7, 3, 2, "same")
    14
    >>> conv_transpose_output_length(7, 3, 2, "same", output_padding=1)  # (7-1)*2 + 3 - 2 + 1
    14
    """
    _check_positive(n=n, kernel=kernel, stride=stride, dilation=dilation)
    k = effective_kernel(kernel, dilation)
    if output_padding is None:
        return n * stride + (max(k - stride, 0) if padding == "valid" else 0)
    pad = k // 2 if padding == "same" else 0
    return (n - 1) * stride + k - 2 * pad + output_padding


def fitting_paddings(n: int, kernel: int, stride: int, limit: int = 3, near: int | None = None) -> list[int]:
    """The smallest integer paddings P >= 0 for which (n - kernel + 2P)/stride + 1 is an
    integer, or with ``near`` the ``limit`` paddings nearest to it (ties: the smaller).

    Solved as a congruence, not by trying each P: a size of 10^8 costs what 10 costs.

    >>> fitting_paddings(10, 3, 3)
    [1, 4, 7]
    >>> fitting_paddings(10, 3, 2)  # 7 + 2P is always odd
    []
    >>> fitting_paddings(10, 3, 3, near=5)
    [4, 7, 1]
    """
    # (n - kernel + 2P) ≡ 0 (mod stride) is the linear congruence 2P ≡ r (mod stride)
    r = (kernel - n) % stride
    g = math.gcd(2, stride)
    if r % g:
        return []
    period = stride // g
    first = (r // g) * pow(2 // g, -1, period) % period if period > 1 else 0
    lowest = max(0, -((n - kernel) // 2))  # the smallest P with n - kernel + 2P >= 0
    start = lowest + (first - lowest) % period
    bound = n + kernel + 2 * stride  # suggestions stay near the sizes given
    if near is None:
        return [p for p in range(start, start + limit * period, period) if p <= bound]
    if start > bound:
        return []
    middle = min(max(0, (near - start) // period), (bound - start) // period)
    candidates = [start + j * period for j in range(max(0, middle - limit), middle + limit + 2)]
    return sorted((p for p in candidates if p <= bound), key=lambda p: (abs(p - near), p))[:limit]


def fitting_strides(n: int, kernel: int, padding: int = 0, limit: int = 3, near: int | None = None) -> list[int]:
    """Strides S >= 1 for which (n - kernel + 2P)/S + 1 is an integer: the smallest, or with
    ``near`` the ``limit`` strides nearest to it (ties: the smaller).

    >>> fitting_strides(10, 3)
    [1, 7]
    >>> fitting_strides(26, 2, near=5)
    [4, 6, 3]
    """
    span = n - kernel + 2 * padding
    if span < 0:
        return []
    if span == 0:
        return [1]
    # the divisors of span: trial division up to sqrt(span), with their cofactors; capped so
    # that a huge span costs milliseconds (beyond the cap only the cofactors are listed)
    root = math.isqrt(span)
    small = [d for d in range(1, min(root, _MAX_TRIAL_DIVISOR) + 1) if span % d == 0]
    divisors = sorted(set(small) | {span // d for d in small})
    if near is None:
        return divisors[:limit]
    return sorted(divisors, key=lambda s: (abs(s - near), s))[:limit]


_MAX_TRIAL_DIVISOR = 200_000


def conv_params(kernel_h: int, kernel_w: int, depth: int, filters: int, bias: bool = True) -> int:
    """Parameters of a CONV layer with shared weights: K*F*F*D (+ K biases).

    >>> conv_params(11, 11, 3, 96)
    34944
    """
    return filters * kernel_h * kernel_w * depth + (filters if bias else 0)


def local_params(
    out_h: int, out_w: int, kernel_h: int, kernel_w: int, depth: int, filters: int, bias: bool = True
) -> int:
    """Parameters of a locally connected layer (no weight sharing): every output neuron
    has its own F*F*D weights and bias.

    >>> local_params(55, 55, 11, 11, 3, 96)
    105705600
    """
    return out_h * out_w * filters * (kernel_h * kernel_w * depth + (1 if bias else 0))


def receptive_field_step(
    size: int, jump: int, start: Fraction, kernel: int, stride: int = 1,
    pad_before: int = 0, dilation: int = 1,
) -> tuple[int, int, Fraction]:
    """Receptive field after one more window layer, along one axis.

    ``size`` is the receptive field of one neuron of the input (in input-image pixels),
    ``jump`` the distance in image pixels between neighbouring input neurons, ``start``
    the image coordinate of the centre of the first input neuron's field. A layer with
    an (effective) kernel k and stride s gives ``size + (k - 1) * jump``, ``jump * s`` and
    a first centre shifted by ``((k - 1) / 2 - pad_before) * jump`` (Araujo et al.,
    "Computing receptive fields of convolutional neural networks", Distill 2019).

    >>> receptive_field_step(1, 1, Fraction(1, 2), 3)  # a 3x3 conv on the image
    (3, 1, Fraction(3, 2))
    >>> receptive_field_step(3, 1, Fraction(3, 2), 2, 2)  # then a 2x2/2 pool
    (4, 2, Fraction(2, 1))
    """
    k = effective_kernel(kernel, dilation)
    return size + (k - 1) * jump, jump * stride, start + (Fraction(k - 1, 2) - pad_before) * jump


def format_fraction(value: Fraction) -> str:
    """A fraction as the lecture writes it: ``4.5``, ``55``, or ``8.333...`` for repeating decimals.

    >>> format_fraction(Fraction(9, 2))
    '4.5'
    >>> format_fraction(Fraction(25, 3))
    '8.333'
    """
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.3f}".rstrip("0")
    return text


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ShapeError(f"{name} must be a positive integer. Received: {name}={value!r}")
