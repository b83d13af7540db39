"""DenseNet-121/169/201 (NHWC) with torchvision's exact topology.

Growth rate 32, bottleneck width ``bn_size * growth_rate`` = 128, 64 stem
features, BN-ReLU-Conv ordering inside every dense layer, transitions
(BN, ReLU, 1x1 conv halving the channels, 2x2/s2 average pool) between blocks,
and a final BN + ReLU + global average pool before the ``classifier``.

Module names mirror the torchvision state dict (whose ``features.`` prefix is
dropped), so the conversion table in :mod:`jaxbn.weights.torchvision` is a
plain renaming::

    conv0, norm0,
    denseblock1 … denseblock4 / denselayer1 … denselayerN / norm1, conv1, norm2, conv2
    transition1 … transition3 / norm, conv
    norm5, classifier

TruncatedTL (``truncate_at``, :func:`cut_points`): ``transition1`` …
``transition3``, right after that transition (its 2x2 average pool
included); the dense blocks, transitions and ``norm5`` after the cut are
never created and the model ends with global average pooling + ``classifier``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxbn.models import norm as norm_lib
from jaxbn.models.layers import classifier_tail, conv_and_norm
from jaxbn.models.prefix import CutPoint, find_cut, find_taps
from jaxbn.models.spec import ModelSpec

ModuleDef = Any

BN_EPSILON = 1e-5

BLOCK_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
}
GROWTH_RATE = 32
BN_SIZE = 4
NUM_INIT_FEATURES = 64

# torchvision: kaiming_normal_ (fan_in) convs, zero classifier bias, nn.Linear's
# default U(±1/sqrt(fan_in)) classifier weight.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def stage_of(name: str) -> int:
  """Stage of a top-level module: stem 0, block/transition K, norm5 4, classifier 5."""
  if name in ("conv0", "norm0"):
    return 0
  for prefix in ("denseblock", "transition"):
    if name.startswith(prefix):
      return int(name[len(prefix):])
  if name == "norm5":
    return 4
  if name == "classifier":
    return 5
  raise ValueError(f"{name!r} is not a top-level DenseNet module.")


def block_features(
    block_config: Sequence[int],
    growth_rate: int = GROWTH_RATE,
    num_init_features: int = NUM_INIT_FEATURES,
) -> list[int]:
  """Channels entering each dense block (the last entry: channels at norm5)."""
  features = [num_init_features]
  for i, num_layers in enumerate(block_config):
    out = features[-1] + num_layers * growth_rate
    features.append(out // 2 if i < len(block_config) - 1 else out)
  return features


@functools.lru_cache(maxsize=None)
def cut_points(num_blocks: int = 4) -> tuple[CutPoint, ...]:
  """The TruncatedTL cuts: right after ``transition1`` … ``transition{num_blocks-1}``."""
  kept: tuple[str, ...] = ("conv0", "norm0")
  cuts = []
  for k in range(1, num_blocks):
    kept += (f"denseblock{k}", f"transition{k}")
    cuts.append(CutPoint(f"transition{k}", "block", kept))
  return tuple(cuts)


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv; returns the ``growth_rate`` new channels."""

  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="norm1")(x))
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)
    y = nn.relu(self.norm(name="norm2")(y))
    return self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)


