"""Trainer: masked steps, BN-statistics modes, data parallelism, checkpoints, resume."""

import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from jaxbn import config as config_lib, masks, preemption, report, setup as setup_lib
from jaxbn import step as step_lib, target_stats, train
from jaxbn.checkpoint import RunCheckpoints
from jaxbn.data import pipeline
from jaxbn.models import create_model, get_spec, init_variables
from jaxbn.parallel import DataParallel

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.model.arch = "cbr_small"
  c.model.init = "random"
  c.model.dropout_rate = 0.0
  c.data.image_size = 28
  c.data.augment = False
  c.batch_size = 32
  c.eval_batch_size = 64
  c.warmup = config_lib.stage("head", 1, 1e-3)
  c.finetune = config_lib.stage("bn+head", 1, 1e-3)
  c.max_steps = 8
  c.eval_every_steps = 4
  c.eval_max_batches = 2
  c.log_every_steps = 1
  for k, v in overrides.items():
    config_lib.apply_overrides(c, f"{k}={v}")
  return c


@pytest.fixture(scope="module")
def setup():
  model = create_model("cbr_small", num_classes=2)
  variables = jax.tree.map(np.asarray, init_variables(model, jax.random.key(0), 32))
  rng = np.random.default_rng(0)
  batch = {
      "image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
      "label": rng.integers(0, 2, size=(16,)).astype(np.int32),
  }
  return model, variables, batch


def run_steps(model, variables, batch, strategy, bn_stats, par, n=3, opt=None,
              grad_wrt="trainable", mixup_alpha=0.0):
  labels = masks.make_labels(variables["params"], strategy, batch_stats=variables["batch_stats"])
  tx = masks.make_optimizer(opt or optax.adam(1e-2), labels)
  state = step_lib.TrainState.create(variables, tx)
  step = par.compile_train(step_lib.make_train_step(
      model, tx, labels, bn_stats=bn_stats, multi_label=False, axis_name=par.axis_name,
      grad_wrt=grad_wrt, mixup_alpha=mixup_alpha))
  state = par.put_state(state)
  for _ in range(n):
    state, _ = step(state, par.put_batch(batch), jax.random.key(1), 1.0)
  return jax.tree.map(np.asarray, par.get_state(state)), labels


@pytest.mark.parametrize("bn_stats", ["frozen", "batch"])
def test_frozen_leaves_identical_and_bn_stats_mode(setup, bn_stats):
  model, variables, batch = setup
  par = DataParallel("jit", devices=jax.devices()[:1])
  state, labels = run_steps(model, variables, batch, "bn+head", bn_stats, par)
  flat_new = jax.tree_util.tree_leaves_with_path(state.params)
  flat_old = dict(jax.tree_util.tree_leaves_with_path(variables["params"]))
  flat_lab = dict(jax.tree_util.tree_leaves_with_path(labels))
  for path, new in flat_new:
    if flat_lab[path] == masks.FROZEN:
      np.testing.assert_array_equal(new, flat_old[path])
    else:
      assert not np.array_equal(new, flat_old[path]), path
  stats_same = jax.tree.map(np.array_equal, state.batch_stats, variables["batch_stats"])
  assert all(jax.tree.leaves(stats_same)) == (bn_stats == "frozen")


@pytest.mark.parametrize("mode,bn_stats", [("jit", "frozen"), ("jit", "batch"), ("pmap", "batch")])
def test_trainable_only_gradients_equal_all_leaf_gradients(setup, mode, bn_stats):
  # The step differentiates only the trainable leaves; the earlier step (every
  # leaf differentiated, frozen ones given zero updates) must give the same state.
  model, variables, batch = setup
  par = DataParallel(mode, jax.devices()[:2])
  new, _ = run_steps(model, variables, batch, "bn+head", bn_stats, par)
  old, _ = run_steps(model, variables, batch, "bn+head", bn_stats, par, grad_wrt="all")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new, old)
  assert jax.tree.structure(new.opt_state) == jax.tree.structure(old.opt_state)


