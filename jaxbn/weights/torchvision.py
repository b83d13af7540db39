"""torchvision ResNet / DenseNet state-dict keys → Flax variable paths.

:func:`key_table` spells out, for one architecture, where every tensor of the
torchvision checkpoint goes in the Flax ``{'params', 'batch_stats'}`` tree of
:mod:`jaxbn.models.resnet` / :mod:`jaxbn.models.densenet`::

    layer1.0.bn1.running_var      → ('batch_stats', 'layer1_0', 'bn1', 'var')
    layer2.0.downsample.0.weight  → ('params', 'layer2_0', 'downsample_conv', 'kernel')
    features.denseblock1.denselayer1.norm1.weight
                                  → ('params', 'denseblock1', 'denselayer1', 'norm1', 'scale')

Layout changes (OIHW → HWIO, (out, in) → (in, out)) are applied by
:mod:`jaxbn.weights.pytorch`, which also checks the table against both the
checkpoint and the model. ``num_batches_tracked`` buffers are not listed: they
have no Flax counterpart and ``convert`` ignores them.
"""

from __future__ import annotations

import re
from typing import Sequence

from jaxbn.models import densenet, resnet
from jaxbn.weights.keys import KeyTable, add_bn, add_conv, add_linear

# Old DenseNet checkpoints (the files torchvision still downloads) name the
# dense-layer modules ``norm.1``/``conv.2`` instead of ``norm1``/``conv2``;
# torchvision's ``_load_state_dict`` rewrites them with this same pattern.
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def normalise_legacy_key(key: str) -> str:
  """``…denselayer1.norm.1.weight`` → ``…denselayer1.norm1.weight``; other keys unchanged."""
  match = _LEGACY_DENSE_KEY.match(key)
  return match.group(1) + match.group(2) if match else key




def resnet_key_table(stage_sizes: Sequence[int], bottleneck: bool) -> KeyTable:
  """Key table of a torchvision ResNet with ``stage_sizes`` blocks in layer1..layer4."""
  table: KeyTable = {}
  add_conv(table, "conv1", ("conv1",))
  add_bn(table, "bn1", ("bn1",))
  num_convs = 3 if bottleneck else 2
  for stage, num_blocks in enumerate(stage_sizes, 1):
    for index in range(num_blocks):
      torch_block = f"layer{stage}.{index}"
      flax_block = resnet.block_name(stage, index)
      for j in range(1, num_convs + 1):
        add_conv(table, f"{torch_block}.conv{j}", (flax_block, f"conv{j}"))
        add_bn(table, f"{torch_block}.bn{j}", (flax_block, f"bn{j}"))
      # torchvision projects the shortcut in the first block of every stage
      # except layer1 of basic-block ResNets (64 → 64 channels, stride 1).
      if index == 0 and (stage > 1 or bottleneck):
        add_conv(table, f"{torch_block}.downsample.0", (flax_block, "downsample_conv"))
        add_bn(table, f"{torch_block}.downsample.1", (flax_block, "downsample_bn"))
  add_linear(table, "fc", ("fc",))
  return table


def densenet_key_table(block_config: Sequence[int]) -> KeyTable:
  """Key table of a torchvision DenseNet with ``block_config`` dense layers per block."""
  table: KeyTable = {}
  add_conv(table, "features.conv0", ("conv0",))
  add_bn(table, "features.norm0", ("norm0",))
  for b, num_layers in enumerate(block_config, 1):
    for l in range(1, num_layers + 1):
      torch_layer = f"features.denseblock{b}.denselayer{l}"
      flax_layer = (f"denseblock{b}", f"denselayer{l}")
      for j in (1, 2):
        add_bn(table, f"{torch_layer}.norm{j}", (*flax_layer, f"norm{j}"))
        add_conv(table, f"{torch_layer}.conv{j}", (*flax_layer, f"conv{j}"))
    if b < len(block_config):
      add_bn(table, f"features.transition{b}.norm", (f"transition{b}", "norm"))
      add_conv(table, f"features.transition{b}.conv", (f"transition{b}", "conv"))
  add_bn(table, "features.norm5", ("norm5",))
  add_linear(table, "classifier", ("classifier",))
  return table


def key_table(arch: str) -> KeyTable:
  """The torch key → Flax path table of a torchvision ResNet or DenseNet, head included."""
  if arch in resnet.STAGE_SIZES:
    return resnet_key_table(resnet.STAGE_SIZES[arch], resnet.BOTTLENECK[arch])
  if arch in densenet.BLOCK_CONFIGS:
    return densenet_key_table(densenet.BLOCK_CONFIGS[arch])
  raise ValueError(
      f"{arch!r} is not a torchvision architecture; expected one of "
      f"{', '.join([*resnet.STAGE_SIZES, *densenet.BLOCK_CONFIGS])}."
  )
