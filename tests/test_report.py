"""Sweeps and reports: synthetic run directories, the paper's sweep config, a tiny real sweep."""

import json
import os
import pathlib
import signal
import struct

import ml_collections
import pytest

from jaxbn import report, sweep
from load_file import load_module

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_sweep_config(arg=None, name="partial_transfusion"):
  path = REPO / "configs" / "sweeps" / f"{name}.py"
  return load_module(path).get_config(arg)


# --------------------------------------------------------------------------- #
# Synthetic run directories.
# --------------------------------------------------------------------------- #


def _history(aucs, stages=None, step0=10, dt=5.0):
  stages = stages or ["finetune"] * len(aucs)
  return [{"step": step0 * (i + 1), "wall": dt * (i + 1), "stage": s, "val_loss": 1 - a,
           "val_auc": a, "val_acc": a - 0.1} for i, (a, s) in enumerate(zip(aucs, stages))]


def _results(auc, acc, trainable, total=1000, steps_to_best=20, wall_to_best=10.0,
             total_steps=40, wall=30.0, history=None):
  return {"test_auc": auc, "test_acc": acc, "trainable_params": trainable, "total_params": total,
          "steps_to_best": steps_to_best, "best_step": steps_to_best,
          "wall_to_best_s": wall_to_best, "total_steps": total_steps, "wall_time_s": wall,
          "history": history or _history([0.7, 0.8, 0.85, 0.84]), "dataset": "ds",
          "arch": "net"}


def _write(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def _write_events(path, pairs):
  """A TFRecord of Events with steps_per_sec tensors, as clu's writer makes them."""
  from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
  import numpy as np

  with open(path, "wb") as f:
    for step, rate in pairs:
      tensor = tensor_pb2.TensorProto(dtype=1, tensor_content=np.float32(rate).tobytes())
      value = summary_pb2.Summary.Value(tag="steps_per_sec", tensor=tensor)
      rec = event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value]))
      data = rec.SerializeToString()
      f.write(struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4)


@pytest.fixture
def synthetic_sweep(tmp_path):
  """Grid: ds × net × {a, b} × seeds {0, 1}, plus c/seed0: a done, b seed1 unfinished,
  c not started; one extra run with a broken results.json."""
  root = tmp_path / "sweep"
  runs = []
  for seed in (0, 1):
    for strat in ("a", "b"):
      runs.append({"name": f"ds__net__{strat}__seed{seed}", "strategy": strat, "arch": "net",
                   "dataset": "ds", "seed": seed, "dir": f"runs/ds__net__{strat}__seed{seed}"})
  runs.append({"name": "ds__net__c__seed0", "strategy": "c", "arch": "net", "dataset": "ds",
               "seed": 0, "dir": "runs/ds__net__c__seed0"})
  plan = {"name": "synthetic", "runs": runs,
          "sweep_config": {"grid": {"strategies": "a,b,c", "datasets": "ds", "archs": "net",
                                    "seeds": "0,1"}, "common": "data.image_size=32"},
          "invocations": [{"command": "python -m jaxbn.sweep --config=x.py --workdir=sweep",
                           "started": "2025-01-01 00:00:00", "machine": {"cpus": 2}}]}
  _write(root / "sweep.json", plan)
  a0 = _results(0.90, 0.80, trainable=48, steps_to_best=20, wall_to_best=10.0)
  a1 = _results(0.94, 0.84, trainable=48, steps_to_best=40, wall_to_best=20.0)
  b0 = _results(0.80, 0.70, trainable=1000, steps_to_best=30, wall_to_best=12.0, wall=50.0)
  for name, res in (("ds__net__a__seed0", a0), ("ds__net__a__seed1", a1),
                    ("ds__net__b__seed0", b0)):
    _write(root / "runs" / name / "results.json", res)
  # a seed0 has events: stage boundary at step 10 (first history stage differs).
  a0_hist = _history([0.7, 0.8, 0.85, 0.84], stages=["warmup", "finetune", "finetune", "finetune"])
  a0["history"] = a0_hist
  a0.update(steps_to_target=20, wall_to_target_s=10.0, target_auc=0.85)  # a1: never reached
  _write(root / "runs" / "ds__net__a__seed0" / "results.json", a0)
  _write_events(root / "runs" / "ds__net__a__seed0" / "events.out.tfevents.1.host.0.v2",
                [(5, 50.0), (10, 0.01), (15, 5.0), (20, 4.0), (25, 4.0), (30, 1.0)])
  # b seed1: killed mid-run (checkpoint meta only).
  meta = {"loop": {"best_val_auc": 0.77, "history": _history([0.6, 0.77])}, "state_stage": 0}
  _write(root / "runs" / "ds__net__b__seed1" / "checkpoints" / "20" / "meta" / "metadata", meta)
  _write(root / "runs" / "ds__net__b__seed1" / "sweep_run.json",
         {"name": "ds__net__b__seed1", "strategy": "b", "arch": "net", "dataset": "ds", "seed": 1})
  # not in the plan, results.json truncated by a crash of something else.
  broken = root / "runs" / "ds__net__a__seed7"
  broken.mkdir(parents=True)
  (broken / "results.json").write_text('{"test_auc": 0.9, "te')
  _write(broken / "sweep_run.json",
         {"name": "ds__net__a__seed7", "strategy": "a", "arch": "net", "dataset": "ds", "seed": 7})
  return root


