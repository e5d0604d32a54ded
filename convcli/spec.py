"""Three spellings of one model: the lecture's arrow notation, TOML, Keras ``to_json()``.

All three parse into :class:`convcli.layers.Model` (pure Python, no numpy, no Keras).

>>> model = parse_arrow("INPUT(32,32,1) => CONV(6,5) => TANH => AVGPOOL(2) => FC(10)")
>>> [layer.name for layer in model.layers]
['conv1', 'tanh1', 'avgpool1', 'flatten1', 'fc1']
>>> model.output_shape()
(10,)
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convcli import layers as L
from convcli.errors import ConvcliError, InputError, ModelError

__all__ = ["load_model", "parse_arrow", "load_toml", "load_keras_json", "TOKENS", "KERAS_CLASSES"]

Value = int | float | str | bool | tuple[int, ...]


# --------------------------------------------------------------------------------------
# The layer vocabulary shared by the arrow notation and TOML
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """One layer token: its positional parameters, keywords, name prefix and factory."""

    positional: tuple[str, ...]
    required: int
    keywords: tuple[str, ...]
    prefix: str
    build: Callable[[str, dict[str, Any]], L.Layer] | None  # None: INPUT / FLATTEN handled apart


# Aliases accepted for parameter names (Keras spellings and the lecture's letters).
_ALIASES = {
    "k": "filters", "filters": "filters",
    "f": "kernel", "kernel": "kernel", "kernel_size": "kernel", "size": "kernel", "pool_size": "kernel",
    "s": "stride", "stride": "stride", "strides": "stride",
    "p": "pad", "pad": "pad", "padding": "pad",
    "d": "dilation", "dilation": "dilation", "dilation_rate": "dilation",
    "activation": "activation",
    "bias": "bias", "use_bias": "bias",
    "units": "units", "n": "units",
    "rate": "rate",
    "alpha": "alpha", "negative_slope": "alpha",
    "epsilon": "epsilon", "eps": "epsilon",
    "height": "height", "h": "height", "width": "width", "w": "width", "depth": "depth",
}


def _pair(key: str, value: Value) -> tuple[int, int]:
    if isinstance(value, tuple):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return value[0], value[1]
    elif isinstance(value, int) and not isinstance(value, bool):
        return value, value
    raise ModelError(f"`{key}` must be an integer or a pair of integers. Received: {key}={_show(value)}")


def _int(key: str, value: Value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ModelError(f"`{key}` must be an integer. Received: {key}={_show(value)}")


def _float(key: str, value: Value) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ModelError(f"`{key}` must be a number. Received: {key}={_show(value)}")


def _bool(key: str, value: Value) -> bool:
    if isinstance(value, bool):
        return value
    raise ModelError(f"`{key}` must be true or false. Received: {key}={_show(value)}")


def _activation(value: Value | None) -> str | None:
    if value is None:
        return None
    text = str(value).lower()
    text = {"linear": None, "none": None, "lrelu": "leaky_relu", "leakyrelu": "leaky_relu"}.get(text, text)
    if text is not None and text not in L.ACTIVATIONS:
        raise ModelError(
            "unknown value for `activation`. Allowed values are: linear, "
            f"{', '.join(L.ACTIVATIONS)}. Received: activation={_show(value)}"
        )
    return text


def _conv_padding(value: Value) -> L.PaddingSpec:
    if isinstance(value, str) and value.lower() in ("same", "valid"):
        return "same" if value.lower() == "same" else "valid"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value, value, value, value)
    if isinstance(value, tuple) and len(value) == 2 and all(v >= 0 for v in value):
        return (value[0], value[0], value[1], value[1])
    if isinstance(value, tuple) and len(value) == 4 and all(v >= 0 for v in value):
        return (value[0], value[1], value[2], value[3])
    raise ModelError(
        "unknown value for `pad`. Allowed values are: a non-negative integer, same, valid, "
        f"[vertical, horizontal], [top, bottom, left, right]. Received: pad={_show(value)}"
    )


def _pool_padding(value: Value) -> str:
    if isinstance(value, str) and value.lower() in ("same", "valid"):
        return value.lower()
    if value == 0:
        return "valid"
    raise ModelError(
        f"unknown value for `pad` of a pooling layer. Allowed values are: valid, same. Received: pad={_show(value)}"
    )


def _build_conv(name: str, a: dict[str, Any]) -> L.Layer:
    return L.Conv2D(
        name=name,
        filters=_int("filters", a["filters"]),
        kernel_size=_pair("kernel", a["kernel"]),
        strides=_pair("stride", a.get("stride", 1)),
        padding=_conv_padding(a.get("pad", 0)),
        dilation=_pair("dilation", a.get("dilation", 1)),
        use_bias=_bool("bias", a.get("bias", True)),
        activation=_activation(a.get("activation")),
    )


def _build_local(name: str, a: dict[str, Any]) -> L.Layer:
    if "pad" in a and _conv_padding(a["pad"]) not in ("valid", (0, 0, 0, 0)):
        raise ModelError(f"a locally connected layer supports only valid padding. Received: pad={_show(a['pad'])}")
    return L.LocallyConnected2D(
        name=name,
        filters=_int("filters", a["filters"]),
        kernel_size=_pair("kernel", a["kernel"]),
        strides=_pair("stride", a.get("stride", 1)),
        use_bias=_bool("bias", a.get("bias", True)),
        activation=_activation(a.get("activation")),
    )


def _build_pool(cls: type[L._Pooling2D]) -> Callable[[str, dict[str, Any]], L.Layer]:
    def build(name: str, a: dict[str, Any]) -> L.Layer:
        size = _pair("kernel", a.get("kernel", 2))
        return cls(
            name=name,
            pool_size=size,
            strides=_pair("stride", a["stride"]) if "stride" in a else size,
            padding=_pool_padding(a.get("pad", "valid")),  # type: ignore[arg-type]
        )

    return build


def _build_zeropad(name: str, a: dict[str, Any]) -> L.Layer:
    pad = _conv_padding(a.get("pad", 1))
    if isinstance(pad, str):
        raise ModelError(f"`pad` of ZEROPAD must be integers. Received: pad={pad}")
    return L.ZeroPadding2D(name=name, padding=pad)


def _build_dense(name: str, a: dict[str, Any]) -> L.Layer:
    return L.Dense(
        name=name,
        units=_int("units", a["units"]),
        use_bias=_bool("bias", a.get("bias", True)),
        activation=_activation(a.get("activation")),
    )


def _build_activation(function: str) -> Callable[[str, dict[str, Any]], L.Layer]:
    def build(name: str, a: dict[str, Any]) -> L.Layer:
        alpha = _float("alpha", a["alpha"]) if "alpha" in a else None
        return L.Activation(name=name, function=function, alpha=alpha)

    return build


def _build_dropout(name: str, a: dict[str, Any]) -> L.Layer:
    return L.Dropout(name=name, rate=_float("rate", a.get("rate", 0.5)))


def _build_bn(name: str, a: dict[str, Any]) -> L.Layer:
    return L.BatchNormalization(name=name, epsilon=_float("epsilon", a.get("epsilon", 1e-3)))


_CONV_KW = ("stride", "pad", "dilation", "activation", "bias")
TOKENS: dict[str, _Kind] = {
    "INPUT": _Kind(("height", "width", "depth"), 1, (), "input", None),
    "CONV": _Kind(("filters", "kernel"), 2, _CONV_KW, "conv", _build_conv),
    "LOCAL": _Kind(("filters", "kernel"), 2, ("stride", "pad", "activation", "bias"), "local", _build_local),
    "POOL": _Kind(("kernel",), 0, ("stride", "pad"), "pool", _build_pool(L.MaxPooling2D)),
    "MAXPOOL": _Kind(("kernel",), 0, ("stride", "pad"), "pool", _build_pool(L.MaxPooling2D)),
    "AVGPOOL": _Kind(("kernel",), 0, ("stride", "pad"), "avgpool", _build_pool(L.AveragePooling2D)),
    "GAP": _Kind((), 0, (), "gap", lambda n, a: L.GlobalAveragePooling2D(name=n)),
    "GMP": _Kind((), 0, (), "gmp", lambda n, a: L.GlobalMaxPooling2D(name=n)),
    "ZEROPAD": _Kind(("pad",), 0, (), "zeropad", _build_zeropad),
    "FLATTEN": _Kind((), 0, (), "flatten", lambda n, a: L.Flatten(name=n)),
    "FC": _Kind(("units",), 1, ("activation", "bias"), "fc", _build_dense),
    "DENSE": _Kind(("units",), 1, ("activation", "bias"), "fc", _build_dense),
    "RELU": _Kind((), 0, (), "relu", _build_activation("relu")),
    "SIGMOID": _Kind((), 0, (), "sigmoid", _build_activation("sigmoid")),
    "TANH": _Kind((), 0, (), "tanh", _build_activation("tanh")),
    "SOFTMAX": _Kind((), 0, (), "softmax", _build_activation("softmax")),
    "ELU": _Kind(("alpha",), 0, (), "elu", _build_activation("elu")),
    "LRELU": _Kind(("alpha",), 0, (), "lrelu", _build_activation("leaky_relu")),
    "LEAKYRELU": _Kind(("alpha",), 0, (), "lrelu", _build_activation("leaky_relu")),
    "BN": _Kind((), 0, ("epsilon",), "bn", _build_bn),
    "DO": _Kind(("rate",), 0, (), "dropout", _build_dropout),
    "DROPOUT": _Kind(("rate",), 0, (), "dropout", _build_dropout),
}
"""Layer tokens of the arrow notation (case-insensitive); TOML ``type`` uses the same names."""


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


@dataclass
class _Item:
    """A layer as written: its token, parameters and where it was written."""

    kind: str
    args: dict[str, Value]
    where: str  # "column 37" / "layers[3]"
    text: str  # the token as written, for messages
    name: str | None = None


def _bind(kind_name: str, positional: Sequence[Value], keywords: Mapping[str, Value], where: str, text: str) -> _Item:
    """Match written arguments to the token's parameters (ModelError naming the place)."""
    kind = TOKENS[kind_name]
    if len(positional) > len(kind.positional):
        raise ModelError(
            f"{where}: {text} takes at most {len(kind.positional)} positional argument(s)"
            f"{' (' + ', '.join(kind.positional) + ')' if kind.positional else ''}; received {len(positional)}"
        )
    args: dict[str, Value] = dict(zip(kind.positional, positional))
    allowed = set(kind.positional) | set(kind.keywords)
    for key, value in keywords.items():
        canonical = _ALIASES.get(key.lower())
        if canonical is None or canonical not in allowed:
            raise ModelError(
                f"{where}: {text}: unknown parameter '{key}'. Allowed: "
                f"{', '.join(kind.positional + kind.keywords) or 'none'}"
            )
        if canonical in args:
            raise ModelError(f"{where}: {text}: parameter '{canonical}' given twice")
        args[canonical] = value
    missing = [p for p in kind.positional[: kind.required] if p not in args]
    if missing:
        raise ModelError(f"{where}: {text} needs {', '.join(missing)}")
    return _Item(kind_name, args, where, text)


