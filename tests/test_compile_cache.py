"""jaxbn.main's persistent compilation cache: where it goes, and how to turn it off."""

import os

from jaxbn import compile_cache


def test_default_dir_is_under_jaxbn_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXBN_CACHE_DIR", str(tmp_path))
  assert compile_cache.resolve(None) == os.path.join(str(tmp_path), "jax_compilation_cache")
  monkeypatch.delenv("JAXBN_CACHE_DIR")
  assert compile_cache.default_dir() == os.path.join(
      os.path.expanduser("~"), ".cache", "jaxbn", "jax_compilation_cache")


def test_empty_flag_turns_it_off_and_a_path_is_made_absolute(monkeypatch, tmp_path):
  assert compile_cache.resolve("") is None
  assert compile_cache.enable(None) is None
  monkeypatch.chdir(tmp_path)
  assert compile_cache.resolve("cc") == os.path.join(str(tmp_path), "cc")


def test_enable_points_jax_at_the_directory(monkeypatch, tmp_path):
  import jax

  seen = {}
  monkeypatch.setattr(jax.config, "update", lambda k, v: seen.__setitem__(k, v))
  assert compile_cache.enable(str(tmp_path)) == str(tmp_path)
  assert seen["jax_compilation_cache_dir"] == str(tmp_path)
  assert seen["jax_persistent_cache_min_compile_time_secs"] == compile_cache.MIN_COMPILE_SECS


def test_startup_time_tool_prepares_the_data_set_outside_its_timed_runs(tmp_path):
  """tools/startup_time.py builds the default run's data set before the first cold run (on a
  fresh machine TFDS would otherwise prepare it inside that run), and names the device."""
  import pathlib
  import subprocess
  import sys

  import jax
  from load_file import load_module

  repo = pathlib.Path(__file__).resolve().parents[1]
  tool = load_module(repo / "tools" / "startup_time.py")
  env = {**os.environ, "JAXBN_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-c", tool.PREPARE], cwd=repo, env=env, check=True,
                 capture_output=True)
  prepared = tmp_path / "tensorflow_datasets" / "medmnist" / "pneumoniamnist"
  assert any(prepared.rglob("dataset_info.json")), "the data set was not prepared"
  described = tool.environment()
  assert described["platform"] == "cpu" and described["jax"] == jax.__version__
