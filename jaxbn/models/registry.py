"""One registry for every backbone: ``create_model(name, num_classes)``.

Each family module (``resnet``, ``densenet``, ``efficientnet_lite``) exposes
``SPECS: dict[str, ModelSpec]``; this module merges them. A spec knows how to
build the Flax module and what the matching pretrained checkpoint expects
(input resolution, pixel normalisation, the name of the classifier module).

Calling convention shared by all models (NHWC input, float32 logits out)::

    model = create_model("resnet50", num_classes=2)
    variables = model.init(rng, x)                     # {'params', 'batch_stats'}
    logits = model.apply(variables, x)                 # eval: running statistics
    logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    # frozen-statistics fine-tuning: train=True (dropout on) but BN in eval mode
    logits = model.apply(variables, x, train=True, use_running_average=True,
                         rngs={"dropout": rng})

``num_classes=0`` gives a feature extractor returning the pooled features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one named architecture and feed it pretrained-style inputs."""

  name: str
  family: str  # "resnet" | "densenet" | "efficientnet_lite" | "cbr"
  build: Callable[..., nn.Module]  # build(num_classes=..., dtype=..., norm=..., dropout_rate=...)
  input_size: int = 224
  mean: tuple[float, float, float] = IMAGENET_MEAN  # on [0, 1] pixels
  std: tuple[float, float, float] = IMAGENET_STD
  head: str = "fc"  # name of the classifier module in params
  num_imagenet_classes: int = 1000
  # Maps a top-level module name in ``params`` to its stage: 0 = stem,
  # 1..num_stages = the network's stages (ResNet layer1..4, DenseNet blocks,
  # EfficientNet-Lite MBConv stages; final norm/conv belong to the last stage),
  # num_stages + 1 = the head. Used by ``masks.from_stage`` and truncation.
  stage_of: Callable[[str], int] | None = None
  num_stages: int = 4
  # The valid ``truncate_at`` cuts in network order (see :class:`CutPoint`);
  # None: the family cannot be truncated.
  cuts: Callable[[], tuple["CutPoint", ...]] | None = None


@dataclasses.dataclass(frozen=True)
class CutPoint:
  """One place where a backbone can be cut (TruncatedTL, ``truncate_at=name``).

  The truncated model keeps the top-level modules ``kept`` (in network order;
  the stem first), drops everything after them and ends with global average
  pooling + the family's head (``spec.head``, a new dense layer).

  Attributes:
    name: what ``truncate_at`` takes, e.g. ``"layer3"``, ``"layer3_3"``,
      ``"transition2"``, ``"stage4"``, ``"blocks_7"``.
    level: ``"block"`` (after a stage: the coarse search) or ``"layer"``
      (after one residual / MBConv block: the fine search).
    kept: the top-level modules of the truncated model, head excluded. Two
      cuts with the same ``kept`` (``layer3`` and ``layer3_5`` of ResNet-50)
      build the same model.
  """

  name: str
  level: str
  kept: tuple[str, ...]

  @property
  def last(self) -> str:
    """The last kept top-level module: the truncated model ends right after it."""
    return self.kept[-1]


def _specs() -> dict[str, ModelSpec]:
  # Imported lazily so that ``import jaxbn.models.registry`` stays cheap.
  from jaxbn.models import cbr, densenet, efficientnet_lite, resnet

  specs: dict[str, ModelSpec] = {}
  for module in (resnet, densenet, efficientnet_lite, cbr):
    specs.update(module.SPECS)
  return specs


def available_models() -> list[str]:
  return sorted(_specs())


def get_spec(name: str) -> ModelSpec:
  specs = _specs()
  if name not in specs:
    raise ValueError(
        f"Unknown architecture {name!r}; choose one of: {', '.join(sorted(specs))}."
    )
  return specs[name]