def test_split_trainable_takes_prefix_masks():
  params = {"bn": {"scale": np.ones(2), "bias": np.zeros(2)}, "conv": {"kernel": np.ones(3)}}
  train, frozen, merge = step_lib.split_trainable(params, {"bn": True, "conv": False})
  assert [x.shape for x in train] == [(2,), (2,)] and [x.shape for x in frozen] == [(3,)]
  back = merge([t + 1 for t in train], frozen)
  np.testing.assert_array_equal(back["bn"]["scale"], 2 * np.ones(2))
  assert back["conv"]["kernel"] is params["conv"]["kernel"]


@pytest.mark.parametrize("bn_stats", ["frozen", "batch"])
def test_eight_device_mesh_equals_one_device(setup, bn_stats):
  model, variables, batch = setup
  assert jax.device_count() == 8
  # SGD: Adam's normalisation would amplify float noise in near-zero gradients.
  sgd = optax.sgd(0.1)
  one, _ = run_steps(model, variables, batch, "full", bn_stats,
                     DataParallel("jit", jax.devices()[:1]), opt=sgd)
  eight, _ = run_steps(model, variables, batch, "full", bn_stats, DataParallel("jit"), opt=sgd)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), one, eight)


def test_mixup_on_an_eight_device_mesh_equals_one_device(setup):
  # Under jit the batch is one global array: mixup's permutation pairs rows across devices,
  # exactly as on one device.
  model, variables, batch = setup
  sgd = optax.sgd(0.1)
  one, _ = run_steps(model, variables, batch, "bn+head", "frozen",
                     DataParallel("jit", jax.devices()[:1]), opt=sgd, mixup_alpha=0.4)
  eight, _ = run_steps(model, variables, batch, "bn+head", "frozen", DataParallel("jit"),
                       opt=sgd, mixup_alpha=0.4)
  plain, _ = run_steps(model, variables, batch, "bn+head", "frozen",
                       DataParallel("jit", jax.devices()[:1]), opt=sgd)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), one, eight)
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, one.params, plain.params)))


def test_acnorm_eight_device_mesh_equals_one_device(setup):
  _, _, batch = setup
  model = create_model("cbr_small", num_classes=2, norm="acnorm")
  variables = jax.tree.map(np.asarray, init_variables(model, jax.random.key(0), 32))
  sgd = optax.sgd(0.1)
  one, _ = run_steps(model, variables, batch, "full", "batch",
                     DataParallel("jit", jax.devices()[:1]), opt=sgd)
  eight, _ = run_steps(model, variables, batch, "full", "batch", DataParallel("jit"), opt=sgd)
  assert set(eight.constants) == {"acnorm_source"}  # carried through the sharded step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), one, eight)
  assert not np.allclose(eight.params["bn1"]["scale"], variables["params"]["bn1"]["scale"])


def test_pmap_matches_jit(setup):
  # Frozen statistics: per-device BN has nothing to disagree about, so the two
  # paths compute the same step.
  model, variables, batch = setup
  sgd = optax.sgd(0.1)
  a, _ = run_steps(model, variables, batch, "bn+head", "frozen", DataParallel("jit"), opt=sgd)
  b, _ = run_steps(model, variables, batch, "bn+head", "frozen", DataParallel("pmap"), opt=sgd)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


@pytest.mark.parametrize("norm", ["bn", "acnorm"])
def test_pmap_cross_replica_batch_statistics_match_jit(setup, norm):
  # Batch statistics: with bn_axis_name (what the trainer sets under pmap) every
  # device normalises with the statistics of the global batch, as jit does;
  # without it each device would use its own shard's (2 examples here).
  _, _, batch = setup
  sgd = optax.sgd(0.1)
  jit_model = create_model("cbr_small", num_classes=2, norm=norm)
  variables = jax.tree.map(np.asarray, init_variables(jit_model, jax.random.key(0), 32))
  a, _ = run_steps(jit_model, variables, batch, "full", "batch", DataParallel("jit"), opt=sgd)
  par = DataParallel("pmap")
  pmap_model = create_model("cbr_small", num_classes=2, norm=norm, bn_axis_name=par.axis_name)
  b, _ = run_steps(pmap_model, variables, batch, "full", "batch", par, opt=sgd)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
  local, _ = run_steps(jit_model, variables, batch, "full", "batch", par, opt=sgd)
  assert not np.allclose(local.batch_stats["bn1"]["var"], a.batch_stats["bn1"]["var"])


