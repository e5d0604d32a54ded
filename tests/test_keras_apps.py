"""The 16 keras.applications models (Keras 3's own configs, committed as JSON): every layer's
output shape and parameter count, and each model's total, equal Keras' figures recorded by
tests/fixtures/keras/make_fixtures.py (Keras 3.15.1, weights=None, default configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convcli import spec
from convcli.summary import summarize

APPS = Path(__file__).parent / "fixtures" / "keras" / "apps"
NAMES = sorted(p.name.split(".")[0] for p in APPS.glob("*.expected.json"))

# The totals the issue quotes (Keras 3 count_params, default configs): an independent
# check that the recorded fixtures are the models they claim to be.
PUBLISHED = {
    "VGG16": 138_357_544, "VGG19": 143_667_240, "ResNet50": 25_636_712, "ResNet50V2": 25_613_800,
    "ResNet101": 44_707_176, "MobileNet": 4_253_864, "MobileNetV2": 3_538_984,
    "MobileNetV3Small": 2_554_968, "EfficientNetB0": 5_330_571, "EfficientNetV2B0": 7_200_312,
    "InceptionV3": 23_851_784, "InceptionResNetV2": 55_873_736, "Xception": 22_910_480,
    "DenseNet121": 8_062_504, "NASNetMobile": 5_326_716, "ConvNeXtTiny": 28_589_128,
}


def test_all_sixteen_fixtures_are_present() -> None:
    assert NAMES == sorted(PUBLISHED)


def _expected_rows(rows: list[dict]) -> list[dict]:
    """Keras' rows with nested models replaced by their inner layers (convcli flattens them)."""
    out = []
    for row in rows:
        if row["class_name"] == "InputLayer":
            continue
        out.extend(_expected_rows(row["layers"]) if "layers" in row else [row])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_keras_application_layer_by_layer(name: str) -> None:
    expected = json.loads((APPS / f"{name}.expected.json").read_text())
    model = spec.load_keras_json(APPS / f"{name}.json")
    assert model.count_params() == expected["count_params"] == PUBLISHED[name]
    assert list(model.output_shape()) == expected["output_shape"]
    ours = {node.layer.name: node for node in model.nodes()}
    rows = _expected_rows(expected["layers"])
    assert len(rows) == len(ours)
    for row in rows:
        node = ours[row["name"]]
        assert list(node.output_shape) == row["output_shape"], row["name"]
        assert node.layer.params(*node.input_shapes) == row["count_params"], row["name"]
    assert summarize(model).total_params == expected["count_params"]
