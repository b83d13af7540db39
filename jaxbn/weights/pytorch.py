"""PyTorch checkpoints → Flax ``{'params', 'batch_stats'}`` (formerly ``jaxbn.weights.convert``).

The conversion is table driven: each family (``torchvision.py``,
``efficientnet_lite.py``) gives an explicit table ``torch key → flax path``
(the path starts with the collection, ``'params'`` or ``'batch_stats'``). The
table is checked against both the state dict and ``jax.eval_shape(model.init)``
so that any missing key, unexpected key or shape mismatch is reported at once,
all of them listed.

Layout transforms are decided by the Flax leaf: a 4-D ``kernel`` is a conv
(torch OIHW → Flax HWIO, depthwise included), a 2-D ``kernel`` is a dense layer
(torch (out, in) → Flax (in, out)); everything else is copied.
"""

from __future__ import annotations

import logging
import os
import zipfile
from typing import Any, Callable, Mapping

import numpy as np
from flax.traverse_util import flatten_dict as _flatten, unflatten_dict as _unflatten

from jaxbn import io
from jaxbn.models import acnorm, registry
from jaxbn.weights import efficientnet_lite, hub, store, torchvision
from jaxbn.weights.base import CheckpointError, zero_head
from jaxbn.weights.keys import KeyTable, Path


_log = logging.getLogger(__name__)

# Keys PyTorch keeps that have no Flax counterpart.
IGNORED_SUFFIXES = ("num_batches_tracked",)


def _shorten(items: list[str], n: int = 8) -> str:
  items = sorted(items)
  head = ", ".join(items[:n])
  return head + (f", … (+{len(items) - n} more)" if len(items) > n else "")


# --------------------------------------------------------------------------- #
# Reading files.
# --------------------------------------------------------------------------- #


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads a ``.pth``/``.pt`` (zip or legacy) or ``.safetensors`` file as numpy.

  PyTorch files are read with ``torch.load(weights_only=True)``: tensors and
  plain containers only, never arbitrary pickled code. A checkpoint that wraps
  its weights (``{'state_dict': ...}``, ``{'model': ...}``) is unwrapped and a
  DataParallel ``module.`` prefix is stripped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"Checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
      return {k: np.asarray(v) for k, v in load_file(path).items()}
    except Exception as e:  # safetensors raises its own SafetensorError
      raise CheckpointError(f"Cannot read safetensors file {path}: {e}") from None
  try:
    import torch
  except ImportError:
    raise CheckpointError(
        f"Reading {path} needs PyTorch: pip install 'jaxbn[torch]' "
        "(or convert it to .safetensors first)."
    ) from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    kind = "zip" if zipfile.is_zipfile(path) else "legacy"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(
        f"Cannot read PyTorch checkpoint {path} ({kind} format, "
        f"{os.path.getsize(path)} bytes): {msg}. The file may be truncated or "
        "corrupt: delete it and download it again."
    ) from None
  for wrapper in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict.")
  out = {}
  for k, v in obj.items():
    if not hasattr(v, "detach"):
      continue
    k = k[len("module."):] if k.startswith("module.") else k
    out[k] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
  return out


def imagenet_state_dict(arch: str) -> dict[str, np.ndarray]:
  """The registered ImageNet checkpoint of ``arch`` as numpy (fetched once, sha256-checked).

  The first read goes through :func:`load_state_dict` (PyTorch) and leaves an
  uncompressed ``.npz`` copy beside the cached checkpoints (``hub.cache_dir()``),
  named after the checkpoint's sha256. Later reads load that copy with numpy
  only: no torch import and no unpickling, 1-2 s less at every start. A copy that
  cannot be read is rebuilt; a cache directory that cannot be written is skipped.
  """
  copy = hub.cache_dir() / f"{arch}-{hub.checkpoint(arch).sha256[:16]}.npz"
  try:
    with np.load(copy, allow_pickle=False) as saved:
      return {k: saved[k] for k in saved.files}
  except FileNotFoundError:
    pass
  except Exception as e:  # truncated or corrupt copy: numpy/zipfile raise several types
    _log.warning("Rebuilding the numpy copy %s of %s's checkpoint (%s).", copy, arch,
                 type(e).__name__)
  # Only now fetch (and sha256-check) the .pth: the copy's name already carries its hash.
  state = load_state_dict(hub.fetch(arch))
  try:
    tmp = io.temp_beside(os.fspath(copy))
    try:
      with open(tmp, "wb") as f:
        np.savez(f, **state)
      os.replace(tmp, copy)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  except OSError as e:
    _log.warning("Cannot write %s (%s); the checkpoint is read through torch each time.",
                 copy, e)
  return state