def _assemble(items: list[_Item], model_name: str, class_names: tuple[str, ...] | None = None,
              input_shape: tuple[int, ...] | None = None) -> L.Model:
    """Build layers from items: names, the implied FLATTEN, errors naming the place."""
    if input_shape is None:
        if not items or items[0].kind != "INPUT":
            where = items[0].where if items else "column 1"
            raise ModelError(f"{where}: the model must start with INPUT(height, width[, depth]) or INPUT(units)")
        first = items.pop(0)
        dims = [first.args.get(k) for k in ("height", "width", "depth") if k in first.args]
        if len(dims) == 2:
            dims.append(3)  # the lecture's RGB default, as `convcli shapes --D`
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise ModelError(f"{first.where}: {first.text}: sizes must be positive integers")
        input_shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    counters: dict[str, int] = {}
    explicit = {item.name for item in items if item.name}
    built: list[L.Layer] = []
    rank = len(input_shape)

    def auto_name(prefix: str) -> str:
        while True:
            counters[prefix] = counters.get(prefix, 0) + 1
            candidate = f"{prefix}{counters[prefix]}"
            if candidate not in explicit:
                return candidate

    for item in items:
        if item.kind == "INPUT":
            raise ModelError(f"{item.where}: {item.text}: INPUT may only come first")
        kind = TOKENS[item.kind]
        if item.kind in ("FC", "DENSE") and rank == 3:
            built.append(L.Flatten(name=auto_name("flatten")))
            rank = 1
        name = item.name or auto_name(kind.prefix)
        assert kind.build is not None
        try:
            layer = kind.build(name, dict(item.args))
        except ConvcliError as exc:
            raise ModelError(f"{item.where}: {item.text}: {exc}") from None
        built.append(layer)
        if layer.spatial == "global":
            rank = 1
    return L.Model(input_shape=input_shape, layers=tuple(built), name=model_name, class_names=class_names)


