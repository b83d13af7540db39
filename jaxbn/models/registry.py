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


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    dtype: Any = jnp.float32,
    norm: str = "bn",
    dropout_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
  """Builds a Flax backbone by name.

  Args:
    name: e.g. ``"resnet50"``, ``"densenet121"``, ``"efficientnet_lite0"``.
    num_classes: size of the new linear head; ``0`` returns pooled features.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    norm: normalisation layer, see :mod:`jaxbn.models.norm`.
    dropout_rate: dropout before the head (active only with ``train=True``).
    **kwargs: forwarded to the family's module (advanced options).
  """
  spec = get_spec(name)
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
