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

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxbn.ops.acnorm import DEFAULT_TEMPERATURE

NORMS = ("bn", "acnorm")

TORCH_BN_MOMENTUM = 0.9  # torch momentum 0.1


@dataclasses.dataclass(frozen=True)
class Norm:
  """A parsed ``norm`` string: the layer kind and AC-Norm's softmax temperature ``tau``."""

  kind: str = "bn"  # one of NORMS
  tau: float = DEFAULT_TEMPERATURE

  @property
  def is_acnorm(self) -> bool:
    return self.kind == "acnorm"

  def __str__(self) -> str:
    if self.kind == "acnorm" and self.tau != DEFAULT_TEMPERATURE:
      return f"acnorm:tau={float(self.tau)!r}"
    return self.kind


def parse(norm: str | Norm) -> Norm:
  """The one parser of ``norm`` strings: ``bn``, ``acnorm`` or ``acnorm:tau=T`` (T > 0).

  >>> parse("bn"), parse("acnorm:tau=2")
  (Norm(kind='bn', tau=1.0), Norm(kind='acnorm', tau=2.0))
  >>> str(parse("acnorm:tau=0.5")), str(parse("acnorm:tau=1"))
  ('acnorm:tau=0.5', 'acnorm')
  """
  if isinstance(norm, Norm):
    return norm
  kind, colon, rest = str(norm).partition(":")
  if kind not in NORMS or (colon and kind != "acnorm"):
    raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS} (or 'acnorm:tau=T').")
  tau = DEFAULT_TEMPERATURE
  for item in filter(None, (t.strip() for t in rest.split(";"))):
    key, eq, value = item.partition("=")
    try:
      if key.strip() != "tau" or not eq:
        raise ValueError
      tau = float(value)
    except ValueError:
      raise ValueError(f"Bad AC-Norm option {item!r} in {norm!r}; known: tau=<float>.") from None
  if tau <= 0:
    raise ValueError(f"AC-Norm temperature must be > 0, got {tau} in {norm!r}.")
  return Norm(kind, tau)


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
  parsed = parse(norm)
  if parsed.kind == "bn":
    return nn.BatchNorm(
        use_running_average=use_running_average,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name,
        name=name,
    )
  from jaxbn.models.acnorm import ACNorm

  return ACNorm(
      use_running_average=use_running_average,
      momentum=momentum,
      epsilon=epsilon,
      temperature=parsed.tau,
      dtype=dtype,
      param_dtype=jnp.float32,
      axis_name=axis_name,
      name=name,
  )
