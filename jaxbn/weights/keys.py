"""Building blocks of the explicit torch key → Flax path tables.

A table maps every tensor of a PyTorch state dict to a Flax path whose first
element is the collection (``'params'`` or ``'batch_stats'``). The family
modules (``torchvision.py``, ``efficientnet_lite.py``) spell their tables out
with these three helpers, one line per torch module.
"""

from __future__ import annotations

Path = tuple[str, ...]
KeyTable = dict[str, Path]

# torch BN tensor name → (collection, Flax leaf). ``num_batches_tracked`` has no
# Flax counterpart and is ignored by the converter.
BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def add_conv(table: KeyTable, torch_prefix: str, flax_path: Path) -> None:
  """A bias-free conv: ``<prefix>.weight`` → ``kernel``."""
  table[f"{torch_prefix}.weight"] = ("params", *flax_path, "kernel")


def add_bn(table: KeyTable, torch_prefix: str, flax_path: Path) -> None:
  """A BatchNorm: affine → ``params`` scale/bias, statistics → ``batch_stats``."""
  for torch_name, (collection, leaf) in BN_LEAVES.items():
    table[f"{torch_prefix}.{torch_name}"] = (collection, *flax_path, leaf)


def add_linear(table: KeyTable, torch_prefix: str, flax_path: Path) -> None:
  """A dense layer: weight → ``kernel``, bias → ``bias``."""
  table[f"{torch_prefix}.weight"] = ("params", *flax_path, "kernel")
  table[f"{torch_prefix}.bias"] = ("params", *flax_path, "bias")
