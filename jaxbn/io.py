"""Atomic file writes: a results or report file is either complete or absent.

Each writer goes through a temporary file in the destination's directory and
``os.replace`` (atomic on POSIX), so a run killed mid-write never leaves a
half-written ``results.json``, manifest or table behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def temp_beside(path: str) -> str:
  """A new empty file next to ``path`` (same filesystem, so ``os.replace`` is atomic).

  Its permissions are those of a normally created file (``0o666 & ~umask``), not
  ``mkstemp``'s private ``0o600``, so results stay readable by the user's group.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  os.close(fd)
  os.chmod(tmp, 0o666 & ~_umask())
  return tmp


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
  """Writes ``text`` to ``path`` (parents created) through a temporary file."""
  path = os.fspath(path)
  tmp = temp_beside(path)
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> None:
  """Writes ``obj`` as indented JSON (serialised first, so a bad value writes nothing)."""
  text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n"
  write_text_atomic(path, text)


__all__ = ["temp_beside", "write_json_atomic", "write_text_atomic"]
