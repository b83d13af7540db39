"""tools/mutation.py's own logic (the mutation runs themselves are not in CI: slow)."""

import pathlib

import pytest
from load_file import load_module

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
  return load_module(REPO / "tools" / "mutation.py")


def test_wilson_interval_known_values(tool):
  low, high = tool._wilson(90, 100)  # the textbook example: 0.826-0.945
  assert low == pytest.approx(0.8256, abs=1e-4) and high == pytest.approx(0.9448, abs=1e-4)
  low, high = tool._wilson(10, 10)  # all killed: the upper bound is 1, the lower below it
  assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)
  assert tool._wilson(0, 0) == (0.0, 1.0)


def test_undecorate_spells_decorators_as_assignments(tool, tmp_path):
  path = tmp_path / "m.py"
  path.write_text("import jax\n\n\n@jax.jit\ndef f(x):\n  return x + 1\n\n\ndef g():\n  return 2\n")
  assert tool._undecorate(path) == 1
  source = path.read_text()
  assert "@jax.jit" not in source and "f = (jax.jit)(f)\n" in source
  namespace = {}
  exec(compile(source, str(path), "exec"), namespace)  # noqa: S102
  assert int(namespace["f"](1)) == 2 and namespace["g"]() == 2


def test_every_group_names_existing_files_and_tests(tool):
  for files, tests in tool.GROUPS.values():
    for f in files:
      assert (REPO / f).is_file(), f
    for t in tests:
      file, _, name = t.partition("::")
      assert (REPO / file).is_file(), t
      assert not name or f"def {name.split('[')[0]}(" in (REPO / file).read_text(), t
