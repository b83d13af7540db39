"""Data parallelism: one interface over ``jax.jit`` + ``Mesh`` and ``jax.pmap``.

Both paths run the same step function (``jaxbn.step``):

* ``"jit"`` (default; the pjit path): a 1-D ``Mesh`` over all devices of all
  processes with axis ``"data"``. Batches are global arrays sharded on their
  leading axis (assembled from each process's local shard with
  ``jax.make_array_from_process_local_data``); the train state is replicated.
  XLA inserts the gradient all-reduce; BN batch statistics under jit are global.
* ``"pmap"``: the step is pmapped over local devices with ``axis_name="batch"``;
  the state carries a leading device axis; gradients are ``pmean``-ed in the step.
  The trainer builds the model with ``bn_axis_name="batch"`` so BN (and AC-Norm)
  batch statistics are averaged over devices too (cross-replica BN): both modes
  normalise with the global batch's statistics and compute the same step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PMAP_AXIS = "batch"


class DataParallel:
  """Places states and batches on devices and compiles steps for one mode."""

  def __init__(self, mode: str = "jit", devices: list[jax.Device] | None = None):
    if mode not in ("jit", "pmap"):
      raise ValueError(f"parallel must be 'jit' or 'pmap', got {mode!r}.")
    self.mode = mode
    self.devices = devices or jax.devices()
    self.mesh = Mesh(np.asarray(self.devices), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P("data"))
    self.num_local = len([d for d in self.devices if d.process_index == jax.process_index()])

  @property
  def axis_name(self) -> str | None:
    return PMAP_AXIS if self.mode == "pmap" else None

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  # -- placement ----------------------------------------------------------- #

  def put_state(self, tree: Any) -> Any:
    if self.mode == "jit":
      return jax.device_put(tree, self.replicated)
    # One copy per local device along a new leading axis, as pmap expects.
    local = [d for d in self.devices if d.process_index == jax.process_index()]
    stacked = NamedSharding(Mesh(np.asarray(local), ("local",)), P("local"))
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(local),) + np.shape(x)),
                                 stacked),
        tree,
    )

  def put_batch(self, batch: dict[str, np.ndarray]) -> Any:
    """A process-local batch → device arrays (global under jit)."""
    if self.mode == "jit":
      return {
          k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()
      }
    return jax.tree.map(lambda x: x.reshape((self.num_local, -1) + x.shape[1:]), batch)

  def get_state(self, tree: Any) -> Any:
    """The (replicated) state as host-fetchable arrays without a device axis.

    pmap: host numpy. ``x[0]`` would be a process-local array, which orbax cannot
    save with several processes (numpy is written once, by the primary host).
    """
    if self.mode == "pmap":
      return jax.tree.map(lambda x: np.asarray(x[0]), tree)
    return tree

  def to_host(self, tree: Any) -> Any:
    """Per-example outputs of an eval step as host numpy, for this process's examples…

    …or, with several processes, for all examples (gathered)."""
    if self.mode == "pmap":
      tree = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)
      if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
      return tree
    if jax.process_count() > 1:
      return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)

  # -- compilation --------------------------------------------------------- #

  def compile_train(self, step: Callable) -> Callable:
    """``(state, batch, rng, lr_scale) -> (state, metrics)``, state donated."""
    if self.mode == "jit":
      return jax.jit(
          step,
          out_shardings=(self.replicated, self.replicated),
          donate_argnums=(0,),
      )
    pstep = jax.pmap(step, axis_name=PMAP_AXIS, in_axes=(0, 0, None, None), donate_argnums=(0,))
    return lambda state, batch, rng, lr: _first(pstep(state, batch, rng, lr))

  def compile_eval(self, step: Callable) -> Callable:
    """``(variables, batch) -> per-example outputs``."""
    if self.mode == "jit":
      return jax.jit(step)
    return jax.pmap(step, axis_name=PMAP_AXIS)


def _first(out):
  state, metrics = out
  return state, jax.tree.map(lambda x: x[0], metrics)
