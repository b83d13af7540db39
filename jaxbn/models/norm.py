"""Normalisation layers used by every jaxbn backbone.

Every backbone asks :func:`make_norm` for its normalisation layers, so one
string (``norm='bn'``) picks the layer type for the whole network. A BN layer is
a real :class:`flax.linen.BatchNorm`: ``scale``/``bias`` live in ``params`` and
``mean``/``var`` in ``batch_stats`` — which is what :mod:`jaxbn.masks` detects.

Momentum follows Flax's convention (running = m * running + (1 - m) * batch),
so PyTorch's ``momentum=0.1`` is Flax's ``0.9``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("bn",)

TORCH_BN_MOMENTUM = 0.9  # torch momentum 0.1


def make_norm(
    norm: str,
    *,
    use_running_average: bool,
    epsilon: float,
    momentum: float = TORCH_BN_MOMENTUM,
    dtype: Any = jnp.float32,
    name: str | None = None,
) -> nn.Module:
  """Returns a normalisation module over the last (channel) axis."""
  if norm == "bn":
    return nn.BatchNorm(
        use_running_average=use_running_average,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
  raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