def test_report_table_values(synthetic_sweep, tmp_path):
  out = tmp_path / "out"
  res = report.write_report([str(synthetic_sweep)], str(out))
  rows = {r["strategy"]: r for r in res["rows"]}
  assert list(rows) == ["a", "b", "c"]
  a, b, c = rows["a"], rows["b"], rows["c"]
  assert (a["n_done"], a["n_runs"]) == (2, 3)  # seed 7's broken results do not count
  assert a["test_auc"] == pytest.approx(0.92)
  assert a["test_auc_sd"] == pytest.approx(0.0282843, rel=1e-4)
  assert a["test_acc"] == pytest.approx(0.82)
  assert a["steps_to_best"] == pytest.approx(30) and a["wall_to_best_s"] == pytest.approx(15)
  assert a["trainable_params"] == 48 and a["total_params"] == 1000
  # a seed0's step time from events: last stage starts after step 10; its first
  # interval (step 15) is dropped; median of 1/4, 1/4, 1/1 s.
  # a seed1 has no events: 30 s / 40 steps (fallback). Row: median of the two.
  assert a["step_time_s"] == pytest.approx((0.25 + 0.75) / 2)
  assert not a["step_time_exact"]
  assert (b["n_done"], b["n_runs"], b["test_auc_sd"]) == (1, 2, None)
  assert b["test_auc"] == pytest.approx(0.80)
  assert (c["n_done"], c["test_auc"]) == (0, None)

  md = (out / "report.md").read_text()
  assert "| ds | net | a | 2/3 ⚠ | 0.9200 ± 0.0283 | 0.8200 ± 0.0283 | 48 | 4.80% | 30 | 15 |" in md
  assert "| 30 | 15 | 20 / 10 (1 of 2 seeds) | 500 † | 30 |" in md  # a: to target, step, wall
  assert "| ds | net | b | 1/2 ⚠ | 0.8000 | 0.7000 | 1,000 | 100.00% | 30 | 12 | not reached |" in md
  assert "ds 0.85" in md
  assert "| ds | net | c | 0/1 ⚠ | — | — |" in md
  assert "| a | 4.80% | 0.920 ± 0.028 / 0.820 |" in md  # headline
  assert "python -m jaxbn.sweep --config=x.py --workdir=sweep" in md
  assert "†" in md


def test_report_notes_missing_partial_and_broken(synthetic_sweep, tmp_path):
  res = report.write_report([str(synthetic_sweep), str(tmp_path / "nope")], str(tmp_path / "o"))
  md = (tmp_path / "o" / "report.md").read_text()
  notes = md.split("## Notes")[1]
  assert "`ds__net__c__seed0`" in notes and "**missing** — not started" in notes
  assert "`ds__net__b__seed1`" in notes and "**partial**" in notes
  assert "last checkpoint at step 20, 2 evaluations, best val AUC so far 0.7700" in notes
  assert "`ds__net__a__seed7`" in notes and "**broken**" in notes and "unreadable" in notes
  assert "nope" in notes and "does not exist" in notes
  status = {r.name: r.status for r in res["runs"]}
  assert status == {"ds__net__a__seed0": "done", "ds__net__b__seed0": "done",
                    "ds__net__a__seed1": "done", "ds__net__b__seed1": "partial",
                    "ds__net__c__seed0": "missing", "ds__net__a__seed7": "broken"}


