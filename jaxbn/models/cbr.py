"""The CBR family of small conv nets from Transfusion (Raghu et al., 2019).

Each block is conv → BN → ReLU → 3x3 stride-2 max-pool; convs are stride 1 with
'SAME' padding; then global average pooling and one dense layer ``fc``:

=========== ====== ===============================================
name        kernel channels
=========== ====== ===============================================
cbr_large_t 7x7    32, 64, 128, 256, 512 (no pool after the 5th)
cbr_large_w 7x7    64, 128, 256, 512
cbr_small   7x7    32, 64, 128, 256
cbr_tiny    5x5    64, 128, 256, 512
=========== ====== ===============================================

Top-level modules are ``conv{i}``/``bn{i}`` (i = 1..n, block i = stage i) and ``fc``.
TruncatedTL (``truncate_at``, :func:`cut_points`): ``stage1`` … ``stage{n-1}`` keep the
first blocks, then global average pooling + ``fc``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxbn.models import norm as norm_lib
from jaxbn.models.layers import classifier_tail, conv_and_norm
from jaxbn.models.prefix import CutPoint, find_cut
from jaxbn.models.spec import ModelSpec

BN_EPSILON = 1e-5


class CBR(nn.Module):
  """conv-BN-ReLU-maxpool stack with a linear head (NHWC).

  Attributes:
    features: output channels of each block.
    kernel_size: square conv kernel size.
    pool_last: whether the last block is followed by a max-pool.
    num_classes, dtype, norm, dropout_rate, bn_momentum, bn_axis_name: as for every jaxbn
      model.
    pool: the head's global pooling, ``avg`` (the checkpoints') | ``max`` | ``avgmax``
      (both concatenated), :func:`jaxbn.models.layers.global_pool`.
    truncate_at: TruncatedTL cut ``stage{k}`` (:func:`cut_points`): blocks 1..k only (the
      last kept block keeps its max-pool); None builds every block.
  """

  features: Sequence[int]
  kernel_size: int
  pool_last: bool = True
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm: str = "bn"
  dropout_rate: float = 0.0
  pool: str = "avg"
  bn_momentum: float = norm_lib.TORCH_BN_MOMENTUM
  bn_axis_name: str | None = None
  truncate_at: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False, use_running_average: bool | None = None):
    cut = find_cut(cut_points(len(self.features)), self.truncate_at, "CBR")
    conv, norm = conv_and_norm(self, train, use_running_average, epsilon=BN_EPSILON,
                               padding="SAME")
    x = jnp.asarray(x, self.dtype)
    num_kept = len(self.features) if cut is None else sum(m.startswith("conv") for m in cut.kept)
    for i, features in enumerate(self.features[:num_kept], 1):
      x = conv(features, (self.kernel_size, self.kernel_size), name=f"conv{i}")(x)
      x = norm(name=f"bn{i}")(x)
      x = nn.relu(x)
      if i < len(self.features) or self.pool_last:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return classifier_tail(
        x, num_classes=self.num_classes, dropout_rate=self.dropout_rate, train=train,
        dtype=self.dtype, name="fc", pool=self.pool,
    )


@functools.lru_cache(maxsize=None)
def cut_points(num_blocks: int) -> tuple[CutPoint, ...]:
  """The TruncatedTL cuts of an ``num_blocks``-block CBR: ``stage1`` … ``stage{n-1}``."""
  return tuple(
      CutPoint(f"stage{k}", "block",
               tuple(m for i in range(1, k + 1) for m in (f"conv{i}", f"bn{i}")))
      for k in range(1, num_blocks))


def _stage_of(num_blocks: int):
  def stage_of(name: str) -> int:
    if name == "fc":
      return num_blocks + 1
    if name.startswith(("conv", "bn")) and name.lstrip("convbn").isdigit():
      return int(name.lstrip("convbn"))
    raise ValueError(f"{name!r} is not a top-level CBR module.")

  return stage_of


_VARIANTS = {
    "cbr_large_t": ((32, 64, 128, 256, 512), 7, False),
    "cbr_large_w": ((64, 128, 256, 512), 7, True),
    "cbr_small": ((32, 64, 128, 256), 7, True),
    "cbr_tiny": ((64, 128, 256, 512), 5, True),
}


def _build(features, kernel_size, pool_last):
  def build(**kwargs) -> CBR:
    return CBR(features=features, kernel_size=kernel_size, pool_last=pool_last, **kwargs)

  return build


SPECS = {
    name: ModelSpec(
        name=name, family="cbr", build=_build(*v), input_size=224, head="fc",
        stage_of=_stage_of(len(v[0])), num_stages=len(v[0]),
        cuts=functools.partial(cut_points, len(v[0])),
    )
    for name, v in _VARIANTS.items()
}
