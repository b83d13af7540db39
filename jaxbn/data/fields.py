"""The data config's fields and their defaults, in one table (no TensorFlow import).

``jaxbn.config`` builds ``config.data`` from it and the input pipeline reads a
missing field's default from it, so the two cannot disagree. What each field
means: :mod:`jaxbn.data.pipeline` and :mod:`jaxbn.data.augment`.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

RESIZE_METHODS = ("bilinear", "bicubic", "lanczos3", "area", "nearest")  # tf.image.resize's

# field -> (default, type of a None default, comment)
FIELDS: dict[str, tuple[Any, type | None, str]] = {
    "name": ("pneumoniamnist", None, "MedMNIST name | tfds:NAME | folder:/path"),
    "data_dir": (None, str, "MedMNIST npz / TFDS data (None = defaults)"),
    "cache_dir": (None, str, "where prepared TFDS data are cached"),
    "download": (True, None, "allow downloading a missing MedMNIST/TFDS dataset"),
    "image_size": (64, None, "square side the images are resized to"),
    "resize": ("bilinear", None, "resize method: " + " | ".join(RESIZE_METHODS)),
    "augment": (True, None, "random resized crop (+ flips where allowed) in training"),
    "hflip": (None, bool, "None = per-dataset default"),
    "shuffle_buffer": (10_000, None, "tf.data shuffle buffer"),
    "rotate_deg": (0.0, None, "jaxbn.data.augment: rotation up to ±rotate_deg"),
    "shift": (0.0, None, "jaxbn.data.augment: shift up to ±shift × the side"),
    "vflip": (False, None, "jaxbn.data.augment: random up-down flip"),
    "brightness": (0.0, None, "jaxbn.data.augment: brightness shift up to ±brightness"),
    "contrast": (0.0, None, "jaxbn.data.augment: contrast factor in 1 ± contrast"),
    "cache": (None, bool, "None = cache in memory when it fits"),
    "folds": (0, None, "k-fold cross-validation of train+val (0 = the data set's own val)"),
    "fold": (0, None, "with folds: which fold is the val split (0 .. folds-1)"),
}


def default_config() -> ml_collections.ConfigDict:
  """A data config with every field at its default (``None`` ones typed placeholders)."""
  return ml_collections.ConfigDict({
      k: (placeholder(kind) if default is None else default)
      for k, (default, kind, _) in FIELDS.items()
  })


def get(config: ml_collections.ConfigDict, field: str) -> Any:
  """``config.field``, or its default when the config lacks it."""
  return config.get(field, FIELDS[field][0])
