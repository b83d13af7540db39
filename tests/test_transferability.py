"""AC-Corr transferability ranking: candidates, scores, the ranked table, the validation."""

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxbn import main as main_lib, setup
from jaxbn.analysis import transferability as tr
from jaxbn.checkpoint import RunCheckpoints
from jaxbn.models import acnorm, create_model
from jaxbn.models.registry import init_shapes
from jaxbn.ops import acnorm_affine
from jaxbn.weights import store
from load_file import load_module

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg=None):
  return load_module(REPO / "configs" / "transferability.py").get_config(arg)


def test_config_task_and_candidates():
  c = load_config("transfer.candidates=resnet50;cbr_small@random,transfer.steps=3")
  assert c.task == "transferability" and c.model.norm == "acnorm"
  assert main_lib.TASKS["transferability"] == ("jaxbn.analysis.transferability", "run")
  assert [x.name for x in tr.parse_candidates(c.transfer.candidates)] == [
      "resnet50@imagenet", "cbr_small@random"]
  assert c.transfer.steps == 3
  default = [x.name for x in tr.parse_candidates(load_config().transfer.candidates)]
  assert default == ["efficientnet_lite0@imagenet", "efficientnet_lite1@imagenet",
                     "efficientnet_lite2@imagenet", "efficientnet_lite0@random"]
  with pytest.raises(ValueError, match="Unknown architecture"):
    tr.parse_candidates("resnet51@imagenet")
  with pytest.raises(ValueError, match="Duplicate"):
    tr.parse_candidates("cbr_small@random cbr_small@random")


def test_kendall_direction_and_layer_selection():
  up = tr.kendall([1, 2, 3, 4], [0.6, 0.7, 0.8, 0.9])
  assert up["tau"] == pytest.approx(1.0) and up["direction"].startswith("higher")
  down = tr.kendall([1, 2, 3, 4], [0.9, 0.8, 0.6, 0.7])
  assert down["tau"] == pytest.approx(-2 / 3) and down["direction"].startswith("lower")
  layers = {"bn1": {"channels": 4}, "blocks_1/bn0": {"channels": 8}}
  assert list(tr.select_layers(layers, r"blocks_.*")) == ["blocks_1/bn0"]
  assert tr.select_layers(layers, "") == layers
  with pytest.raises(ValueError, match="matches no AC-Norm layer"):
    tr.select_layers(layers, "layer4.*")


def _correlations(variables, temperature=1.0, epsilon=1e-5):
  """``S`` of every AC-Norm layer, recomputed from its affines with the pure op."""
  return {path: acnorm_affine(*affine, temperature, epsilon)[0]
          for path, affine in acnorm.layer_affines(variables).items()}


def fake_variables(seed, *, pretrained=True):
  """cbr_small variables without compiling anything: random kernels; BN γ, β distinct per
  channel ("pretrained") or the random-init identity (γ = 1, β = 0)."""
  shapes = init_shapes(create_model("cbr_small", num_classes=2), 28)
  rng = np.random.default_rng(seed)

  def value(path, x):
    name = path[-1].key
    if name == "scale":
      return (rng.uniform(0.5, 1.5, x.shape) if pretrained else np.ones(x.shape)).astype(x.dtype)
    if name in ("bias", "mean"):
      return (rng.normal(0, 0.5, x.shape) if pretrained else np.zeros(x.shape)).astype(x.dtype)
    if name == "var":
      return np.ones(x.shape, x.dtype)
    return (rng.normal(size=x.shape) * 0.05).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


@pytest.fixture(scope="module")
def fake_pretrained(tmp_path_factory):
  """Two 'pretrained' cbr_small BN checkpoints in jaxbn's format (python -m jaxbn.convert's)."""
  out = {}
  for name, seed in (("cbr_a", 0), ("cbr_b", 1)):
    variables = fake_variables(seed)
    directory = tmp_path_factory.mktemp("ckpt") / name
    store.save_variables(directory, variables, {"arch": "cbr_small", "num_classes": 2})
    out[name] = (str(directory), variables)
  return out


def test_random_init_control_scores_mean_channel_count():
  # Random init: every γ = 1, β = 0, so r_s = 0 and, whatever one step does to the
  # target, each row of D is constant: S = 1/C everywhere and a layer's sum is C (the
  # maximum: rows of S sum to at most 1). AC-Corr = the mean channel count.
  variables = fake_variables(0, pretrained=False)
  source = {k: v for k, v in variables["params"].items() if k.startswith("bn")}
  rng = np.random.default_rng(0)
  target = {k: {n: x + 1e-3 * rng.normal(size=x.shape) for n, x in v.items()}  # one step
            for k, v in source.items()}
  stats = tr.layer_statistics({"params": target, acnorm.SOURCE: source}, None)
  assert list(stats) == ["bn1", "bn2", "bn3", "bn4"]
  for layer in stats.values():
    assert layer["sum"] == pytest.approx(layer["channels"], rel=1e-5)
    assert layer["offdiag_kept"] == layer["channels"] * (layer["channels"] - 1)