def test_orbax_round_trip(setup, tmp_path):
  model, variables, batch = setup
  state, _ = run_steps(model, variables, batch, "bn+head", "batch",
                       DataParallel("jit", jax.devices()[:1]), n=2)
  ckpts = RunCheckpoints(str(tmp_path), keep=1)
  ckpts.save(2, state, {"loop": {"stage": 0}, "state_stage": 0}, best=True)
  ckpts.wait()
  restored = ckpts.restore_state(jax.tree.map(np.zeros_like, state))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(restored.step) == 2
  assert ckpts.restore_meta()["state_stage"] == 0
  best, _ = ckpts.restore_best(state.variables)
  np.testing.assert_array_equal(best["params"]["fc"]["kernel"], state.params["fc"]["kernel"])
  ckpts.close()


def test_end_to_end_results(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny_config(), str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["test_auc"] == pytest.approx(results["test_auc"])
  assert 0.0 <= results["test_auc"] <= 1.0 and 0.0 <= results["test_acc"] <= 1.0
  assert results["total_steps"] == 8
  assert results["trainable_params_per_stage"]["warmup"] == 256 * 2 + 2
  bn = 2 * (32 + 64 + 128 + 256)
  assert results["trainable_params"] == bn + 256 * 2 + 2
  assert [h["step"] for h in results["history"]] == [4, 8]
  assert results["best_step"] in (4, 8)
  assert (tmp_path / "best").is_dir() and (tmp_path / "checkpoints").is_dir()
  # The run says what model it trained, every field (Transfusion's transfer_up_to included).
  assert on_disk["norm"] == "bn" and on_disk["model"]["arch"] == on_disk["arch"]
  assert {"transfer_up_to", "stage_widths", "truncate_at"} <= set(on_disk["model"])
  # Each validation pass is one console line; its scalars go to TensorBoard only.
  messages = [r.getMessage() for r in caplog.records]
  val_lines = [m for m in messages if "val loss" in m]
  assert len(val_lines) == 2 and not [m for m in messages if "val_auc=" in m]
  assert all(re.match(r"step \d+ \[\w+\] train loss \d\.\d{4}, val loss", m) for m in val_lines)
  # Start-up, visible: one line per stage that trained, with its first step's seconds.
  firsts = [m for m in messages if "first train step done in" in m]
  assert [m.split("'")[1] for m in firsts] == list(dict.fromkeys(h["stage"] for h in results["history"]))
  assert [s for s, _ in report.read_events_scalars(str(tmp_path), "val_auc")] == [4, 8]


def test_balanced_class_weights_come_from_the_training_labels(tmp_path, caplog):
  config = tiny_config(class_weights="balanced", max_steps=2, eval_every_steps=2)
  with caplog.at_level(logging.INFO):
    weighted = train.train_and_evaluate(config, str(tmp_path / "balanced"))
  counts = np.bincount(pipeline.train_labels(config.data))
  expected = counts.sum() / (2 * counts)
  assert expected[0] > 1 > expected[1]  # PneumoniaMNIST: fewer normal than pneumonia images
  line, = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Class weights")]
  assert line == (f"Class weights (balanced): normal {expected[0]:.3g}, "
                  f"pneumonia {expected[1]:.3g}.")
  plain = train.train_and_evaluate(tiny_config(max_steps=2, eval_every_steps=2),
                                   str(tmp_path / "plain"))
  assert weighted["history"][0]["val_loss"] != pytest.approx(plain["history"][0]["val_loss"])


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_bn_target_batches_put_the_training_datas_statistics_in_the_model(tmp_path, caplog,
                                                                          parallel):
  # AdaBN before the first stage (jaxbn.target_stats); frozen statistics then keep them, so
  # the best checkpoint holds exactly the average over the trainer's first 2 AdaBN batches.
  # Under pmap too, whose model has a cross-replica BN axis that AdaBN's pass must not use.
  config = tiny_config(bn_target_batches=2, max_steps=2, eval_every_steps=2, parallel=parallel)
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results["bn_target_batches"] == 2
  assert [r.getMessage() for r in caplog.records
          if r.getMessage().startswith("BN statistics re-estimated on 2 training batches")]
  model = setup_lib.build_model(config, 2)  # no pmap axis
  initial = setup_lib.initial_variables(config, model, jax.random.split(jax.random.key(0))[0])
  batches = train._train_batches(config, get_spec("cbr_small"), train._TARGET_STATS_STREAM, 0)
  expected = target_stats.estimate(model, initial, batches, 2)["batch_stats"]
  best, _ = RunCheckpoints(str(tmp_path)).restore_best(initial)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               best["batch_stats"], expected)
  assert not np.allclose(best["batch_stats"]["bn1"]["var"], initial["batch_stats"]["bn1"]["var"])