# --------------------------------------------------------------------------------------
# 1. The arrow notation
# --------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<arrow>=>|->|→)
      | (?P<open>\[)
      | (?P<close>\])
      | (?P<times>[*×])
      | (?P<number>\d+)
      | (?P<layer>[A-Za-z_][A-Za-z0-9_]*(?:\s*\([^()]*\))?)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.lastgroup is None:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            snippet = text[col - 1 : col + 11]
            raise ModelError(f"column {col}: cannot read '{snippet}'; expected a layer such as CONV(64,3), '=>', '[', ']' or '* N'")
        start = match.start(match.lastgroup)
        tokens.append((match.lastgroup, match.group(match.lastgroup), start + 1))
        pos = match.end()
    return tokens


def _parse_value(raw: str, where: str, text: str) -> Value:
    raw = raw.strip()
    if re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    try:
        return float(raw)
    except ValueError:
        pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):
        return raw
    raise ModelError(f"{where}: {text}: cannot read the value '{raw}'")


def _parse_layer_token(token: str, column: int) -> _Item:
    where = f"column {column}"
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?", token, re.DOTALL)
    assert match is not None
    word, inner = match.group(1).upper(), match.group(2)
    if word not in TOKENS:
        raise ModelError(f"{where}: unknown layer '{token}'; expected one of {', '.join(TOKENS)}")
    positional: list[Value] = []
    keywords: dict[str, Value] = {}
    if inner is not None and inner.strip():
        for part in inner.split(","):
            if "=" in part:
                key, _, raw = part.partition("=")
                keywords[key.strip()] = _parse_value(raw, where, token)
            elif keywords:
                raise ModelError(f"{where}: {token}: positional argument after a keyword argument")
            else:
                positional.append(_parse_value(part, where, token))
    return _bind(word, positional, keywords, where, token)


