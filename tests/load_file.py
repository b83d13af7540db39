"""The one loader the tests use for a Python file that is not an installed module.

Configs, sweep configs, docs scripts and tools are files, not package modules; tests
import them with ``from load_file import load_module`` (tests/ is on sys.path, as for
torch_reference).
"""

import importlib.util
import pathlib


def load_module(path: str | pathlib.Path):
  """The Python file at ``path``, executed as a fresh module named after it."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
