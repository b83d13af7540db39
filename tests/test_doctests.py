"""Every doctest in jaxbn runs here (CI runs the test suite, so it runs them all).

A module's doctests run when its source holds ``>>>``; modules without
examples are not imported (the command-line modules define absl flags at import
and several of them in one process would clash).
"""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _modules_with_examples() -> list[str]:
  out = []
  for path in sorted((REPO / "jaxbn").rglob("*.py")):
    if ">>>" in path.read_text():
      parts = list(path.relative_to(REPO).with_suffix("").parts)
      out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  return out


MODULES = _modules_with_examples()


def test_there_are_doctests_to_run():
  assert {"jaxbn.masks", "jaxbn.models.prefix", "jaxbn.treepath"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                           verbose=False)
  assert result.attempted > 0, f"{name} has '>>>' but no doctest ran"
  assert result.failed == 0, f"{result.failed} doctest(s) failed in {name} (run it verbose)"
