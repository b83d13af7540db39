"""BN running statistics re-estimated on the target data before fine-tuning (AdaBN).

AdaBN (Li et al. 2016, arXiv 1603.04779) replaces every BN layer's running mean
and variance, which a pretrained checkpoint carries from its source data
(ImageNet), by the target data's, and keeps the learned affine (γ, β). As in
PreciseBN (Wu & Johnson 2021, arXiv 2105.07576), the statistics are the average
over ``N`` training batches of each layer's batch mean and batch variance,
computed with the network in training mode (each layer normalised by its batch's
statistics, as when those running averages are collected) — not an exponential
moving average, so they hold no trace of the source's.

The trainer (``config.bn_target_batches = N``) does this once before its first
stage; with ``bn_stats="frozen"`` the statistics then stay fixed, so training and
evaluation normalise alike. It needs no knowledge of the model's layers or
momenta: every ``batch_stats`` leaf that a training-mode ``apply`` updates as
``running = m * running + (1 - m) * batch`` (Flax's ``BatchNorm``, jaxbn's
AC-Norm) is solved for ``batch`` from two updates, one starting from 0 and one
from :data:`PROBE`; leaves such an update leaves unchanged keep their value.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

PROBE = 1024.0  # the second update's start: large, so (from_probe - from_zero) / PROBE = m to ~1e-7


def batch_moments(model, variables: dict[str, Any], images: jax.Array,
                  rng: jax.Array | None = None) -> Any:
  """Each ``batch_stats`` leaf's batch value on ``images`` (e.g. a BN layer's batch mean).

  ``model.apply(..., train=True, mutable=["batch_stats"])`` must update the leaf as
  ``m * running + (1 - m) * batch`` with a fixed ``m < 1``; a leaf it does not update
  is returned as it was. ``rng``: the ``dropout`` stream (training mode may use one).
  """
  stats = variables["batch_stats"]
  rng = jax.random.key(0) if rng is None else rng

  def updated(fill: float) -> Any:
    start = jax.tree.map(lambda s: jnp.full_like(s, fill), stats)
    _, new = model.apply({**variables, "batch_stats": start}, images, train=True,
                         mutable=["batch_stats"], rngs={"dropout": rng})
    return new["batch_stats"]

  from_zero, from_probe = updated(0.0), updated(PROBE)  # (1 - m) b  and  m PROBE + (1 - m) b

  def solve(z, p, s):
    weight = 1.0 - (p - z) / PROBE  # 1 - m; 0 where the leaf was not updated
    updated_leaf = weight > 1e-6
    return jnp.where(updated_leaf, z / jnp.where(updated_leaf, weight, 1.0), s)

  return jax.tree.map(solve, from_zero, from_probe, stats)


def estimate(model, variables: dict[str, Any], batches: Iterable[dict[str, np.ndarray]],
             num_batches: int, reduce: Callable[[Any], Any] | None = None) -> dict[str, Any]:
  """``variables`` with ``batch_stats`` the average of :func:`batch_moments` over batches.

  Args:
    model: the Flax model (built without a pmap BN axis: this runs outside pmap).
    variables: its variables, ``batch_stats`` included.
    batches: dicts with ``'image'`` (e.g. the trainer's augmented training batches).
    num_batches: how many to average (> 0).
    reduce: applied to the summed statistics and the batch count, e.g. a sum over
      processes (``None``: one process).
  """
  if num_batches <= 0:
    raise ValueError(f"num_batches must be > 0, got {num_batches}.")
  if not jax.tree.leaves(variables.get("batch_stats", {})):
    raise ValueError("The model has no batch_stats (no BN layer) to re-estimate.")
  moments_fn = jax.jit(lambda v, images: batch_moments(model, v, images))
  on_device = jax.device_put(variables)  # once, not with every batch
  total, count = None, 0
  for batch in batches:
    moments = moments_fn(on_device, jnp.asarray(batch["image"]))
    total = moments if total is None else jax.tree.map(jnp.add, total, moments)
    count += 1
    if count == num_batches:
      break
  if total is None:
    raise ValueError("No batch to estimate the BN statistics from.")
  total = jax.tree.map(np.asarray, total)
  if reduce is not None:
    total, count = reduce((total, np.asarray(count)))
  return {**variables, "batch_stats": jax.tree.map(lambda t: t / count, total)}