def test_pngs_are_valid_and_written_atomically(synthetic_sweep, tmp_path):
  from PIL import Image

  out = tmp_path / "out"
  report.write_report([str(synthetic_sweep)], str(out))
  for name in report.PNGS:
    data = (out / name).read_bytes()
    assert data[:8] == PNG_SIGNATURE, name
    with Image.open(out / name) as im:
      im.verify()
      assert im.size[0] > 100 and im.size[1] > 100
  assert sorted(os.listdir(out)) == sorted(  # no temporaries left
      ["report.md", "summary.json", "summary.csv", *report.PNGS])


def test_final_extract_writes_finished_runs_in_name_order(synthetic_sweep, tmp_path):
  # docs/accuracy/final_extract.py: the per-seed file behind each final table of accuracy.md.
  module = load_module(REPO / "docs" / "accuracy" / "final_extract.py")
  out = module.main(str(synthetic_sweep), str(tmp_path))
  assert [o["run"] for o in out] == ["ds__net__a__seed0", "ds__net__a__seed1", "ds__net__b__seed0"]
  assert json.loads((tmp_path / "runs.json").read_text()) == out
  a0 = out[0]
  assert list(a0) == sorted(a0) and (a0["seed"], a0["test_auc"], a0["best_step"]) == (0, 0.9, 20)
  assert list(a0["val_auc_by_step"].items()) == [("10", 0.7), ("20", 0.8), ("30", 0.85),
                                                 ("40", 0.84)]


def test_paired_comparison_pairs_runs_by_seed_and_fold(tmp_path):
  # docs/accuracy/paired.py: a cross-validation's levers compared fold by fold.
  module = load_module(REPO / "docs" / "accuracy" / "paired.py")
  run = lambda lever, fold, auc, status="done": {"lever": lever, "dataset": "d", "seed": 0,
                                                  "fold": fold, "status": status,
                                                  "best_val_auc": auc}
  runs = [run("base", f, a) for f, a in enumerate([0.80, 0.70, 0.90])]
  runs += [run("new", 2, 0.93), run("new", 0, 0.81), run("new", 1, 0.69),
           run("new", 3, 0.99), run("bad", 0, 0.5, status="partial")]
  base, new = module.compare(runs, "base")
  assert new["lever"] == "new" and new["keys"][0] == ("d", 0, 0)
  assert new["gains"] == pytest.approx([0.01, -0.01, 0.03])  # fold 3 has no baseline run
  assert new["n_gained"] == 2 and new["mean_gain"] == pytest.approx(0.01)
  assert new["se_gain"] == pytest.approx(0.02 / 3 ** 0.5)
  assert base["gains"] == [] and base["mean"] == pytest.approx(0.8)
  path = tmp_path / "levers.json"
  path.write_text(json.dumps(runs))
  lines = module.main(["--baseline=base", str(path)])
  assert lines[2].startswith("| base | 0.8000, 0.7000, 0.9000 | 0.8000 ± 0.1000 | — |")
  assert "+0.0100 ± 0.0115" in lines[3] and "2 of 3" in lines[3]
  with pytest.raises(SystemExit, match="error: No finished runs of the baseline 'nope'"):
    module.main(["--baseline=nope", str(path)])
  # A soup run (soup_size) is judged by its final model, the soup, not its best checkpoint.
  soup = [{**run("soup", f, 0.99), "final_val_auc": a} for f, a in enumerate([0.79, 0.72])]
  _, row = module.compare(runs[:3] + soup, "base")
  assert row["gains"] == pytest.approx([-0.01, 0.02])


def test_a_cross_validation_report_counts_runs_not_seeds(tmp_path):
  root = tmp_path / "cv"
  runs = [{"name": f"ds__net__a__seed0__fold{k}", "strategy": "a", "arch": "net", "dataset": "ds",
           "seed": 0, "fold": k, "dir": f"runs/ds__net__a__seed0__fold{k}"} for k in range(3)]
  _write(root / "sweep.json", {"name": "cv", "runs": runs})
  for k, run in enumerate(runs):
    _write(root / run["dir"] / "results.json", _results(0.8 + 0.01 * k, 0.7, trainable=48))
  report.write_report([str(root)], str(tmp_path / "out"))
  md = (tmp_path / "out" / "report.md").read_text()
  assert "## Headline: test AUC / ACC (mean ± sd over runs (seeds × folds))" in md
  assert "| dataset | arch | strategy | runs | test AUC |" in md
  assert "| 3/3 | 0.8100 ± 0.0100 |" in md
  assert "Runs (seeds × folds): finished / present" in md and "over seeds" not in md