MAX_LAYERS = 100_000
"""Refuse repetitions that expand beyond this many layers (``[RELU] * 10**9``)."""


def parse_arrow(text: str, name: str = "model") -> L.Model:
    """Parse the lecture's arrow notation, e.g.
    ``INPUT(224,224,3) => [CONV(64,3,pad=1) => RELU] * 2 => POOL(2) => FC(1000) => SOFTMAX``.

    ``[ ... ] * N`` repeats (nestable); FLATTEN is implied before the first FC on a 3-D volume.

    Raises:
        ModelError: naming the token and its 1-based column.
    """
    tokens = _tokenize(text)
    pos = 0

    def peek() -> tuple[str, str, int] | None:
        return tokens[pos] if pos < len(tokens) else None

    def sequence(closing: bool) -> list[_Item]:
        nonlocal pos
        items: list[_Item] = []
        expect_layer = True
        while True:
            tok = peek()
            if tok is None:
                if closing:
                    raise ModelError(f"column {len(text) + 1}: missing ']' to close a repeated group")
                if expect_layer:
                    raise ModelError(f"column {len(text) + 1}: expected a layer at the end")
                return items
            kind, value, column = tok
            if expect_layer:
                if kind == "layer":
                    pos += 1
                    items.append(_parse_layer_token(value, column))
                elif kind == "open":
                    pos += 1
                    group = sequence(True)
                    count = 1
                    nxt = peek()
                    if nxt is not None and nxt[0] == "times":
                        pos += 1
                        num = peek()
                        if num is None or num[0] != "number" or int(num[1]) < 1:
                            col = num[2] if num else len(text) + 1
                            raise ModelError(f"column {col}: expected a positive repeat count after '*'")
                        count = int(num[1])
                        pos += 1
                    if len(items) + count * len(group) > MAX_LAYERS:
                        raise ModelError(
                            f"column {column}: the repetition makes more than {MAX_LAYERS:,} layers"
                        )
                    for _ in range(count):
                        items.extend(_Item(i.kind, dict(i.args), i.where, i.text) for i in group)
                else:
                    raise ModelError(f"column {column}: expected a layer, found '{value}'")
                expect_layer = False
            else:
                if kind == "arrow":
                    pos += 1
                    expect_layer = True
                elif kind == "close" and closing:
                    pos += 1
                    return items
                else:
                    raise ModelError(f"column {column}: expected '=>' between layers, found '{value}'")

    items = sequence(False)
    return _assemble(items, name)


