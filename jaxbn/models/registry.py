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

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbn.models import cbr, densenet, efficientnet_lite, resnet
from jaxbn.models import layers, prefix
from jaxbn.models.prefix import CutPoint, find_cut
from jaxbn.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

# ``model.dtype`` / ``--dtype`` names → compute dtypes (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The JAX dtype called ``name`` (a key of :data:`DTYPES`); a clear error otherwise."""
  if name not in DTYPES:
    raise ValueError(f"Unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}.")
  return DTYPES[name]


def _specs() -> dict[str, ModelSpec]:
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
    raise prefix.PrefixError(f"{name!r} ({spec.family}) does not support truncate_at.")
  return spec.cuts()


def get_cut(name: str, truncate_at: str) -> CutPoint:
  """The :class:`CutPoint` for the prefix ``truncate_at``; a clear error lists the valid ones.

  Besides the family's cut names, ``stem`` and ``stageK`` name the cut that
  keeps the same modules (:func:`jaxbn.models.prefix.truncation_cut`).
  """
  cut = prefix.truncation_cut(get_spec(name), truncate_at)
  assert cut is not None
  return cut


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    dtype: Any = jnp.float32,
    norm: str = "bn",
    dropout_rate: float = 0.0,
    truncate_at: str | None = None,
    head_taps: Sequence[str] = (),
    pool: str = "avg",
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
  """Builds a Flax Linen backbone by name (for Flax NNX: :func:`jaxbn.nnx.create_model`).

  Args:
    name: e.g. ``"resnet50"``, ``"densenet121"``, ``"efficientnet_lite0"``.
    num_classes: size of the new linear head; ``0`` returns pooled features.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    norm: normalisation layer, see :mod:`jaxbn.models.norm`.
    dropout_rate: dropout before the head (active only with ``train=True``).
    truncate_at: TruncatedTL cut (:func:`cut_points`, or a ``stageK`` / ``stage-K``
      prefix, :mod:`jaxbn.models.prefix`): keep the network up to this point, then
      global pooling (``pool``) + the head. None: full model.
    head_taps: cuts (names as for ``truncate_at``) whose outputs the head also reads,
      each pooled as the last features are and concatenated with them: a
      multi-scale head with a few more head weights. Each must end before the cut.
    pool: the head's global pooling: ``avg`` (the checkpoints'), ``max``, or ``avgmax``
      (both concatenated, twice the head's weights).
    drop_path_rate: stochastic depth of the residual blocks in training
      (:func:`jaxbn.models.layers.drop_path`; block i of N at ``rate * i / N``), for the
      families in :data:`jaxbn.models.layers.DROP_PATH_FAMILIES`.
    **kwargs: forwarded to the family's module (advanced options).
  """
  spec = get_spec(name)
  layers.check_pool(pool)  # fails before any tracing
  if drop_path_rate:
    if spec.family not in layers.DROP_PATH_FAMILIES:
      raise ValueError(f"drop_path_rate drops residual branches, and {name} has none: use it "
                       f"with {' or '.join(layers.DROP_PATH_FAMILIES)}, or set it to 0.")
    kwargs["drop_path_rate"] = drop_path_rate
  # Fails early, listing the valid cuts.
  cut = get_cut(name, truncate_at) if truncate_at is not None else None
  if cut is not None:
    kwargs["truncate_at"] = cut.name
  if head_taps:
    kwargs["head_taps"] = tuple(get_cut(name, tap).name for tap in head_taps)
    prefix.find_taps(_cuts(name), kwargs["head_taps"], cut, name)  # before the cut, or raises
  return spec.build(
      num_classes=num_classes, dtype=dtype, norm=norm, dropout_rate=dropout_rate, pool=pool,
      **kwargs,
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


__all__ = [
    "DTYPES", "IMAGENET_MEAN", "IMAGENET_STD", "CutPoint", "ModelSpec", "available_models",
    "compute_dtype", "count_params", "create_model", "cut_points", "find_cut", "get_cut",
    "get_spec", "init_shapes", "init_variables",
]