def test_report_with_no_finished_runs(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  res = report.write_report([str(empty)], str(tmp_path / "o"))
  md = (tmp_path / "o" / "report.md").read_text()
  assert "No finished runs yet" in md and "no run directories" in md
  assert res["rows"] == []
  for name in report.PNGS:
    assert (tmp_path / "o" / name).read_bytes()[:8] == PNG_SIGNATURE


def test_report_cli_on_single_run_dirs(tmp_path, capsys):
  for name, auc in (("bn", 0.9), ("full", 0.92)):
    res = _results(auc, 0.8, trainable=50 if name == "bn" else 1000)
    res.update(strategy={"warmup": "head", "finetune": "bn+head" if name == "bn" else "full"},
               bn_stats="frozen", init="imagenet")
    _write(tmp_path / name / "results.json", res)
  assert report.main([str(tmp_path / "bn"), str(tmp_path / "full"), "--out", str(tmp_path / "r")]) == 0
  md = (tmp_path / "r" / "report.md").read_text()
  assert "| ds | net | head→bn+head | 1/1 | 0.9000 |" in md
  assert "| ds | net | head→full | 1/1 | 0.9200 |" in md
  assert "2 of 2 runs finished" in capsys.readouterr().out


# --------------------------------------------------------------------------- #
# The sweep: the paper's config, grid expansion, resume.
# --------------------------------------------------------------------------- #


def test_partial_transfusion_config_expresses_the_papers_modes():
  runs = sweep.expand(load_sweep_config())
  assert len(runs) == 9 * 2  # modes × datasets, one arch, one seed
  by = {(r.dataset, r.strategy): sweep.run_config(r) for r in runs}
  c = by["pneumoniamnist", "fc_then_bn"]
  assert (c.warmup.strategy, c.warmup.epochs, c.warmup.lr) == ("head", 1.0, 1e-3)
  assert (c.finetune.strategy, c.finetune.lr, c.bn_stats) == ("bn+head", 1e-3, "frozen")
  assert (c.model.arch, c.model.init) == ("efficientnet_lite0", "imagenet")
  full = by["retinamnist", "fc_then_full"]
  assert full.finetune.strategy == "full" and full.data.name == "retinamnist"
  one_stage = by["retinamnist", "bn_and_fc"]
  assert one_stage.warmup.epochs == 0
  assert one_stage.finetune.epochs == full.warmup.epochs + full.finetune.epochs  # same budget
  assert by["retinamnist", "fc"].finetune.strategy == "head"
  bma = by["pneumoniamnist", "fc_then_bn_bma"]
  assert (bma.bn_stats, bma.bn_momentum, bma.finetune.strategy) == ("batch", 0.95, "bn+head")
  assert by["pneumoniamnist", "fc_bma"].bn_stats == "batch"
  rnd = by["pneumoniamnist", "rnd_bn_and_fc"]
  assert (rnd.model.init, rnd.finetune.strategy, rnd.bn_stats) == ("random", "bn+head", "frozen")
  paper = load_sweep_config("paper")
  assert len(sweep.expand(paper)) == 9 * 2 * 3 * 3
  p = sweep.run_config(sweep.expand(paper)[0])
  assert (p.finetune.lr, p.finetune.schedule, p.finetune.early_stopping_patience) == (1e-5, "plateau", 6)


def test_acnorm_sweep_modes_differ_only_where_they_say():
  runs = sweep.expand(load_sweep_config(name="acnorm"))
  assert len(runs) == 6 * 3  # modes × seeds on RetinaMNIST
  by = {r.strategy: sweep.run_config(r) for r in runs if r.seed == 0}
  for c in by.values():
    assert (c.data.name, c.model.arch, c.warmup.strategy, c.warmup.epochs) == (
        "retinamnist", "efficientnet_lite0", "head", 1.0)
  assert (by["full"].model.norm, by["full"].bn_stats) == ("bn", "frozen")
  assert (by["full_batch"].bn_stats, by["full_batch"].bn_momentum) == ("batch", 0.81)
  acn = by["acnorm"]
  assert (acn.model.norm, acn.bn_stats, acn.finetune.strategy, acn.finetune.lr) == (
      "acnorm", "batch", "full", 1e-4)
  assert acn.bn_momentum == 0.0  # 0 = the norm's own default: AC-Norm's 0.81
  assert (by["acnorm_bn_only"].model.norm, by["acnorm_bn_only"].finetune.strategy) == (
      "acnorm", "bn+head")
  assert by["bn_only_batch"].finetune.lr == by["acnorm_bn_only"].finetune.lr == 1e-3
  assert (by["acnorm_frozen"].model.norm, by["acnorm_frozen"].bn_stats) == ("acnorm", "frozen")


def _tiny_sweep():
  c = ml_collections.ConfigDict()
  c.name = "tiny"
  c.common = ("model.arch=cbr_small,model.init=random,model.dropout_rate=0.0,data.image_size=28,"
              "data.augment=False,batch_size=32,eval_batch_size=64,max_steps=4,"
              "eval_every_steps=2,eval_max_batches=1,log_every_steps=1")
  c.strategies = ml_collections.ConfigDict({
      "fc": "warmup.epochs=0,finetune.strategy=head,finetune.epochs={epochs}",
      "bn_and_fc": "warmup.epochs=0,finetune.strategy=bn+head,finetune.epochs={epochs}",
  })
  c.datasets = ml_collections.ConfigDict(
      {"pneumoniamnist": {"overrides": "data.name=pneumoniamnist", "budget": {"epochs": 1}}})
  c.grid = ml_collections.ConfigDict(
      {"strategies": "bn_and_fc,fc", "archs": "cbr_small", "datasets": "pneumoniamnist",
       "seeds": "0"})
  return c


def test_grid_errors_are_clear():
  c = _tiny_sweep()
  c.grid.strategies = "fc,nope"
  with pytest.raises(ValueError, match="nope"):
    sweep.expand(c)
  c = _tiny_sweep()
  c.strategies.fc = "finetune.epochs={missing}"
  with pytest.raises(ValueError, match="placeholder 'missing'"):
    sweep.expand(c)
  c = _tiny_sweep()
  c.strategies.fc = "finetune.epochz=1"
  with pytest.raises(ValueError, match="Unknown config key"):
    sweep.run_sweep(c, "/nonexistent/never/created", out=lambda s: None)


def test_grid_folds_run_every_cell_as_a_cross_validation():
  c = _tiny_sweep()
  c.grid.seeds = "0,1"
  c.grid.folds = 3
  runs = sweep.expand(c)
  assert [(r.seed, r.fold, r.strategy) for r in runs[:4]] == [
      (0, 0, "bn_and_fc"), (0, 0, "fc"), (0, 1, "bn_and_fc"), (0, 1, "fc")]
  assert len(runs) == 2 * 3 * 2 and len({r.name for r in runs}) == len(runs)
  assert runs[2].name == "pneumoniamnist__cbr_small__bn_and_fc__seed0__fold1"
  config = sweep.run_config(runs[2])
  assert (config.data.folds, config.data.fold, config.seed) == (3, 1, 0)
  assert runs[2].to_json()["fold"] == 1
  c.grid.folds = 0  # off: the plain grid, names and plan records as before
  assert [r.name for r in sweep.expand(c)][0] == "pneumoniamnist__cbr_small__bn_and_fc__seed0"
  assert "fold" not in sweep.expand(c)[0].to_json()
  c.grid.folds = 1
  with pytest.raises(ValueError, match="grid.folds=1"):
    sweep.expand(c)
  seeds = sweep.seeds_sweep(str(REPO / "configs" / "bn_only.py"), [0], folds=5)
  assert [r.fold for r in sweep.expand(seeds)] == [0, 1, 2, 3, 4]


def test_failed_run_does_not_stop_the_sweep_and_resumes(tmp_path):
  c = _tiny_sweep()
  c.grid.seeds = "0,1"
  calls, lines = [], []

  def flaky(config, workdir):
    calls.append((workdir, config.seed))
    if len(calls) == 1:
      os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
      raise RuntimeError("boom")
    res = _results(0.5 + 0.1 * len(calls), 0.5, trainable=10)
    _write(pathlib.Path(workdir) / "results.json", res)
    return res

  summary = sweep.run_sweep(c, str(tmp_path), train_fn=flaky, out=lines.append)
  assert (summary["ran"], summary["failed"], summary["skipped"]) == (3, 1, 0)
  assert [s for _, s in calls] == [0, 0, 1, 1]  # seed-major
  assert any("run 1 of 4" in l and "FAILED" in l and "boom" in l for l in lines)
  assert any("run 2 of 4" in l and "ETA ?" in l for l in lines)  # nothing timed yet
  assert any("run 3 of 4" in l and "ETA" in l and "ETA ?" not in l for l in lines)
  assert any("FAILED bn_and_fc" in l or "FAILED pneumoniamnist__cbr_small__bn_and_fc__seed0" in l
             for l in lines)
  lines.clear()
  summary = sweep.run_sweep(c, str(tmp_path), train_fn=flaky, out=lines.append)
  assert (summary["ran"], summary["skipped"], summary["failed"]) == (1, 3, 0)
  assert calls[-1][0].endswith("pneumoniamnist__cbr_small__bn_and_fc__seed0")
  assert any("(resuming)" in l for l in lines)
  plan = json.loads((tmp_path / "sweep.json").read_text())
  assert len(plan["invocations"]) == 2 and len(plan["runs"]) == 4
  assert plan["invocations"][1]["skipped"] == 3


def test_a_preempted_run_stops_the_sweep_and_the_same_command_resumes_it(tmp_path):
  from jaxbn import preemption

  c = _tiny_sweep()
  c.grid.seeds = "0,1"
  calls, lines = [], []

  def preempted_once(config, workdir):
    calls.append(config.seed)
    if len(calls) == 1:
      raise preemption.Preempted(3, workdir, "SIGTERM")
    res = _results(0.6, 0.5, trainable=10)
    _write(pathlib.Path(workdir) / "results.json", res)
    return res

  with pytest.raises(preemption.Preempted):
    sweep.run_sweep(c, str(tmp_path), train_fn=preempted_once, out=lines.append)
  assert calls == [0]  # no later run started on a machine that is going away
  assert any("preempted during run 1 of 4" in l for l in lines)
  summary = sweep.run_sweep(c, str(tmp_path), train_fn=preempted_once, out=lines.append)
  assert (summary["ran"], summary["failed"], summary["skipped"]) == (4, 0, 0)
  assert calls == [0, 0, 0, 1, 1]


def test_a_signal_after_a_runs_last_step_lets_it_finish_and_starts_no_further_run(tmp_path):
  # SIGTERM during a run's final evaluation (after its last step): that run's results are
  # complete and kept, but the machine is going away, so the sweep stops before the next run.
  from jaxbn import preemption

  c = _tiny_sweep()
  c.grid.seeds = "0,1"
  calls, lines = [], []

  def signalled_while_finishing(config, workdir):
    calls.append(config.seed)
    with preemption.Preemption():
      if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      res = _results(0.6, 0.5, trainable=10)
      _write(pathlib.Path(workdir) / "results.json", res)
    return res

  previous = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
  try:
    with pytest.raises(preemption.Preempted, match="before the first step"):
      sweep.run_sweep(c, str(tmp_path), train_fn=signalled_while_finishing, out=lines.append)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  assert calls == [0, 0]  # the second run stopped on entry, before any step
  assert any("run 1 of 4" in l and "done" in l for l in lines)
  assert any("preempted during run 2 of 4" in l for l in lines)
  summary = sweep.run_sweep(c, str(tmp_path), train_fn=signalled_while_finishing,
                            out=lines.append)
  assert (summary["ran"], summary["skipped"], summary["failed"]) == (3, 1, 0)


def test_tiny_real_sweep_skips_finished_runs_and_reports(tmp_path):
  c = _tiny_sweep()
  c.grid.strategies = "bn_and_fc"  # one real (CPU-cheap) run; the rest is tested with fakes
  lines = []
  summary = sweep.run_sweep(c, str(tmp_path), out=lines.append)
  assert (summary["ran"], summary["failed"]) == (1, 0), lines
  name = "pneumoniamnist__cbr_small__bn_and_fc__seed0"
  res = json.loads((tmp_path / "runs" / name / "results.json").read_text())
  assert res["total_steps"] == 4 and [h["step"] for h in res["history"]] == [2, 4]
  meta = json.loads((tmp_path / "runs" / name / "sweep_run.json").read_text())
  assert meta["strategy"] == "bn_and_fc" and meta["config"]["finetune"]["strategy"] == "bn+head"
  assert any("run 1 of 1" in l for l in lines) and any("finished: 1 ran" in l for l in lines)

  calls = []
  summary = sweep.run_sweep(c, str(tmp_path), train_fn=lambda *a: calls.append(a), out=lines.append)
  assert calls == [] and summary["skipped"] == 1
  assert any("run 1 of 1" in l and "finished before, skipped" in l for l in lines)

  out = report.write_report([str(tmp_path)], str(tmp_path / "report"))
  (row,) = out["rows"]
  assert row["trainable_params"] == 2 * (32 + 64 + 128 + 256) + 256 * 2 + 2
  assert row["test_auc"] == pytest.approx(res["test_auc"])
  assert row["step_time_s"] and row["step_time_exact"]  # from the run's TensorBoard events
  assert "Every run finished." in (tmp_path / "report" / "report.md").read_text()
