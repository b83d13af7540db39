r"""Transfusion initialisers (Raghu et al., NeurIPS 2019, arXiv:1902.07208).

Every function here takes variable trees (``{'params', 'batch_stats', ...}``
of numpy arrays) and returns a new tree with exactly the structure and shapes
of the *target* model's random initialisation; nothing is modified in place.

* :func:`mean_var`: every conv/dense kernel ``W`` whose path also exists in the
  pretrained variables is drawn iid ``N(mean(W̃), var(W̃))`` from the scalar mean
  and variance of the pretrained tensor ``W̃`` (one pair per tensor, also when
  the shapes differ, e.g. a slimmer stage); every BatchNorm is identity
  (γ=1, β=0, running mean 0, running var 1); the head (``spec.head``, absent
  from the pretrained tree or replaced) and every other leaf keep the random
  initialisation (the registered backbones have no conv/dense biases outside
  the head).
* :func:`transfuse` (*weight transfusion*): the top-level modules of a
  contiguous prefix of the network (all their collections: kernels, BN γ/β
  and running statistics) are copied from the pretrained variables, the rest
  (the head included) keep the random initialisation. The prefix is named in
  jaxbn's one prefix vocabulary (:mod:`jaxbn.models.prefix`, shared with
  TruncatedTL's ``truncate_at`` and ``masks.from_stage``); Transfusion's grid,
  :func:`transfer_points`, is defined through ``ModelSpec.stage_of`` so every
  family has it:

  ======== ==================================================================
  cut      copied top-level modules
  ======== ==================================================================
  none     nothing (= random init)
  conv1    the stem: ResNet ``conv1, bn1``; DenseNet ``conv0, norm0``;
           EfficientNet-Lite ``conv_stem, bn0``; CBR ``conv1, bn1``
           (alias ``stem``)
  stageK   the stem and stages 1..K: ResNet ``layer1..layerK``; DenseNet
           ``denseblock1..K, transition1..K``; EfficientNet-Lite the MBConv
           blocks of stages 1..K; CBR ``conv1..convK, bn1..bnK``
  all      every module but the head
  ======== ==================================================================

  Valid ``stageK``: 1 .. ``num_stages − 1`` (the last stage is ``all``); a
  ResNet has ``conv1 | stage1 | stage2 | stage3 | all``, EfficientNet-Lite
  ``stage1`` … ``stage6`` (its ``conv_head``/``bn1`` belong to stage 7). Any
  TruncatedTL cut name is a valid prefix too (``layer3_3``, ``transition2``,
  EfficientNet-Lite ``stage7`` = its MBConv blocks without ``conv_head``).
* The **slim** variant is a transfusion into a thinner model: ResNet with
  ``stage_widths`` (``jaxbn.models.resnet.ResNet``) halved in stages 3–4,
  ``transfer_up_to='stage2'`` (:func:`jaxbn.models.resnet.slim_widths`).
  Copied modules must have the pretrained shapes (a clear error otherwise).

In training these are chosen by the config (:func:`jaxbn.setup.initial_variables`
unpacks ``config.model`` into :func:`initial_variables`, which parses ``model.init``
with :func:`parse_init`)::

    model.init = "mean_var"              # statistics of the registered ImageNet weights
    model.init = "mean_var:/path.pth"    # ... of any checkpoint load_pretrained reads
    model.init = "imagenet"; model.transfer_up_to = "stage2"   # weight transfusion
    model.init = "/path.pth"; model.transfer_up_to = "conv1"   # from any checkpoint

Library use (not run as a doctest: it downloads ImageNet weights)::

    from jaxbn.weights import init, pytorch
    model = create_model("resnet50", num_classes=2)
    random = init_variables(model, jax.random.key(0))
    pretrained = pytorch.load_pretrained("resnet50", num_classes=0)
    v = init.transfuse(random, pretrained, "resnet50", "stage2")
    v = init.mean_var(random, pretrained, jax.random.key(1), head="fc")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

import jaxbn.models as models
from jaxbn import masks, treepath
from jaxbn.models import prefix, registry
from jaxbn.weights import pytorch
from jaxbn.models.resnet import slim_widths  # its old home was here: re-exported

MEAN_VAR = "mean_var"
NONE = prefix.NONE
ALL = prefix.ALL
STEM_ALIASES = ("conv1", prefix.STEM)

_host = treepath.to_host
_flatten = treepath.flatten
_unflatten = treepath.unflatten


def batchnorm_modules(variables: Mapping[str, Any]) -> set[tuple]:
  """Paths (inside ``params``) of the BatchNorm modules, found structurally.

  The rule is :func:`jaxbn.masks.is_batchnorm`: a ``params`` module whose twin
  in ``batch_stats`` owns ``mean`` and ``var`` of the affine's shape, whatever
  it is called.
  """
  stats = treepath.modules(treepath.as_dict(variables.get("batch_stats", {})))
  params = treepath.modules(treepath.as_dict(variables.get("params", {})))
  return {path for path, leaves in params.items()
          if masks.is_batchnorm(path, leaves, stats.get(path))}


# --------------------------------------------------------------------------- #
# Mean-Var.
# --------------------------------------------------------------------------- #


def kernel_stats(pretrained: Mapping[str, Any]) -> dict[tuple, tuple[float, float]]:
  """``params`` path → (mean, variance) of every conv/dense kernel (ndim ≥ 2)."""
  flat = _flatten(pretrained.get("params", {}))
  return {
      p: (float(np.mean(v, dtype=np.float64)), float(np.var(v, dtype=np.float64)))
      for p, v in flat.items() if p[-1] == "kernel" and np.ndim(v) >= 2
  }


def mean_var(
    random: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    rng: jax.Array | int,
    *,
    head: str | None = None,
) -> dict[str, Any]:
  """Mean-Var initialisation (Transfusion): kernels ~ N(mean, var) of the pretrained ones.

  Args:
    random: the target model's random variables (defines structure and shapes).
    pretrained: pretrained variables of the same architecture (the head may be
      missing, e.g. ``load_pretrained(arch, num_classes=0)``).
    rng: JAX key or int seed for the draws.
    head: top-level module of the new head (``spec.head``): always keeps its
      random initialisation, even when ``pretrained`` holds one.

  Returns:
    New variables: for each conv/dense ``kernel`` path present in both trees,
    iid normal samples with the pretrained tensor's scalar mean and variance;
    every BatchNorm (see :func:`batchnorm_modules`) identity — ``scale`` 1,
    ``bias`` 0, running ``mean`` 0, ``var`` 1; everything else (head, other
    leaves, other collections) from ``random``.
  """
  random = _host(random)
  stats = kernel_stats(_host(pretrained))
  seed = int(jax.random.randint(rng, (), 0, 2**31 - 1)) if not isinstance(rng, int) else rng
  gen = np.random.default_rng(seed)
  bns = batchnorm_modules(random)
  out: dict[tuple, Any] = {}
  for (collection, *path), value in sorted(_flatten(random).items()):
    path = tuple(path)
    module, leaf = path[:-1], path[-1]
    if collection in ("params", "batch_stats") and module in bns:
      one = leaf in ("scale", "var")
      if leaf not in ("scale", "bias", "mean", "var"):
        raise ValueError(f"Unexpected BatchNorm leaf {collection}/{'/'.join(path)}.")
      out[(collection, *path)] = np.full(value.shape, 1.0 if one else 0.0, value.dtype)
    elif (collection == "params" and leaf == "kernel" and path in stats
          and (head is None or path[0] != head)):
      mean, var = stats[path]
      draw = gen.normal(mean, np.sqrt(var), size=value.shape)
      out[(collection, *path)] = draw.astype(value.dtype)
    else:
      out[(collection, *path)] = value
  return _unflatten(out)


# --------------------------------------------------------------------------- #
# Weight transfusion.
# --------------------------------------------------------------------------- #


def _top_level(variables: Mapping[str, Any]) -> list[str]:
  names: list[str] = []
  for tree in treepath.as_dict(variables).values():
    for k in tree:
      if k not in names:
        names.append(k)
  return names


def transfer_points(arch: str) -> list[str]:
  """Transfusion's grid of ``transfer_up_to`` values for ``arch`` in network order.

  ``none, conv1, stage1 … stage{S-1}, all``; every other prefix name of
  :mod:`jaxbn.models.prefix` (``stem``, TruncatedTL cuts) is accepted too.
  """
  spec = registry.get_spec(arch)
  if spec.stage_of is None:
    raise prefix.PrefixError(
        f"{arch!r} has no stage_of: weight transfusion is not defined for it.")
  return [NONE, "conv1", *prefix.stage_names(spec), ALL]


def transferred_modules(arch: str, transfer_up_to: str, names: Sequence[str]) -> list[str]:
  """The top-level modules among ``names`` that ``transfer_up_to`` copies.

  ``names`` are a model's top-level module names (any order);
  ``transfer_up_to`` is a prefix name (:mod:`jaxbn.models.prefix`). Raises
  :class:`~jaxbn.models.prefix.PrefixError` listing the valid names.
  """
  spec = registry.get_spec(arch)
  valid = transfer_points(arch)
  try:
    return list(prefix.resolve(spec, transfer_up_to, names))
  except prefix.PrefixError:
    cuts = [n for n in prefix.names(spec) if n not in valid and n != prefix.STEM]
    raise prefix.PrefixError(
        f"Unknown transfer_up_to={transfer_up_to!r} for {arch}; valid: {', '.join(valid)} "
        "(conv1 is also called stem)" + (f", or a TruncatedTL cut: {', '.join(cuts)}" if cuts
                                          else "") + "."
    ) from None


def transfuse(
    random: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    arch: str,
    transfer_up_to: str,
) -> dict[str, Any]:
  """Weight transfusion: copy the pretrained prefix up to ``transfer_up_to``, keep the rest random.

  Args:
    random: the target model's random variables (defines structure and shapes;
      may be a thinner model, e.g. ResNet ``stage_widths``, or truncated).
    pretrained: pretrained variables of ``arch`` (full width; head optional).
    arch: registered architecture name (for the cut points).
    transfer_up_to: ``none | conv1 | stage1 … stage{S-1} | all``.

  Returns:
    New variables: every collection of each copied module (params and
    batch_stats alike) from ``pretrained``, everything else from ``random``.

  Raises:
    ValueError: unknown cut, or a copied module missing from ``pretrained`` or
      shaped differently from the target (e.g. a slim stage inside the prefix).
  """
  random, pretrained = _host(random), _host(pretrained)
  copied = set(transferred_modules(arch, transfer_up_to, _top_level(random)))
  flat_p = _flatten(pretrained)
  out: dict[tuple, Any] = {}
  bad: list[str] = []
  for path, value in _flatten(random).items():
    if len(path) < 2 or path[1] not in copied:
      out[path] = value
      continue
    src = flat_p.get(path)
    if src is None or np.shape(src) != np.shape(value):
      got = "missing" if src is None else f"{np.shape(src)}"
      bad.append(f"{'/'.join(path)}: pretrained {got}, model {np.shape(value)}")
      continue
    out[path] = np.array(src, dtype=value.dtype)
  if bad:
    bad.sort(key=lambda b: (not b.startswith("params/"), b))  # params first
    shown = "; ".join(bad[:6]) + (f"; … (+{len(bad) - 6} more)" if len(bad) > 6 else "")
    raise ValueError(
        f"transfer_up_to={transfer_up_to!r} copies modules that the pretrained {arch} "
        f"variables do not fit: {shown}. Transfer a shorter prefix or build the model "
        "with the pretrained widths."
    )
  return _unflatten(out)


# --------------------------------------------------------------------------- #
# Entry point: ``model.init`` / ``transfer_up_to`` strings → variables.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Init:
  """A parsed ``model.init`` string (:func:`parse_init`)."""

  kind: str  # "random" | "pretrained" | "mean_var"
  source: str | None = None  # a checkpoint path; None: the registered ImageNet weights
  seed: int | None = None  # random[:SEED], mean_var[:SEED]; None: the caller's key


def parse_init(init: str) -> Init:
  """The one parser of the ``model.init`` grammar.

  ``imagenet`` (the registered checkpoint) · ``PATH`` (a ``.pth``/``.safetensors``
  file or converted directory) · ``random[:SEED]`` · ``mean_var[:SEED]`` (Mean-Var
  from the ImageNet weights) · ``mean_var:PATH`` (... from a checkpoint). A
  suffix of digits is a seed; a path that is all digits is written ``./123``.

  >>> parse_init("imagenet"), parse_init("random:3")
  (Init(kind='pretrained', source=None, seed=None), Init(kind='random', source=None, seed=3))
  >>> parse_init("mean_var:/ckpt/r50.pth"), parse_init("mean_var_run/a.pth").kind
  (Init(kind='mean_var', source='/ckpt/r50.pth', seed=None), 'pretrained')
  """
  init = str(init).strip()
  if not init:
    raise ValueError("model.init is empty: imagenet | random | mean_var[:PATH] | "
                     "a checkpoint path.")
  kind, colon, tail = init.partition(":")
  if kind in ("random", MEAN_VAR):
    if tail.isdigit():
      return Init(kind, None, int(tail))
    if kind == "random" and colon:
      raise ValueError(f"model.init={init!r}: random takes an integer seed (random:SEED).")
    return Init(kind, None if tail in ("", "imagenet") else tail)
  return Init("pretrained", None if init == "imagenet" else init)


def initial_variables(model, rng, *, arch: str, init: str | Init,
                      transfer_up_to: str | None = None,
                      stage_widths: Sequence[int] | None = None) -> dict[str, Any]:
  """Variables for the ``model`` the caller built, from a ``model.init`` string.

  ``pretrained`` fills the model's abstract variables from the checkpoint
  (:func:`jaxbn.weights.pytorch.fill_variables`: new zero head, TruncatedTL prefix,
  AC-Norm source affine); ``random`` is ``model.init(rng)``; ``mean_var`` and a
  ``transfer_up_to`` prefix are Transfusion's (:func:`transfusion_variables`).
  ``stage_widths``: the model's widths differ from the pretrained ones (the slim
  variant), which only a ``transfer_up_to`` prefix can fill.
  """
  parsed = parse_init(init) if not isinstance(init, Init) else init
  if parsed.seed is not None:
    rng = jax.random.key(parsed.seed)
  if parsed.kind == "random" and transfer_up_to in (None, NONE):
    return _host(models.init_variables(model, rng))
  if parsed.kind == "pretrained" and transfer_up_to is None and not stage_widths:
    return pytorch.fill_variables(models.init_shapes(model), arch, parsed.source)
  return transfusion_variables(model, rng, arch=arch, init=parsed, transfer_up_to=transfer_up_to)


def transfusion_variables(model, rng, *, arch: str, init: str | Init,
                          transfer_up_to: str | None = None) -> dict[str, Any]:
  """Variables for ``init`` = ``mean_var[:SOURCE]``, or a ``transfer_up_to`` prefix.

  The target's random variables come from ``model.init`` with ``rng`` (the
  caller built ``model`` with its widths, ``truncate_at`` and head); the
  pretrained ones from ``jaxbn.weights.pytorch.load_pretrained`` of the
  registered ImageNet checkpoint (``imagenet``, ``mean_var``) or of the given
  path (``init=PATH``, ``mean_var:PATH``), without its head.
  """
  parsed = parse_init(init) if not isinstance(init, Init) else init
  rng_random, rng_draw = jax.random.split(rng)
  random = _host(models.init_variables(model, rng_random))
  if parsed.kind == "random":
    if transfer_up_to not in (None, NONE):
      raise ValueError(
          f"model.transfer_up_to={transfer_up_to!r} needs pretrained weights: set model.init "
          "to 'imagenet' or a checkpoint path (init='random' has nothing to transfer).")
    return random
  if parsed.kind == MEAN_VAR and transfer_up_to not in (None, NONE):
    raise ValueError("model.init='mean_var' and model.transfer_up_to cannot be combined.")
  if parsed.kind == "pretrained" and transfer_up_to is None:
    raise ValueError(
        f"model.stage_widths changes the shapes of {arch}: pretrained weights need "
        "model.transfer_up_to (the slim variant: 'stage2'), or use model.init='random'.")
  pretrained = pytorch.load_pretrained(arch, parsed.source, num_classes=0)
  if parsed.kind == MEAN_VAR:
    return mean_var(random, pretrained, rng_draw, head=registry.get_spec(arch).head)
  return transfuse(random, pretrained, arch, transfer_up_to)


__all__ = [
    "ALL", "MEAN_VAR", "NONE", "Init", "batchnorm_modules", "initial_variables", "kernel_stats",
    "mean_var", "parse_init", "slim_widths", "transfer_points", "transferred_modules",
    "transfuse", "transfusion_variables",
]