def cut_points(name: str, level: str | None = None) -> list[str]:
  """Valid ``truncate_at`` values of ``name`` in network order.

  ``level``: ``"block"`` (after a stage), ``"layer"`` (after one residual /
  MBConv block) or None (both, block-level names first). See
  :func:`get_cut` for what each name keeps.
  """
  cuts = _cuts(name)
  if level is None:
    return [c.name for c in cuts if c.level == "block"] + [
        c.name for c in cuts if c.level == "layer"
    ]
  if level not in ("block", "layer"):
    raise ValueError(f"level must be 'block', 'layer' or None, got {level!r}.")
  return [c.name for c in cuts if c.level == level]


def _cuts(name: str) -> tuple[CutPoint, ...]:
  spec = get_spec(name)
  if spec.cuts is None:
    raise ValueError(f"{name!r} ({spec.family}) does not support truncate_at.")
  return spec.cuts()


def get_cut(name: str, truncate_at: str) -> CutPoint:
  """The :class:`CutPoint` called ``truncate_at``; a clear error lists the valid ones."""
  cut = find_cut(_cuts(name), truncate_at, name)
  assert cut is not None
  return cut


def find_cut(cuts: Any, truncate_at: str | None, what: str) -> CutPoint | None:
  """Resolves ``truncate_at`` among ``cuts`` (None: not truncated).

  Raises ValueError naming every valid cut, block level first.
  """
  if truncate_at is None:
    return None
  for cut in cuts:
    if cut.name == truncate_at:
      return cut
  block = ", ".join(c.name for c in cuts if c.level == "block")
  layer = ", ".join(c.name for c in cuts if c.level == "layer") or "(none)"
  raise ValueError(
      f"Unknown truncate_at={truncate_at!r} for {what}; valid cuts: block level {block}; "
      f"layer level {layer}; or None for the full model."
  )


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    dtype: Any = jnp.float32,
    norm: str = "bn",
    dropout_rate: float = 0.0,
    truncate_at: str | None = None,
    api: str = "linen",
    **kwargs: Any,
) -> nn.Module:
  """Builds a Flax backbone by name.

  Args:
    name: e.g. ``"resnet50"``, ``"densenet121"``, ``"efficientnet_lite0"``.
    num_classes: size of the new linear head; ``0`` returns pooled features.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    norm: normalisation layer, see :mod:`jaxbn.models.norm`.
    dropout_rate: dropout before the head (active only with ``train=True``).
    truncate_at: TruncatedTL cut (:func:`cut_points`): keep the network up to
      this point, then global average pooling + the head. None: full model.
    api: ``"linen"`` (an unbound ``flax.linen`` module) or ``"nnx"``: a
      ``jaxbn.nnx.Backbone`` holding its variables; then ``pretrained=True``
      (or a checkpoint path) loads the ImageNet weights and ``rngs=`` /
      ``input_size=`` are accepted, see :func:`jaxbn.nnx.create_model`.
    **kwargs: forwarded to the family's module (advanced options).
  """
  if api == "nnx":
    from jaxbn import nnx as jaxbn_nnx  # Lazy: Linen users never import NNX.

    return jaxbn_nnx.create_model(
        name, num_classes, dtype=dtype, norm=norm, dropout_rate=dropout_rate,
        truncate_at=truncate_at, **kwargs,
    )
  if api != "linen":
    raise ValueError(f"api must be 'linen' or 'nnx', got {api!r}.")
  spec = get_spec(name)
  if truncate_at is not None:
    get_cut(name, truncate_at)  # fail early, listing the valid cuts
    kwargs["truncate_at"] = truncate_at
  return spec.build(
      num_classes=num_classes, dtype=dtype, norm=norm, dropout_rate=dropout_rate, **kwargs
  )


def init_shapes(model: nn.Module, input_size: int = 64) -> Any:
  """Abstract ``{'params', 'batch_stats'}`` tree (no FLOPs, no memory)."""
  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def init_variables(model: nn.Module, rng: jax.Array, input_size: int = 64) -> Any:
  """Random ``{'params', 'batch_stats'}`` for ``model`` (jitted init)."""
  x = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
  return jax.jit(model.init)(rng, x)


def count_params(tree: Any) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