# --------------------------------------------------------------------------- #
# Table-driven conversion.
# --------------------------------------------------------------------------- #


def _to_flax(value: np.ndarray, path: Path) -> np.ndarray:
  if path[-1] == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
  if path[-1] == "kernel" and value.ndim == 2:
    return np.transpose(value)  # (out, in) -> (in, out)
  return value


def apply_key_table(
    state_dict: Mapping[str, np.ndarray],
    table: KeyTable,
    expected: Mapping[str, Any],
    *,
    arch: str,
    skip_torch: Callable[[str], bool] = lambda k: False,
) -> dict[str, Any]:
  """Builds Flax variables from ``state_dict`` following ``table``.

  Args:
    state_dict: torch key → numpy array.
    table: torch key → Flax path (collection first) for every tensor to load.
    expected: the abstract variable tree (``jax.eval_shape(model.init, ...)``).
    arch: architecture name, for messages.
    skip_torch: torch keys to ignore (e.g. a head that is being replaced).

  Returns:
    Nested dict of numpy arrays with exactly the structure of ``expected``.

  Raises:
    CheckpointError listing every missing key, unexpected key and shape mismatch.
  """
  sd_keys = {k for k in state_dict if not k.endswith(IGNORED_SUFFIXES) and not skip_torch(k)}
  wanted = {k: p for k, p in table.items() if not skip_torch(k)}
  missing = sorted(set(wanted) - sd_keys)
  unexpected = sorted(sd_keys - set(wanted))
  exp_flat = _flatten(expected)
  flat: dict[Path, np.ndarray] = {}
  mismatched = []
  for key, path in wanted.items():
    if key not in state_dict:
      continue
    if path not in exp_flat:
      raise AssertionError(f"jaxbn key table for {arch}: {key} → {path} is not a model leaf")
    value = _to_flax(np.asarray(state_dict[key]), path)
    want = tuple(exp_flat[path].shape)
    if value.shape != want:
      mismatched.append(f"{key} {tuple(state_dict[key].shape)} vs expected {want}")
      continue
    flat[path] = value.astype(exp_flat[path].dtype)
  if missing or unexpected or mismatched:
    parts = [f"Checkpoint does not fit architecture {arch!r}:"]
    if missing:
      parts.append(f"{len(missing)} missing keys [{_shorten(missing)}]")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected keys [{_shorten(unexpected)}]")
    if mismatched:
      parts.append(f"{len(mismatched)} shape mismatches [{_shorten(mismatched, 4)}]")
    guess = guess_architecture(state_dict)
    if guess and guess != arch:
      parts.append(f"— the file looks like {guess!r}: pass --arch {guess}")
    else:
      parts.append("— pass the --arch the checkpoint was saved from")
    raise CheckpointError(" ".join(parts) + ".")
  not_covered = sorted("/".join(p) for p in set(exp_flat) - set(flat))
  if not_covered:
    raise AssertionError(f"jaxbn key table for {arch} leaves {not_covered} unset")
  return _unflatten(flat)


def key_table(arch: str) -> KeyTable:
  """The explicit torch key → Flax path table for ``arch`` (with ImageNet head)."""
  family = registry.get_spec(arch).family
  if family in ("resnet", "densenet"):
    return torchvision.key_table(arch)
  if family == "efficientnet_lite":
    return efficientnet_lite.key_table(arch)
  raise ValueError(f"No checkpoint key table for family {family!r} ({arch}).")


def guess_architecture(state_dict: Mapping[str, np.ndarray]) -> str | None:
  """The registered architecture whose key table and shapes match ``state_dict``.

  Key names alone cannot tell e.g. EfficientNet-Lite1 from Lite2 (same block
  count, other widths), so among the architectures with the same key set the
  one whose parameter shapes also fit is returned.
  """
  sd = {_normalise_legacy_key(k): v for k, v in state_dict.items()
        if not k.endswith(IGNORED_SUFFIXES)}
  same_keys = []
  for name in registry.available_models():
    try:
      if set(key_table(name)) == set(sd):
        same_keys.append(name)
    except (ValueError, NotImplementedError):
      continue
  for name in same_keys:
    table = key_table(name)
    head_bias = [k for k in head_keys(name) if k.endswith("bias")]
    classes = int(np.shape(sd[head_bias[0]])[0]) if head_bias else 1000
    expected = _flatten(registry.init_shapes(registry.create_model(name, num_classes=classes)))
    if all(
        _to_flax(np.empty(np.shape(v), np.uint8), table[k]).shape == tuple(expected[table[k]].shape)
        for k, v in sd.items()
    ):
      return name
  return None