def test_trainer_pmap_equals_jit_with_batch_statistics(tmp_path):
  # The whole trainer under pmap (cross-replica BN statistics) follows the jit run.
  runs = {}
  for mode in ("jit", "pmap"):
    config = tiny_config(parallel=mode, bn_stats="batch", max_steps=4, eval_every_steps=2)
    runs[mode] = train.train_and_evaluate(config, str(tmp_path / mode))
  assert runs["pmap"]["parallel"] == "pmap" and runs["pmap"]["devices"] == 8
  for a, b in zip(runs["jit"]["history"], runs["pmap"]["history"]):
    assert a["step"] == b["step"]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
  assert runs["jit"]["test_auc"] == pytest.approx(runs["pmap"]["test_auc"], abs=1e-3)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"finetune.lr": 1e30, "max_steps": 40, "warmup.epochs": 0.03})
  with pytest.raises(train.TrainingError, match="NaN") as err:
    train.train_and_evaluate(config, str(tmp_path))
  assert "last good checkpoint" in str(err.value)
  ckpts = RunCheckpoints(str(tmp_path))
  step = ckpts.latest_step()
  assert step is not None
  meta = ckpts.restore_meta(step)
  assert all(np.isfinite(h["val_loss"]) for h in meta["loop"]["history"])
  assert not (tmp_path / "results.json").exists()


def test_unknown_config_key_is_an_error():
  with pytest.raises(ValueError, match="Unknown config key 'model.archh'"):
    config_lib.apply_overrides(config_lib.base_config(), "model.archh=resnet50")


def test_batch_not_divisible_by_devices(tmp_path):
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    train.train_and_evaluate(tiny_config(batch_size=12), str(tmp_path))


