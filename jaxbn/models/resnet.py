"""ResNet-18/34/50/101/152 (NHWC) with torchvision's exact topology.

The network is torchvision's ``resnet*`` (ResNet v1.5): the stride of a
bottleneck block sits on its 3x3 convolution, the projection shortcut is a
strided 1x1 conv + BN, convolutions have no bias and BN uses ``eps=1e-5``.
Paddings are written out symmetrically as torchvision applies them ('SAME'
would pad asymmetrically on stride-2 layers and give different numbers).

Module names mirror the torchvision state dict so that the conversion table in
:mod:`jaxbn.weights.torchvision` is a plain renaming::

    conv1, bn1, layer1_0 … layer4_2, fc
    layerK_i: conv1, bn1, conv2, bn2[, conv3, bn3][, downsample_conv, downsample_bn]

Usage::

    model = ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=True, num_classes=2)
    variables = model.init(rng, jnp.zeros((1, 224, 224, 3)))
    logits = model.apply(variables, images)            # eval: running statistics

TruncatedTL (``truncate_at``, :func:`cut_points`): block level ``layer1`` …
``layer3`` (after that stage); layer level ``stem`` and ``layerK_i`` (after
that residual block; ``layer4``'s last block is the full model). The spec's
"cut k keeps the stem + k−1 bottlenecks" (k = 1 … 16 for ResNet-50) is the
k-th layer-level cut: k = 1 ``stem``, k = 2 ``layer1_0``, …, k = 12
``layer3_3`` (TTL's "layer3[3]"), k = 16 ``layer4_1``. Modules after the cut
are never created; the truncated model ends with global average pooling + ``fc``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxbn.models import norm as norm_lib
from jaxbn.models.layers import block_drop_rates, classifier_tail, conv_and_norm, drop_path
from jaxbn.models.prefix import CutPoint, find_cut, find_taps
from jaxbn.models.spec import ModelSpec

ModuleDef = Any

BN_EPSILON = 1e-5

# Blocks per stage (layer1..layer4) and whether the blocks are bottlenecks.
STAGE_SIZES: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
BOTTLENECK: dict[str, bool] = {
    "resnet18": False,
    "resnet34": False,
    "resnet50": True,
    "resnet101": True,
    "resnet152": True,
}
STAGE_WIDTHS = (64, 128, 256, 512)  # width of the 3x3 convs in layer1..layer4

# torchvision initialises convs with kaiming_normal_(mode='fan_out', relu) and
# the classifier with nn.Linear's default, U(±1/sqrt(fan_in)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

PAD_3x3 = ((1, 1), (1, 1))
PAD_7x7 = ((3, 3), (3, 3))


def block_expansion(bottleneck: bool) -> int:
  """Output channels of a block / width of its 3x3 conv (torchvision's ``expansion``)."""
  return 4 if bottleneck else 1


def block_name(stage: int, index: int) -> str:
  """Flax name of block ``index`` of ``stage`` (1-based); torch's ``layer{stage}.{index}``."""
  return f"layer{stage}_{index}"


def stage_of(name: str) -> int:
  """Stage of a top-level module: stem 0, ``layerK_*`` K, head ``fc`` 5."""
  if name in ("conv1", "bn1"):
    return 0
  if name.startswith("layer"):
    return int(name[len("layer"):].split("_")[0])
  if name == "fc":
    return 5
  raise ValueError(f"{name!r} is not a top-level ResNet module.")


def slim_widths(arch: str, from_stage: int = 3, factor: float = 0.5) -> tuple[int, ...]:
  """``stage_widths`` of Transfusion's "slim" ResNet: stages ≥ ``from_stage`` × ``factor``.

  >>> slim_widths("resnet50")
  (64, 128, 128, 256)
  """
  if arch not in STAGE_SIZES:
    raise ValueError(f"The slim variant is defined for ResNets, not {arch!r}.")
  return tuple(w if s < from_stage else max(1, int(round(w * factor)))
               for s, w in enumerate(STAGE_WIDTHS, 1))


@functools.lru_cache(maxsize=None)
def cut_points(stage_sizes: tuple[int, ...]) -> tuple[CutPoint, ...]:
  """The TruncatedTL cuts of a ResNet with ``stage_sizes`` blocks per stage.

  Block level ``layer1`` … ``layer{S-1}`` (after a stage); layer level ``stem``
  then ``layerK_i`` after every residual block but the network's last one.
  """
  stem = ("conv1", "bn1")
  blocks = [block_name(s, i) for s, n in enumerate(stage_sizes, 1) for i in range(n)]
  cuts = []
  end = 0
  for stage, n in enumerate(stage_sizes[:-1], 1):
    end += n
    cuts.append(CutPoint(f"layer{stage}", "block", stem + tuple(blocks[:end])))
  cuts.append(CutPoint("stem", "layer", stem))
  for k in range(1, len(blocks)):
    cuts.append(CutPoint(blocks[k - 1], "layer", stem + tuple(blocks[:k])))
  return tuple(cuts)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34); the first one carries the stride."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  project: bool = False  # 1x1 conv + BN shortcut
  drop_path_rate: float = 0.0  # stochastic depth of the residual branch (train only)
  train: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), self.strides, padding=PAD_3x3, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=PAD_3x3, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if self.project:
      residual = self.conv(self.features, (1, 1), self.strides, name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(drop_path(y, self.drop_path_rate, train=self.train) + residual)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  project: bool = False
  drop_path_rate: float = 0.0
  train: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), self.strides, padding=PAD_3x3, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.features * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if self.project:
      residual = self.conv(self.features * 4, (1, 1), self.strides, name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(drop_path(y, self.drop_path_rate, train=self.train) + residual)


class ResNet(nn.Module):
  """torchvision ResNet over NHWC inputs.

  Attributes:
    stage_sizes: number of blocks in layer1..layer4.
    bottleneck: bottleneck blocks (ResNet-50+) instead of basic blocks.
    num_classes: size of the linear head ``fc``; 0 returns the pooled features.
    dtype: compute dtype; parameters and BN statistics stay float32.
    norm: normalisation layer name, see :func:`jaxbn.models.norm.make_norm`.
    dropout_rate: dropout on the pooled features before ``fc`` (train only).
    bn_momentum: Flax BN momentum (torch's 0.1 is Flax's 0.9, the default).
    bn_axis_name: pmap axis to average BN batch statistics over (cross-replica BN;
      jaxbn's trainer sets it under ``parallel='pmap'``); None under jit.
    pool: the head's global pooling, ``avg`` (the checkpoints') | ``max`` | ``avgmax``
      (both concatenated), :func:`jaxbn.models.layers.global_pool`.
    truncate_at: TruncatedTL cut (:func:`cut_points`); None builds the full network.
    head_taps: cut names whose outputs the head also reads, pooled and concatenated
      (a multi-scale head); each must end before ``truncate_at``.
    stage_widths: width of the 3x3 convs of layer1..layer4 (a block outputs
      ``width * expansion`` channels); None = torchvision's :data:`STAGE_WIDTHS`
      ``(64, 128, 256, 512)``. Other widths change the parameter shapes of
      those stages, e.g. Transfusion's "slim" ResNet ``(64, 128, 128, 256)``
      (:func:`slim_widths`); pretrained weights then fit only
      the stages left at their original width.
    drop_path_rate: stochastic depth in training (:func:`jaxbn.models.layers.drop_path`):
      block i of N drops its residual branch with probability ``rate * i / N``.
  """

  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm: str = "bn"
  dropout_rate: float = 0.0
  pool: str = "avg"
  bn_momentum: float = norm_lib.TORCH_BN_MOMENTUM
  bn_axis_name: str | None = None
  truncate_at: str | None = None
  head_taps: Sequence[str] = ()
  stage_widths: Sequence[int] | None = None
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False, use_running_average: bool | None = None):
    """Logits (N, num_classes) in float32, or pooled features (N, C) if num_classes == 0.

    Args:
      x: images (N, H, W, 3).
      train: enables dropout, stochastic depth and, unless ``use_running_average`` says otherwise,
        normalises with batch statistics and updates ``batch_stats``.
      use_running_average: overrides the BN mode chosen by ``train`` (e.g.
        ``train=True, use_running_average=True`` fine-tunes with frozen statistics).
    """
    cuts = cut_points(tuple(self.stage_sizes))
    cut = find_cut(cuts, self.truncate_at, "ResNet")
    tap_after = find_taps(cuts, self.head_taps, cut, "ResNet")
    conv, norm = conv_and_norm(self, train, use_running_average, epsilon=BN_EPSILON,
                               kernel_init=conv_init)
    block_cls: Callable[..., nn.Module] = BottleneckBlock if self.bottleneck else BasicBlock
    expansion = block_expansion(self.bottleneck)

    x = jnp.asarray(x, self.dtype)
    x = conv(64, (7, 7), (2, 2), padding=PAD_7x7, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    # Padding with -inf (reduce_window's init value), as torch's max_pool2d.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=PAD_3x3)

    in_features = 64
    widths = tuple(self.stage_widths or STAGE_WIDTHS)
    blocks = [
        (stage, index, width)
        for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, widths), 1)
        for index in range(num_blocks)
    ]
    drop_rates = dict(zip(blocks, block_drop_rates(self.drop_path_rate, len(blocks))))
    if cut is not None:  # keep the blocks up to the cut; the rest are never created
      blocks = [b for b in blocks if block_name(b[0], b[1]) in cut.kept]
    taps = []
    for stage, index, width in blocks:
      strides = 2 if stage > 1 and index == 0 else 1
      project = index == 0 and (strides != 1 or in_features != width * expansion)
      x = block_cls(
          features=width, conv=conv, norm=norm, strides=strides, project=project,
          drop_path_rate=drop_rates[stage, index, width], train=train,
          name=block_name(stage, index),
      )(x)
      in_features = width * expansion
      if block_name(stage, index) in tap_after:
        taps.append(x)

    return classifier_tail(
        x, num_classes=self.num_classes, dropout_rate=self.dropout_rate, train=train,
        dtype=self.dtype, name="fc", kernel_init=dense_init, taps=taps, pool=self.pool,
    )


def _spec(name: str) -> ModelSpec:
  return ModelSpec(
      name=name,
      family="resnet",
      build=functools.partial(
          ResNet, stage_sizes=STAGE_SIZES[name], bottleneck=BOTTLENECK[name]
      ),
      head="fc",
      stage_of=stage_of,
      num_stages=4,
      cuts=functools.partial(cut_points, STAGE_SIZES[name]),
  )


SPECS: dict[str, ModelSpec] = {name: _spec(name) for name in STAGE_SIZES}
