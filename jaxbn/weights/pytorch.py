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

import os
import zipfile
from typing import Any, Callable, Mapping

import numpy as np
from flax.traverse_util import flatten_dict as _flatten, unflatten_dict as _unflatten

from jaxbn.models import acnorm, registry
from jaxbn.weights import efficientnet_lite, hub, store, torchvision
from jaxbn.weights.base import CheckpointError, zero_head
from jaxbn.weights.keys import KeyTable, Path


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
    **model_kwargs: forwarded to ``create_model`` (they must not change shapes).
  """
  spec = registry.get_spec(arch)
  state_dict = {torchvision.normalise_legacy_key(k): v for k, v in state_dict.items()}
  table = key_table(arch)
  heads = head_keys(arch)
  ckpt_classes = None
  for k in heads:
    if k.endswith("bias") and k in state_dict:
      ckpt_classes = int(np.shape(state_dict[k])[0])
  if num_classes is None:
    num_classes = ckpt_classes or spec.num_imagenet_classes
  keep_head = num_classes > 0 and num_classes == ckpt_classes
  # truncate_at (TruncatedTL): the model is a prefix of ``arch``. The checkpoint's
  # tensors after the cut are dropped by the cut's definition, every other key is
  # checked as usual; the classifier sat on other features, so the head is new.
  dropped = cut_keys(arch, table, model_kwargs.get("truncate_at"))
  keep_head = keep_head and model_kwargs.get("truncate_at") is None
  model = registry.create_model(arch, num_classes=num_classes, **model_kwargs)
  expected = registry.init_shapes(model)
  # norm='acnorm': a BN checkpoint has no AC-Norm source affine; it is the pretrained
  # γ, β (as is the target), copied from params once they are converted.
  acnorm_source = expected.pop(acnorm.SOURCE, None)
  skip = (lambda k: k in dropped) if keep_head else (lambda k: k in heads or k in dropped)
  variables = apply_key_table(
      state_dict,
      {k: v for k, v in table.items() if k not in dropped and (keep_head or k not in heads)},
      _without_head(expected, spec.head) if not keep_head else expected,
      arch=arch,
      skip_torch=skip,
  )
  if num_classes > 0 and not keep_head:
    variables["params"][spec.head] = zero_head(expected["params"][spec.head])
  if acnorm_source is not None:
    variables = acnorm.add_source_affine(variables, acnorm_source)
  return variables


def cut_keys(arch: str, table: Mapping[str, Path], truncate_at: str | None) -> set[str]:
  """Torch keys of the modules that the TruncatedTL cut ``truncate_at`` drops.

  Exactly the tensors of the top-level modules after the cut (those not in
  :attr:`jaxbn.models.registry.CutPoint.kept`), head excluded (the caller
  replaces it); empty when ``truncate_at`` is None.
  """
  if truncate_at is None:
    return set()
  kept = set(registry.get_cut(arch, truncate_at).kept) | {registry.get_spec(arch).head}
  return {k for k, path in table.items() if path[1] not in kept}


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
  (``0``: none). Used for converted checkpoint directories; ``.pth`` files are
  cut while converting (:func:`convert_state_dict`).
  """
  spec = registry.get_spec(arch)
  kept = set(registry.get_cut(arch, truncate_at).kept)
  out = {c: {k: v for k, v in tree.items() if k in kept} for c, tree in variables.items()}
  model = registry.create_model(arch, num_classes=num_classes, truncate_at=truncate_at,
                                **model_kwargs)
  expected = _without_head(registry.init_shapes(model), spec.head)
  got = {p: tuple(np.shape(v)) for p, v in _flatten(out).items()}
  want = {p: tuple(v.shape) for p, v in _flatten(expected).items() if p[0] in out}
  bad = sorted("/".join(p) for p in set(got) ^ set(want))
  bad += sorted(f"{'/'.join(p)} {got[p]} vs expected {want[p]}"
                for p in set(got) & set(want) if got[p] != want[p])
  if bad:
    raise CheckpointError(
        f"Variables do not fit {arch} truncated at {truncate_at!r}: {_shorten(bad)}."
    )
  if num_classes > 0:
    out.setdefault("params", {})[spec.head] = zero_head(
        registry.init_shapes(model)["params"][spec.head])
  return out


def _restore_converted(source, arch: str, *, num_classes: int | None, **model_kwargs: Any):
  """``store.restore_variables``, cut to the TruncatedTL prefix when ``truncate_at`` is set."""
  truncate_at = model_kwargs.pop("truncate_at", None)
  if truncate_at is None:
    return store.restore_variables(source, arch, num_classes=num_classes, **model_kwargs)
  full = store.restore_variables(source, arch, num_classes=0, **model_kwargs)
  if num_classes is None:
    num_classes = int(store.read_manifest(source).get("num_classes", 0))
  return truncate_variables(arch, full, truncate_at, num_classes=num_classes, **model_kwargs)


def _without_head(expected: Mapping[str, Any], head: str) -> dict[str, Any]:
  return {c: {k: v for k, v in tree.items() if k != head} for c, tree in expected.items()}


def load_pretrained(
    arch: str,
    source: str | os.PathLike[str] | None = None,
    *,
    num_classes: int | None = None,
    **model_kwargs: Any,
) -> dict[str, Any]:
  """Variables for ``arch`` from a local file, or the known checkpoint (cached).

  ``source`` is a path to a ``.pth``/``.safetensors`` file, a directory holding
  an orbax checkpoint written by ``python -m jaxbn.convert``, or ``None`` for the
  registered ImageNet checkpoint of ``arch`` (downloaded once, sha256-checked).
  """
  if source is not None and os.path.isdir(source):
    variables = _restore_converted(source, arch, num_classes=num_classes, **model_kwargs)
    if acnorm.is_acnorm(model_kwargs.get("norm", "bn")):  # a converted BN checkpoint
      shapes = registry.init_shapes(registry.create_model(arch, num_classes=0, **model_kwargs))
      variables = acnorm.add_source_affine(variables, shapes[acnorm.SOURCE])
    return variables
  path = source if source is not None else hub.fetch(arch)
  return convert_state_dict(
      arch, load_state_dict(path), num_classes=num_classes, **model_kwargs
  )
