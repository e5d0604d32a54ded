"""Read Keras model and weights files without Keras.

Formats (the content decides, not the file name):

- ``.keras`` (Keras 3): a zip archive with ``config.json`` (the ``model.to_json()`` dict),
  ``model.weights.h5`` and ``metadata.json``.
- legacy ``.h5`` (``model.save("m.h5")``): an HDF5 file whose ``model_config`` attribute holds
  the config and whose ``model_weights`` group holds the weights, one group per layer listed in
  ``layer_names``, each with its ``weight_names`` in Keras' order. Keras 2's weights-only
  ``.h5`` has the same layout at the root.
- ``.weights.h5`` (Keras 3 ``model.save_weights``): an HDF5 file keyed by position, not by layer
  name: ``layers/<key>/vars/<i>``, where ``<key>`` is the snake-case class name of the n-th
  layer of that class in ``model.layers`` (``conv2d``, ``conv2d_1``, ...) and a nested model
  has its own ``layers/`` group (``layers/sequential/layers/conv2d/vars/0``). Keras 3.15 also
  stores the layer name as the ``name`` attribute of each ``vars`` group.
- ``.json``: ``model.to_json()`` alone.

Weights are returned per Keras layer name (the layers of nested models under their own names),
each a list of float32 arrays in Keras' variable order (``layer.get_weights()``); layers without
variables are left out.

h5py is imported only when an HDF5 file is read (``pip install "convcli[keras]"``). Every
failure is an :class:`~convcli.errors.InputError` whose one line names the file.

Note for the parsers: a legacy ``.h5`` stores its config without the ``module`` and
``registered_name`` keys that ``model.to_json()`` writes, so there a Keras 3 operation
(``x + 3.0``) is told from a layer of the same class name only by its config holding nothing
but ``name``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convcli.errors import InputError

if TYPE_CHECKING:
    import h5py  # type: ignore[import-untyped]
    import numpy as np

#: Largest config accepted (a ``config.json`` member, a ``model_config`` attribute, a file).
MAX_CONFIG_BYTES = 64 * 2**20
#: Largest weights accepted: the ``model.weights.h5`` member of an archive, and the sum of the
#: arrays of a file (VGG19's weights take 575 MB).
MAX_WEIGHTS_BYTES = 4 * 2**30
#: Most layers (weight groups) accepted in one file.
MAX_LAYERS = 100_000

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ARCHIVE_CONFIG = "config.json"
_ARCHIVE_WEIGHTS = "model.weights.h5"
_MODEL_CLASSES = ("Functional", "Sequential", "Model")

# Errors h5py raises for damaged, truncated or unexpected content.
_H5_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError)

Weights = dict[str, list["np.ndarray"]]


@dataclass(frozen=True)
class KerasFile:
    """A Keras model read from a file.

    Attributes:
        config: the ``model.to_json()`` dict: ``{"class_name": ..., "config": {...}, ...}``.
        weights: per Keras layer name, the layer's variables in Keras' order as float32
            arrays; ``None`` when the file holds no weights (a ``.json`` config).
    """

    config: dict[str, Any]
    weights: Weights | None


def read_keras_model(path: str | Path) -> KerasFile:
    """Read a Keras model file: ``.keras``, legacy ``.h5`` or a ``model.to_json()`` file.

    Args:
        path: the file; its content decides the format.

    Returns:
        The config and, for ``.keras`` and ``.h5``, the weights.

    Raises:
        InputError: the file is missing, of another format, damaged, too large, or lacks a
            config; or h5py is needed and missing.

    Example:
        >>> model = read_keras_model("tests/fixtures/keras/small/residual.keras")
        >>> model.config["class_name"], [w.shape for w in model.weights["conv_a"]]
        ('Functional', [(3, 3, 3, 4)])
    """
    path = Path(path)
    kind = _sniff(path)
    if kind == "zip":
        return _read_archive(path)
    if kind == "hdf5":
        return _read_legacy_h5(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"Keras file {path} cannot be read ({exc.strerror})") from None
    if size > MAX_CONFIG_BYTES:
        raise InputError(
            f"Keras file {path} is {size:,} bytes; a model config may have at most "
            f"{MAX_CONFIG_BYTES:,}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"Keras file {path} cannot be read ({exc.strerror})") from None
    if not data.lstrip()[:1] == b"{":
        raise InputError(
            f"Keras file {path} is not a Keras model: expected a .keras archive, a legacy "
            ".h5 file or the JSON of model.to_json()"
        )
    return KerasFile(_parse_config(data, path, "the file"), None)


def read_keras_weights(path: str | Path, config: dict[str, Any] | None = None) -> Weights:
    """Read Keras weights: a ``.weights.h5``, a legacy ``.h5`` or the weights of a ``.keras``.

    A Keras 3 ``.weights.h5`` addresses layers by position (``layers/conv2d_1``); ``config``
    (the model's ``model.to_json()`` dict) maps those keys back to layer names exactly as
    Keras does when it loads them. Without it, the names that Keras 3.15 stores beside the
    arrays are used.

    Args:
        path: the weights file.
        config: the config of the model the weights are for.

    Returns:
        Per Keras layer name, its variables in Keras' order (float32).

    Raises:
        InputError: the file is missing, damaged, too large, holds no Keras weights or an
            array that is not numeric, or its keys match no layer of ``config``.
    """
    path = Path(path)
    kind = _sniff(path)
    if kind == "zip":
        weights = _read_archive(path).weights
        if weights is None:
            raise InputError(f"Keras archive {path} holds no {_ARCHIVE_WEIGHTS}")
        return weights
    if kind != "hdf5":
        raise InputError(
            f"weights file {path} is not an HDF5 file (a Keras .weights.h5 or .h5); "
            "a .npz weights file is read by its suffix"
        )
    h5 = _h5py(path)
    with _open_h5(h5, path, path) as root:
        return _weights_of(h5, root, path, config)


# ---------------------------------------------------------------- formats


def _sniff(path: Path) -> str:
    """'zip', 'hdf5' or 'other', from the first bytes of the file."""
    try:
        with path.open("rb") as stream:
            head = stream.read(8)
    except FileNotFoundError:
        raise InputError(f"Keras file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"Keras file {path} is a directory") from None
    except OSError as exc:
        raise InputError(f"Keras file {path} cannot be read ({exc.strerror})") from None
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head == _HDF5_MAGIC:
        return "hdf5"
    return "other"


def _read_archive(path: Path) -> KerasFile:
    """A Keras 3 ``.keras`` zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if _ARCHIVE_CONFIG not in names:
                raise InputError(
                    f"Keras archive {path} has no {_ARCHIVE_CONFIG}: not a model saved by Keras 3"
                )
            config = _parse_config(
                _read_member(archive, _ARCHIVE_CONFIG, MAX_CONFIG_BYTES, path),
                path,
                _ARCHIVE_CONFIG,
            )
            if _ARCHIVE_WEIGHTS not in names:
                return KerasFile(config, None)
            data = _read_member(archive, _ARCHIVE_WEIGHTS, MAX_WEIGHTS_BYTES, path)
    except (
        zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
        NotImplementedError, RuntimeError,
    ) as exc:  # fmt: skip
        raise InputError(f"Keras archive {path} is damaged ({_reason(exc)})") from None
    h5 = _h5py(path)
    with _open_h5(h5, io.BytesIO(data), path) as root:
        weights = _weights_of(h5, root, path, config)
    return KerasFile(config, weights)


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """One archive member, refused before reading when it unpacks to more than ``limit``."""
    info = archive.getinfo(name)
    if info.flag_bits & 0x1:
        raise InputError(f"Keras archive {path}: {name} is encrypted")
    if info.file_size > limit:
        raise InputError(
            f"Keras archive {path}: {name} unpacks to {info.file_size:,} bytes; "
            f"at most {limit:,} are read"
        )
    with archive.open(info) as member:
        # zipfile stops at the declared size and checks the CRC: a member cannot unpack
        # to more than was checked above.
        data = member.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"Keras archive {path}: {name} unpacks to more than {limit:,} bytes")
    return data


