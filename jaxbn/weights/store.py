"""Converted variables on disk: an orbax checkpoint plus a small JSON manifest.

Layout of a directory written by ``python -m jaxbn.convert``::

    DIR/variables/   orbax PyTree checkpoint of {'params', 'batch_stats'}
    DIR/jaxbn.json   {"arch": ..., "num_classes": ..., "source": ..., "sha256": ...}

Orbax writes to a temporary directory and renames it when complete, and the
manifest is written last through a temporary file, so an interrupted
conversion never leaves a directory that looks valid.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxbn.io import write_json_atomic
from jaxbn.models import registry
from jaxbn.weights.base import CheckpointError, zero_head

MANIFEST = "jaxbn.json"


def save_variables(directory: str | os.PathLike[str], variables: Any, manifest: dict) -> None:
  """Saves ``{'params', 'batch_stats'}`` and ``manifest`` (must name ``arch``)."""
  directory = pathlib.Path(directory).absolute()
  if (directory / MANIFEST).exists():
    (directory / MANIFEST).unlink()  # invalid until the new variables are complete
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(directory / "variables", jax.tree_util.tree_map(np.asarray, variables), force=True)
  write_json_atomic(directory / MANIFEST, manifest)


def read_manifest(directory: str | os.PathLike[str]) -> dict:
  path = pathlib.Path(directory) / MANIFEST
  if not path.is_file():
    raise CheckpointError(
        f"{directory} is not a jaxbn checkpoint (no {MANIFEST}); write one with "
        "python -m jaxbn.convert --arch ARCH --out DIR."
    )
  return json.loads(path.read_text())


def restore_variables(
    directory: str | os.PathLike[str],
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
  """Restores variables saved by :func:`save_variables`.

  ``arch`` must match the manifest (``None`` accepts it). ``num_classes``
  ``None`` keeps the saved head, ``0`` drops it, another value builds a new,
  zero-initialised one.
  """
  directory = pathlib.Path(directory).absolute()
  manifest = read_manifest(directory)
  if arch is not None and manifest["arch"] != arch:
    raise CheckpointError(
        f"{directory} holds {manifest['arch']!r} weights, not {arch!r}: pass "
        f"--arch {manifest['arch']}."
    )
  arch = manifest["arch"]
  with ocp.PyTreeCheckpointer() as ckptr:
    variables = ckptr.restore(directory / "variables")
  saved_classes = int(manifest.get("num_classes", 0))
  if num_classes is None:
    num_classes = saved_classes
  head = registry.get_spec(arch).head
  if num_classes != saved_classes:
    variables["params"].pop(head, None)
    if num_classes > 0:
      model = registry.create_model(arch, num_classes=num_classes, **model_kwargs)
      variables["params"][head] = zero_head(registry.init_shapes(model)["params"][head])
  return variables
