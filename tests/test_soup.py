"""jaxbn.soup: the uniform average of checkpoints, and the trainer's soup of the best passes."""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxbn import preemption, soup, train
from jaxbn.checkpoint import RunCheckpoints
from jaxbn.tf_setup import import_tensorflow
from test_train import tiny_config

tf = import_tensorflow()
REPO = pathlib.Path(__file__).resolve().parents[1]


def test_uniform_is_the_elementwise_mean_in_each_leafs_dtype():
  a = {"w": np.array([1.0, 2.0], np.float32), "b": {"x": np.array(1.0, np.float64)},
       "n": np.array(3, np.int32)}
  b = {"w": np.array([3.0, 6.0], np.float32), "b": {"x": np.array(2.0, np.float64)},
       "n": np.array(5, np.int32)}
  c = {"w": np.array([5.0, 1.0], np.float32), "b": {"x": np.array(6.0, np.float64)},
       "n": np.array(7, np.int32)}
  out = soup.uniform([a, b, c])
  np.testing.assert_array_equal(out["w"], [3.0, 3.0])
  assert out["w"].dtype == np.float32 and out["b"]["x"] == 3.0
  assert out["n"] == 3 and out["n"].dtype == np.int32  # not a float: the first member's
  assert soup.uniform([b])["w"].tolist() == [3.0, 6.0]


def test_uniform_of_bfloat16_leaves_stays_bfloat16():
  x = jax.numpy.asarray([1.0, 2.0], jax.numpy.bfloat16)
  out = soup.uniform([{"w": np.asarray(x)}, {"w": np.asarray(x * 3)}])
  assert out["w"].dtype == np.asarray(x).dtype and out["w"].tolist() == [2.0, 4.0]


def test_uniform_of_no_members_is_an_error():
  with pytest.raises(ValueError, match="at least one member"):
    soup.uniform([])


def test_the_soup_keeps_the_best_passes_best_first(tmp_path):
  ckpts = RunCheckpoints(str(tmp_path), soup=3)
  aucs = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.4, 5: 0.8, 6: 0.65}
  for step, auc in aucs.items():
    ckpts.save_soup_member(step, {"w": np.full(2, step, np.float32)}, auc)
  ckpts.save_soup_member(5, {"w": np.zeros(2, np.float32)}, 0.9)  # a resumed run's repeat
  members = ckpts.restore_soup({"w": np.zeros(2, np.float32)})
  assert list(members) == [5, 2, 6]
  assert [m["w"][0] for m in members.values()] == [5, 2, 6]  # the first copy of step 5 stays
  ckpts.close()
  assert RunCheckpoints(str(tmp_path)).soup is None  # soup < 2: off
  assert sorted(p.name for p in (tmp_path / "soup").iterdir()) == ["2", "5", "6"]


def test_the_trainers_final_model_is_the_soup_of_its_best_passes(tmp_path, caplog):
  config = tiny_config(soup_size=3, max_steps=8, eval_every_steps=2)
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, str(tmp_path))
  auc = {h["step"]: h["val_auc"] for h in results["history"]}
  assert results["soup_size"] == 3 and len(results["soup_steps"]) == 3
  # The 3 best passes, best first (compared by value: equal AUCs may come in either order).
  assert [auc[s] for s in results["soup_steps"]] == sorted(auc.values(), reverse=True)[:3]
  assert auc[results["soup_steps"][0]] == auc[results["best_step"]]
  # The reported soup is the average of the kept members, evaluated as any model is.
  with preemption.Preemption(0, 1) as preempt:
    run, initial = train._setup(config, str(tmp_path), preempt)
    members = run.ckpts.restore_soup(initial)
    best, _ = run.ckpts.restore_best(initial)
    average = run.par.put_state(soup.uniform(list(members.values())))
    val, test = (train.evaluate(run, split, average) for split in ("val", "test"))
    run.ckpts.close()
  assert results["soup_val_auc"] == pytest.approx(val["auc"], abs=1e-6)
  assert results["test_auc"] == pytest.approx(test["auc"], abs=1e-6)
  jax.tree.map(np.testing.assert_array_equal, best, members[results["best_step"]])
  first = members[results["soup_steps"][0]]["params"]["fc"]["kernel"]
  assert not np.allclose(first, np.asarray(jax.device_get(average["params"]["fc"]["kernel"])))
  assert any(f"soup of steps {results['soup_steps']}" in r.getMessage() for r in caplog.records)
  # jaxbn.predict --workdir classifies with the same final model: the soup, not the best.
  image = tmp_path / "x.png"
  image.write_bytes(tf.io.encode_png(np.random.default_rng(0).integers(
      0, 255, (28, 28, 3), dtype=np.uint8)).numpy())
  by_soup = _predict(tmp_path, image)
  assert by_soup["soup_steps"] == results["soup_steps"]
  shutil.rmtree(tmp_path / "soup")
  by_best = _predict(tmp_path, image)
  assert "soup_steps" not in by_best and by_best["checkpoint_step"] == results["best_step"]
  assert by_soup["top"][0]["prob"] != pytest.approx(by_best["top"][0]["prob"], abs=1e-6)


def _predict(workdir, image) -> dict:
  """``python -m jaxbn.predict --workdir`` (a process of its own: its absl flags are its own)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "jaxbn.predict", f"--workdir={workdir}",
                         f"--image={image}"], cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout)


def test_without_a_soup_nothing_changes(tmp_path):
  results = train.train_and_evaluate(tiny_config(max_steps=4, eval_every_steps=2), str(tmp_path))
  assert results["soup_size"] == 0 and "soup_val_auc" not in results
  assert not (tmp_path / "soup").exists()
