"""The Python API: the engines behind the commands, with the commands' rules.

``import convcli`` gives these functions lazily (``convcli.correlate``, ...), so importing
the package stays as fast as ``convcli --help``; numpy, scipy and Pillow load on first use.
Every error is a :class:`convcli.errors.ConvcliError` subclass carrying the same one-line
message the command prints after ``error:``.

>>> import numpy as np
>>> region = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]])
>>> round(float(correlate(region, "box3", padding="valid")[0, 0]), 2)  # the lecture's 132
132.22
>>> conv_output_size(227, 11, stride=4)  # AlexNet conv1: 55 neurons a side
55
>>> summary("INPUT(227,227,3) => CONV(96,11,stride=4)").total_params
34944
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from convcli.errors import InputError, ShapeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from convcli.geometry import Padding
    from convcli.kernels import GradientPair, Kernel
    from convcli.layers import Model
    from convcli.summary import Summary

    KernelLike: TypeAlias = str | Kernel | GradientPair | np.ndarray | Sequence[Sequence[float]] | tuple[np.ndarray, np.ndarray]

__all__ = [
    "conv_output_size", "correlate", "filter_chain", "load_kernel", "load_model", "loss", "run", "summary",
]


def load_kernel(name_or_path: str | Path, kernel_path: Sequence[str | Path] = ()) -> Kernel | GradientPair:
    """A kernel of the library by name, a kernel file, or an inline matrix, as ``--kernel``
    takes them. A gradient pair's name (``sobel``) gives a :class:`GradientPair`.

    ``kernel_path``: extra folders of kernel files, searched before ``CONVCLI_KERNEL_PATH``
    and the built-ins (as ``--kernel-path``).

    >>> k = load_kernel("box3")
    >>> str(k.scale), k.weights.sum().round(6)
    ('1/9', np.float64(1.0))
    >>> load_kernel("sobel").y.name
    'sobel-y'

    Raises:
        KernelError: an unknown name (with close names), a missing or malformed file.
    """
    from convcli.kernels import resolve_kernel

    return resolve_kernel(str(name_or_path), [Path(p) for p in kernel_path])


def _step(kernel: KernelLike) -> tuple[str, Any]:
    """(name, weights or (weights_x, weights_y)) for the engine."""
    import numpy as np

    from convcli.kernels import GradientPair, Kernel

    if isinstance(kernel, (str, Path)):
        kernel = load_kernel(kernel)
    if isinstance(kernel, GradientPair):
        return kernel.name, (kernel.x.weights, kernel.y.weights)
    if isinstance(kernel, Kernel):
        return kernel.name, kernel.weights
    if isinstance(kernel, tuple) and len(kernel) == 2 and all(np.ndim(k) == 2 for k in kernel):
        return "gradient pair", (np.asarray(kernel[0], dtype=np.float64), np.asarray(kernel[1], dtype=np.float64))
    return "matrix", np.asarray(kernel, dtype=np.float64)


def _check_fits(shape: tuple[int, ...], name: str, weights: Any, padding: int | str, stride: int) -> tuple[int, int]:
    """(height, width) after one kernel; ShapeError when the neurons do not fit (the lecture's
    rule: a fractional (W - F + 2P)/S + 1 is refused, not floored)."""
    from convcli.geometry import conv_output_length

    first = weights[0] if isinstance(weights, tuple) else weights
    sizes = []
    for axis, n, f in (("height", shape[0], first.shape[0]), ("width", shape[1], first.shape[1])):
        try:
            sizes.append(conv_output_length(n, f, stride, cast("Padding", padding)))
        except ShapeError as exc:
            raise ShapeError(f"kernel {name} ({first.shape[0]}x{first.shape[1]}) on an image {axis} of {n}: {exc}") from None
    return sizes[0], sizes[1]


def filter_chain(
    image: Any,
    kernels: Sequence[KernelLike],
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    padding: int | str = "same",
    stride: int = 1,
) -> np.ndarray:
    """Apply each kernel in turn, as ``convcli filter --kernel K1 --kernel K2`` does.

    Parameters:
        image: (H, W) or (H, W, C) numbers; every channel is filtered on its own.
        kernels: each a library name, a kernel file, an inline matrix (``"1 0 -1; 2 0 -2;
            1 0 -1"``), a :class:`Kernel`, a :class:`GradientPair` (gradient magnitude
            sqrt(gx² + gy²)), a 2-D array, or a pair of 2-D arrays.
        mode: reflect, constant (with ``cval``), nearest, mirror or wrap (scipy.ndimage).
        padding: ``"same"`` (output the input's size), ``"valid"``, or an integer P.
        stride: keep every S-th output position.

    Returns:
        float32 array: cross-correlation, no flip, as ``scipy.ndimage.correlate``;
        no rounding, no clipping.

    Raises:
        ShapeError: the neurons do not fit ((W - F + 2P)/S + 1 is not an integer).
        KernelError, InputError: a bad kernel, mode, padding or stride.

    >>> import numpy as np
    >>> image = np.arange(25, dtype=np.float32).reshape(5, 5)
    >>> filter_chain(image, ["box3", "1 0 -1; 2 0 -2; 1 0 -1"], padding="valid").shape
    (1, 1)
    """
    import numpy as np

    from convcli import filtering

    x = np.asarray(image, dtype=np.float32)
    if isinstance(padding, str):
        padding = padding.strip().lower()
        if padding.isdigit():
            padding = int(padding)
    steps = [_step(k) for k in kernels]
    if x.ndim in (2, 3) and padding != "same":
        shape: tuple[int, ...] = x.shape[:2]
        for name, weights in steps:
            shape = _check_fits(shape, name, weights, padding, stride)
    return filtering.filter_chain(
        x, [w for _, w in steps], mode=mode, cval=cval, padding=padding, stride=stride  # type: ignore[arg-type]
    )


def correlate(
    image: Any,
    kernel: KernelLike,
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    padding: int | str = "same",
    stride: int = 1,
) -> np.ndarray:
    """Filter ``image`` with one kernel: the lecture's convolution (cross-correlation, no flip).

    The same as :func:`filter_chain` with one kernel; a kernel may be a name, a matrix, an
    array or a gradient pair (then the result is the gradient magnitude).

    >>> import numpy as np
    >>> import scipy.ndimage as ndi
    >>> image = np.random.default_rng(0).random((6, 7)).astype(np.float32)
    >>> weights = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
    >>> bool(np.allclose(correlate(image, weights), ndi.correlate(image, weights, mode="reflect"), atol=1e-6))
    True
    """
    return filter_chain(image, [kernel], mode=mode, cval=cval, padding=padding, stride=stride)


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int | str = 0, dilation: int = 1
) -> int:
    """The lecture's output size (W - F + 2P)/S + 1 of a CONV or POOL layer along one axis.

    ``padding``: an integer P, ``"valid"`` (P = 0) or ``"same"`` (Keras: ceil(W/S)).

    >>> conv_output_size(227, 11, stride=4)
    55
    >>> conv_output_size(224, 11, stride=4, padding="same")
    56
    >>> conv_output_size(10, 3, stride=2)
    Traceback (most recent call last):
    ...
    convcli.errors.ShapeError: output size (10 - 3 + 2*0)/2 + 1 = 4.5 is not an integer: the neurons do not fit

    Raises:
        ShapeError: the size is not an integer (the neurons do not fit), or the kernel is
            larger than the padded input.
    """
    from convcli.geometry import conv_output_length

    if isinstance(padding, str):
        lowered = padding.strip().lower()
        if lowered not in ("same", "valid"):
            raise InputError(f"Unknown value for `padding`. Allowed values are: same, valid, or an integer. Received: padding={padding}")
        padding = 0 if lowered == "valid" else "same"
    for key, value in (("size", size), ("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if value < 1:
            raise ShapeError(f"{key} must be a positive integer. Received: {key}={value}")
    return conv_output_length(size, kernel_size, stride, cast("Padding", padding), dilation)


def load_model(source: str | Path, input_shape: Sequence[int] | None = None) -> Model:
    """A model from the arrow notation, a ``.toml`` file or a Keras file, as the commands
    read MODEL. ``input_shape`` (H, W, D) fills the sizes a Keras model leaves open.

    >>> model = load_model("INPUT(32,32,1) => CONV(6,5) => RELU => POOL(2) => FC(10)")
    >>> [layer.name for layer in model.layers]
    ['conv1', 'relu1', 'pool1', 'flatten1', 'fc1']

    Raises:
        ModelError: a token, parameter or layer that is not valid (named).
        InputError: a model file that is missing or cannot be read.
    """
    from convcli.spec import load_model as _load

    return _load(str(source), tuple(input_shape) if input_shape is not None else None)


def _model(model: Model | str | Path) -> Model:
    return load_model(model) if isinstance(model, (str, Path)) else model


def summary(model: Model | str | Path) -> Summary:
    """The per-layer summary of a model (or of a model source): ``str()`` of it is the
    table ``convcli summary`` prints, ``.to_json()`` the ``--json`` document.

    >>> s = summary("INPUT(227,227,3) => CONV(96,11,stride=4)")
    >>> s.rows[0].output_shape, s.rows[0].params, s.rows[0].params_unshared
    ((55, 55, 96), 34944, 105705600)

    Raises:
        ShapeError: a layer does not fit (named, with the fractional size).
    """
    from convcli.summary import summarize

    return summarize(_model(model))


def run(
    model: Model | str | Path,
    x: Any,
    weights: str | Path | Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
) -> np.ndarray:
    """The forward pass (inference), as ``convcli run``.

    Parameters:
        model: a model or a model source (arrow notation, ``.toml``, Keras file).
        x: one input (the model's input shape, e.g. (H, W, D)) or a batch (N, H, W, D);
            numbers, used as float32 as they are.
        weights: a ``.npz`` file (keys ``<layer>.<param>``, Keras layouts), a mapping of
            such arrays, or None: the weights a TOML model names, else random weights
            (He normal) from ``seed``, the same as ``convcli run --seed``.

    Returns:
        float32 output: one output for one input, a batch (N, ...) for a batch.

    >>> import numpy as np
    >>> out = run("INPUT(8,8,1) => CONV(4,3) => RELU => GAP => FC(3) => SOFTMAX", np.ones((8, 8, 1)))
    >>> out.shape, round(float(out.sum()), 5)
    ((3,), 1.0)

    Raises:
        ShapeError: ``x`` does not match the model's input, or a layer does not fit.
        WeightsError: a parameter is missing or has the wrong shape.
    """
    import numpy as np

    from convcli import forward

    m = _model(model)
    m.shapes()
    array = np.asarray(x, dtype=np.float32)
    single = array.ndim == len(m.input_shape)
    if single:
        array = array[np.newaxis]
    if weights is None:
        weights = m.weights_path
    if weights is None:
        params = forward.init_params(m, seed=seed)
    elif isinstance(weights, (str, Path)):
        params = forward.load_weights(m, weights)
    else:
        params = {key: np.asarray(value, dtype=np.float32) for key, value in weights.items()}
    out = forward.run(m, array, params, seed=seed)
    return out[0] if single else out


def loss(name: str, y_true: Any, y_pred: Any) -> float:
    """A loss with Keras' semantics, as ``convcli loss``: the mean over the last axis,
    then over samples; probabilities clipped to [1e-7, 1 - 1e-7]; natural log.

    ``name``: mse, mae, mape, msle, binary-crossentropy, categorical-crossentropy (or
    Keras' long names).

    >>> loss("mse", [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]])
    0.5
    >>> round(loss("categorical-crossentropy", [[0, 1, 0]], [[0.05, 0.9, 0.05]]), 6)  # -ln 0.9
    0.105361

    Raises:
        InputError: an unknown name (with the allowed ones), or shapes that do not match.
    """
    from convcli import losses

    return losses.compute(losses.resolve_name(name), y_true, y_pred)
