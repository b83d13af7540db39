"""The library is light: importing it pulls in neither TensorFlow, PyTorch nor matplotlib,
and a command line whose extra is missing says which one to install."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jaxbn import extras

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "matplotlib", "sklearn", "clu",
         "ml_collections")  # (absl comes with optax itself)


def _python(code: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)


def test_library_imports_no_heavy_framework():
  r = _python(f"""
      import sys
      import jaxbn, jaxbn.masks, jaxbn.ops, jaxbn.models, jaxbn.weights
      heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
      print(heavy)
      assert not heavy, heavy
      """)
  assert r.returncode == 0, r.stdout + r.stderr


# Makes `import NAME` fail as if the package were not installed.
_BLOCK = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {blocked!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Block())
sys.argv = ["{module}"] + {argv!r}
runpy.run_module("{module}", run_name="__main__")
"""
_ARGV = ["--config=configs/bn_only.py", "--workdir=/nonexistent"]


@pytest.mark.parametrize("module", ["jaxbn.main", "jaxbn.sweep"])
def test_cli_without_train_extra_names_the_extra(module):
  r = _python(_BLOCK.format(blocked=("tensorflow", "clu"), module=module, argv=_ARGV))
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith(f"error: python -m {module} needs the 'train' extra")
  assert "tensorflow, clu not installed" in lines[0] and "pip install 'jaxbn[train]'" in lines[0]


def test_bench_needs_only_absl_and_tqdm_but_its_pipeline_mode_the_train_extra():
  """The step benchmark runs where TensorFlow is absent (a GPU box); --pipeline says what's missing."""
  no_tf = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")
  r = _python(_BLOCK.format(blocked=no_tf, module="jaxbn.bench", argv=[
      "--archs=cbr_small", "--strategies=head", "--batch_size=2", "--image_size=32", "--reps=1"]))
  assert r.returncode == 0, r.stderr
  assert "| cbr_small | head |" in r.stdout
  r = _python(_BLOCK.format(blocked=no_tf, module="jaxbn.bench", argv=["--pipeline"]))
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      "error: python -m jaxbn.bench --pipeline needs the 'train' extra (ml_collections, "
      "tensorflow, tensorflow_datasets, clu not installed): pip install 'jaxbn[train]' (or, in "
      "a clone, pip install -e '.[train]')."], r.stderr
  r = _python(_BLOCK.format(blocked=("tqdm",), module="jaxbn.bench", argv=[]))
  assert r.returncode == 1 and r.stderr.strip().startswith(
      "error: python -m jaxbn.bench needs the 'train' extra (tqdm not installed)"), r.stderr


def test_missing_lists_only_absent_modules(monkeypatch):
  monkeypatch.setitem(extras.EXTRAS, "x", ("numpy", "no_such_module_jaxbn"))
  assert extras.missing("x") == ["no_such_module_jaxbn"]
  with pytest.raises(SystemExit, match=r"^error: cmd needs the 'x' extra \(no_such_module_jaxbn"):
    extras.require("x", "cmd")
  monkeypatch.setitem(extras.EXTRAS, "y", ("numpy",))
  extras.require("y", "cmd")  # all present: returns
  assert extras.missing("x", only=("numpy",)) == []  # a command that needs part of an extra
  extras.require("x", "cmd", only=("numpy", "absent_from_the_extra"))