def _parse_config(data: bytes | str, path: Path, where: str) -> dict[str, Any]:
    """A model config from JSON text; its top level must name a class and hold a config."""
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(
            f"Keras file {path}: {where} is {len(data):,} bytes; a model config may have at "
            f"most {MAX_CONFIG_BYTES:,}"
        )
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"Keras file {path}: {where} is not valid JSON ({_reason(exc)})") from None
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("class_name"), str)
        or not isinstance(config.get("config"), dict)
    ):
        raise InputError(
            f"Keras file {path}: {where} is not a Keras model config "
            '(expected {"class_name": ..., "config": {...}} as model.to_json() writes)'
        )
    return config


def _read_legacy_h5(path: Path) -> KerasFile:
    """A legacy ``model.save("m.h5")`` file: config attribute and ``model_weights`` group."""
    h5 = _h5py(path)
    with _open_h5(h5, path, path) as root:
        try:
            raw = root.attrs.get("model_config")
        except _H5_ERRORS as exc:
            raise InputError(f"Keras file {path} is damaged ({_reason(exc)})") from None
        if raw is None:
            if "layers" in root or "layer_names" in root.attrs:
                raise InputError(
                    f"Keras file {path} holds weights only (no model config): give the model "
                    "and pass this file with --weights"
                )
            raise InputError(f"Keras file {path} is an HDF5 file without a Keras model config")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        if not isinstance(raw, str):
            raise InputError(f"Keras file {path}: the model_config attribute is not text")
        config = _parse_config(raw, path, "the model_config attribute")
        weights = _weights_of(h5, root, path, config) if "model_weights" in root else None
    return KerasFile(config, weights)


