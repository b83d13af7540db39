"""TensorFlow runs jaxbn's input pipeline only: import it quietly, keep it off the accelerators."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_fd_silenced():
  """Points file descriptor 2 at /dev/null (C++ writes included), then restores it."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def import_tensorflow():
  """``import tensorflow``, without the lines its C++ start-up writes to the console.

  TensorFlow's shared libraries log before any log level is read (``oneDNN custom
  operations are on``, ``All log messages before absl::InitializeLog()``), so the
  import runs with file descriptor 2 pointed at /dev/null; a failing import still
  raises as usual. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 1 (TensorFlow's INFO lines
  off, its warnings and errors kept); a value the user set is left alone, and
  ``TF_CPP_MIN_LOG_LEVEL=0`` (everything) also shows the start-up lines.
  """
  tf = sys.modules.get("tensorflow")
  if tf is not None:
    return tf
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"
  with _stderr_fd_silenced() if quiet else contextlib.nullcontext():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def hide_gpus_from_tf() -> None:
  """Makes TensorFlow see no GPU, so it neither grabs GPU memory nor places ops there.

  Call it before TensorFlow builds any op (the entry points do, and the data
  pipeline does before reading data). Idempotent; a no-op when TensorFlow has
  no GPU support (``tensorflow-cpu``) or was already initialised.
  """
  tf = import_tensorflow()
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # Already initialised, or no GPU support.
    pass


__all__ = ["hide_gpus_from_tf", "import_tensorflow"]
