"""Reliability (issue 15): config errors in one line, one experiment per workdir, preemption.

Config errors go through the real command line (``python -m jaxbn.main``):
exit status 2, exactly one stderr line starting ``error:``, workdir untouched.
Preemption signals come from inside the run (``JAXBN_SIGNAL_AT_STEP``, the
hook of :mod:`jaxbn.preemption`) at a random step, so nothing depends on
timing; the resumed run must give the same ``results.json`` as an
uninterrupted one, for the jit and pmap paths, and read no batch twice.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys

import pytest

from jaxbn import config as config_lib, preemption, train, validate, workdir as workdir_lib
from jaxbn.checkpoint import RunCheckpoints
from jaxbn.models import DTYPES
from jaxbn.data import pipeline

from test_train import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
WALL = {"wall_time_s", "wall_to_best_s", "wall_to_target_s"}


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAXBN_OFFLINE="1",
             TF_CPP_MIN_LOG_LEVEL="3", JAX_NUM_CPU_DEVICES="8")
  env.pop(preemption.TEST_HOOK_ENV, None)  # only where a test asks for it (extra)
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _main(args, workdir, **env):
  return subprocess.run([sys.executable, "-m", "jaxbn.main", *args, f"--workdir={workdir}"],
                        cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=1800)


# --------------------------------------------------------------------------- #
# 1. Config validation.
# --------------------------------------------------------------------------- #

BN_ONLY = "--config=configs/bn_only.py"
CONFIG_ERRORS = [
    ([BN_ONLY, "--config.model.archh=x"], "unknown config key 'model.archh'", "'model.arch'"),
    (["--config=configs/bn_only.py:model.archh=x"], "Unknown config key 'model.archh'", "arch"),
    (["--config=configs/nope.py"], "config file 'configs/nope.py' not found", "--config="),
    ([BN_ONLY, "--config.data.image_size=-4"], "config.data.image_size=-4",
     "an integer from 8 to 2048"),
    ([BN_ONLY, "--config.data.image_size=abc"], "config.data.image_size='abc' has the wrong type",
     "int"),
    (["--config=configs/bn_only.py:data.image_size=abc"], "image_size", "int"),
    ([BN_ONLY, "--config.finetune.epochs=-1"], "config.finetune.epochs=-1.0", ">= 0"),
    ([BN_ONLY, "--config.warmup.epochs=0", "--config.finetune.epochs=0"], "both 0",
     "epochs > 0"),
    ([BN_ONLY, "--config.batch_size=0"], "config.batch_size=0", "an integer >= 1"),
    ([BN_ONLY, "--config.batch_size=12"], "config.batch_size=12 is not divisible by the 8 devices",
     "multiple of 8"),
    ([BN_ONLY, "--config.finetune.lr=0"], "config.finetune.lr=0.0", "> 0"),
    ([BN_ONLY, "--config.finetune.lr=nan"], "config.finetune.lr=nan", "> 0"),
    ([BN_ONLY, "--config.finetune.strategy=bn+fc"], "config.finetune.strategy='bn+fc'",
     "bn+head"),
    ([BN_ONLY, "--config.finetune.schedule=linear"], "config.finetune.schedule='linear'",
     "constant | cosine | plateau"),
    ([BN_ONLY, "--config.bn_stats=running"], "config.bn_stats='running'", "frozen | batch"),
    ([BN_ONLY, "--config.bn_target_batches=-1"], "config.bn_target_batches=-1",
     "an integer >= 0"),
    ([BN_ONLY, "--config.soup_size=-2"], "config.soup_size=-2", "an integer >= 0"),
    ([BN_ONLY, "--config.ordinal_scale=-1"], "config.ordinal_scale=-1.0", ">= 0"),
    ([BN_ONLY, "--config.model.drop_path_rate=1"], "config.model.drop_path_rate=1.0",
     "[0.0, 1.0)"),
    ([BN_ONLY, "--config.model.drop_path_rate=0.1", "--config.model.arch=densenet121"],
     "densenet121 has none", "--config.model.drop_path_rate=0"),
    ([BN_ONLY, "--config.data.contrast=1.5"], "config.data.contrast=1.5", "[0.0, 1.0]"),
    ([BN_ONLY, "--config.auc_loss_weight=-1"], "config.auc_loss_weight=-1.0", ">= 0"),
    ([BN_ONLY, "--config.auc_loss_margin=0"], "config.auc_loss_margin=0.0", "> 0"),
    ([BN_ONLY, "--config.auc_loss_weight=1", "--config.mixup_alpha=0.2"],
     "a mixed image is neither", "--config.auc_loss_weight=0"),
    ([BN_ONLY, "--config.data.resize=cubic"], "config.data.resize='cubic'",
     "bilinear | bicubic | lanczos3 | area | nearest"),
    ([BN_ONLY, "--config.class_weights=inverse"], "config.class_weights='inverse'",
     "none | balanced"),
    ([BN_ONLY, "--config.parallel=pmapp"], "config.parallel='pmapp'", "jit | pmap"),
    ([BN_ONLY, "--config.model.pool=median"], "config.model.pool='median'", "avg | max | avgmax"),
    ([BN_ONLY, "--config.model.arch=resnet5"], "config.model.arch='resnet5'", "resnet50"),
    ([BN_ONLY, "--config.model.dtype=float16"], "config.model.dtype='float16'", "bfloat16"),
    ([BN_ONLY, "--config.data.name=mnist"], "config.data.name='mnist'", "tfds:<name>"),
    ([BN_ONLY, "--config.model.truncate_at=stage9"], "truncate_at='stage9'", "one of"),
    ([BN_ONLY, "--config.data.folds=1"], "config.data.folds=1", "an integer >= 2"),
    ([BN_ONLY, "--config.data.folds=5", "--config.data.fold=5"], "config.data.fold=5",
     "--config.data.fold=0 .. 4"),
    ([BN_ONLY], "--workdir is required", "--workdir="),
]


@pytest.mark.parametrize("args,names,allowed", CONFIG_ERRORS,
                         ids=[" ".join(c[0][1:]) or c[0][0] for c in CONFIG_ERRORS])
def test_config_error_is_one_line_and_exit_2(tmp_path, args, names, allowed):
  workdir = tmp_path / "run"
  if args == [BN_ONLY]:  # the missing --workdir case
    proc = subprocess.run([sys.executable, "-m", "jaxbn.main", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=1800)
  else:
    proc = _main(args, workdir)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  assert names in lines[0] and allowed in lines[0], lines[0]
  assert "Traceback" not in proc.stderr and not workdir.exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_every_shipped_config_passes_validation(name):
  from jaxbn.main import TASKS

  validate.check(validate.load_config_file(f"configs/{name}"), tasks=TASKS)


def test_truncate_at_takes_prefix_names_counted_from_the_end():
  config = validate.load_config_file("configs/bn_only.py")
  assert config.model.truncate_at == "stage-1"
  for arch in ("resnet18", "densenet121", "efficientnet_lite2", "cbr_small"):
    config.model.arch = arch
    validate.check(config)  # every family has an "every stage but the last" cut
  config.model.truncate_at = "stage-9"
  with pytest.raises(validate.ConfigError, match="'stage-9' is not a cut point of cbr_small"):
    validate.check(config)


def test_head_taps_are_checked_against_the_cut_up_front():
  config = validate.load_config_file("configs/bn_only.py")
  config.model.head_taps = ("stage-2",)  # Lite0's stage 5, before the recipe's cut at stage 6
  validate.check(config)
  config.model.head_taps = ("stage-1",)
  with pytest.raises(validate.ConfigError, match=r"head_taps=\('stage-1',\).*not before the cut"):
    validate.check(config)
  config.model.head_taps = ("",)
  with pytest.raises(validate.ConfigError, match="a tuple of cut names"):
    validate.check(config)
  # In an override string, where commas separate the overrides, a tuple field takes a or a+b.
  one = validate.load_config_file("configs/bn_only.py:model.head_taps=stage-2,seed=3")
  two = validate.load_config_file("configs/bn_only.py:model.head_taps=stage-3+stage-2")
  assert (one.model.head_taps, one.seed, two.model.head_taps) == (
      ("stage-2",), 3, ("stage-3", "stage-2"))


def test_every_base_config_field_is_checked_and_defaults_pass():
  config = config_lib.base_config()
  validate.check(config)
  flat = workdir_lib._flat(workdir_lib.config_record(config))
  assert set(flat) <= set(validate.field_checks()), set(flat) - set(validate.field_checks())
  assert set(validate.DTYPES) == set(DTYPES)


# --------------------------------------------------------------------------- #
# 2. One experiment per workdir.
# --------------------------------------------------------------------------- #


def test_workdir_refuses_another_experiment(tmp_path):
  base = tiny_config()
  workdir_lib.check_and_record(base, str(tmp_path), is_chief=True)
  assert json.loads((tmp_path / "config.json").read_text())["finetune"]["lr"] == 1e-3
  workdir_lib.check_and_record(tiny_config(), str(tmp_path), is_chief=True)  # unchanged: fine
  # Logging cadence, eval batch size, checkpoint cadence, jit/pmap may differ.
  workdir_lib.check_and_record(
      tiny_config(log_every_steps=7, eval_batch_size=128, keep_checkpoints=5, parallel="pmap"),
      str(tmp_path), is_chief=True)
  changed = tiny_config(**{"finetune.lr": 3e-4, "finetune.strategy": "full"})
  with pytest.raises(workdir_lib.WorkdirMismatch) as err:
    workdir_lib.check_and_record(changed, str(tmp_path), is_chief=True)
  msg = str(err.value)
  assert "finetune.lr: 0.001 → 0.0003" in msg and "finetune.strategy: 'bn+head' → 'full'" in msg
  assert "new --workdir" in msg and "--allow_config_change" in msg and "\n" not in msg
  workdir_lib.check_and_record(changed, str(tmp_path), allow_change=True, is_chief=True)
  assert json.loads((tmp_path / "config.json").read_text())["finetune"]["lr"] == 3e-4


def test_a_field_added_later_at_its_default_still_resumes(tmp_path):
  # A record written before jaxbn had data.folds and mixup_alpha: the same run resumes...
  record = workdir_lib.config_record(tiny_config())
  del record["data"]["folds"], record["mixup_alpha"]
  (tmp_path / "config.json").write_text(json.dumps(record))
  workdir_lib.check_and_record(tiny_config(), str(tmp_path), is_chief=True)
  # ...but the new field away from its default is another experiment.
  with pytest.raises(workdir_lib.WorkdirMismatch, match=r"mixup_alpha: '<absent>' → 0.2"):
    workdir_lib.check_and_record(tiny_config(mixup_alpha=0.2), str(tmp_path), is_chief=True)


def test_changed_config_is_refused_on_the_command_line(tmp_path):
  config = validate.load_config_file("configs/bn_only.py")
  workdir_lib.check_and_record(config, str(tmp_path), is_chief=True)
  proc = _main([BN_ONLY, "--config.finetune.lr=3e-4", "--config.model.arch=resnet18"], tmp_path)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert "model.arch: 'efficientnet_lite0' → 'resnet18'" in lines[0]
  assert f"finetune.lr: {config.finetune.lr!r} → 0.0003" in lines[0]
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


# --------------------------------------------------------------------------- #
# 3. Preemption (and 4: resuming reads no batch twice).
# --------------------------------------------------------------------------- #


def _comparable(results):
  out = {k: v for k, v in results.items() if k not in WALL}
  out["history"] = [{k: v for k, v in h.items() if k != "wall"} for h in results["history"]]
  return out


@pytest.fixture
def batch_log(monkeypatch):
  """Records, per stage seed, which global batches the trainer consumed."""
  real, log = pipeline.train_iterator, []

  def spy(*args, seed, start_step=0, **kwargs):
    entry = {"seed": seed, "start": start_step, "count": 0}
    log.append(entry)
    for batch in real(*args, seed=seed, start_step=start_step, **kwargs):
      entry["count"] += 1
      yield batch

  monkeypatch.setattr(pipeline, "train_iterator", spy)
  return log


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_sigterm_at_a_random_step_then_rerun_equals_uninterrupted(tmp_path, monkeypatch,
                                                                  batch_log, parallel):
  config = tiny_config(parallel=parallel, bn_stats="batch", max_steps=6, eval_every_steps=3,
                       **{"warmup.epochs": 0.03})  # warmup: 4 steps, finetune: 2
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  batch_log.clear()
  step = random.randint(1, 6)
  monkeypatch.setenv(preemption.TEST_HOOK_ENV, f"{step}:SIGTERM")
  workdir = tmp_path / "preempted"
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(config, str(workdir))
  assert stopped.value.step == step, f"signal after step {step}"
  assert not (workdir / "results.json").exists()
  assert RunCheckpoints(str(workdir)).latest_step() == step
  monkeypatch.delenv(preemption.TEST_HOOK_ENV)
  resumed = train.train_and_evaluate(config, str(workdir))
  assert _comparable(resumed) == _comparable(straight), f"signal after step {step}"
  assert json.loads((workdir / "results.json").read_text())["test_auc"] == straight["test_auc"]
  # Every global batch of each stage consumed exactly once over the two sessions.
  for seed, steps in ((0, 4), (1, 2)):
    ranges = sorted((e["start"], e["start"] + e["count"]) for e in batch_log if e["seed"] == seed)
    consumed = [k for lo, hi in ranges for k in range(lo, hi)]
    assert consumed == list(range(steps)), (step, seed, ranges)


@pytest.mark.slow
def test_sigint_on_the_command_line_exits_75_and_rerun_resumes(tmp_path):
  args = [BN_ONLY, "--config.model.arch=cbr_small", "--config.model.init=random",
          "--config.model.dropout_rate=0.0", "--config.data.image_size=28",
          "--config.data.augment=False", "--config.batch_size=32", "--config.max_steps=6",
          "--config.eval_every_steps=3", "--config.eval_max_batches=1",
          "--config.warmup.epochs=0.03"]
  workdir = tmp_path / "run"
  stopped = _main(args, workdir, **{preemption.TEST_HOOK_ENV: "2:SIGINT"})
  assert stopped.returncode == preemption.EXIT_STATUS, stopped.stderr[-3000:]
  assert "Stopped by SIGINT after step 2" in stopped.stderr
  assert not (workdir / "results.json").exists()
  resumed = _main(args, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from" in resumed.stderr
  straight = _main(args, tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-3000:]
  a = json.loads((workdir / "results.json").read_text())
  b = json.loads((tmp_path / "straight" / "results.json").read_text())
  assert _comparable(a) == _comparable(b)


@pytest.mark.slow
def test_sigterm_stops_a_sweep_with_exit_75_and_the_same_command_resumes_it(tmp_path):
  train_config = ("configs/bn_only.py:model.arch=cbr_small,model.init=random,"
                  "model.dropout_rate=0.0,data.image_size=28,data.augment=False,batch_size=32,"
                  "max_steps=4,eval_every_steps=2,eval_max_batches=1,warmup.epochs=0.03")
  cmd = [sys.executable, "-m", "jaxbn.sweep", f"--train_config={train_config}", "--seeds=0,1",
         f"--workdir={tmp_path}", "--compilation_cache_dir="]

  def sweep(**env):
    return subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=1800)

  stopped = sweep(**{preemption.TEST_HOOK_ENV: "2:SIGTERM"})
  assert stopped.returncode == preemption.EXIT_STATUS, stopped.stderr[-3000:]
  assert "preempted during run 1 of 2" in stopped.stdout
  assert "Stopped by SIGTERM after step 2" in stopped.stderr
  (run,) = (tmp_path / "runs").iterdir()  # the second seed never started
  assert "seed0" in run.name and not (run / "results.json").exists()
  resumed = sweep()
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "(resuming)" in resumed.stdout and "finished: 2 ran" in resumed.stdout


def test_a_signal_during_start_up_stops_before_the_first_step(tmp_path):
  """jaxbn.main catches SIGTERM from its first line: the run stops (exit 75) before any step."""
  previous = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
  try:
    preemption.catch_early()
    os.kill(os.getpid(), signal.SIGTERM)  # e.g. while TensorFlow is being imported
    with pytest.raises(preemption.Preempted, match="during start-up") as stopped:
      train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
    assert stopped.value.step is None
    assert not (tmp_path / "run").exists()  # stopped before touching the workdir
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