def test_ranking_and_validation_end_to_end(tmp_path, fake_pretrained):
  (ckpt_a, vars_a), (ckpt_b, _) = fake_pretrained["cbr_a"], fake_pretrained["cbr_b"]
  config = load_config(
      f"transfer.candidates=cbr_small@{ckpt_a};cbr_small@{ckpt_b},transfer.validate=True,"
      "transfer.validate_steps=2,transfer.batch_size=16,model.arch=cbr_small,"
      "data.image_size=28,data.augment=False,batch_size=16,eval_batch_size=64,"
      "eval_max_batches=1,eval_every_steps=2,warmup.epochs=0,model.dropout_rate=0.0")
  # Candidate b's validation is taken as done (a finished run is reused, not redone).
  done = tmp_path / "validate" / "cbr_small@cbr_b" / "results.json"
  done.parent.mkdir(parents=True)
  done.write_text(json.dumps({"best_val_auc": 0.25, "test_auc": 0.5, "total_steps": 2}))

  report = tr.run(config, str(tmp_path))

  on_disk = json.loads((tmp_path / tr.JSON_NAME).read_text())
  assert on_disk["ranking"] == json.loads(json.dumps(report["ranking"]))
  md = (tmp_path / tr.MD_NAME).read_text()
  assert "| rank | candidate | AC-Corr |" in md and "Kendall τ" in md
  scores = [r["ac_corr"] for r in report["ranking"]]
  assert scores == sorted(scores, reverse=True)  # ranked highest first
  a = {r["candidate"]: r for r in report["ranking"]}["cbr_small@cbr_a"]
  assert a["num_layers"] == 4 and a["mean_channels"] == np.mean([32, 64, 128, 256])
  assert list(a["layers"]) == ["bn1", "bn2", "bn3", "bn4"]  # forward (depth) order
  assert (tmp_path / tr.PNG_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Before the step, source = target = the checkpoint's distinct γ, β: S is diagonal and
  # each layer's sum is its trace, Σ P_ii (< C). One step then moves the target.
  src = {k: v for k, v in vars_a["params"].items() if k.startswith("bn")}
  s0 = _correlations({"params": src, acnorm.SOURCE: src})
  assert a["ac_corr_at_init"] == pytest.approx(
      np.mean([float(np.trace(s)) for s in s0.values()]), rel=1e-5)
  assert a["ac_corr_at_init"] < a["mean_channels"] and a["ac_corr"] != a["ac_corr_at_init"]

  # Validation: candidate a was fine-tuned (AC-Norm, full) by the trainer.
  assert a["validation_steps"] == 2 and 0 <= a["best_val_auc"] <= 1
  v = report["validation"]
  assert v["ac_corr"]["n"] == 2 and abs(v["ac_corr"]["tau"]) == pytest.approx(1.0)
  ckpts = RunCheckpoints(str(tmp_path / "validate" / "cbr_small@cbr_a"))
  target = setup.initial_variables(tr.candidate_config(config, tr.Candidate("cbr_small", ckpt_a)),
                                   setup.build_model(config, 2), jax.random.key(0))
  best, _ = ckpts.restore_best(target)
  ckpts.close()
  # The best checkpoint carries the frozen source affine, unchanged: the pretrained γ, β.
  np.testing.assert_array_equal(best[acnorm.SOURCE]["bn2"]["bias"], vars_a["params"]["bn2"]["bias"])
  assert not np.array_equal(best["params"]["bn2"]["bias"], vars_a["params"]["bn2"]["bias"])


def test_rank_correlations_with_and_without_the_random_control():
  records = [  # pretrained: higher AC-Corr, higher AUC; the control: highest score, worst AUC
      {"init": "imagenet", "ac_corr": 4.8, "ac_corr_per_channel": 0.03, "best_val_auc": 0.80},
      {"init": "imagenet", "ac_corr": 4.7, "ac_corr_per_channel": 0.02, "best_val_auc": 0.78},
      {"init": "/ckpt.pth", "ac_corr": 4.6, "ac_corr_per_channel": 0.01, "best_val_auc": 0.75},
      {"init": "random", "ac_corr": 400.0, "ac_corr_per_channel": 1.0, "best_val_auc": 0.60},
  ]
  out = tr.rank_correlations(records)
  assert out["ac_corr"]["tau"] == pytest.approx(0.0) and out["ac_corr"]["n"] == 4
  assert out["ac_corr_pretrained_only"]["tau"] == pytest.approx(1.0)
  assert out["ac_corr_pretrained_only"]["n"] == 3
  assert out["ac_corr_pretrained_only"]["direction"].startswith("higher")
  assert "ac_corr_pretrained_only" not in tr.rank_correlations(records[:3])  # no control
  report = {"dataset": "d", "settings": {"steps": 1, "strategy": "full", "lr": 1e-3,
                                         "batch_size": 8, "image_size": 28, "temperature": 1.0,
                                         "layers": ""},
            "ranking": [dict(r, candidate=f"c{i}", ac_corr_at_init=1.0, num_layers=2, params=10,
                             test_auc=0.7) for i, r in enumerate(records)],
            "validation": {"max_steps": 0, "norm": "acnorm", "stages": "s", "bn_stats": "batch",
                           **out}}
  md = tr.markdown(report)
  assert "Without the random-init control(s): τ = 1.000" in md and "n = 3" in md
