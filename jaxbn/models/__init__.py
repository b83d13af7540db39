"""Flax backbones (NHWC) with torchvision / EfficientNet-Lite topology."""

from jaxbn.models.registry import (
    ModelSpec,
    available_models,
    count_params,
    create_model,
    get_spec,
    init_shapes,
    init_variables,
)

__all__ = [
    "ModelSpec",
    "available_models",
    "count_params",
    "create_model",
    "get_spec",
    "init_shapes",
    "init_variables",
]
