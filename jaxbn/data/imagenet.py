"""ImageNet-1k class names, for reading the predictions of ImageNet checkpoints.

The names are the short labels torchvision uses (``torchvision.models._meta.
_IMAGENET_CATEGORIES``), one per line in ``assets/imagenet_classes.txt``, in
the standard class-index order: 0 'tench', 281 'tabby', 967 'espresso',
999 'toilet tissue'. Index ``i`` is the ``i``-th WordNet synset in sorted order
(``n01440764`` … ``n15075141``), the order used by every ImageNet checkpoint.
"""

from __future__ import annotations

import functools
from importlib import resources

NUM_CLASSES = 1000


@functools.cache
def _class_names() -> tuple[str, ...]:
  path = resources.files("jaxbn") / "data" / "assets" / "imagenet_classes.txt"
  text = path.read_text(encoding="utf-8")
  names = tuple(line.strip() for line in text.splitlines() if line.strip())
  if len(names) != NUM_CLASSES:
    raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, expected {NUM_CLASSES}.")
  return names


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet class names; ``imagenet_class_names()[i]`` names class ``i``."""
  return list(_class_names())
