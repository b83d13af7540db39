"""Flax backbones (NHWC) with torchvision / EfficientNet-Lite topology."""

from jaxbn.models.registry import (
    CutPoint,
    ModelSpec,
    available_models,
    count_params,
    create_model,
    cut_points,
    get_cut,
    get_spec,
    init_shapes,
    init_variables,
)

__all__ = [
    "CutPoint",
    "ModelSpec",
    "available_models",
    "count_params",
    "create_model",
    "cut_points",
    "get_cut",
    "get_spec",
    "init_shapes",
    "init_variables",
]