class DenseBlock(nn.Module):
  """``num_layers`` dense layers, each fed the concatenation of all earlier outputs."""

  num_layers: int
  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef
  memory_efficient: bool = False

  @nn.compact
  def __call__(self, x):
    layer_cls = nn.remat(DenseLayer) if self.memory_efficient else DenseLayer
    for i in range(1, self.num_layers + 1):
      new = layer_cls(
          growth_rate=self.growth_rate, bn_size=self.bn_size, conv=self.conv,
          norm=self.norm, name=f"denselayer{i}",
      )(x)
      x = jnp.concatenate([x, new], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-1x1 conv to ``features`` channels, then 2x2/s2 average pooling."""

  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm(name="norm")(x))
    x = self.conv(self.features, (1, 1), name="conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """torchvision DenseNet-BC over NHWC inputs.

  Attributes:
    block_config: dense layers per block.
    growth_rate: channels added by each dense layer.
    num_init_features: channels of the stem conv.
    bn_size: bottleneck width multiplier (1x1 conv has bn_size * growth_rate).
    num_classes: size of the linear ``classifier``; 0 returns pooled features.
    dtype: compute dtype; parameters and BN statistics stay float32.
    norm: normalisation layer name, see :func:`jaxbn.models.norm.make_norm`.
    dropout_rate: dropout on the pooled features before the classifier.
    memory_efficient: rematerialise dense layers in the backward pass (as
      torchvision's option of the same name): less memory, more compute.
    bn_momentum: Flax BN momentum (torch's 0.1 is Flax's 0.9, the default).
    bn_axis_name: pmap axis to average BN batch statistics over (cross-replica BN;
      jaxbn's trainer sets it under ``parallel='pmap'``); None under jit.
    pool: the head's global pooling, ``avg`` (the checkpoints') | ``max`` | ``avgmax``
      (both concatenated), :func:`jaxbn.models.layers.global_pool`.
    truncate_at: TruncatedTL cut ``transition{k}`` (:func:`cut_points`); None
      builds the full network.
    head_taps: cut names whose outputs the head also reads, pooled and concatenated
      (a multi-scale head); each must end before ``truncate_at``.
  """

  block_config: Sequence[int] = BLOCK_CONFIGS["densenet121"]
  growth_rate: int = GROWTH_RATE
  num_init_features: int = NUM_INIT_FEATURES
  bn_size: int = BN_SIZE
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm: str = "bn"
  dropout_rate: float = 0.0
  pool: str = "avg"
  memory_efficient: bool = False
  bn_momentum: float = norm_lib.TORCH_BN_MOMENTUM
  bn_axis_name: str | None = None
  truncate_at: str | None = None
  head_taps: Sequence[str] = ()

  @nn.compact
  def __call__(self, x, train: bool = False, use_running_average: bool | None = None):
    """Logits (N, num_classes) in float32, or pooled features (N, C) if num_classes == 0.

    ``train`` and ``use_running_average`` behave as in :class:`jaxbn.models.resnet.ResNet`.
    """
    cuts = cut_points(len(self.block_config))
    cut = find_cut(cuts, self.truncate_at, "DenseNet")
    tap_after = find_taps(cuts, self.head_taps, cut, "DenseNet")
    conv, norm = conv_and_norm(self, train, use_running_average, epsilon=BN_EPSILON,
                               kernel_init=conv_init)
    features = block_features(self.block_config, self.growth_rate, self.num_init_features)

    x = jnp.asarray(x, self.dtype)
    x = conv(self.num_init_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv0")(x)
    x = nn.relu(norm(name="norm0")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    taps = []
    for i, num_layers in enumerate(self.block_config, 1):
      x = DenseBlock(
          num_layers=num_layers, growth_rate=self.growth_rate, bn_size=self.bn_size,
          conv=conv, norm=norm, memory_efficient=self.memory_efficient,
          name=f"denseblock{i}",
      )(x)
      if i < len(self.block_config):
        x = Transition(features=features[i], conv=conv, norm=norm, name=f"transition{i}")(x)
        if f"transition{i}" in tap_after:
          taps.append(x)
      if cut is not None and cut.last == f"transition{i}":
        break  # blocks, transitions and norm5 after the cut are never created

    if cut is None:
      x = nn.relu(norm(name="norm5")(x))
    return classifier_tail(
        x, num_classes=self.num_classes, dropout_rate=self.dropout_rate, train=train,
        dtype=self.dtype, name="classifier", kernel_init=dense_init, taps=taps, pool=self.pool,
    )


def _spec(name: str) -> ModelSpec:
  return ModelSpec(
      name=name,
      family="densenet",
      build=functools.partial(DenseNet, block_config=BLOCK_CONFIGS[name]),
      head="classifier",
      stage_of=stage_of,
      num_stages=4,
      cuts=functools.partial(cut_points, len(BLOCK_CONFIGS[name])),
  )


SPECS: dict[str, ModelSpec] = {name: _spec(name) for name in BLOCK_CONFIGS}