def _read_document(
    path: Path, language: str, parse: Callable[[str], Any], syntax_error: type[Exception]
) -> Any:
    """Read and parse a model file (InputError when it cannot be read or parsed)."""
    from convcli import fileio

    text = fileio.read_text(path, what="model file")
    try:
        return parse(text)
    except syntax_error as exc:
        raise InputError(f"{path}: not valid {language}: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: not valid {language}: nested too deeply") from None


# --------------------------------------------------------------------------------------
# 2. TOML
# --------------------------------------------------------------------------------------


def _toml_value(value: object) -> Value:
    if isinstance(value, list):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ModelError(f"a list must hold integers. Received: {value!r}")
    if isinstance(value, (int, float, str, bool)):
        return value
    raise ModelError(f"unsupported value {value!r}")


def load_toml(path: str | Path) -> L.Model:
    """Read a model from TOML: ``input = [H, W, D]``, optional ``name``, ``class_names`` and
    ``weights`` (a .npz path relative to the TOML file, kept as ``Model.weights_path``),
    and ``[[layers]]`` tables with ``type`` (a token of the arrow notation), optional ``name``
    and the token's parameters (``filters``, ``kernel``, ``stride``, ``pad``, ``units``, ...).

    Raises:
        InputError: unreadable file or invalid TOML.
        ModelError: naming the table, e.g. ``layers[3]``.
    """
    import tomllib

    path = Path(path)
    doc = _read_document(path, "TOML", tomllib.loads, tomllib.TOMLDecodeError)
    unknown = set(doc) - {"input", "layers", "name", "class_names", "weights"}
    if unknown:
        raise ModelError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "allowed: input, layers, name, class_names, weights"
        )
    weights = doc.get("weights")
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise ModelError(f"{path}: `weights` must be a path to a .npz file. Received: weights={weights!r}")
    shape = doc.get("input")
    if not isinstance(shape, list) or len(shape) not in (1, 2, 3) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ModelError(f"{path}: `input` must be [height, width, depth] or [units] of positive integers. Received: input={shape!r}")
    if len(shape) == 2:
        shape = [*shape, 3]
    tables = doc.get("layers")
    if not isinstance(tables, list) or not tables:
        raise ModelError(f"{path}: no [[layers]] tables")
    items: list[_Item] = []
    for index, table in enumerate(tables):
        where = f"{path.name}: layers[{index}]"
        if not isinstance(table, dict):
            raise ModelError(f"{where}: must be a table")
        table = dict(table)
        if "type" not in table:
            raise ModelError(f"{where}: missing `type` (a layer such as conv, pool, fc, relu)")
        kind = str(table.pop("type")).upper()
        if kind not in TOKENS or kind == "INPUT":
            raise ModelError(
                f"{where}: unknown layer type '{kind.lower()}'; expected one of "
                f"{', '.join(k.lower() for k in TOKENS if k != 'INPUT')}"
            )
        name = table.pop("name", None)
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name)):
            raise ModelError(f"{where}: `name` must be letters, digits, '_' or '-'. Received: name={name!r}")
        try:
            keywords = {key: _toml_value(value) for key, value in table.items()}
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
        text = f"{kind.lower()}" + (f" '{name}'" if name else "")
        item = _bind(kind, [], keywords, where, text)
        item.name = name
        items.append(item)
    class_names = doc.get("class_names")
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise ModelError(f"{path}: `class_names` must be a list of strings")
    model = _assemble(
        items, str(doc.get("name", path.stem)),
        tuple(class_names) if class_names is not None else None, tuple(shape),
    )
    if weights is None:
        return model
    # a relative path is relative to the TOML file's folder, not to the working directory
    return dataclasses.replace(model, weights_path=(path.parent / weights).resolve())


