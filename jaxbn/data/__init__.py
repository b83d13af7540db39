"""Input pipeline: MedMNIST (TFDS builder), TFDS catalog data sets, image folders.

The public entry points live in ``jaxbn.data.pipeline`` and are re-exported
here lazily, so that importing a light sibling module (e.g. the ImageNet class
names) does not import TensorFlow::

    from jaxbn import data
    info = data.get_dataset_info(config)
    batches = data.train_iterator(config, batch_size=64, image_size=224,
                                  mean=mean, std=std, seed=0)

Modules: ``pipeline`` (config → numpy batches), ``medmnist`` (the
``MedMNIST`` TFDS builder and the table of official files), ``image_folder``
(``root/{train,val,test}/<class>/*.png`` or ``root/<class>/*``).
"""

from __future__ import annotations

import importlib

_PIPELINE_EXPORTS = (
    "DatasetInfo",
    "default_config",
    "eval_iterator",
    "get_dataset_info",
    "train_iterator",
    "train_labels",
)

__all__ = list(_PIPELINE_EXPORTS)


def __getattr__(name: str):
  if name in _PIPELINE_EXPORTS:
    return getattr(importlib.import_module("jaxbn.data.pipeline"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
