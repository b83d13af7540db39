"""One vocabulary for network prefixes: TruncatedTL cuts, weight transfusion, from_stage."""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest

from jaxbn import masks
from jaxbn.models import create_model, get_cut, get_spec, init_shapes, layers, prefix
from jaxbn.weights import init


@functools.lru_cache(maxsize=None)
def _shapes(arch):
  return init_shapes(create_model(arch, num_classes=2), input_size=32)


def _top(arch):
  return list(_shapes(arch)["params"])


def test_stage_names_and_block_cuts_are_one_prefix():
  # ResNet layerK / DenseNet transitionK = stageK, for truncation and transfusion alike.
  for arch, native in (("resnet18", "layer"), ("densenet121", "transition")):
    spec, top = get_spec(arch), _top(arch)
    for k in (1, 2, 3):
      assert get_cut(arch, f"stage{k}").name == f"{native}{k}"
      assert set(prefix.resolve(spec, f"stage{k}", top)) == set(get_cut(arch, f"{native}{k}").kept)
      assert set(prefix.resolve(spec, f"{native}{k}", top)) == set(get_cut(arch, f"{native}{k}").kept)
  # EfficientNet-Lite's own stageK cuts agree with stage_of for K < 7.
  spec, top = get_spec("efficientnet_lite0"), _top("efficientnet_lite0")
  for k in range(1, 7):
    assert set(prefix.resolve(spec, f"stage{k}", top)) == set(get_cut(spec.name, f"stage{k}").kept)
  assert "conv_head" not in prefix.resolve(spec, "stage7", top)  # its cut: MBConv blocks only
  assert "conv_head" in prefix.resolve(spec, "all", top) and "fc" not in prefix.resolve(spec, "all", top)


def test_truncate_at_takes_stage_names_and_builds_the_same_model():
  a = init_shapes(create_model("resnet18", num_classes=2, truncate_at="stage2"), 32)
  b = init_shapes(create_model("resnet18", num_classes=2, truncate_at="layer2"), 32)
  assert sorted(a["params"]) == sorted(b["params"]) == sorted(
      ["conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1", "fc"])
  assert get_cut("resnet18", "conv1").name == "stem"  # Transfusion's spelling of the stem


def test_stage_minus_k_counts_from_the_end_in_every_family():
  # "Every stage but the last" whatever the depth: the recipe's cut works for any arch.
  for arch, cut in (("resnet18", "layer3"), ("resnet50", "layer3"), ("densenet121", "transition3"),
                    ("efficientnet_lite0", "stage6"), ("efficientnet_lite2", "stage6"),
                    ("cbr_small", "stage3")):
    assert get_cut(arch, "stage-1").name == cut
  assert get_cut("resnet18", "stage-3").name == "layer1"
  assert get_cut("efficientnet_lite0", "stage-6").name == "stage1"
  assert set(prefix.resolve(get_spec("resnet18"), "stage-4", _top("resnet18"))) == {"conv1", "bn1"}
  assert sorted(init_shapes(create_model("resnet18", 2, truncate_at="stage-1"), 32)["params"]) == \
      sorted(init_shapes(create_model("resnet18", 2, truncate_at="layer3"), 32)["params"])
  for bad in ("stage-5", "stage-0x", "stage--1"):  # beyond the stem, or not a number
    with pytest.raises(prefix.PrefixError):
      prefix.resolve(get_spec("resnet18"), bad, _top("resnet18"))


def test_transfer_up_to_takes_truncation_cut_names():
  names = _top("resnet18")
  assert sorted(init.transferred_modules("resnet18", "layer2_0", names)) == sorted(
      ["conv1", "bn1", "layer1_0", "layer1_1", "layer2_0"])
  assert sorted(init.transferred_modules("resnet18", "stem", names)) == ["bn1", "conv1"]
  assert sorted(init.transferred_modules("resnet18", "conv1", names)) == ["bn1", "conv1"]


def test_one_error_type_listing_the_valid_names():
  with pytest.raises(prefix.PrefixError, match="valid cuts: block level layer1, layer2, layer3"):
    get_cut("resnet18", "stage4")  # stage 4 ends at the full model: not a cut
  with pytest.raises(prefix.PrefixError, match="conv1, stage1, stage2, stage3, all.*layer1_0"):
    init.transferred_modules("resnet18", "layer9", _top("resnet18"))
  no_cuts = dataclasses.replace(get_spec("cbr_small"), cuts=None)  # a family without cuts
  with pytest.raises(prefix.PrefixError, match="does not support truncate_at"):
    prefix.truncation_cut(no_cuts, "stage1")
  assert issubclass(prefix.PrefixError, ValueError)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0", "cbr_small"])
def test_from_stage_trains_exactly_what_its_prefix_leaves(arch):
  """masks.from_stage(k) = everything outside prefix.from_stage_prefix(k) (the head included)."""
  spec, shapes = get_spec(arch), _shapes(arch)
  top = list(shapes["params"])
  for k in range(0, spec.num_stages + 2):
    labels = masks.make_labels(shapes["params"], f"from_stage({k})", arch=arch,
                               batch_stats=shapes["batch_stats"])
    trained = {m for m in top
               if any(v == masks.TRAINABLE for v in jax_leaves(labels[m]))}
    frozen = set(prefix.resolve(spec, prefix.from_stage_prefix(k, spec.num_stages), top))
    assert trained == set(top) - frozen, k