def _normalise_legacy_key(key: str) -> str:
  return torchvision.normalise_legacy_key(key)


def head_keys(arch: str) -> set[str]:
  """Torch keys of the ImageNet classifier of ``arch``."""
  spec = registry.get_spec(arch)
  return {k for k, p in key_table(arch).items() if p[1] == spec.head}


def convert_state_dict(
    arch: str,
    state_dict: Mapping[str, np.ndarray],
    *,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
  """Converts a torch state dict into variables for ``create_model(arch, ...)``.

  Args:
    arch: registered architecture name.
    state_dict: torch key → numpy array (see :func:`load_state_dict`).
    num_classes: ``None`` keeps the checkpoint's head; ``0`` drops it (feature
      extractor); the checkpoint's class count keeps its head; any other
      count builds a new, zero-initialised head (:func:`zero_head`).
    **model_kwargs: forwarded to ``create_model`` (``truncate_at``, ``norm``, ...).
  """
  return load_pretrained(arch, state_dict, num_classes=num_classes, **model_kwargs)


# --------------------------------------------------------------------------- #
# Filling the abstract variables of a model the caller built.
# --------------------------------------------------------------------------- #


def fill_variables(
    expected: Mapping[str, Any],
    arch: str,
    source: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
  """Pretrained variables with exactly the tree and shapes of ``expected``.

  ``expected`` is the abstract variable tree of the model the caller already
  built (``jax.eval_shape(model.init, ...)``, :func:`jaxbn.models.init_shapes`);
  nothing is rebuilt here. ``source``: ``None`` (the registered ImageNet
  checkpoint of ``arch``, downloaded once), a ``.pth``/``.safetensors`` file, a
  directory written by ``python -m jaxbn.convert``, or a state dict already read.

  The model decides what is read: the tensors of top-level modules it does not
  have (a TruncatedTL prefix, arXiv:2106.05152) are skipped, every other one is
  required and shape-checked (:class:`CheckpointError` lists all problems). The
  checkpoint's head is kept (and shape-checked) when the model's head has the
  checkpoint's class count and no module was cut; otherwise it is new and zero
  (:func:`zero_head`). AC-Norm's source affine, which a BN checkpoint lacks, is a
  copy of the pretrained γ, β (:func:`jaxbn.models.acnorm.add_source_affine`).
  """
  expected = dict(expected)
  acnorm_source = expected.pop(acnorm.SOURCE, None)
  if isinstance(source, Mapping):
    variables = _fill_from_state_dict(expected, arch, source)
  elif source is not None and os.path.isdir(source):
    saved = store.restore_variables(source, arch, num_classes=None)
    variables = fill_from_variables(expected, arch, saved, what=f"{arch} (from {source})")
  else:
    state = load_state_dict(source) if source is not None else imagenet_state_dict(arch)
    variables = _fill_from_state_dict(expected, arch, state)
  if acnorm_source is not None:
    variables = acnorm.add_source_affine(variables, acnorm_source)
  return variables


def _top_level(tree: Mapping[str, Any]) -> set[str]:
  return {name for sub in tree.values() for name in sub}


def _head_classes(expected: Mapping[str, Any], head: str) -> tuple[int, ...] | None:
  """The shape of the model's head bias, ``(num_classes,)``; None without a head."""
  bias = expected.get("params", {}).get(head, {}).get("bias")
  return None if bias is None else tuple(bias.shape)


def _new_head(variables: dict[str, Any], expected: Mapping[str, Any], head: str) -> None:
  if head in expected.get("params", {}):
    variables.setdefault("params", {})[head] = zero_head(expected["params"][head])


def _fill_from_state_dict(expected: Mapping[str, Any], arch: str,
                          state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
  head = registry.get_spec(arch).head
  state_dict = {torchvision.normalise_legacy_key(k): v for k, v in state_dict.items()}
  table, heads = key_table(arch), head_keys(arch)
  modules = _top_level(expected)
  cut = {k for k, path in table.items() if path[1] not in modules | {head}}
  bias = next((k for k in heads if k.endswith("bias") and k in state_dict), None)
  keep_head = (not cut and bias is not None
               and np.shape(state_dict[bias]) == _head_classes(expected, head))
  used = {k: p for k, p in table.items() if k not in cut and (keep_head or k not in heads)}
  variables = apply_key_table(
      state_dict, used, expected if keep_head else _without_head(expected, head), arch=arch,
      skip_torch=lambda k: k in table and k not in used,
  )
  if not keep_head:
    _new_head(variables, expected, head)
  return variables


def fill_from_variables(expected: Mapping[str, Any], arch: str, variables: Mapping[str, Any],
                        *, what: str) -> dict[str, Any]:
  """:func:`fill_variables` from Flax variables of (a prefix of) ``arch`` (e.g. converted ones).

  Keeps the top-level modules ``expected`` has (every collection), requires
  exactly its names and shapes (any difference is a :class:`CheckpointError`
  naming ``what``), keeps the saved head when it has the model's class count and
  nothing was cut, else adds a new zero head.
  """
  head = registry.get_spec(arch).head
  modules = _top_level(expected)
  cut = bool(_top_level(variables) - modules - {head})
  out = {c: {k: v for k, v in tree.items() if k in modules}
         for c, tree in variables.items() if c in expected}
  got = {p: tuple(np.shape(v)) for p, v in _flatten(out).items()}
  want = {p: tuple(v.shape) for p, v in _flatten(expected).items()}
  saved = variables.get("params", {}).get(head, {}).get("bias")
  keep_head = not cut and saved is not None and np.shape(saved) == _head_classes(expected, head)
  if not keep_head:
    out = _without_head(out, head)
    got = {p: s for p, s in got.items() if p[1] != head}
    want = {p: s for p, s in want.items() if p[1] != head}
  bad = sorted("/".join(p) for p in set(got) ^ set(want))
  bad += sorted(f"{'/'.join(p)} {got[p]} vs expected {want[p]}"
                for p in set(got) & set(want) if got[p] != want[p])
  if bad:
    raise CheckpointError(f"Variables do not fit {what}: {_shorten(bad)}.")
  if not keep_head:
    _new_head(out, expected, head)
  return out


def truncate_variables(
    arch: str,
    variables: Mapping[str, Any],
    truncate_at: str,
    *,
    num_classes: int,
    **model_kwargs: Any,
) -> dict[str, Any]:
  """Cuts the variables of a full ``arch`` to ``create_model(arch, truncate_at=...)``.

  Keeps the top-level modules the cut keeps (every collection), checks that
  they are exactly the truncated model's (names and shapes; any difference is
  a :class:`CheckpointError`) and adds a new zero head of ``num_classes``
  (``0``: none).
  """
  model = registry.create_model(arch, num_classes=num_classes, truncate_at=truncate_at,
                                **model_kwargs)
  return fill_from_variables(registry.init_shapes(model), arch, variables,
                             what=f"{arch} truncated at {truncate_at!r}")


def _without_head(expected: Mapping[str, Any], head: str) -> dict[str, Any]:
  return {c: {k: v for k, v in tree.items() if k != head} for c, tree in expected.items()}


def load_pretrained(
    arch: str,
    source: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    *,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
  """Variables for ``create_model(arch, num_classes, **model_kwargs)`` from a checkpoint.

  ``source`` is a path to a ``.pth``/``.safetensors`` file, a directory holding
  an orbax checkpoint written by ``python -m jaxbn.convert``, a state dict
  already read, or ``None`` for the registered ImageNet checkpoint of ``arch``
  (downloaded once, sha256-checked). ``num_classes=None`` keeps the checkpoint's
  head. A caller that has built its model already uses :func:`fill_variables`.
  """
  if source is None or not (isinstance(source, Mapping) or os.path.isdir(source)):
    source = load_state_dict(source) if source is not None else imagenet_state_dict(arch)
  if num_classes is None:
    num_classes = _saved_classes(arch, source)
  model = registry.create_model(arch, num_classes=num_classes, **model_kwargs)
  return fill_variables(registry.init_shapes(model), arch, source)


def _saved_classes(arch: str, source: str | os.PathLike[str] | Mapping[str, np.ndarray]) -> int:
  """The head size a checkpoint was saved with (ImageNet's when a state dict has no head)."""
  if not isinstance(source, Mapping):
    return int(store.read_manifest(source).get("num_classes", 0))
  for k in head_keys(arch):
    if k.endswith("bias") and k in source:
      return int(np.shape(source[k])[0])
  return registry.get_spec(arch).num_imagenet_classes
