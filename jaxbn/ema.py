"""An exponential moving average (EMA) of the trainable parameters, evaluated in their place.

Polyak & Juditsky 1992 averaging in its exponential form (as in Tan & Le 2019,
arXiv:1905.11946, and the Mean Teacher, arXiv:1703.01780). With warm-up the decay
at update ``t`` is ``min(decay, (1 + t) / (10 + t))`` so the average is not
dominated by the initial weights in short runs. Frozen leaves are copied, so
they stay bit-identical to the model's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def decay_at(decay: float, count, warmup: bool = True):
  """The decay used at update ``count`` (0-based)."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  count = jnp.asarray(count, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + count) / (10.0 + count))


def update(ema: Any, params: Any, trainable: Any, decay: float, count, warmup: bool = True) -> Any:
  """One EMA update: ``d * ema + (1 - d) * params`` on trainable leaves, ``params`` elsewhere.

  Args:
    ema, params: parameter pytrees of the same structure.
    trainable: Python bools, the same structure or a prefix of it
      (``jaxbn.masks.trainable_mask``).
    decay: the EMA decay (e.g. 0.99).
    count: how many updates came before this one (for the warm-up).
  """
  d = decay_at(decay, count, warmup)

  def blend(e, p):
    return (d * e.astype(jnp.float32) + (1.0 - d) * p.astype(jnp.float32)).astype(p.dtype)

  # ``trainable`` may be a prefix of the parameter tree (one label for a subtree).
  return jax.tree.map(lambda t, e, p: jax.tree.map(blend, e, p) if t else p,
                      trainable, ema, params)


def make_update(trainable: Any, decay: float, warmup: bool = True):
  """A jitted ``(ema, params, count) -> ema`` for one stage's trainable mask."""
  return jax.jit(lambda ema, params, count: update(ema, params, trainable, decay, count, warmup))