def jax_leaves(tree):
  import jax

  return jax.tree_util.tree_leaves(tree)


def _pooled(arch, truncate_at, variables, x, **kwargs):
  """Pooled features of ``arch`` cut at ``truncate_at``, from the matching subset of
  ``variables``."""
  import jax

  model = create_model(arch, num_classes=0, truncate_at=truncate_at, **kwargs)
  wanted = init_shapes(model, input_size=x.shape[1])
  subset = {col: {k: variables[col][k] for k in tree} for col, tree in wanted.items()}
  return jax.device_get(jax.jit(model.apply)(subset, x))


@pytest.mark.parametrize("arch,cut,taps", [
    ("resnet18", "layer3", ("layer1", "stage-2")),   # stage-2 of ResNet = layer2
    ("efficientnet_lite0", "stage-1", ("stage-2",)),  # Lite0: stage 5 beside stage 6
])
def test_head_taps_concatenate_the_pooled_features_of_earlier_cuts(arch, cut, taps):
  import jax
  import numpy as np

  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  model = create_model(arch, num_classes=0, truncate_at=cut, head_taps=taps)
  variables = init.initial_variables(model, jax.random.key(0), arch=arch, init="random")
  got = np.asarray(jax.jit(model.apply)(variables, x))
  parts = [_pooled(arch, get_cut(arch, t).name, variables, x) for t in taps]
  parts.append(_pooled(arch, cut, variables, x))
  np.testing.assert_allclose(got, np.concatenate(parts, axis=-1), rtol=1e-5, atol=1e-6)
  head = get_spec(arch).head
  with_head = init_shapes(create_model(arch, num_classes=3, truncate_at=cut, head_taps=taps), 32)
  assert with_head["params"][head]["kernel"].shape == (got.shape[-1], 3)


def test_global_pool_averages_takes_the_max_or_both():
  import numpy as np

  x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)  # channel 0: 0 2 4 6; channel 1: 1 3 5 7
  np.testing.assert_array_equal(layers.global_pool(x, "avg"), [[3.0, 4.0]])
  np.testing.assert_array_equal(layers.global_pool(x, "max"), [[6.0, 7.0]])
  np.testing.assert_array_equal(layers.global_pool(x, "avgmax"), [[3.0, 4.0, 6.0, 7.0]])
  with pytest.raises(ValueError, match=re.escape("one of avg | max | avgmax, got 'median'")):
    layers.global_pool(x, "median")
  with pytest.raises(ValueError, match="got 'median'"):
    create_model("resnet18", 2, pool="median")


@pytest.mark.parametrize("arch,cut,taps", [
    ("resnet18", "layer3", ("layer2",)),
    ("efficientnet_lite0", "stage-1", ()),
    ("densenet121", "transition2", ()),
    ("cbr_tiny", None, ()),
])
def test_avgmax_pool_concatenates_each_maps_average_and_max(arch, cut, taps):
  import jax
  import numpy as np

  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))  # Lite0's stage 6: a 2 x 2 map
  variables = init.initial_variables(
      create_model(arch, num_classes=0, truncate_at=cut, head_taps=taps), jax.random.key(0),
      arch=arch, init="random")

  def features(pool):
    model = create_model(arch, num_classes=0, truncate_at=cut, head_taps=taps, pool=pool)
    return np.asarray(jax.jit(model.apply)(variables, x))

  avg, most, both = features("avg"), features("max"), features("avgmax")
  assert not np.allclose(avg, most)
  # Each map, taps first, gives its average then its max (ResNet-18's layer2 has 128 channels).
  splits = [128] if taps else []
  expected = [np.concatenate([a, m], axis=-1)
              for a, m in zip(np.split(avg, splits, axis=-1), np.split(most, splits, axis=-1))]
  np.testing.assert_allclose(both, np.concatenate(expected, axis=-1), rtol=1e-5, atol=1e-6)
  head = get_spec(arch).head
  shapes = init_shapes(create_model(arch, 3, truncate_at=cut, head_taps=taps, pool="avgmax"), 32)
  assert shapes["params"][head]["kernel"].shape == (both.shape[-1], 3)


def test_a_head_tap_must_end_before_the_cut():
  # DenseNet-121, whole: transition2 (256 channels) beside norm5 (1024).
  shapes = init_shapes(create_model("densenet121", 3, head_taps=("transition2",)), 32)
  assert shapes["params"]["classifier"]["kernel"].shape == (256 + 1024, 3)
  with pytest.raises(prefix.PrefixError, match="'layer3' is not before the cut 'layer3'"):
    create_model("resnet18", 2, truncate_at="layer3", head_taps=("layer3",))
  with pytest.raises(prefix.PrefixError, match="not before the cut 'stage5'"):
    create_model("efficientnet_lite0", 2, truncate_at="stage5", head_taps=("stage6",))
  with pytest.raises(prefix.PrefixError, match="Unknown truncate_at='layer9'"):
    create_model("resnet18", 2, head_taps=("layer9",))
