"""The op vocabulary: every layer type of the spec format, each defined once in its module."""

from .activation import ACTIVATION_LAYERS, ACTIVATION_OPS, ACTIVATIONS, Activation, ActivationField, make_activation
from .base import Layer, Scratch, Shape, fmt_shape
from .conv import Conv2d
from .linear import Linear
from .norm import BatchNorm2d, batch_norm_scale_shift
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .tensor import Add, Concat, Dropout, Flatten, Softmax, Upsample2d

LAYER_TYPES: tuple[type[Layer], ...] = (
    Conv2d, Linear, BatchNorm2d, *ACTIVATION_LAYERS, MaxPool2d, AvgPool2d, GlobalAvgPool2d,
    Flatten, Dropout, Add, Concat, Softmax, Upsample2d,
)
# op groups the passes reason about
GEMM_OPS = ("conv2d", "linear")  # an `activation` field of their own, and an epilogue
ELEMENTWISE_OPS = ("batch_norm2d", "add", "dropout", *ACTIVATION_OPS)  # an epilogue after their own expression
POOL_OPS = ("max_pool2d", "avg_pool2d")

OPS: dict[str, type[Layer]] = {t.model_fields["op"].annotation.__args__[0]: t for t in LAYER_TYPES}

__all__ = ["GEMM_OPS", "ELEMENTWISE_OPS", "POOL_OPS", "ACTIVATIONS", "ACTIVATION_OPS", "Activation", "ActivationField", "make_activation", "LAYER_TYPES", "OPS", "Layer",
           "Scratch", "Shape", "fmt_shape", "Conv2d", "Linear", "BatchNorm2d", "batch_norm_scale_shift",
           "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten", "Dropout", "Add", "Concat", "Softmax",
           "Upsample2d"]
