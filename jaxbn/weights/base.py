"""What every weights module shares: the checkpoint error and the new zero head.

A leaf module (no jaxbn imports), so ``convert``, ``hub`` and ``store`` can
all use it without importing one another in a circle.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class CheckpointError(ValueError):
  """A checkpoint file cannot be read or does not fit the architecture."""


def zero_head(head_shapes: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A new classifier with all-zero weights (big_vision's ``head_zeroinit``).

  Fine-tuning then starts from uniform predictions instead of the large random
  logits a fresh dense layer gives on 1000-2048 unnormalised features, and the
  first updates of a head-only warm-up are well scaled for any backbone.

  >>> import jax
  >>> zero_head({"bias": jax.ShapeDtypeStruct((2,), np.float32)})["bias"]
  array([0., 0.], dtype=float32)
  """
  return {k: np.zeros(v.shape, v.dtype) for k, v in head_shapes.items()}


__all__ = ["CheckpointError", "zero_head"]