# --------------------------------------------------------------------------------------
# 3. Keras model.to_json()
# --------------------------------------------------------------------------------------

KERAS_CLASSES = (
    "InputLayer", "Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "ZeroPadding2D", "Flatten", "Dense", "Dropout", "BatchNormalization",
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "LocallyConnected2D",
)
"""Keras layer classes convcli maps onto its layers; any other class is refused."""

_KERAS_ALIASES = {
    "Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D",
}


def _plain(value: Any) -> Any:
    """Turn tf.keras' ``{"class_name": "__tuple__" | "TensorShape", "items": [...]}`` into lists."""
    if isinstance(value, dict):
        if value.get("class_name") in ("__tuple__", "TensorShape") and isinstance(value.get("items"), list):
            return [_plain(v) for v in value["items"]]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _keras_shape(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list) and value and value[0] is None:
        value = value[1:]
    if isinstance(value, list) and all(isinstance(v, int) and v >= 1 for v in value) and len(value) in (1, 3):
        return tuple(value)
    return None


def _keras_pair(cfg: Mapping[str, Any], key: str, default: object = None) -> tuple[int, int]:
    value = cfg.get(key, default)
    if isinstance(value, list):
        value = tuple(value)
    return _pair(key, value)


def _keras_activation(cfg: Mapping[str, Any], key: str = "activation") -> str | None:
    value = cfg.get(key)
    if isinstance(value, dict):  # Keras 3 may serialise an activation as an object
        value = value.get("config", {}).get("name") or value.get("class_name")
    return _activation(value)


def _keras_layer(cls: str, name: str, cfg: Mapping[str, Any]) -> L.Layer | None:
    """One Keras layer config -> a convcli layer (None for InputLayer)."""
    if cfg.get("data_format", "channels_last") not in ("channels_last", None):
        raise ModelError(f"data_format={cfg['data_format']} is not supported; convcli is channels-last")
    if cls == "InputLayer":
        return None
    if cls == "Conv2D":
        if cfg.get("groups", 1) != 1:
            raise ModelError(f"groups={cfg['groups']} is not supported")
        padding = str(cfg.get("padding", "valid")).lower()
        if padding not in ("valid", "same"):
            raise ModelError(f"padding={padding} is not supported; allowed: valid, same")
        return L.Conv2D(
            name=name, filters=int(cfg["filters"]), kernel_size=_keras_pair(cfg, "kernel_size"),
            strides=_keras_pair(cfg, "strides", 1), padding=padding,  # type: ignore[arg-type]
            dilation=_keras_pair(cfg, "dilation_rate", 1), use_bias=bool(cfg.get("use_bias", True)),
            activation=_keras_activation(cfg),
        )
    if cls == "LocallyConnected2D":
        if str(cfg.get("padding", "valid")).lower() != "valid":
            raise ModelError("LocallyConnected2D supports only padding=valid")
        return L.LocallyConnected2D(
            name=name, filters=int(cfg["filters"]), kernel_size=_keras_pair(cfg, "kernel_size"),
            strides=_keras_pair(cfg, "strides", 1), use_bias=bool(cfg.get("use_bias", True)),
            activation=_keras_activation(cfg),
        )
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        size = _keras_pair(cfg, "pool_size", 2)
        strides = _keras_pair(cfg, "strides") if cfg.get("strides") is not None else size
        pool_cls = L.MaxPooling2D if cls == "MaxPooling2D" else L.AveragePooling2D
        return pool_cls(name=name, pool_size=size, strides=strides,
                        padding=str(cfg.get("padding", "valid")).lower())  # type: ignore[arg-type]
    if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        if cfg.get("keepdims"):
            raise ModelError("keepdims=true is not supported")
        return (L.GlobalAveragePooling2D if cls == "GlobalAveragePooling2D" else L.GlobalMaxPooling2D)(name=name)
    if cls == "ZeroPadding2D":
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            amounts = (pad, pad, pad, pad)
        elif isinstance(pad, list) and len(pad) == 2 and all(isinstance(p, int) for p in pad):
            amounts = (pad[0], pad[0], pad[1], pad[1])
        elif isinstance(pad, list) and len(pad) == 2 and all(isinstance(p, list) and len(p) == 2 for p in pad):
            amounts = (pad[0][0], pad[0][1], pad[1][0], pad[1][1])
        else:
            raise ModelError(f"cannot read padding={pad!r}")
        return L.ZeroPadding2D(name=name, padding=amounts)
    if cls == "Flatten":
        return L.Flatten(name=name)
    if cls == "Dense":
        return L.Dense(name=name, units=int(cfg["units"]), use_bias=bool(cfg.get("use_bias", True)),
                       activation=_keras_activation(cfg))
    if cls == "Dropout":
        return L.Dropout(name=name, rate=float(cfg.get("rate", 0.5)))
    if cls == "BatchNormalization":
        axis = cfg.get("axis", -1)
        if axis not in (-1, 3, [3], [-1]):
            raise ModelError(f"axis={axis} is not supported; only the channels axis (-1)")
        if not cfg.get("center", True) or not cfg.get("scale", True):
            raise ModelError("center=false or scale=false is not supported")
        return L.BatchNormalization(name=name, epsilon=float(cfg.get("epsilon", 1e-3)))
    if cls == "Activation":
        function = _keras_activation(cfg)
        if function is None:
            raise ModelError("activation=linear is not supported as a layer")
        return L.Activation(name=name, function=function)
    if cls == "ReLU":
        if cfg.get("max_value") is not None or float(cfg.get("threshold", 0.0) or 0.0) != 0.0:
            raise ModelError("ReLU with max_value or threshold is not supported")
        slope = float(cfg.get("negative_slope", 0.0) or 0.0)
        if slope:
            return L.Activation(name=name, function="leaky_relu", alpha=slope)
        return L.Activation(name=name, function="relu")
    if cls == "LeakyReLU":
        alpha = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        return L.Activation(name=name, function="leaky_relu", alpha=float(alpha))
    if cls == "ELU":
        return L.Activation(name=name, function="elu", alpha=float(cfg.get("alpha", 1.0)))
    if cls == "Softmax":
        if cfg.get("axis", -1) not in (-1, [-1]):
            raise ModelError(f"axis={cfg.get('axis')} is not supported; only the last axis (-1)")
        return L.Activation(name=name, function="softmax")
    raise AssertionError(cls)  # pragma: no cover - guarded by KERAS_CLASSES


