"""TensorFlow runs jaxbn's input pipeline only: keep it off the accelerators JAX uses."""

from __future__ import annotations


def hide_gpus_from_tf() -> None:
  """Makes TensorFlow see no GPU, so it neither grabs GPU memory nor places ops there.

  Call it before TensorFlow builds any op (the entry points do, and the data
  pipeline does before reading data). Idempotent; a no-op when TensorFlow has
  no GPU support (``tensorflow-cpu``) or was already initialised.
  """
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # Already initialised, or no GPU support.
    pass


__all__ = ["hide_gpus_from_tf"]
