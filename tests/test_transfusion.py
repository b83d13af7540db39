"""Transfusion initialisers (jaxbn.weights.init): Mean-Var, weight transfusion, slim ResNet.

Variable trees come from ``jax.eval_shape`` filled with numpy draws (no model is
compiled), except one test on the real EfficientNet-Lite0 ImageNet weights.
"""

import jax
import numpy as np
import pytest

from jaxbn import config as config_lib
from jaxbn.models import create_model, init_shapes
from jaxbn.weights import init
from load_file import load_module

FLOAT_LEAVES = jax.tree_util.tree_leaves_with_path
NARROW = (16, 32, 64, 128)


def _fake(shapes, seed, kernel_stats=None):
  """A variables tree shaped like ``shapes``: kernels ~ N(m, s²) with per-tensor m, s."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "kernel":
      m, s = (rng.uniform(-0.05, 0.05), rng.uniform(0.02, 0.2)) if kernel_stats is None else kernel_stats
      return rng.normal(m, s, size=leaf.shape).astype(np.float32)
    return rng.normal(0.5, 0.3, size=leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, jax.tree.map(lambda x: x, shapes))


def _flat(tree):
  return {tuple(getattr(k, "key", k) for k in p): np.asarray(v) for p, v in FLOAT_LEAVES(tree)}


@pytest.fixture(scope="module")
def resnet18():
  # narrow stages (same module names and cuts) keep the trees small and the test fast
  shapes = init_shapes(create_model("resnet18", num_classes=2, stage_widths=NARROW), 32)
  pre_shapes = {c: {k: v for k, v in t.items() if k != "fc"} for c, t in shapes.items()}
  return _fake(shapes, 0), _fake(pre_shapes, 1)  # target random, pretrained (no head)


@pytest.fixture(scope="module")
def lite0_shapes():
  return init_shapes(create_model("efficientnet_lite0", num_classes=2), input_size=32)


def test_transfer_points_and_modules(lite0_shapes):
  assert init.transfer_points("resnet50") == ["none", "conv1", "stage1", "stage2", "stage3", "all"]
  assert init.transfer_points("efficientnet_lite0")[-2:] == ["stage6", "all"]
  names = list(lite0_shapes["params"])
  assert sorted(init.transferred_modules("efficientnet_lite0", "conv1", names)) == [
      "bn0", "conv_stem"]
  assert sorted(init.transferred_modules("efficientnet_lite0", "stage2", names)) == [
      "blocks_0", "blocks_1", "blocks_2", "bn0", "conv_stem"]
  everything = init.transferred_modules("efficientnet_lite0", "all", names)
  assert "conv_head" in everything and "bn1" in everything and "fc" not in everything
  cbr = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "fc"]
  assert sorted(init.transferred_modules("cbr_small", "stem", cbr)) == ["bn1", "conv1"]
  assert init.transferred_modules("cbr_small", "none", cbr) == []
  with pytest.raises(ValueError, match="conv1, stage1, stage2, stage3, all"):
    init.transferred_modules("resnet18", "stage4", names)


@pytest.mark.parametrize("cut,last_stage", [
    ("none", -1), ("conv1", 0), ("stage1", 1), ("stage2", 2), ("stage3", 3), ("all", 4)])
def test_transfusion_copies_prefix_only(resnet18, cut, last_stage):
  from jaxbn.models.resnet import stage_of

  random, pretrained = resnet18
  out = init.transfuse(random, pretrained, "resnet18", cut)
  f_out, f_rnd, f_pre = _flat(out), _flat(random), _flat(pretrained)
  assert set(f_out) == set(f_rnd)
  copied = 0
  for path, v in f_out.items():
    assert v.shape == f_rnd[path].shape and v.dtype == f_rnd[path].dtype
    if path[1] != "fc" and stage_of(path[1]) <= last_stage:  # up to the cut: pretrained
      np.testing.assert_array_equal(v, f_pre[path])
      copied += 1
    else:  # after the cut (and the head): random, different from the pretrained values
      np.testing.assert_array_equal(v, f_rnd[path])
      if path in f_pre:
        assert not np.allclose(v, f_pre[path])
  # batch_stats of copied BNs come along with their params
  if last_stage >= 0:
    np.testing.assert_array_equal(out["batch_stats"]["bn1"]["mean"],
                                  pretrained["batch_stats"]["bn1"]["mean"])
  assert (copied > 0) == (last_stage >= 0)


def test_mean_var_statistics_bn_identity_head_random(resnet18):
  random, pretrained = resnet18
  out = init.mean_var(random, pretrained, jax.random.key(3), head="fc")
  f_out, f_rnd, f_pre = _flat(out), _flat(random), _flat(pretrained)
  bns = init.batchnorm_modules(out)
  assert ("bn1",) in bns and ("layer1_0", "bn2") in bns and ("fc",) not in bns
  n_kernels = 0
  for path, v in f_out.items():
    col, module = path[0], path[1:-1]
    if module in bns:  # identity BN: gamma 1, beta 0, mean 0, var 1
      want = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}[path[-1]]
      np.testing.assert_array_equal(v, np.full_like(v, want))
    elif path[1] == "fc":  # the head: the random init, untouched
      np.testing.assert_array_equal(v, f_rnd[path])
    else:
      assert path[-1] == "kernel" and col == "params"
      p = f_pre[path]
      n = v.size
      # sample mean within 5 standard errors; sample variance within 5 SE (normal)
      assert abs(v.mean() - p.mean()) < 5 * p.std() / np.sqrt(n) + 1e-7, path
      assert abs(v.var() / p.var() - 1) < 5 * np.sqrt(2 / n) + 1e-3, path
      assert not np.allclose(v, p)  # fresh draws, not a copy
      n_kernels += 1
  assert n_kernels == sum(p[-1] == "kernel" for p in f_pre) >= 20  # every backbone conv
  # deterministic in the key, different for another key
  again = init.mean_var(random, pretrained, jax.random.key(3), head="fc")
  np.testing.assert_array_equal(again["params"]["conv1"]["kernel"], out["params"]["conv1"]["kernel"])
  other = init.mean_var(random, pretrained, 4, head="fc")
  assert not np.allclose(other["params"]["conv1"]["kernel"], out["params"]["conv1"]["kernel"])


def test_mean_var_on_real_efficientnet_lite0_weights(lite0_shapes):
  from jaxbn.weights import convert

  pretrained = convert.load_pretrained("efficientnet_lite0", None, num_classes=0)
  random = _fake(lite0_shapes, 0, kernel_stats=(0.0, 0.05))
  out = init.mean_var(random, pretrained, jax.random.key(0), head="fc")
  f_out, f_pre = _flat(out), _flat(pretrained)
  kernels = [p for p in f_out if p[-1] == "kernel" and p[1] != "fc"]
  assert len(kernels) == 1 + 16 * 2 + 15 + 1  # stem, dw+project, expand (not blocks_0), head conv
  for path in kernels:
    v, p = f_out[path], f_pre[path]
    assert abs(v.mean() - p.mean()) < 5 * p.std() / np.sqrt(v.size) + 1e-7, path
    assert abs(v.var() / p.var() - 1) < 5 * np.sqrt(2 / v.size) + 1e-3, path
  assert np.all(f_out[("batch_stats", "blocks_3", "bn1", "var")] == 1.0)
  np.testing.assert_array_equal(out["params"]["fc"]["kernel"], random["params"]["fc"]["kernel"])


def test_slim_resnet_transfusion(resnet18):
  assert init.slim_widths("resnet50") == (64, 128, 128, 256)
  # the slim rule applied to the narrow test ResNet: stages 3-4 at half width
  widths = NARROW[:2] + tuple(w // 2 for w in NARROW[2:])
  model = create_model("resnet18", num_classes=2, stage_widths=widths)
  shapes = init_shapes(model, input_size=32)
  assert shapes["params"]["layer3_0"]["conv1"]["kernel"].shape == (3, 3, 32, 32)
  assert shapes["params"]["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
  assert shapes["params"]["fc"]["kernel"].shape == (64, 2)
  random, (_, pretrained) = _fake(shapes, 5), resnet18
  out = init.transfuse(random, pretrained, "resnet18", "stage2")
  np.testing.assert_array_equal(out["params"]["layer2_1"]["conv2"]["kernel"],
                                pretrained["params"]["layer2_1"]["conv2"]["kernel"])
  np.testing.assert_array_equal(out["params"]["layer3_0"]["conv1"]["kernel"],
                                random["params"]["layer3_0"]["conv1"]["kernel"])
  with pytest.raises(ValueError, match="params/layer3_0/bn1/bias: pretrained \\(64,\\), model \\(32,\\)"):
    init.transfuse(random, pretrained, "resnet18", "stage3")
  with pytest.raises(ValueError, match="ResNets"):
    init.slim_widths("efficientnet_lite0")


def _config(**model):
  c = config_lib.base_config()
  c.model.arch = "cbr_small"
  c.model.dropout_rate = 0.0
  for k, v in model.items():
    c.model[k] = v
  return c


def test_trainer_dispatch(monkeypatch):
  """setup.initial_variables routes mean_var / transfer_up_to here, with the right source."""
  from jaxbn import setup

  model = create_model("cbr_small", num_classes=2)
  shapes = init_shapes(model, input_size=28)
  pre = _fake(init_shapes(create_model("cbr_small", num_classes=0), 28), 7)
  random = _fake(shapes, 8)
  sources = []

  def fake_load(arch, source=None, *, num_classes=None, **kw):
    sources.append((arch, source, num_classes))
    return pre

  monkeypatch.setattr("jaxbn.weights.convert.load_pretrained", fake_load)
  monkeypatch.setattr("jaxbn.models.init_variables", lambda m, rng, *a: random)

  c = _config(init="imagenet", transfer_up_to="stage2")
  assert init.parse_init(c.model.init) == init.Init("pretrained")
  out = setup.initial_variables(c, model, jax.random.key(0))
  np.testing.assert_array_equal(out["params"]["conv2"]["kernel"], pre["params"]["conv2"]["kernel"])
  np.testing.assert_array_equal(out["params"]["conv3"]["kernel"], random["params"]["conv3"]["kernel"])
  assert sources[-1] == ("cbr_small", None, 0)

  out = setup.initial_variables(_config(init="mean_var:/ckpt.pth"), model, jax.random.key(0))
  assert sources[-1] == ("cbr_small", "/ckpt.pth", 0)
  assert np.all(out["params"]["bn2"]["scale"] == 1.0)

  out = setup.initial_variables(_config(init="/ckpt.pth", transfer_up_to="all"), model,
                                jax.random.key(0))
  np.testing.assert_array_equal(out["params"]["conv4"]["kernel"], pre["params"]["conv4"]["kernel"])
  np.testing.assert_array_equal(out["params"]["fc"]["kernel"], random["params"]["fc"]["kernel"])

  setup.initial_variables(_config(init="mean_var_run/ckpt.pth", transfer_up_to="conv1"), model,
                          jax.random.key(0))
  assert sources[-1] == ("cbr_small", "mean_var_run/ckpt.pth", 0)  # a path, not mean_var

  assert init.parse_init("mean_var:3") == init.Init("mean_var", None, 3)
  with pytest.raises(ValueError, match="needs pretrained weights"):
    setup.initial_variables(_config(init="random", transfer_up_to="conv1"), model,
                            jax.random.key(0))
  with pytest.raises(ValueError, match="cannot be combined"):
    setup.initial_variables(_config(init="mean_var", transfer_up_to="conv1"), model,
                            jax.random.key(0))


def test_configs_load():
  import pathlib

  from jaxbn import setup

  root = pathlib.Path(__file__).resolve().parents[1] / "configs"
  got = {}
  for name in ("random", "mean_var", "transfer", "slim"):
    got[name] = load_module(root / f"transfusion_{name}.py").get_config()
  assert got["random"].model.init == "random"
  assert got["mean_var"].model.init == "mean_var"
  assert got["transfer"].model.transfer_up_to == "all"
  assert tuple(got["slim"].model.stage_widths) == (64, 128, 128, 256)
  slim = setup.build_model(got["slim"], 2)
  assert tuple(slim.stage_widths) == (64, 128, 128, 256)
  # one training recipe for all of them
  recipe = lambda c: (c.finetune.to_dict(), c.warmup.epochs, c.bn_stats, c.data.image_size,
                      c.target_auc, c.eval_every_steps)
  assert len({repr(recipe(c)) for c in got.values()}) == 1