def _tensor_names(value: Any) -> list[str]:
    """Names of the layers whose outputs a Keras 3 node argument refers to (``keras_history``)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = value.get("config", {}).get("keras_history") or []
            return [str(history[0])] if history else []
        return [name for v in value.values() for name in _tensor_names(v)]
    if isinstance(value, list):
        return [name for v in value for name in _tensor_names(v)]
    return []


def _inbound_layers(entry: Mapping[str, Any]) -> list[str] | None:
    """The layers feeding ``entry`` (None when it is called more than once, i.e. shared)."""
    nodes = entry.get("inbound_nodes") or []
    if not nodes:
        return []
    if len(nodes) != 1:
        return None
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return _tensor_names(node.get("args", []))
    # Keras 2: [[layer_name, node_index, tensor_index, kwargs], ...]
    return [str(item[0]) for item in node if isinstance(item, list) and item]


def _check_linear_chain(config: Mapping[str, Any], source: str) -> None:
    """A Functional model is read only when its layers form one chain, in order."""
    previous: str | None = None
    for entry in config["layers"]:
        name = str(entry.get("name") or (entry.get("config") or {}).get("name"))
        inbound = _inbound_layers(entry)
        expected = [] if previous is None else [previous]
        if inbound != expected:
            shown = "several calls" if inbound is None else (", ".join(inbound) or "no layer")
            raise ModelError(
                f"{source}: layer '{name}' takes its input from {shown}, not only from the layer "
                f"before it; only models whose layers form a single chain are supported"
            )
        previous = name


def _keras_topology(doc: Any, source: str) -> tuple[str, list[dict[str, Any]], tuple[int, ...] | None]:
    """Unwrap the dialects: tfjs ``modelTopology``, h5-style ``model_config``, Keras 2.0's
    list config, Keras 2.x / 3 ``{"layers": [...]}``. Returns (name, layers, build input shape)."""
    doc = _plain(doc)
    if isinstance(doc, dict) and "modelTopology" in doc:  # TensorFlow.js model.json
        doc = doc["modelTopology"]
    if isinstance(doc, dict) and "model_config" in doc:  # tfjs / h5 attribute
        doc = doc["model_config"]
    if not isinstance(doc, dict) or "class_name" not in doc or "config" not in doc:
        raise ModelError(f"{source}: not a Keras model JSON (expected \"class_name\" and \"config\")")
    cls = doc["class_name"]
    config = doc["config"]
    if cls in ("Functional", "Model") and isinstance(config, dict) and isinstance(config.get("layers"), list):
        _check_linear_chain(config, source)
        return str(config.get("name", "model")), config["layers"], None
    if cls != "Sequential":
        raise ModelError(
            f"{source}: model class {cls} is not supported; supported: Sequential, and Functional "
            "models whose layers form a single chain"
        )
    if isinstance(config, list):  # Keras 2.0 - 2.1: the config is the list of layers
        return "sequential", config, None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ModelError(f"{source}: Sequential config has no \"layers\" list")
    build_shape = _keras_shape(config.get("build_input_shape"))
    if build_shape is None and isinstance(doc.get("build_config"), dict):
        build_shape = _keras_shape(doc["build_config"].get("input_shape"))
    return str(config.get("name", "sequential")), config["layers"], build_shape


def load_keras_json(path: str | Path) -> L.Model:
    """Read a Keras ``model.to_json()`` file (Sequential, or Functional when its layers form a
    single chain; Keras 2.0, 2.x, 3, or a TensorFlow.js ``model.json``) without Keras.
    Supported layer classes: :data:`KERAS_CLASSES`.

    Raises:
        InputError: unreadable file or invalid JSON.
        ModelError: naming the Keras layer and its class.
    """
    path = Path(path)
    doc = _read_document(path, "JSON", json.loads, json.JSONDecodeError)
    model_name, entries, input_shape = _keras_topology(doc, path.name)
    built: list[L.Layer] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise ModelError(f"{path.name}: layers[{index}] is not a Keras layer object")
        cfg = entry.get("config") or {}
        cls = _KERAS_ALIASES.get(entry["class_name"], entry["class_name"])
        name = str(cfg.get("name") or entry.get("name") or f"layer_{index}")
        where = f"{path.name}: layer '{name}'"
        if cls not in KERAS_CLASSES:
            raise ModelError(
                f"{where}: class {entry['class_name']} is not supported; supported: {', '.join(KERAS_CLASSES)}"
            )
        if input_shape is None and (index == 0 or cls == "InputLayer"):
            for key in ("batch_input_shape", "batch_shape"):
                if key in cfg:
                    input_shape = _keras_shape(cfg[key])
                    if input_shape is None:
                        raise ModelError(f"{where}: {key}={cfg[key]!r} is not (None, H, W, D) or (None, units)")
            if input_shape is None and isinstance(entry.get("build_config"), dict):
                input_shape = _keras_shape(entry["build_config"].get("input_shape"))
        try:
            layer = _keras_layer(cls, name, cfg)
        except (ConvcliError, KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"{where} ({entry['class_name']}): {detail}") from None
        if layer is not None:
            built.append(layer)
    if input_shape is None:
        raise ModelError(
            f"{path.name}: no input shape (no InputLayer, batch_input_shape, batch_shape or build_config); "
            "build the model before model.to_json()"
        )
    return L.Model(input_shape=input_shape, layers=tuple(built), name=model_name)


# --------------------------------------------------------------------------------------


def load_model(source: str) -> L.Model:
    """A model from a ``.toml`` file, a Keras ``.json`` file, or the arrow notation.

    A source ending in .toml or .json is read as a file (InputError when it does not exist);
    anything else is parsed as the arrow notation.
    """
    lowered = source.lower().strip()
    if lowered.endswith(".toml") or lowered.endswith(".json"):
        path = Path(source)
        if not _is_file(path):
            raise InputError(f"model file {source} does not exist")
        return load_toml(path) if lowered.endswith(".toml") else load_keras_json(path)
    if "(" not in source and _is_file(Path(source)):
        raise InputError(f"model file {source}: expected a .toml or a Keras .json file")
    return parse_arrow(source)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the system refuses the name (longer than a file name
    may be, as a long arrow notation is)."""
    try:
        return path.is_file()
    except OSError:
        return False
