"""One command-line style: jaxbn.cli's absl parsing and the ``jaxbn`` console script."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from jaxbn import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def _flags():
  fv = flags.FlagValues()
  flags.DEFINE_string("out", None, "output", flag_values=fv)
  flags.DEFINE_float("target", 0.95, "target", flag_values=fv)
  flags.DEFINE_bool("diff", False, "diff", flag_values=fv)
  return fv


def test_parse_flags_and_positionals_each_call_from_the_defaults():
  fv = _flags()
  args = cli.parse(fv, ["a", "--out", "o", "b", "--target=0.9", "--diff"], prog="p",
                   positional="workdirs")
  assert (args.workdirs, args.out, args.target, args.diff) == (["a", "b"], "o", 0.9, True)
  args = cli.parse(fv, ["c"], prog="p", positional="workdirs")
  assert (args.workdirs, args.out, args.target, args.diff) == (["c"], None, 0.95, False)


@pytest.mark.parametrize("argv, message", [
    (["--target=x"], "error: flag --target=x: could not convert string to float"),
    (["--bogus", "a"], "error: Unknown command line flag 'bogus' (see p --help)"),
    ([], "error: give at least one WORKDIR"),
])
def test_bad_input_is_one_error_line(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse(_flags(), argv, prog="p", positional="workdirs")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(message)


def test_help_lists_the_flags(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse(_flags(), ["--help"], prog="p", doc="Does things.")
  out = capsys.readouterr().out
  assert e.value.code == 0 and "Does things." in out and "--target: target (default: 0.95)" in out


def _jaxbn(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "jaxbn.cli", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)


def test_console_script_runs_a_subcommand(tmp_path):
  run = tmp_path / "transfer"
  run.mkdir()
  history = [{"step": 10, "wall": 5.0, "val_auc": 0.9}, {"step": 20, "wall": 9.0, "val_auc": 0.96}]
  (run / "results.json").write_text(json.dumps({
      "init": "imagenet", "arch": "cbr_small", "history": history, "best_val_auc": 0.96,
      "best_step": 20, "test_auc": 0.93, "test_acc": 0.88, "total_steps": 20, "wall_time_s": 12.0}))
  r = _jaxbn("convergence", str(run), "--target", "0.95", "--out", str(tmp_path / "o"))
  assert r.returncode == 0, r.stderr
  assert "| transfer | imagenet | 20 | 9 s |" in (tmp_path / "o" / "convergence.md").read_text()
  r = _jaxbn("convergence", "--target=x", str(run))
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: flag --target=x")
  assert "see jaxbn convergence --help" in r.stderr


def test_console_script_unknown_command():
  r = _jaxbn("trian")
  assert r.returncode == 2
  assert r.stderr.strip() == ("error: unknown command 'trian'; choose one of: train, sweep, "
                              "report, convert, predict, bench, similarity, filters, convergence.")
  assert set(cli.COMMANDS) == {"train", "sweep", "report", "convert", "predict", "bench",
                               "similarity", "filters", "convergence"}


def test_old_weights_convert_path_is_the_renamed_module():
  import jaxbn.weights.convert as old
  from jaxbn.weights import pytorch

  assert old is pytorch and old.load_pretrained is pytorch.load_pretrained


def test_quiet_library_logs_drops_other_libraries_info_but_keeps_jaxbn_and_warnings():
  import logging as pylogging

  from absl import logging as absl_logging

  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    cli.quiet_library_logs()
    cli.quiet_library_logs()  # idempotent: one filter
    added = [f for f in handler.filters if f not in before]
    assert len(added) <= 1 and len([f for f in handler.filters if isinstance(f, cli._QuietLibraries)]) == 1

    def passes(path, level):
      record = pylogging.LogRecord("x", level, path, 1, "msg", None, None)
      return all(f.filter(record) for f in handler.filters if isinstance(f, cli._QuietLibraries))

    site = "/venv/lib/python3.11/site-packages"
    for noisy in ("jax/_src/xla_bridge.py", "orbax/checkpoint/checkpointer.py",
                  "tensorflow_datasets/core/dataset_builder.py"):
      assert not passes(f"{site}/{noisy}", pylogging.INFO)
      assert passes(f"{site}/{noisy}", pylogging.WARNING)
    assert passes(f"{site}/jaxbn/train.py", pylogging.INFO)
  finally:
    handler.filters[:] = before
