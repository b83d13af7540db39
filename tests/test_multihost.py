"""Multi-host: two real OS processes (jax.distributed, coordinator on 127.0.0.1, CPU).

Each process has 2 CPU devices (``JAX_NUM_CPU_DEVICES``; the cross-process
collectives are JAX's CPU default, gloo) and runs the ordinary command line,
``python -m jaxbn.main ... --coordinator=127.0.0.1:PORT --num_processes=2
--process_id=I``. The reference is a plain one-process run of the same command
with 4 devices: the global batch ``k`` depends only on the seed and ``k``
(jaxbn.data.pipeline), process ``i`` reading its rows of it, so the two runs
are the same experiment.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxbn.checkpoint import RunCheckpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4


def _args(workdir) -> list[str]:
  return [
      "--config=configs/bn_only.py", f"--workdir={workdir}",
      "--config.model.arch=cbr_small", "--config.model.init=random",
      "--config.model.dropout_rate=0.0", "--config.data.image_size=28",
      "--config.data.augment=True", "--config.batch_size=32", "--config.eval_batch_size=64",
      "--config.warmup.epochs=0", f"--config.max_steps={STEPS}", "--config.eval_every_steps=2",
      "--config.eval_max_batches=1",
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAXBN_OFFLINE="1",
             TF_CPP_MIN_LOG_LEVEL="2", JAX_NUM_CPU_DEVICES=str(devices))
  env.pop("XLA_FLAGS", None)
  return env


def _wait(procs: dict, logs: dict, timeout: float = 1800) -> None:
  try:
    for proc in procs.values():
      proc.wait(timeout=timeout)
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for name, proc in procs.items():
    if proc.returncode != 0:
      tail = "\n".join(logs[name].read_text().splitlines()[-40:])
      pytest.fail(f"{name} exited with {proc.returncode}:\n{tail}")


def _restore_state(step_dir: pathlib.Path) -> dict:
  """A saved train state as host numpy, read with the shapes recorded in the checkpoint."""
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(step_dir / "state").item_metadata.tree
    return ckptr.restore(step_dir / "state", jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                                                          meta))


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  port = _free_port()
  logs = {name: tmp_path / f"{name}.log" for name in ("process0", "process1", "reference")}
  procs = {}
  for i in range(2):
    cmd = [sys.executable, "-m", "jaxbn.main", *_args(multi), f"--coordinator=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}"]
    procs[f"process{i}"] = subprocess.Popen(
        cmd, cwd=REPO, env=_env(2), stdout=logs[f"process{i}"].open("w"),
        stderr=subprocess.STDOUT)
  procs["reference"] = subprocess.Popen(
      [sys.executable, "-m", "jaxbn.main", *_args(single)], cwd=REPO, env=_env(4),
      stdout=logs["reference"].open("w"), stderr=subprocess.STDOUT)
  _wait(procs, logs)

  for i in range(2):
    assert f"JAX process {i}/2, 2 local / 4 global devices (cpu)" in logs[f"process{i}"].read_text()
  assert "JAX process 0/1, 4 local / 4 global devices (cpu)" in logs["reference"].read_text()

  # Written once, by the right process: one committed directory per checkpoint step,
  # nothing half-written left behind, one results.json, metrics from process 0 only.
  assert sorted(os.listdir(multi / "checkpoints")) == sorted(os.listdir(single / "checkpoints"))
  assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
  assert len(os.listdir(multi / "best")) == 1
  for step_dir in [*(multi / "checkpoints").iterdir(), *(multi / "best").iterdir()]:
    assert (step_dir / "commit_success.txt").is_file() or (step_dir / "_CHECKPOINT_METADATA").is_file()
  assert not [p for p in multi.rglob("*") if "tmp" in p.name], "leftover temporary files"
  files = sorted(p.name for p in multi.iterdir() if p.is_file())
  assert files[0] == "config.json" and files[1].startswith("events.out.tfevents"), files
  assert files[2:] == ["results.json"], files

  # Restorable, and equal to the one-process run (params, BN statistics, optimizer state).
  a, b = _restore_state(multi / "checkpoints" / str(STEPS)), _restore_state(
      single / "checkpoints" / str(STEPS))
  assert int(a["step"]) == STEPS
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8, err_msg=jax.tree_util.keystr(path))
  mid = _restore_state(multi / "checkpoints" / "2")
  assert not np.allclose(mid["params"]["fc"]["kernel"], a["params"]["fc"]["kernel"])
  ckpts = RunCheckpoints(str(multi))
  assert ckpts.restore_meta(STEPS)["loop"]["stage_step"] == STEPS
  best, meta = ckpts.restore_best({"params": a["params"], "batch_stats": a["batch_stats"]})
  assert meta["loop"]["best_step"] in (2, 4)
  ckpts.close()

  ra = json.loads((multi / "results.json").read_text())
  rb = json.loads((single / "results.json").read_text())
  assert ra["devices"] == rb["devices"] == 4 and ra["total_steps"] == STEPS
  for key in ("test_auc", "test_acc", "test_loss", "best_val_auc", "best_step"):
    assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
  assert [h["val_loss"] for h in ra["history"]] == pytest.approx(
      [h["val_loss"] for h in rb["history"]], rel=1e-4)


def test_results_json_on_local_disk_and_gcs(tmp_path, monkeypatch):
  """A pod slice's workdir is gs://: results.json must go there, not to a local 'gs:' folder."""
  from jaxbn import checkpoint

  checkpoint.write_json(str(tmp_path / "results.json"), {"test_auc": 0.5})
  assert json.loads((tmp_path / "results.json").read_text()) == {"test_auc": 0.5}
  written = {}

  class FakeGcsPath:
    def __init__(self, path):
      self.path = str(path)

    def write_text(self, text):
      written[self.path] = text

  monkeypatch.setattr(checkpoint.epath, "Path", FakeGcsPath)
  monkeypatch.chdir(tmp_path)
  checkpoint.write_json("gs://bucket/run/results.json", {"test_auc": 0.5})
  assert json.loads(written["gs://bucket/run/results.json"]) == {"test_auc": 0.5}
  assert not (tmp_path / "gs:").exists()
  assert checkpoint.is_url("gs://bucket/run") and not checkpoint.is_url("runs/x")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """Only process 1 gets SIGTERM (after step 1): JAX's preemption sync manager makes both
  processes checkpoint the same step and exit 75; rerunning both finishes the run."""
  workdir, port = tmp_path / "multi", _free_port()

  def start(tag, hook=None):
    logs, procs = {}, {}
    for i in range(2):
      env = _env(2)
      if hook:
        env["JAXBN_SIGNAL_AT_STEP"] = hook
      logs[i] = tmp_path / f"{tag}{i}.log"
      procs[i] = subprocess.Popen(
          [sys.executable, "-m", "jaxbn.main", *_args(workdir),
           f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
          cwd=REPO, env=env, stdout=logs[i].open("w"), stderr=subprocess.STDOUT)
    for p in procs.values():
      p.wait(timeout=1800)
    return [p.returncode for p in procs.values()], [logs[i].read_text() for i in range(2)]

  codes, logs = start("stopped", hook="1:SIGTERM:1")
  assert codes == [75, 75], "\n".join(l[-3000:] for l in logs)
  stopped_at = RunCheckpoints(str(workdir)).latest_step()
  assert stopped_at is not None and 1 <= stopped_at < STEPS
  assert all(f"after step {stopped_at};" in log for log in logs)
  assert not (workdir / "results.json").exists()
  port = _free_port()
  codes, logs = start("resumed")
  assert codes == [0, 0], "\n".join(l[-3000:] for l in logs)
  results = json.loads((workdir / "results.json").read_text())
  assert results["total_steps"] == STEPS and [h["step"] for h in results["history"]] == [2, 4]