# ---------------------------------------------------------------- HDF5


def _h5py(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise InputError(
            f'reading {path} (HDF5) needs h5py: pip install "convcli[keras]"'
        ) from None
    return h5py


class _open_h5:  # a context manager used like open()
    """Open an HDF5 file or in-memory image; damage becomes an InputError naming ``path``."""

    def __init__(self, h5: Any, source: Path | io.BytesIO, path: Path) -> None:
        self._h5, self._source, self._path = h5, source, path
        self._file: Any = None

    def __enter__(self) -> h5py.File:
        try:
            self._file = self._h5.File(self._source, "r")
        except _H5_ERRORS as exc:
            raise InputError(
                f"Keras file {self._path} is not a readable HDF5 file ({_reason(exc)})"
            ) from None
        return self._file

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._file.close()
        except _H5_ERRORS:  # pragma: no cover - closing a damaged file
            pass
        if exc is not None and isinstance(exc, _H5_ERRORS):
            raise InputError(f"Keras file {self._path} is damaged ({_reason(exc)})") from None


def _weights_of(h5: Any, root: Any, path: Path, config: dict[str, Any] | None) -> Weights:
    """Dispatch on the layout of an open HDF5 file."""
    try:
        reader = _WeightsReader(h5, path)
        if "model_weights" in root:
            return reader.legacy(reader.child(root, "model_weights"))
        if "layer_names" in root.attrs:
            return reader.legacy(root)
        if "layers" in root or "vars" in root:
            return reader.keras3(root, config)
    except _H5_ERRORS as exc:
        raise InputError(f"Keras file {path} is damaged ({_reason(exc)})") from None
    raise InputError(
        f"Keras file {path} holds no Keras weights (no model_weights, layer_names or layers)"
    )


class _WeightsReader:
    """Reads the weight groups of one HDF5 file, keeping count of the bytes read."""

    def __init__(self, h5: Any, path: Path) -> None:
        self.h5 = h5
        self.path = path
        self.total = 0
        self.layers = 0

    # -- safe access

    def child(self, group: Any, relative: str) -> Any:
        """``group[relative]``, refusing soft and external links (they can leave the file)."""
        node = group
        for part in (p for p in relative.split("/") if p):
            link = node.get(part, getlink=True)
            if link is None:
                raise InputError(f"Keras file {self.path}: {node.name}/{part} does not exist")
            if not isinstance(link, self.h5.HardLink):
                raise InputError(
                    f"Keras file {self.path}: {node.name}/{part} is a link "
                    f"({type(link).__name__}); only plain groups and datasets are read"
                )
            node = node[part]
        return node

    def array(self, dataset: Any) -> np.ndarray:
        """A dataset as float32, after checking its type and size."""
        import numpy as np

        if not isinstance(dataset, self.h5.Dataset):
            raise InputError(f"Keras file {self.path}: {dataset.name} is not an array")
        if dataset.is_virtual or dataset.external:
            raise InputError(
                f"Keras file {self.path}: {dataset.name} stores its data outside the file"
            )
        bfloat16 = _text_attr(dataset.attrs.get("dtype")) == "bfloat16"
        if bfloat16 and dataset.dtype.itemsize != 2:
            raise InputError(
                f"Keras file {self.path}: {dataset.name} is marked bfloat16 but holds "
                f"{dataset.dtype}"
            )
        if dataset.dtype.kind not in "fiub" and not bfloat16:
            raise InputError(
                f"Keras file {self.path}: {dataset.name} holds {dataset.dtype}, not numbers"
            )
        nbytes = int(np.prod(dataset.shape, dtype=np.int64)) * 4 if dataset.shape else 4
        self.total += nbytes
        if self.total > MAX_WEIGHTS_BYTES:
            raise InputError(
                f"Keras file {self.path}: the weights take more than {MAX_WEIGHTS_BYTES:,} bytes"
            )
        if bfloat16:
            # Keras stores bfloat16 as 2 opaque bytes, the high half of a float32.
            high = np.ascontiguousarray(dataset[()]).view("<u2").astype(np.uint32)
            return (high << 16).view(np.float32)
        return np.asarray(dataset[()], dtype=np.float32)

    def count_layer(self) -> None:
        self.layers += 1
        if self.layers > MAX_LAYERS:
            raise InputError(f"Keras file {self.path} has more than {MAX_LAYERS:,} layers")

    def add(self, out: Weights, name: str, arrays: list[np.ndarray]) -> None:
        if not arrays:
            return
        if name in out:
            raise InputError(
                f"Keras file {self.path}: two layers named '{name}' hold weights "
                "(a nested model repeats a name)"
            )
        out[name] = arrays

    # -- legacy layout (model.save("m.h5"), Keras 2 save_weights)

    def legacy(self, group: Any) -> Weights:
        out: Weights = {}
        for layer_name in _texts(group.attrs.get("layer_names"), self.path, "layer_names"):
            self.count_layer()
            layer_group = self.child(group, layer_name)
            owners: dict[str, list[np.ndarray]] = {}
            names = _texts(layer_group.attrs.get("weight_names"), self.path, "weight_names")
            for weight_name in names:
                parts = [p for p in weight_name.split("/") if p]
                # 'conv/kernel' at the top level; 'block/conv/kernel' inside a nested model:
                # the layer that owns a variable is the component before its name.
                owner = parts[-2] if len(parts) >= 2 else layer_name
                owners.setdefault(owner, []).append(
                    self.array(self.child(layer_group, weight_name))
                )
            for owner, arrays in owners.items():
                self.add(out, owner, arrays)
        return out

    # -- Keras 3 layout (.weights.h5, model.weights.h5 in .keras)

    def keras3(self, root: Any, config: dict[str, Any] | None) -> Weights:
        out: Weights = {}
        self._container(root, config, "", out)
        return out

    def _container(
        self, group: Any, entry: dict[str, Any] | None, where: str, out: Weights
    ) -> None:
        if "layers" not in group:
            return
        layers = self.child(group, "layers")
        keys = list(layers)
        expected = _saved_keys(entry, self.path) if entry is not None else None
        if expected is None:
            order = sorted(keys)
        else:
            order = [k for k in expected if k in layers] + sorted(
                k for k in keys if k not in expected
            )
        for key in order:
            self.count_layer()
            node = self.child(layers, key)
            sub_entry = expected.get(key) if expected is not None else None
            if "layers" in node:
                self._container(node, sub_entry, f"{where}layers/{key}/", out)
            arrays = self._vars(node)
            if not arrays:
                continue
            if sub_entry is not None:
                name = _entry_name(sub_entry)
            elif expected is not None:
                raise InputError(
                    f"Keras file {self.path}: the weights at {where}layers/{key} match no "
                    "layer of the model"
                )
            else:
                stored = self._stored_name(node)
                if stored is None:
                    raise InputError(
                        f"Keras file {self.path} names no layer for the weights at "
                        f"{where}layers/{key}: read it with the model's config"
                    )
                name = stored
            self.add(out, name, arrays)

    def _vars(self, node: Any) -> list[np.ndarray]:
        if "vars" not in node:
            return []
        group = self.child(node, "vars")
        keys = list(group.keys())
        if not all(k.isdigit() for k in keys):
            raise InputError(
                f"Keras file {self.path}: {group.name} has keys {sorted(keys)[:5]}, "
                "expected 0, 1, ..."
            )
        return [self.array(self.child(group, k)) for k in sorted(keys, key=int)]

    def _stored_name(self, node: Any) -> str | None:
        if "vars" not in node:
            return None
        name = _text_attr(self.child(node, "vars").attrs.get("name"))
        return name or None


def _saved_keys(entry: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The keys Keras 3 gives the layers of a model config in a weights file, in order.

    Keras (``saving_lib._save_container_state``) walks ``model.layers`` and names each entry
    by the snake-case name of its class, numbering repeats: ``conv2d``, ``conv2d_1``, ...
    ``model.layers`` leaves out Keras 3 operations, and a Sequential's InputLayer.
    """
    config = entry.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise InputError(f"Keras file {path}: the model config lists no layers")
    sequential = entry.get("class_name") == "Sequential"
    used: dict[str, int] = {}
    keys: dict[str, dict[str, Any]] = {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            raise InputError(f"Keras file {path}: a layer of the model config has no class_name")
        if _is_operation(layer) or (sequential and layer["class_name"] == "InputLayer"):
            continue
        key = _snake_case(layer["class_name"])
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys[key] = layer
    return keys


def _is_operation(layer: dict[str, Any]) -> bool:
    """A Keras 3 operation (``x + 3.0``), which ``model.layers`` does not hold."""
    module = layer.get("module")
    if isinstance(module, str):
        return module.startswith("keras.src.ops.")
    # A legacy .h5 config has no module: an operation's config holds only its name.
    config = layer.get("config")
    return isinstance(config, dict) and set(config) <= {"name"}


def _entry_name(layer: dict[str, Any]) -> str:
    name = layer.get("name")
    if not isinstance(name, str):
        config = layer.get("config")
        name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise InputError(f"a {layer.get('class_name')} layer of the model config has no name")
    return name


def _snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: ``Conv2D`` -> ``conv2d``, ``ReLU`` -> ``re_lu``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


def _texts(value: Any, path: Path, what: str) -> list[str]:
    """An HDF5 attribute holding a list of names (bytes or str) as a list of str."""
    if value is None:
        raise InputError(f"Keras file {path} lacks the {what} attribute")
    items: Iterator[Any]
    if isinstance(value, (str, bytes)):
        items = iter([value])
    else:
        try:
            items = iter(list(getattr(value, "ravel", lambda: value)()))
        except TypeError:
            raise InputError(f"Keras file {path}: the {what} attribute is not a list of names") from None
    out = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if not isinstance(item, str):
            raise InputError(f"Keras file {path}: the {what} attribute is not a list of names")
        out.append(item)
    return out


def _text_attr(value: Any) -> str | None:
    """An HDF5 attribute holding one text value, else None."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _reason(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
