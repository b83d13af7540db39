"""Figures without a display: a headless pyplot and atomic PNG writes.

Every plot jaxbn writes (sweep reports, convergence curves, similarity maps,
conv1 filters, AC-Corr layer profiles) goes through :func:`save_figure`, so a
killed process never leaves a truncated image behind.
"""

from __future__ import annotations

import os
from typing import Any

from jaxbn.io import temp_beside


def pyplot():
  """``matplotlib.pyplot`` on the non-interactive Agg backend (works on a headless VM)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 130,
                bbox_inches: str | None = "tight", close: bool = True) -> None:
  """Writes ``fig`` to ``path`` (format from its extension) via a temporary file."""
  path = os.fspath(path)
  fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
  tmp = temp_beside(path)
  try:
    fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches=bbox_inches)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
    if close:
      pyplot().close(fig)


__all__ = ["pyplot", "save_figure"]
