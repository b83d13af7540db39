"""One experiment per workdir: ``WORKDIR/config.json`` records the config a run started with.

A later run in the same workdir (a resume after a crash or a preemption) must
have the same config in every field that changes the experiment; otherwise it
stops with one line listing the differing fields (old → new) and how to go on:
a new ``--workdir``, or ``--allow_config_change`` to resume anyway (the record
is then replaced by the new config).

A field the record lacks counts as a difference unless the new config holds
jaxbn's default for it (:func:`jaxbn.config.base_config`): a field that a later
jaxbn added, left at its default, computes what the recorded run computed, so
runs started before an upgrade still resume.

Fields in :data:`FREE_FIELDS` may differ: they change how a run is logged,
checkpointed, evaluated in batches or where its inputs are read from, not what
it computes. ``eval_every_steps`` is *not* free: the best-by-validation
checkpoint, whose test metrics are reported, is picked among the evaluations.
``parallel`` is free: jit and pmap compute the same steps (tests/test_train.py),
and with the global data order of :mod:`jaxbn.data.pipeline` the run does not
depend on the number of devices or processes either.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from etils import epath
from flax import traverse_util

RECORD = "config.json"
FREE_FIELDS = frozenset({
    "log_every_steps", "eval_batch_size", "checkpoint_every_evals", "keep_checkpoints",
    "parallel", "data.data_dir", "data.cache_dir", "data.download", "data.cache",
})


class WorkdirMismatch(ValueError):
  """The workdir holds another experiment; the message lists the fields and the way out."""


def config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists), as it is written to ``config.json``."""
  return json.loads(config.to_json(sort_keys=True))


def _flat(record: dict) -> dict[str, Any]:
  return {".".join(k): v
          for k, v in traverse_util.flatten_dict(record, keep_empty_nodes=True).items()}


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """``(field, old, new)`` for every experiment field that differs (missing = ``<absent>``;
  a field ``old`` lacks and ``new`` holds at jaxbn's default is no difference)."""
  from jaxbn.config import base_config

  a, b = _flat(old), _flat(new)
  defaults = _flat(config_record(base_config()))
  absent = "<absent>"
  out = []
  for key in sorted(set(a) | set(b)):
    if key in FREE_FIELDS:
      continue
    x, y = a.get(key, absent), b.get(key, absent)
    if x == absent and key in defaults and y == defaults[key]:
      continue  # added to jaxbn after the record was written, at its default
    if x != y:
      out.append((key, x, y))
  return out


def _path(workdir: str) -> epath.Path:
  return epath.Path(workdir) / RECORD


def check_and_record(config: ml_collections.ConfigDict, workdir: str, *,
                     allow_change: bool = False, is_chief: bool | None = None) -> None:
  """Writes ``config.json`` on a fresh workdir; raises :class:`WorkdirMismatch` on a differing
  one."""
  if is_chief is None:
    import jax

    is_chief = jax.process_index() == 0
  path = _path(workdir)
  new = config_record(config)
  if path.exists():
    old = json.loads(path.read_text())
    diff = differences(old, new)
    if not diff:
      return
    if not allow_change:
      listed = "; ".join(f"{k}: {v!r} → {w!r}" for k, v, w in diff)
      raise WorkdirMismatch(
          f"{workdir} holds another experiment ({len(diff)} field(s) differ from its "
          f"{RECORD}: {listed}); use a new --workdir, or pass --allow_config_change to resume "
          "this one with the new config.")
  if is_chief:
    _write(path, new)


def _write(path: epath.Path, record: dict) -> None:
  text = json.dumps(record, indent=2, sort_keys=True) + "\n"
  if "://" in str(path):
    path.write_text(text)  # one object: atomic on GCS
    return
  from jaxbn.io import write_text_atomic

  os.makedirs(path.parent, exist_ok=True)
  write_text_atomic(str(path), text)
