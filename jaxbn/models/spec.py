"""What the registry knows about one architecture (:class:`ModelSpec`).

A leaf module: the family modules (``resnet``, ``densenet``,
``efficientnet_lite``, ``cbr``) build their ``SPECS`` from it and
:mod:`jaxbn.models.registry` merges them, so nothing imports in a circle.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from jaxbn.models.prefix import CutPoint

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
  # num_stages + 1 = the head. Defines the ``stem``/``stageK`` prefixes
  # (:mod:`jaxbn.models.prefix`) and ``masks.from_stage``.
  stage_of: Callable[[str], int] | None = None
  num_stages: int = 4
  # The valid ``truncate_at`` cuts in network order (see :class:`CutPoint`);
  # None: the family cannot be truncated.
  cuts: Callable[[], tuple[CutPoint, ...]] | None = None


__all__ = ["CutPoint", "IMAGENET_MEAN", "IMAGENET_STD", "ModelSpec"]
