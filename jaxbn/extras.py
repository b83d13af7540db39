"""Optional dependencies: the command lines say which ``pip install`` extra they need.

``pip install jaxbn`` is the library (masks, ops, models, weight conversion: jax,
flax, optax, numpy). The trainer and its command lines need the ``train`` extra,
reading PyTorch checkpoints the ``torch`` extra, the plots and analyses ``analysis``.
"""

from __future__ import annotations

import importlib.util
import sys

# extra → the top-level modules it provides that jaxbn's command lines import.
EXTRAS = {
    "train": ("absl", "ml_collections", "tensorflow", "tensorflow_datasets", "clu", "sklearn",
              "tqdm", "PIL"),
    "torch": ("torch",),
    "analysis": ("matplotlib", "sklearn", "tqdm"),
}


def missing(extra: str, only: tuple[str, ...] | None = None) -> list[str]:
  """The modules of ``extra`` (or of its subset ``only``) that cannot be imported here."""
  out = []
  for name in EXTRAS[extra] if only is None else [m for m in EXTRAS[extra] if m in only]:
    try:
      found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
      found = False
    if not found:
      out.append(name)
  return out


def require(extra: str, command: str, only: tuple[str, ...] | None = None) -> None:
  """Exits with one ``error:`` line naming the extra to install if ``extra`` is absent.

  ``only``: the modules of the extra that ``command`` really imports (default: all).
  """
  absent = missing(extra, only)
  if absent:
    sys.exit(f"error: {command} needs the '{extra}' extra ({', '.join(absent)} not installed): "
             f"pip install 'jaxbn[{extra}]' (or, in a clone, pip install -e '.[{extra}]').")
