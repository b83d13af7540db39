"""Issue 17's recipe parts: budget sizing, augmentation, EMA, TTA, seed sweeps, spread marks."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from jaxbn import budget, config as config_lib, ema, report, sweep, train, tta
from jaxbn.data import augment, medmnist, pipeline
from load_file import load_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---------------------------------------------------------------- budget --


def test_budget_sizes_small_and_large_data():
  # 500 images, batch 64: 7 steps/epoch; 4 epochs would be 28 steps — min_steps lifts it.
  assert budget.stage_steps(4, 7) == 28
  assert budget.stage_steps(4, 7, min_steps=400) == 400
  # 100,000 images: epochs decide, the cap bounds it.
  assert budget.stage_steps(4, 1562, min_steps=400) == 6248
  assert budget.stage_steps(4, 1562, min_steps=400, max_stage_steps=3000) == 3000
  assert budget.stage_steps(0, 1562, min_steps=400) == 0
  assert budget.stage_steps(0.01, 7) == 1


def test_eval_interval_gives_at_least_min_evals():
  assert budget.eval_interval(7, 400) == 7
  assert budget.eval_interval(1562, 3000) == 1562
  assert budget.eval_interval(1562, 3000, min_evals=10) == 300
  assert budget.eval_interval(7, 400, min_evals=10) == 7
  assert budget.eval_interval(7, 400, eval_every_steps=50, min_evals=4) == 50
  assert budget.eval_interval(7, 3, min_evals=10) == 1


# ----------------------------------------------------------- augmentation --


def _ramp(h=16, w=16, c=3):
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  return np.stack([x + 100 * y] * c, axis=-1)


def test_augment_keeps_shape_dtype_and_is_identity_when_off():
  img = tf.constant(_ramp())
  seed = tf.constant([1, 2], tf.int64)
  out = augment.random_affine(img, seed, rotate_deg=15.0, shift=0.1, vflip=True)
  assert out.shape == img.shape and out.dtype == img.dtype
  np.testing.assert_array_equal(augment.random_affine(img, seed).numpy(), img.numpy())


def test_affine_matrix_shifts_and_rotates_as_documented():
  img = tf.constant(_ramp())
  t = augment.affine_matrix(tf.constant(0.0), tf.constant(2.0), tf.constant(0.0), 16, 16)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=img[None], transforms=t[None], output_shape=[16, 16], fill_value=0.0,
      interpolation="BILINEAR", fill_mode="NEAREST")[0].numpy()
  np.testing.assert_allclose(out[:, 2:], img.numpy()[:, :-2], atol=1e-4)  # content moves right
  np.testing.assert_allclose(out[:, :2], np.repeat(img.numpy()[:, :1], 2, axis=1), atol=1e-4)
  t = augment.affine_matrix(tf.constant(np.pi / 2), tf.constant(0.0), tf.constant(0.0), 16, 16)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=img[None], transforms=t[None], output_shape=[16, 16], fill_value=0.0,
      interpolation="NEAREST", fill_mode="NEAREST")[0].numpy()
  rotated = {np.rot90(img.numpy(), k).tobytes() for k in (1, 3)}
  assert out.tobytes() in rotated


def test_vflip_only_flips_up_down_and_only_when_set():
  img = _ramp()
  seen = set()
  for i in range(16):
    out = augment.random_affine(tf.constant(img), tf.constant([i, 0], tf.int64), vflip=True).numpy()
    if np.array_equal(out, img):
      seen.add("same")
    elif np.array_equal(out, img[::-1]):
      seen.add("vflip")
    else:
      pytest.fail("vflip produced something other than the image or its up-down mirror")
  assert seen == {"same", "vflip"}
  # Rotations/shifts without vflip never mirror the image.
  for i in range(8):
    out = augment.random_affine(tf.constant(img), tf.constant([i, 1], tf.int64),
                                rotate_deg=5.0).numpy()
    assert not np.allclose(out, img[::-1], atol=1.0) and not np.allclose(out, img[:, ::-1], atol=1.0)


def test_augment_settings_validate_and_follow_augment_flag():
  c = ml_collections.ConfigDict(dict(augment=True, rotate_deg=10.0, shift=0.05, vflip=False))
  assert augment.settings(c) == dict(rotate_deg=10.0, shift=0.05, vflip=False)
  c.augment = False
  assert augment.settings(c) == augment.DEFAULTS
  with pytest.raises(ValueError, match="data.shift"):
    augment.settings(ml_collections.ConfigDict(dict(shift=0.7)))


def _normalised(pixels, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1)):
  """[0, 1] pixels normalised as the pipeline does, with its (scale, offset)."""
  scale = 1.0 / (255.0 * np.asarray(std, np.float32))
  offset = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
  return tf.constant(pixels * 255.0 * scale + offset), scale, offset


def test_random_intensity_scales_contrast_and_shifts_brightness_in_pixel_units():
  rng = np.random.default_rng(0)
  pixels = rng.uniform(0.3, 0.7, (8, 8, 3)).astype(np.float32)  # room: nothing is clipped
  image, scale, offset = _normalised(pixels)
  unit = 255.0 * scale
  seed = tf.constant([3, 4], tf.int64)
  np.testing.assert_array_equal(
      augment.random_intensity(image, seed, scale=scale, offset=offset).numpy(), image.numpy())
  factors, deltas = set(), set()
  for i in range(12):
    seed = tf.constant([i, 7], tf.int64)
    out = augment.random_intensity(image, seed, scale=scale, offset=offset, contrast=0.2).numpy()
    back = (out - offset) / unit  # the pixels again
    mean = pixels.mean(axis=(0, 1))
    np.testing.assert_allclose(back.mean(axis=(0, 1)), mean, atol=1e-5)  # each channel's mean
    factor = (back - mean) / (pixels - mean)
    assert np.allclose(factor, factor.flat[0], atol=1e-3)  # one factor for all pixels, channels
    assert 0.8 - 1e-5 <= factor.flat[0] <= 1.2 + 1e-5
    factors.add(round(float(factor.flat[0]), 3))
    out = augment.random_intensity(image, seed, scale=scale, offset=offset, brightness=0.1).numpy()
    delta = (out - offset) / unit - pixels
    assert np.allclose(delta, delta.flat[0], atol=1e-5) and abs(delta.flat[0]) <= 0.1 + 1e-6
    deltas.add(round(float(delta.flat[0]), 4))
  assert len(factors) > 6 and len(deltas) > 6  # a new draw per seed
  bright, _, _ = _normalised(np.full((4, 4, 3), 0.98, np.float32))
  out = augment.random_intensity(bright, tf.constant([1, 1], tf.int64), scale=scale,
                                 offset=offset, brightness=1.0).numpy()
  assert ((out - offset) / unit <= 1.0 + 1e-5).all()  # clipped to the pixel range
  assert out.dtype == np.float32 and out.shape == (4, 4, 3)


def test_intensity_settings_validate_and_follow_augment_flag():
  c = ml_collections.ConfigDict(dict(augment=True, brightness=0.1, contrast=0.2))
  assert augment.intensity_settings(c) == dict(brightness=0.1, contrast=0.2)
  c.augment = False
  assert augment.intensity_settings(c) == dict(brightness=0.0, contrast=0.0)
  assert augment.intensity_settings(ml_collections.ConfigDict()) == augment.INTENSITY_DEFAULTS
  with pytest.raises(ValueError, match="data.brightness and data.contrast"):
    augment.intensity_settings(ml_collections.ConfigDict(dict(contrast=1.5)))


@pytest.fixture(scope="module")
def pneumonia_config(tmp_path_factory):
  os.environ[medmnist.OFFLINE_ENV] = "1"
  return ml_collections.ConfigDict(dict(
      name="pneumoniamnist", data_dir=None, download=False,
      cache_dir=str(tmp_path_factory.mktemp("tfds")), augment=True, hflip=False,
      shuffle_buffer=64, cache=True, rotate_deg=0.0, shift=0.0, vflip=False))


def test_pipeline_hook_applies_augmentation_deterministically(pneumonia_config):
  def first(cfg, seed=0):
    it = pipeline.train_iterator(cfg, batch_size=8, image_size=32, mean=MEAN, std=STD, seed=seed)
    return next(it)

  plain = first(pneumonia_config)
  cfg = ml_collections.ConfigDict(pneumonia_config.to_dict())
  cfg.rotate_deg, cfg.shift = 10.0, 0.1
  a, b = first(cfg), first(cfg)
  assert a["image"].shape == plain["image"].shape == (8, 32, 32, 3)
  assert a["image"].dtype == np.float32
  np.testing.assert_array_equal(a["label"], plain["label"])  # same examples, same order
  np.testing.assert_array_equal(a["image"], b["image"])  # reproducible
  assert not np.allclose(a["image"], plain["image"])
  cfg = ml_collections.ConfigDict(pneumonia_config.to_dict())
  cfg.brightness, cfg.contrast = 0.1, 0.2
  a, b = first(cfg), first(cfg)
  np.testing.assert_array_equal(a["label"], plain["label"])
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.allclose(a["image"], plain["image"])
  # Grey images stay grey: one brightness and one contrast factor for all three channels.
  np.testing.assert_allclose(a["image"][..., 0] * STD[0] + MEAN[0],
                             a["image"][..., 2] * STD[2] + MEAN[2], atol=1e-4)


# -------------------------------------------------------------------- EMA --


def test_ema_update_math_and_frozen_leaves():
  params = {"bn": {"scale": jnp.ones(3)}, "conv": {"kernel": jnp.full((2,), 5.0)}}
  avg = {"bn": {"scale": jnp.zeros(3)}, "conv": {"kernel": jnp.full((2,), 7.0)}}
  mask = {"bn": True, "conv": {"kernel": False}}  # a prefix tree, as jaxbn.masks makes
  out = ema.update(avg, params, mask, 0.9, count=100, warmup=False)
  np.testing.assert_allclose(out["bn"]["scale"], 0.1 * np.ones(3), rtol=1e-6)
  np.testing.assert_array_equal(out["conv"]["kernel"], params["conv"]["kernel"])
  # Warm-up: decay min(0.9, (1+t)/(10+t)) → 0.1 at t=0.
  out = ema.update(avg, params, mask, 0.9, count=0)
  np.testing.assert_allclose(out["bn"]["scale"], 0.9 * np.ones(3), rtol=1e-6)
  assert float(ema.decay_at(0.99, 1000)) == pytest.approx(0.99)
  # The jitted form agrees, and repeated updates converge to constant params.
  upd = ema.make_update(mask, 0.5)
  a = avg
  for t in range(40):
    a = upd(a, params, t)
  np.testing.assert_allclose(a["bn"]["scale"], np.ones(3), atol=1e-6)


# -------------------------------------------------------------------- TTA --


class _Corner(nn.Module):
  """Logits from the top-left pixel only: any flip or shift changes the prediction."""

  @nn.compact
  def __call__(self, x, train=False):
    v = x[:, 0, 0, 0]
    return jnp.stack([v, -v], axis=-1)


def test_tta_averages_view_probabilities():
  model = _Corner()
  x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3) / 100
  batch = {"image": jnp.asarray(x), "label": jnp.array([0, 1])}
  step = tta.make_eval_step(model, multi_label=False, views=("hflip",), image_size=8)
  out = step({}, batch)
  probs = lambda v: jax.nn.softmax(jnp.stack([v, -v], -1), -1)
  want = (probs(x[:, 0, 0, 0]) + probs(x[:, 0, -1, 0])) / 2
  np.testing.assert_allclose(out["probs"], want, rtol=1e-6)
  np.testing.assert_allclose(out["loss"], -np.log(np.asarray(want)[[0, 1], [0, 1]]), rtol=1e-5)
  # No views = the plain evaluation.
  plain = tta.make_eval_step(model, multi_label=False, views=(), image_size=8)({}, batch)
  np.testing.assert_allclose(plain["probs"], probs(x[:, 0, 0, 0]), rtol=1e-6)
  np.testing.assert_allclose(tta.average_probs(jnp.array([[[0.2, 0.8]], [[0.6, 0.4]]])),
                             [[0.4, 0.6]])


def test_tta_shift_repeats_edges_and_views_parse():
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  s = tta.shift_image(x, 0, 1)[0, ..., 0]
  np.testing.assert_array_equal(s[:, 1:], x[0, :, :-1, 0])
  np.testing.assert_array_equal(s[:, 0], x[0, :, 0, 0])
  s = tta.shift_image(x, -1, 0)[0, ..., 0]
  np.testing.assert_array_equal(s[:-1], x[0, 1:, :, 0])
  assert len(tta.make_views(("hflip", "shift"), 64)) == 6
  assert tta.parse_views("hflip+shift") == ("hflip", "shift") == tta.parse_views("hflip, shift")
  assert tta.parse_views("") == ()
  with pytest.raises(ValueError, match="rotate"):
    tta.parse_views("rotate")


# ------------------------------------------------------ trainer end to end --


def test_trainer_with_min_steps_ema_tta_and_no_test(tmp_path):
  c = config_lib.base_config()
  c.model.arch, c.model.init, c.model.dropout_rate = "cbr_small", "random", 0.0
  c.data.image_size, c.data.rotate_deg, c.data.shift = 28, 5.0, 0.05
  c.batch_size, c.eval_batch_size, c.eval_max_batches = 32, 64, 1
  c.warmup = config_lib.stage("head", 0.001, 1e-3)  # 1 step
  c.finetune = config_lib.stage("bn+head", 0.001, 1e-3)
  c.finetune.min_steps = 5
  c.min_evals = 2
  c.ema_decay, c.tta, c.eval_test = 0.9, "hflip", False
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["total_steps"] == 6  # 1 warm-up step + min_steps
  assert [h["step"] for h in results["history"]] == [1, 2, 4, 6]
  assert results["test_auc"] is None and results["test_skipped"]
  assert 0 <= results["tta_val_auc"] <= 1 and "tta_test_auc" not in results
  assert results["tta"] == ["hflip"] and results["ema_decay"] == 0.9
  assert json.loads((tmp_path / "results.json").read_text())["config"]["ema_decay"] == 0.9


# ------------------------------------------------------------ seeds sweep --


def test_parse_seeds():
  assert sweep.parse_seeds("3") == [0, 1, 2]
  assert sweep.parse_seeds("0,5") == [0, 5]
  assert sweep.parse_seeds("7,") == [7]
  for bad in ("0", "a", "1,1"):
    with pytest.raises(ValueError):
      sweep.parse_seeds(bad)


def test_seeds_sweep_runs_the_config_file_per_seed_and_dataset():
  path = os.path.join(REPO, "configs", "bn_only.py")
  s = sweep.seeds_sweep(f"{path}:finetune.lr=3e-4", [0, 1, 2], ["pneumoniamnist", "retinamnist"])
  runs = sweep.expand(s)
  assert [(r.seed, r.dataset) for r in runs] == [
      (0, "pneumoniamnist"), (0, "retinamnist"), (1, "pneumoniamnist"), (1, "retinamnist"),
      (2, "pneumoniamnist"), (2, "retinamnist")]
  assert len({r.name for r in runs}) == 6 and all(r.strategy == "bn_only" for r in runs)
  want = sweep.load_config_file(f"{path}:finetune.lr=3e-4")
  for r in runs:
    cfg = sweep.run_config(r)
    assert cfg.seed == r.seed and cfg.data.name == r.dataset
    assert cfg.finetune.lr == 3e-4 and cfg.finetune.to_dict() == want.finetune.to_dict()
  assert sweep.seeds_sweep(path, [4]).grid.datasets == want.data.name
  with pytest.raises(ValueError, match="not found"):
    sweep.load_config_file("configs/nope.py")


def test_accuracy_presets_expand_to_valid_runs_that_pin_what_they_measured(monkeypatch, tmp_path):
  from jaxbn import validate
  from jaxbn.main import TASKS

  # A later recipe in configs/bn_only.py (another lr, rotations on) must not change what the
  # earlier rounds ran: each pins the recipe it measured, and a strategy changes what it names.
  with open(os.path.join(REPO, "configs", "bn_only.py")) as f:
    later = f.read().replace(
        "  return apply_overrides",
        "  c.finetune.epochs, c.finetune.lr = 32, 2e-2\n"
        "  c.data.rotate_deg, c.data.shift, c.ema_decay = 5.0, 0.2, 0.9\n"
        "  return apply_overrides")
  assert "lr = 32, 2e-2" in later and "shift, c.ema_decay" in later
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "bn_only.py").write_text(later)
  monkeypatch.chdir(tmp_path)  # presets name their base config relative to the working dir

  path = os.path.join(REPO, "configs", "sweeps", "accuracy.py")
  assert sweep.load_config_file(path).name == "accuracy_levers"  # the default preset
  module = load_module(path)
  assert {"levers", "round3", "round9"} <= set(module.PRESETS)
  by_name = {}
  for preset in module.PRESETS:  # every round, including ones added later
    for r in sweep.expand(sweep.load_config_file(f"{path}:{preset}")):
      cfg = sweep.run_config(r)
      validate.check(cfg, tasks=TASKS)
      assert not cfg.eval_test  # lever rounds never read the test split
      by_name[preset, r.strategy, r.dataset, r.seed] = cfg
      if r.fold is not None:
        by_name[preset, r.strategy, r.dataset, r.seed, r.fold] = cfg
  recipe = by_name["round5", "patience8", "retinamnist", 0]
  assert (recipe.finetune.epochs, recipe.finetune.lr, recipe.data.rotate_deg, recipe.data.shift,
          recipe.ema_decay, recipe.model.truncate_at) == (8, 3e-3, 0.0, 0.0, 0.0, "stage-1")
  lr_only = by_name["round6", "lr1e-3", "retinamnist", 0]
  assert (lr_only.finetune.lr, lr_only.data.rotate_deg) == (1e-3, 0.0)
  rot = by_name["round7", "rot_shift", "retinamnist", 1]
  assert (rot.finetune.lr, rot.data.rotate_deg, rot.data.shift) == (3e-3, 10.0, 0.0625)
  e16 = by_name["round9", "lr1e-3_rot_shift_e16", "pneumoniamnist", 0]
  assert (e16.finetune.epochs, e16.finetune.lr, e16.data.rotate_deg, e16.data.shift,
          e16.ema_decay) == (16, 1e-3, 10.0, 0.0625, 0.0)
  assert by_name["round4", "cut_stage6", "retinamnist", 0].model.truncate_at == "stage6"
  acnorm = by_name["round10", "acnorm_batch", "retinamnist", 2]
  assert (acnorm.model.norm, acnorm.bn_stats, acnorm.finetune.epochs, acnorm.finetune.lr,
          acnorm.data.rotate_deg, acnorm.ema_decay) == ("acnorm", "batch", 16, 1e-3, 10.0, 0.0)
  cv = by_name["round11", "recipe", "retinamnist", 0, 3]
  assert (cv.data.folds, cv.data.fold, cv.finetune.epochs, cv.finetune.lr, cv.data.shift,
          cv.bn_stats) == (5, 3, 16, 1e-3, 0.0625, "frozen")
  mix = by_name["round12", "mixup", "retinamnist", 0, 4]
  assert (mix.mixup_alpha, mix.data.fold, mix.data.rotate_deg) == (0.2, 4, 10.0)
  cut_cv = by_name["round11", "cut_recipe", "retinamnist", 0, 0]
  assert (cut_cv.data.fold, cut_cv.finetune.epochs, cut_cv.finetune.lr,
          cut_cv.data.rotate_deg) == (0, 8, 3e-3, 0.0)
  whole = by_name["round3", "recipe", "retinamnist", 1]
  assert (whole.model.truncate_at, whole.finetune.lr, whole.data.rotate_deg) == (None, 3e-3, 0.0)
  with pytest.raises(ValueError, match="Unknown preset"):
    sweep.load_config_file(f"{path}:round99")


# ----------------------------------------------------------------- report --


def test_within_spread():
  assert report.within_spread(0.95, 0.01, 0.955, 0.002) is True
  assert report.within_spread(0.95, 0.001, 0.96, 0.002) is False
  assert report.within_spread(0.95, None, 0.96, None) is None
  assert report.within_spread(0.95, None, 0.951, 0.003) is True


def _done(tmp, name, strategy, seed, val, test=None):
  d = tmp / name
  d.mkdir()
  res = {"arch": "a", "dataset": "d", "strategy": strategy, "best_val_auc": val,
         "test_auc": test, "test_acc": None if test is None else 0.9, "test_skipped": test is None,
         "history": []}
  (d / "results.json").write_text(json.dumps(res))
  (d / "sweep_run.json").write_text(json.dumps(
      {"name": name, "strategy": strategy, "arch": "a", "dataset": "d", "seed": seed}))


def test_report_mean_sd_and_spread_marks(tmp_path):
  for seed, (a, b, c) in enumerate([(0.97, 0.965, 0.90), (0.98, 0.975, 0.91), (0.99, 0.985, 0.92)]):
    _done(tmp_path, f"a{seed}", "A", seed, a)
    _done(tmp_path, f"b{seed}", "B", seed, b)
    _done(tmp_path, f"c{seed}", "C", seed, c)
  runs, plans, _ = report.collect([str(tmp_path)])
  assert all(r.status == "done" for r in runs)  # test_skipped runs count as finished
  rows = {r["strategy"]: r for r in report.summarize(runs, plans)}
  assert rows["A"]["m_best_val_auc"] == pytest.approx(0.98)
  assert rows["A"]["sd_best_val_auc"] == pytest.approx(0.01)
  text = "\n".join(report.spread_markdown(list(rows.values())))
  line = {s: next(l for l in text.splitlines() if f"| {s} |" in l) for s in "ABC"}
  assert "0.9800 ± 0.0100 | best" in line["A"]
  assert "-0.0050 ≈" in line["B"]
  # B is 0.005 below A on every seed: within the seed spread, but paired a steady difference.
  assert "-0.0050 ± 0.0000 (higher in 0 of 3)" in line["B"] and line["A"].endswith("| best | — |")
  assert "-0.0700 |" in line["C"] and "≈" not in line["C"]
  report.write_rows(list(rows.values()), str(tmp_path / "summary"))
  table = json.loads((tmp_path / "summary.json").read_text())
  assert [r["strategy"] for r in table] == ["A", "B", "C"]
  assert table[0]["m_best_val_auc"] == pytest.approx(0.98) and table[0]["m_test_auc"] is None
  csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
  assert csv_lines[0].startswith("dataset,arch,strategy") and len(csv_lines) == 4
