"""Flax ResNet / DenseNet vs torchvision: structure, conversion and numerical parity.

The reference is :mod:`torch_reference` (``torch.nn.functional`` on weights
looked up by torchvision key), fed random state dicts with torchvision's real
key names and shapes. Inputs are small (2×64×64) to keep the file fast.

BN running-variance convention (an inherent, documented difference): in train
mode both frameworks *normalise* with the biased batch variance, but
``torch.nn.BatchNorm2d`` folds the *unbiased* variance (× n/(n-1), n = N·H·W)
into ``running_var`` while ``flax.linen.BatchNorm`` folds the biased one. Batch
means and running means agree exactly; running variances agree once the
n/(n-1) factor is accounted for (``test_train_mode_batch_stats_match_torch``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_reference as tr
from jaxbn.models import densenet, registry, resnet
from jaxbn.weights import convert
from jaxbn.weights import torchvision as tv_weights

# sum(p.numel() for p in torchvision.models.<arch>().parameters())
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
ARCHS = tuple(TORCHVISION_PARAMS)
TORCH_MOMENTUM = 0.1
ATOL = 1e-4


# --------------------------------------------------------------------------- #
# Helpers (cached: several tests share one state dict / one compiled forward).
# --------------------------------------------------------------------------- #


# These graphs run once on tiny inputs: skipping XLA's backend optimisation
# halves their compile time, which dominates this file's run time.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run(fn, *args):
  """``jax.jit(fn)(*args)``, compiled for a single use (``args`` are positional)."""
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)(*args)


def images(size: int = 64, batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


@functools.cache
def state_dict(arch: str) -> dict[str, torch.Tensor]:
  return tr.make_state_dict(arch, seed=0)


@functools.cache
def abstract_variables(arch: str) -> dict:
  return registry.init_shapes(registry.create_model(arch))


@functools.cache
def converted(arch: str) -> dict:
  return convert.convert_state_dict(arch, tr.to_numpy(state_dict(arch)))


@functools.cache
def flax_eval_logits(arch: str, size: int) -> np.ndarray:
  model = registry.create_model(arch)
  return np.asarray(run(model.apply, converted(arch), images(size)))


@pytest.fixture(scope="module", autouse=True)
def _free_cached_weights():
  """The caches above hold a few hundred MB of weights: drop them after this file."""
  yield
  for cached in (state_dict, abstract_variables, converted, flax_eval_logits,
                 _small_case, _small_eval_logits):
    cached.cache_clear()


def get_path(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree)


def tree_shapes(tree):
  return jax.tree_util.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def bn_prefixes(table: dict[str, tuple[str, ...]]) -> set[str]:
  return {k[: -len(".running_mean")] for k in table if k.endswith(".running_mean")}


# --------------------------------------------------------------------------- #
# Structure: parameter counts, key tables, converted trees.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_matches_torchvision(arch):
  assert registry.count_params(abstract_variables(arch)["params"]) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_tree_matches_init_shapes(arch):
  sd = tr.to_numpy(tr.make_state_dict(arch, seed=1))  # not cached: up to 240 MB
  # The reference's own shapes are torchvision's: its parameters add up too.
  assert tr.num_parameters(sd) == TORCHVISION_PARAMS[arch]
  # Every tensor but num_batches_tracked is used exactly once.
  table = tv_weights.key_table(arch)
  assert set(table) == {k for k in sd if not k.endswith("num_batches_tracked")}
  assert len(set(table.values())) == len(table)
  # What convert_state_dict does, minus a second trace of the model.
  expected = abstract_variables(arch)
  variables = convert.apply_key_table(sd, table, expected, arch=arch)
  assert tree_shapes(variables) == tree_shapes(expected)
  assert convert.guess_architecture(sd) == arch


def test_resnet50_bn_affine_count():
  """BN γ+β of torchvision ResNet-50 (the BN-only trainable set) is 53,120."""
  shapes = abstract_variables("resnet50")
  flat_params = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  bn_modules = {
      tuple(k.key for k in path[:-1])
      for path, _ in jax.tree_util.tree_flatten_with_path(shapes["batch_stats"])[0]
  }
  count = sum(
      leaf.size for path, leaf in flat_params if tuple(k.key for k in path[:-1]) in bn_modules
  )
  assert count == 53_120


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_of_maps_every_top_level_module(arch):
  spec = registry.get_spec(arch)
  stages = {name: spec.stage_of(name) for name in abstract_variables(arch)["params"]}
  assert set(stages.values()) == set(range(spec.num_stages + 2))
  assert stages[spec.head] == spec.num_stages + 1
  for name, stage in stages.items():
    if name[-1].isdigit() and not name.startswith(("conv", "bn", "norm")):
      assert str(stage) == name.split("_")[0][-1], name  # layerK_i, denseblockK, transitionK


def test_key_table_examples():
  r50 = tv_weights.key_table("resnet50")
  assert r50["conv1.weight"] == ("params", "conv1", "kernel")
  assert r50["bn1.running_var"] == ("batch_stats", "bn1", "var")
  assert r50["layer4.2.bn3.weight"] == ("params", "layer4_2", "bn3", "scale")
  assert r50["layer1.0.downsample.0.weight"] == ("params", "layer1_0", "downsample_conv", "kernel")
  assert r50["layer3.0.downsample.1.running_mean"] == (
      "batch_stats", "layer3_0", "downsample_bn", "mean")
  assert r50["fc.bias"] == ("params", "fc", "bias")
  # Basic-block ResNets keep an identity shortcut in layer1.
  assert "layer1.0.downsample.0.weight" not in tv_weights.key_table("resnet18")
  d121 = tv_weights.key_table("densenet121")
  assert d121["features.denseblock4.denselayer16.conv2.weight"] == (
      "params", "denseblock4", "denselayer16", "conv2", "kernel")
  assert d121["features.transition3.norm.bias"] == ("params", "transition3", "norm", "bias")
  assert d121["features.norm5.running_mean"] == ("batch_stats", "norm5", "mean")
  assert d121["classifier.weight"] == ("params", "classifier", "kernel")
  with pytest.raises(ValueError, match="not a torchvision architecture"):
    tv_weights.key_table("vgg16")


# --------------------------------------------------------------------------- #
# Legacy DenseNet keys and wrong-architecture errors.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "key, want",
    [
        ("features.denseblock1.denselayer1.norm.1.weight",
         "features.denseblock1.denselayer1.norm1.weight"),
        ("features.denseblock3.denselayer24.conv.2.weight",
         "features.denseblock3.denselayer24.conv2.weight"),
        ("features.denseblock2.denselayer10.norm.2.running_var",
         "features.denseblock2.denselayer10.norm2.running_var"),
        ("module.features.denseblock1.denselayer2.norm.1.bias",
         "module.features.denseblock1.denselayer2.norm1.bias"),
        # Unchanged: modern names, transitions, other families.
        ("features.denseblock1.denselayer1.norm1.weight",
         "features.denseblock1.denselayer1.norm1.weight"),
        ("features.transition1.norm.weight", "features.transition1.norm.weight"),
        ("layer1.0.downsample.1.weight", "layer1.0.downsample.1.weight"),
        ("_blocks.0._bn1.weight", "_blocks.0._bn1.weight"),
    ],
)
def test_normalise_legacy_key(key, want):
  assert tv_weights.normalise_legacy_key(key) == want


def test_normalise_legacy_key_is_identity_on_modern_keys():
  for arch in ("resnet50", "densenet121"):
    for key in tv_weights.key_table(arch):
      assert tv_weights.normalise_legacy_key(key) == key


def test_legacy_densenet_keys_convert():
  legacy = tr.to_legacy_densenet_keys(state_dict("densenet121"))
  assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
  variables = convert.convert_state_dict("densenet121", tr.to_numpy(legacy))
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, converted("densenet121"))


def test_resnet50_checkpoint_as_resnet18_is_refused():
  with pytest.raises(convert.CheckpointError) as info:
    convert.convert_state_dict("resnet18", tr.to_numpy(state_dict("resnet50")))
  msg = str(info.value)
  assert "'resnet18'" in msg
  assert "unexpected keys" in msg and "layer1.0.conv3.weight" in msg
  assert "shape mismatches" in msg and "fc.weight" in msg
  assert "resnet50" in msg.split("unexpected keys")[-1]  # the suggestion


def test_resnet18_checkpoint_as_resnet50_lists_missing_keys():
  with pytest.raises(convert.CheckpointError, match=r"missing keys \[.*conv3.*--arch resnet18"):
    convert.convert_state_dict("resnet50", tr.to_numpy(state_dict("resnet18")))


# --------------------------------------------------------------------------- #
# Numerical parity with the torch reference.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "arch, size", [("resnet18", 64), ("resnet34", 32), ("resnet50", 64), ("densenet121", 64)]
)
def test_eval_logits_match_torch(arch, size):
  x = images(size)
  want, _ = tr.forward(arch, state_dict(arch), tr.nhwc_to_nchw(x))
  assert tree_shapes(converted(arch)) == tree_shapes(abstract_variables(arch))
  got = flax_eval_logits(arch, size)
  assert got.dtype == np.float32 and got.shape == (2, 1000)
  np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=ATOL)


def test_reference_is_sensitive_to_bn_statistics():
  """A wrong BN mapping would show: one deep running_var changes the logits ≫ ATOL."""
  sd = dict(state_dict("resnet18"))
  x = tr.nhwc_to_nchw(images(32))
  base, _ = tr.forward("resnet18", sd, x)
  sd["layer4.1.bn1.running_var"] = sd["layer4.1.bn1.running_var"] * 1.5
  changed, _ = tr.forward("resnet18", sd, x)
  assert (base - changed).abs().max() > 100 * ATOL


def _assert_batch_stats_match(upd, stats, sd, table):
  """Flax's updated batch_stats vs torch's F.batch_norm(training=True) buffers."""
  assert set(stats) == bn_prefixes(table)
  m = TORCH_MOMENTUM
  for prefix, s in stats.items():
    mean = get_path(upd, table[f"{prefix}.running_mean"])
    var = get_path(upd, table[f"{prefix}.running_var"])
    old_var = sd[f"{prefix}.running_var"].numpy()
    batch_var = s.batch_var.numpy()
    # Running means: identical update rule.
    np.testing.assert_allclose(mean, s.running_mean.numpy(), rtol=1e-5, atol=1e-5, err_msg=prefix)
    # Running variances: Flax folds in the biased batch variance …
    np.testing.assert_allclose(
        var, (1 - m) * old_var + m * batch_var, rtol=1e-4, atol=1e-5, err_msg=prefix)
    # … torch the unbiased one, i.e. batch_var * n / (n - 1).
    np.testing.assert_allclose(
        s.running_var.numpy() - var, m * batch_var / (s.count - 1), rtol=1e-3, atol=1e-5,
        err_msg=prefix)


@functools.cache
def _small_case(family: str):
  """A shallow variant (fast to compile), its state dict, key table and reference."""
  b = tr.StateDictBuilder(seed=7)
  if family == "resnet":  # bottleneck blocks, projection in every stage
    stage_sizes = (1, 2, 1, 1)
    tr.resnet_state_dict(b, stage_sizes, bottleneck=True, num_classes=10)
    model = resnet.ResNet(stage_sizes=stage_sizes, bottleneck=True, num_classes=10)
    table = tv_weights.resnet_key_table(stage_sizes, bottleneck=True)
    forward = functools.partial(tr.resnet_forward, stage_sizes=stage_sizes, bottleneck=True)
  else:
    block_config = (2, 3, 2, 2)
    tr.densenet_state_dict(b, block_config, num_classes=10)
    model = densenet.DenseNet(block_config=block_config, num_classes=10)
    table = tv_weights.densenet_key_table(block_config)
    forward = functools.partial(tr.densenet_forward, block_config=block_config)
  variables = convert.apply_key_table(
      tr.to_numpy(b.state_dict), table, registry.init_shapes(model), arch=f"small {family}")
  return model, variables, b.state_dict, table, forward


@functools.cache
def _small_eval_logits(family: str) -> np.ndarray:
  model, variables, *_ = _small_case(family)
  return np.asarray(run(model.apply, variables, images()))


@pytest.mark.parametrize("family", ["resnet", "densenet"])
def test_small_variants_eval_match_torch(family):
  _, _, sd, _, forward = _small_case(family)
  want = forward(tr.Reference(sd), tr.nhwc_to_nchw(images()))
  np.testing.assert_allclose(_small_eval_logits(family), want.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", ["resnet18", "small_bottleneck_resnet", "small_densenet"])
def test_train_mode_batch_stats_match_torch(case):
  """Train-mode logits and every BN's statistics update.

  Full-size ResNet-18; shallow bottleneck ResNet / DenseNet (their full-size
  train graphs take long to compile, and eval parity covers the full topology).
  """
  x = images()
  if case == "resnet18":
    model, variables, sd = registry.create_model(case), converted(case), state_dict(case)
    table = tv_weights.key_table(case)
    stage_sizes, bottleneck = tr.RESNETS[case]
    forward = functools.partial(
        tr.resnet_forward, stage_sizes=stage_sizes, bottleneck=bottleneck)
  else:
    model, variables, sd, table, forward = _small_case(case.split("_")[-1])

  logits, upd = run(
      functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x)
  ref = tr.Reference(sd, train=True)
  want = forward(ref, tr.nhwc_to_nchw(x))
  np.testing.assert_allclose(np.asarray(logits), want.numpy(), rtol=0, atol=ATOL)
  _assert_batch_stats_match(upd, ref.stats, sd, table)


def test_use_running_average_overrides_train():
  """train=True with use_running_average=True: eval BN, statistics untouched."""
  model, variables, *_ = _small_case("resnet")
  logits, upd = run(functools.partial(
      model.apply, train=True, use_running_average=True, mutable=["batch_stats"]),
      variables, images())
  np.testing.assert_allclose(np.asarray(logits), _small_eval_logits("resnet"), atol=1e-6)
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd["batch_stats"],
                         variables["batch_stats"])


# --------------------------------------------------------------------------- #
# Options: feature extractor, bf16, dropout, rematerialisation.
# --------------------------------------------------------------------------- #


def test_resnet50_feature_extractor():
  variables = convert.convert_state_dict(
      "resnet50", tr.to_numpy(state_dict("resnet50")), num_classes=0)
  assert "fc" not in variables["params"]
  model = registry.create_model("resnet50", num_classes=0)
  features = jax.eval_shape(model.apply, variables, images())
  assert features.shape == (2, 2048) and features.dtype == jnp.float32


def test_features_are_what_the_head_sees():
  model, variables, *_ = _small_case("resnet")
  x = images()
  head = variables["params"]["fc"]
  trunk = {"params": {k: v for k, v in variables["params"].items() if k != "fc"},
           "batch_stats": variables["batch_stats"]}
  features = np.asarray(run(model.clone(num_classes=0).apply, trunk, x))
  np.testing.assert_allclose(
      features @ head["kernel"] + head["bias"], _small_eval_logits("resnet"), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model, variables, *_ = _small_case("resnet")
  model = model.clone(dtype=jnp.bfloat16)
  shapes = registry.init_shapes(model)
  assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
  logits, upd = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, images())
  assert logits.dtype == jnp.float32
  assert {x.dtype for x in jax.tree_util.tree_leaves(upd)} == {jnp.dtype(jnp.float32)}
  eval_logits = np.asarray(run(model.apply, variables, images()))
  reference = _small_eval_logits("resnet")
  assert eval_logits.dtype == np.float32 and np.isfinite(eval_logits).all()
  assert np.abs(eval_logits - reference).max() < 0.05 * np.abs(reference).max()
  # bf16 is really used: the result is close to, not equal to, float32's.
  assert np.abs(eval_logits - reference).max() > 1e-5


def test_dropout_only_in_train_mode():
  model, variables, *_ = _small_case("resnet")
  model = model.clone(dropout_rate=0.5)
  x = images()

  def frozen_bn(variables, x, rng):
    return model.apply(variables, x, train=True, use_running_average=True, rngs={"dropout": rng})

  rngs = jax.random.split(jax.random.key(1))
  drop_a, drop_b = run(jax.vmap(frozen_bn, in_axes=(None, None, 0)), variables, x, rngs)
  assert not np.allclose(drop_a, drop_b)
  # Without train, dropout is off (and needs no rng): the dropout-free model's output.
  eval_logits = run(model.apply, variables, x)
  np.testing.assert_allclose(eval_logits, _small_eval_logits("resnet"), atol=1e-6)
  assert not np.allclose(drop_a, eval_logits)


def test_densenet_memory_efficient_is_a_pure_remat():
  plain, variables, *_ = _small_case("densenet")
  remat = plain.clone(memory_efficient=True)
  x = images()
  np.testing.assert_allclose(
      run(remat.apply, variables, x), _small_eval_logits("densenet"), rtol=1e-6, atol=1e-6)
  # One checkpointed region per dense layer (the primitive's name varies by JAX version).
  eqns = jax.make_jaxpr(remat.apply)(variables, x).jaxpr.eqns
  remats = [e for e in eqns if e.primitive.name in ("checkpoint", "remat2", "remat")]
  assert len(remats) == sum(remat.block_config)


def test_resnet_module_names_mirror_torchvision():
  params = abstract_variables("resnet50")["params"]
  assert set(params) == {"conv1", "bn1", "fc"} | {
      f"layer{s}_{i}" for s, n in enumerate((3, 4, 6, 3), 1) for i in range(n)}
  assert set(params["layer1_0"]) == {
      "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"}
  assert resnet.stage_of("layer3_5") == 3
