"""The persistent XLA compilation cache of ``python -m jaxbn.main``.

A train step takes seconds to compile (6-17 s on a 2-core CPU for
EfficientNet-Lite0 / ResNet-50); JAX's persistent cache stores the compiled
executables on disk, keyed by the program, the JAX/XLA version, the device and
the compile options, so a later command with the same shapes loads them instead
(``docs/benchmarks.md`` has the cold / warm times to the first step).

The cache lives in ``$JAXBN_CACHE_DIR/jax_compilation_cache`` (default
``~/.cache/jaxbn/jax_compilation_cache``), beside jaxbn's other caches (weights
in ``checkpoints/``, prepared datasets in ``tensorflow_datasets/``).
``--compilation_cache_dir=DIR`` puts it elsewhere (a shared disk for a pod or a
cluster), ``--compilation_cache_dir=`` turns it off.
"""

from __future__ import annotations

import os

from absl import flags

CACHE_DIR_ENV = "JAXBN_CACHE_DIR"
SUBDIR = "jax_compilation_cache"
# Programs that compile faster than this are not written (the eval step of a
# tiny model); everything jaxbn's trainer compiles for a real model is.
MIN_COMPILE_SECS = 0.5

_FLAG = flags.DEFINE_string(
    "compilation_cache_dir", None,
    f"Persistent XLA compilation cache (default ${CACHE_DIR_ENV}/{SUBDIR}, i.e. "
    f"~/.cache/jaxbn/{SUBDIR}; '' = off).")


def default_dir() -> str:
  """``$JAXBN_CACHE_DIR/jax_compilation_cache`` or ``~/.cache/jaxbn/jax_compilation_cache``."""
  root = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "jaxbn")
  return os.path.join(root, SUBDIR)


def resolve(value: str | None) -> str | None:
  """The cache directory for a flag value: None → default, '' → off (None)."""
  if value is None:
    return default_dir()
  return os.path.abspath(os.path.expanduser(value)) if value else None


def enable(directory: str | None) -> str | None:
  """Points JAX's persistent compilation cache at ``directory`` (None: leaves it off)."""
  if not directory:
    return None
  import jax

  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  return directory


def setup_from_flags() -> str | None:
  """``enable(resolve(--compilation_cache_dir))``; returns the directory or None."""
  return enable(resolve(_FLAG.value))