def _main_cmd(workdir):
  return [
      sys.executable, "-m", "jaxbn.main", "--config=configs/bn_only.py", f"--workdir={workdir}",
      "--config.model.arch=cbr_small", "--config.model.init=random", "--config.data.image_size=28",
      "--config.data.augment=False", "--config.batch_size=32", "--config.max_steps=12",
      "--config.eval_every_steps=3", "--config.eval_max_batches=1", "--config.warmup.epochs=0.02",
      "--config.model.dropout_rate=0.0", "--config.warmup.min_steps=0",  # both stages run
  ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  straight = tmp_path / "straight"
  subprocess.run(_main_cmd(straight), cwd=REPO, env=env, check=True, capture_output=True)
  killed = tmp_path / "killed"
  # The run SIGKILLs itself right after step 10 (jaxbn.preemption's test hook): no race
  # with a poller, whatever the machine load. Checkpoint 6 is complete by then (the save
  # at step 9 waits for it); the one of step 9 may be cut off mid-write, as in real life.
  kill_env = dict(env, **{preemption.TEST_HOOK_ENV: "10:SIGKILL"})
  proc = subprocess.run(_main_cmd(killed), cwd=REPO, env=kill_env, capture_output=True)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not (killed / "results.json").exists()
  resumed = subprocess.run(_main_cmd(killed), cwd=REPO, env=env, check=True, capture_output=True,
                           text=True)
  assert "Resuming from" in resumed.stderr
  a = json.loads((straight / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  for key in ("test_auc", "test_acc", "test_loss", "best_val_auc", "best_step", "total_steps"):
    assert a[key] == pytest.approx(b[key], rel=1e-5), key
  assert [h["val_loss"] for h in a["history"]] == pytest.approx(
      [h["val_loss"] for h in b["history"]], rel=1e-5)


def test_record_evaluation_plateau_early_stopping_and_targets():
  config = config_lib.base_config()
  config.target_auc = 0.8
  config.plateau_patience, config.plateau_factor, config.min_lr = 1, 0.5, 2e-4
  stage = config_lib.stage("bn+head", 1, 1e-3, schedule="plateau")
  stage.early_stopping_patience = 2
  loop = train.LoopState()
  evals = [(0.70, 0.9), (0.85, 0.8), (0.84, 0.85), (0.86, 0.82), (0.83, 0.83), (0.82, 0.81)]
  out = [train.record_evaluation(loop, {"auc": a, "loss": l}, stage, config, 10 * (i + 1), i)
         for i, (a, l) in enumerate(evals)]
  assert [o[0] for o in out] == [True, True, False, True, False, False]
  assert [o[1] for o in out] == [False, False, False, True, True, True]  # 2 evals w/o a better loss
  assert (loop.best_val_auc, loop.best_step, loop.wall_to_best) == (0.86, 40, 3)
  assert (loop.steps_to_target, loop.wall_to_target) == (20, 1)
  # val loss: 0.9, 0.8 (best), 0.85 ↓lr, 0.82 ↓lr, 0.83 ↓lr (floored at min_lr/lr = 0.2), 0.81 ↓
  assert loop.lr_scale == pytest.approx(0.2)


def test_a_stage_without_a_better_validation_auc_stops_early_and_stays_stopped(tmp_path, caplog):
  # A learning rate too small to move float32 weights: every fine-tuning evaluation
  # equals the stage's first, so with patience 2 the stage ends after its third.
  config = tiny_config(max_steps=0, eval_every_steps=1, early_stopping_metric="val_auc",
                       **{"warmup.epochs": 0.01, "finetune.epochs": 0.2,
                          "finetune.lr": 1e-30, "finetune.early_stopping_patience": 2})
  with caplog.at_level(logging.INFO):
    res = train.train_and_evaluate(config, str(tmp_path))
  finetune = [h for h in res["history"] if h["stage"] == "finetune"]
  assert len(finetune) == 3 and len({h["val_auc"] for h in finetune}) == 1
  warmup_steps = sum(h["stage"] == "warmup" for h in res["history"])
  assert res["total_steps"] == warmup_steps + 3 < warmup_steps + 0.2 * 4708 // 32
  stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Early stopping")]
  assert stops == [f"Early stopping stage 'finetune' at step {res['total_steps']}."]
  # A stage whose patience runs out on its last planned step ends normally: no such line.
  caplog.clear()
  last = tiny_config(max_steps=0, eval_every_steps=1, early_stopping_metric="val_auc",
                     **{"warmup.epochs": 0.01, "finetune.epochs": 3 / 4708 * 32,
                        "finetune.lr": 1e-30, "finetune.early_stopping_patience": 2})
  with caplog.at_level(logging.INFO):
    res3 = train.train_and_evaluate(last, str(tmp_path / "three_steps"))
  assert sum(h["stage"] == "finetune" for h in res3["history"]) == 3
  assert not [r for r in caplog.records if r.getMessage().startswith("Early stopping")]
  again = train.train_and_evaluate(config, str(tmp_path))  # finished: nothing re-runs
  assert again["total_steps"] == res["total_steps"] and again["history"] == res["history"]
