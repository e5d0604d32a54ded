"""The forward pass against Keras' own ``model.predict`` on small hand-written models that
cover every layer class and option of keras.applications (fixtures made by
tests/fixtures/keras/small_models.py with Keras 3.15.1; weights are Keras' random ones,
BN moving statistics included). Each model is read from its ``model.to_json()`` file and
its weights from ``layer.get_weights()`` saved as ``.weights.npz``; no Keras is needed here."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from convcli import forward, spec
from convcli.errors import WeightsError
from convcli.summary import summarize

SMALL = Path(__file__).parent / "fixtures" / "keras" / "small"
MODELS = sorted(p.name.split(".")[0] for p in SMALL.glob("*.output.npy"))


def _keras_weights(name: str) -> dict[str, list[np.ndarray]]:
    grouped: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    with np.load(SMALL / f"{name}.weights.npz") as archive:
        for key in archive.files:
            layer, _, index = key.rpartition("/")
            grouped[layer].append((int(index), archive[key]))
    return {layer: [a for _, a in sorted(arrays, key=lambda t: t[0])] for layer, arrays in grouped.items()}


def _load(name: str):
    expected = json.loads((SMALL / f"{name}.expected.json").read_text())
    x = np.load(SMALL / f"{name}.input.npy")
    open_size = any(d is None for d in expected["input_shape"])
    model = spec.load_keras_json(SMALL / f"{name}.json", tuple(x.shape[1:]) if open_size else None)
    return model, expected, x


def test_every_small_model_is_covered() -> None:
    assert {"activations", "branches", "convs", "floors", "nested", "norms", "ops", "reshape", "residual",
            "sequential", "upsampling"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_keras_predict(name: str) -> None:
    model, expected, x = _load(name)
    if not any(d is None for d in expected["input_shape"]):
        assert model.count_params() == expected["count_params"]
    params = forward.params_from_keras(model, _keras_weights(name), f"{name}.weights.npz")
    out = forward.run(model, x, params)
    reference = np.load(SMALL / f"{name}.output.npy")
    assert out.shape == reference.shape
    if name == "activations":
        reference = _without_keras_sparsemax(model, out, reference)
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(reference).max())))
    # the per-layer path (used for `convcli run`'s table) gives the same output
    again = forward.run(model, x, params, on_layer=lambda layer, y, s: None)
    np.testing.assert_allclose(again, out, rtol=1e-5, atol=1e-6)


def _without_keras_sparsemax(model, out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Keras 3.15's sparsemax takes its threshold from the sum of the cumulative sums over
    the support instead of the last one (keras-team/keras#23425, fixed after 3.15.1), so its
    outputs do not sum to 1. convcli computes Martins & Astudillo's sparsemax: check that
    its slice of the pooled output sums to 1 per position, and compare the rest with Keras."""
    nodes = {node.layer.name: node for node in model.nodes()}
    concat = nodes["concat"]
    start = 0
    for source, shape in zip(concat.inputs, concat.input_shapes):
        if source == "act_sparsemax":
            break
        start += shape[-1]
    width = nodes["act_sparsemax"].output_shape[-1]
    total = concat.output_shape[-1]
    reference = reference.copy()
    for offset in (start, total + start):  # the average-pooled half, then the max-pooled half
        reference[..., offset : offset + width] = out[..., offset : offset + width]
    # average pooling of sparsemax outputs keeps their sum of 1
    np.testing.assert_allclose(out[..., start : start + width].sum(-1), 1.0, rtol=1e-5)
    return reference


@pytest.mark.parametrize("name", [m for m in MODELS if m != "open_size"])
def test_layer_shapes_and_counts_match_keras(name: str) -> None:
    model, expected, _ = _load(name)
    rows = summarize(model).rows
    ours = {row.name: row for row in rows}

    def flat(entries: list[dict]) -> list[dict]:
        out = []
        for row in entries:
            if row["class_name"] == "InputLayer":
                continue
            out.extend(flat(row["layers"]) if "layers" in row else [row])
        return out

    for row in flat(expected["layers"]):
        shapes = row["output_shape"]
        if shapes and isinstance(shapes[0], list):  # a shared layer: one shape per call
            calls = [row["name"]] + [f"{row['name']}#{k}" for k in range(1, len(shapes))]
        else:
            calls, shapes = [row["name"]], [shapes]
        for call, shape in zip(calls, shapes):
            if call == "act_glu":
                # Keras' Activation layer reports its input shape for glu, whose output has
                # half the channels (keras.activations.glu splits the last axis in two)
                shape = [*shape[:-1], shape[-1] // 2]
            elif name == "activations" and call in ("concat", "gap_keep", "gmp_keep", "pooled"):
                # downstream of glu: Keras' figure counts glu's missing channels (twice once
                # both pools are joined); predict's output (2, 1, 1, 308) has them not
                shape = [*shape[:-1], shape[-1] - (4 if call == "pooled" else 2)]
            assert list(ours[call].output_shape) == shape, call
        assert ours[row["name"]].params == row["count_params"], row["name"]
        assert all(ours[call].params == 0 for call in calls[1:])  # a shared layer's weights count once


def test_keras_weights_of_the_wrong_shape_or_count_are_named() -> None:
    model, _, _ = _load("residual")
    weights = _keras_weights("residual")
    weights["conv_b"][0] = np.zeros((3, 3, 4, 5), np.float32)
    del weights["shortcut"]
    with pytest.raises(WeightsError) as info:
        forward.params_from_keras(model, weights, "w.weights.h5")
    message = str(info.value)
    assert "layer 'conv_b' (Conv2D) kernel has shape (3, 3, 4, 5), expected (3, 3, 4, 4)" in message
    assert "layer 'shortcut' (Conv2D) has 0 weight array(s), expected 2 (kernel, bias)" in message
