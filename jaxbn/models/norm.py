"""Normalisation layers used by every jaxbn backbone.

Every backbone asks :func:`make_norm` for its normalisation layers, so one
string (``norm='bn'``) picks the layer type for the whole network. A BN layer is
a real :class:`flax.linen.BatchNorm`: ``scale``/``bias`` live in ``params`` and
``mean``/``var`` in ``batch_stats`` — which is what :mod:`jaxbn.masks` detects.

Momentum follows Flax's convention (running = m * running + (1 - m) * batch),
so PyTorch's ``momentum=0.1`` is Flax's ``0.9``.

``norm='acnorm'`` (or ``'acnorm:tau=T'`` for a softmax temperature other than 1)
builds :class:`jaxbn.models.acnorm.ACNorm` instead: AC-Norm, whose target
affine is ``scale``/``bias`` in ``params``, running statistics ``mean``/``var``
in ``batch_stats`` (so the masks see a BN), plus a frozen source affine in the
``acnorm_source`` collection. ``momentum`` is used as given: AC-Norm's own
default, 0.81, is supplied by the trainer (see that module).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("bn", "acnorm")

TORCH_BN_MOMENTUM = 0.9  # torch momentum 0.1


def make_norm(
    norm: str,
    *,
    use_running_average: bool,
    epsilon: float,
    momentum: float = TORCH_BN_MOMENTUM,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    name: str | None = None,
) -> nn.Module:
  """Returns a normalisation module over the last (channel) axis.

  ``axis_name``: a ``jax.pmap`` axis over which batch statistics are averaged
  (cross-replica BN, so a pmapped step normalises like a jit step over the
  global batch); ``None`` (the default) for jit, where the batch is already global.
  """
  if norm == "bn":
    return nn.BatchNorm(
        use_running_average=use_running_average,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name,
        name=name,
    )
  if norm == "acnorm" or norm.startswith("acnorm:"):
    from jaxbn.models.acnorm import ACNorm, parse_norm

    return ACNorm(
        use_running_average=use_running_average,
        momentum=momentum,
        epsilon=epsilon,
        temperature=parse_norm(norm)["tau"],
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name,
        name=name,
    )
  raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS} (or 'acnorm:tau=T').")
