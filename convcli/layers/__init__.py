"""The layer types every model spelling parses into, and the model graph (pure Python, no numpy).

Each layer type is one class (see :mod:`convcli.layers.base`): its spellings, its
arithmetic for a given input shape (batch excluded, channels-last: ``(H, W, D)`` or
``(units,)``) — output shape, parameter arrays in Keras layouts, parameter count (shared
and, for conv layers, unshared), multiply-accumulates — and its forward computation. The
arithmetic itself lives in :mod:`convcli.geometry`.

>>> conv = Conv2D(name="conv1", filters=96, kernel_size=(11, 11), strides=(4, 4))
>>> conv.output_shape((227, 227, 3))
(55, 55, 96)
>>> conv.params((227, 227, 3)), conv.params_unshared((227, 227, 3))
(34944, 105705600)
"""

from __future__ import annotations

from convcli.layers.base import (
    ACTIVATIONS,
    REGISTRY,
    Context,
    Layer,
    PaddingSpec,
    Registry,
    Shape,
    Unsupported,
    Window,
    shape_text,
)
from convcli.layers.conv import (
    FUSED_LEAKY_RELU_ALPHA,
    Conv2D,
    Conv2DTranspose,
    DepthwiseConv2D,
    LocallyConnected2D,
    SeparableConv2D,
)
from convcli.layers.core import (
    DEFAULT_ALPHA,
    Activation,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LayerScale,
    Normalization,
    ReLU,
    Rescaling,
)
from convcli.layers.merge import (
    Add,
    Average,
    Concatenate,
    CustomScaleLayer,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
)
from convcli.layers.model import INPUT_NAME, Model, Node, node_params
from convcli.layers.norm import BatchNormalization, LayerNormalization
from convcli.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from convcli.layers.reshaping import (
    Cropping2D,
    Permute,
    Reshape,
    UpSampling2D,
    ZeroPadding2D,
)

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ALPHA",
    "FUSED_LEAKY_RELU_ALPHA",
    "INPUT_NAME",
    "REGISTRY",
    "Activation",
    "Add",
    "Average",
    "AveragePooling2D",
    "BatchNormalization",
    "Concatenate",
    "Context",
    "Conv2D",
    "Conv2DTranspose",
    "Cropping2D",
    "CustomScaleLayer",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Identity",
    "Layer",
    "LayerNormalization",
    "LayerScale",
    "LocallyConnected2D",
    "MaxPooling2D",
    "Maximum",
    "Minimum",
    "Model",
    "Multiply",
    "Node",
    "Normalization",
    "PaddingSpec",
    "Permute",
    "ReLU",
    "Registry",
    "Rescaling",
    "Reshape",
    "SeparableConv2D",
    "Shape",
    "Subtract",
    "Unsupported",
    "UpSampling2D",
    "Window",
    "ZeroPadding2D",
    "node_params",
    "output_activation",
    "shape_text",
]


def output_activation(layer: Layer) -> str | None:
    """The activation applied to the layer's output (an Activation layer's function or the
    fused ``activation=`` of a conv or dense layer; None otherwise)."""
    return layer.activation_name
