"""Variable trees by module path: the one helper for "module path → its leaves".

jaxbn's variable trees are nested mappings ``{collection: {module: {…: leaf}}}``
(dicts or FrozenDicts). A *module path* is the tuple of keys down to a mapping
that directly holds leaves, e.g. ``('layer1_0', 'bn1')``.

>>> import numpy as np
>>> params = {"conv": {"kernel": np.ones((3, 3))}, "block": {"bn": {"scale": np.ones(2)}}}
>>> sorted(modules(params))
[('block', 'bn'), ('conv',)]
>>> get(params, ("block", "bn", "scale")).shape
(2,)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

Path = tuple[str, ...]


def as_dict(tree: Any) -> Any:
  """Plain nested dicts (FrozenDicts and other mappings converted), leaves untouched."""
  if isinstance(tree, Mapping):
    return {k: as_dict(v) for k, v in tree.items()}
  return tree


def modules(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, dict[str, Any]]:
  """Module path → its direct leaves (name → leaf), for a nested mapping of arrays."""
  out: dict[Path, dict[str, Any]] = {}
  leaves = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(modules(v, prefix + (k,)))
    else:
      leaves[k] = v
  if leaves:
    out[prefix] = leaves
  return out


def get(tree: Mapping[str, Any], path: Path) -> Any:
  """The subtree or leaf at ``path``."""
  for k in path:
    tree = tree[k]
  return tree


def flatten(tree: Any) -> dict[Path, Any]:
  """Leaf path → leaf (``flax.traverse_util.flatten_dict`` of :func:`as_dict`)."""
  return flatten_dict(as_dict(tree))


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  return unflatten_dict(dict(flat))


def to_host(tree: Any) -> dict[str, Any]:
  """A plain nested dict of numpy arrays (FrozenDicts and jax arrays accepted)."""
  return unflatten({p: np.asarray(v) for p, v in flatten(tree).items()})


__all__ = ["Path", "as_dict", "flatten", "get", "modules", "to_host", "unflatten"]
