"""Checkpoint conversion, the known-checkpoint cache and converted-variable storage."""

from jaxbn.weights.pytorch import (
    CheckpointError,
    convert_state_dict,
    imagenet_state_dict,
    load_pretrained,
    load_state_dict,
)

__all__ = ["CheckpointError", "convert_state_dict", "imagenet_state_dict",
           "load_pretrained", "load_state_dict"]
