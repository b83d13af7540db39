"""Run checkpoints (orbax ``CheckpointManager``): latest-for-resume and best-by-val-AUC.

``WORKDIR/checkpoints/<step>/{state,meta}`` keeps the last few evaluations'
train states (params, batch_stats, opt_state, step) plus a JSON ``meta`` with
the loop's host-side state (stage, lr scale, early-stopping counters, history),
so a crashed run resumes exactly. ``WORKDIR/best/<step>/{variables,meta}``
keeps the variables with the best validation AUC, and with ``soup`` > 1
``WORKDIR/soup/<step>/variables`` those of the ``soup`` best validation passes
(orbax's ``best_fn``), whose average is a run's final model. Orbax commits a step
directory atomically, so a crash never leaves a half-written checkpoint that
would be restored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxbn import soup as soup_lib
from jaxbn.io import write_json_atomic


def is_url(path: str | os.PathLike[str]) -> bool:
  """``gs://...`` and other remote workdirs (a pod slice's hosts must share one)."""
  return "://" in str(path)


def write_json(path: str, obj: Any) -> None:
  """``results.json``: atomic on a local disk (temporary file + rename) and on GCS (one object)."""
  if not is_url(path):
    write_json_atomic(path, obj)
  else:
    epath.Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _local(directory: str) -> str:
  return directory if is_url(directory) else os.path.abspath(directory)


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      _local(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      # Handlers, not just names: item_metadata() then reads a step's shapes and dtypes.
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()},
  )


class RunCheckpoints:
  """The checkpoint managers of one training run: latest, best and (``soup`` > 1) the soup's."""

  def __init__(self, workdir: str, keep: int = 2, soup: int = 0):
    self.latest = _manager(os.path.join(workdir, "checkpoints"), keep)
    self.best = _manager(os.path.join(workdir, "best"), 1)
    self.soup = None if soup < 2 else ocp.CheckpointManager(
        _local(os.path.join(workdir, "soup")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=soup, best_fn=lambda metrics: metrics["val_auc"], best_mode="max",
            create=True),
        item_handlers={"variables": ocp.StandardCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, best: bool,
           best_variables: Any = None) -> None:
    """Saves ``state``; with ``best`` also its variables (or ``best_variables``, e.g. an EMA)."""
    self.latest.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta))
    )
    if best:
      # Two async saves at once (one per manager) would enter orbax's multi-host
      # barrier of the same name together ("Barrier ... is already ongoing").
      self.latest.wait_until_finished()
      # params, batch_stats (+ constants, e.g. acnorm_source)
      variables = state.variables if best_variables is None else best_variables
      self.best.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)
          ),
      )

  def save_soup_member(self, step: int, variables: Any, val_auc: float) -> None:
    """Offers one validation pass's evaluated ``variables`` to the soup (kept if among the best).

    A resumed run may evaluate a step again that is already kept: the first copy stays.
    """
    if step in self.soup.all_steps():
      return
    self.latest.wait_until_finished()  # one orbax barrier at a time, as in save()
    self.best.wait_until_finished()
    self.soup.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)),
                   metrics={"val_auc": float(val_auc)})

  def restore_soup(self, abstract_variables: Any = None) -> dict[int, Any]:
    """The soup's members: step -> variables (host arrays), best validation AUC first.

    Without ``abstract_variables``, shaped as saved (:func:`_target`).
    """
    self.soup.wait_until_finished()
    steps = sorted(self.soup.all_steps(), key=self._soup_auc, reverse=True)
    out = {}
    for step in steps:
      target = _target(self.soup, step, "variables", abstract_variables)
      out[step] = self.soup.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(target)))["variables"]
    return out

  def restore_final(self, abstract_variables: Any = None) -> tuple[Any, list[int]] | None:
    """The run's final model (host arrays) and the steps it averages: the soup's average
    (:mod:`jaxbn.soup`) when it has members, else the best checkpoint (steps ``[]``); None
    before the first evaluation. Without ``abstract_variables``, shaped as saved."""
    members = self.restore_soup(abstract_variables) if self.soup is not None else {}
    if members:
      return soup_lib.uniform(list(members.values())), list(members)
    best = self.restore_best(abstract_variables)
    return None if best is None else (best[0], [])

  def _soup_auc(self, step: int) -> float:
    return float(self.soup.metrics(step)["val_auc"])

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest.latest_step() if step is None else step
    return self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_state(self, abstract_state: Any, step: int | None = None) -> Any:
    step = self.latest.latest_step() if step is None else step
    return self.latest.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(abstract_state)))
    )["state"]

  def restore_best(self, abstract_variables: Any = None) -> tuple[Any, dict] | None:
    """The best variables (host arrays) and their meta; None before the first evaluation.

    Without ``abstract_variables``, shaped as saved (:func:`_target`).
    """
    step = self.best.latest_step()
    if step is None:
      return None
    out = self.best.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_target(self.best, step, "state", abstract_variables)),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return out["state"], out["meta"]

  def _managers(self) -> list[ocp.CheckpointManager]:
    return [m for m in (self.latest, self.best, self.soup) if m is not None]

  def wait(self) -> None:
    for m in self._managers():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers():
      m.close()


def latest_meta(workdir: str) -> dict | None:
  """The loop ``meta`` of the newest readable checkpoint of a run, or None (read-only).

  Reads the JSON that ``JsonSave`` wrote (``checkpoints/<step>/meta/metadata``)
  without orbax or JAX, so reports stay light and never touch a live run's
  checkpoints; a step whose meta is missing, unreadable or has no ``loop`` is skipped.
  """
  root = os.path.join(workdir, "checkpoints")
  steps = sorted((int(d) for d in (os.listdir(root) if os.path.isdir(root) else [])
                  if d.isdigit()), reverse=True)
  for step in steps:
    try:
      with open(os.path.join(root, str(step), "meta", "metadata")) as f:
        meta = json.load(f)
    except (OSError, ValueError):
      continue
    if isinstance(meta, dict) and isinstance(meta.get("loop"), dict):
      return meta
  return None


def _target(manager: ocp.CheckpointManager, step: int, item: str, abstract: Any) -> Any:
  """A restore target of host arrays: shaped as ``abstract``, or (None) as the step's metadata
  says, so a checkpoint written on other devices (8 GPUs, a TPU slice) restores on any host."""
  return _abstract(manager.item_metadata(step)[item] if abstract is None else abstract)


def _abstract(tree: Any) -> Any:
  """Restore targets as host (numpy) arrays of the right shape and dtype."""
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
