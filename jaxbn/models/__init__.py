"""Flax backbones (NHWC) with torchvision / EfficientNet-Lite topology."""

from jaxbn.models.registry import (
    DTYPES,
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
    "DTYPES",
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
