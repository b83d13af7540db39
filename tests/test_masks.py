"""Tests for jaxbn.masks: label trees, counts and the partitioned optimizer."""

from __future__ import annotations

import doctest

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbn import masks

# --------------------------------------------------------------------------- #
# A small network jaxbn did not define, with Flax's default names.
# --------------------------------------------------------------------------- #


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)  # Block_0/Conv_0
    x = nn.BatchNorm(use_running_average=not train, use_scale=False)(x)  # bias only
    return nn.relu(x)


class _RunningScale(nn.Module):
  """Not a BatchNorm: owns mean/var statistics, but its `scale` has another shape."""

  @nn.compact
  def __call__(self, x):
    self.variable("batch_stats", "mean", jnp.zeros, (8,))
    self.variable("batch_stats", "var", jnp.ones, (8,))
    return x * self.param("scale", nn.initializers.ones, (1,))


class TinyNet(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)  # Conv_0
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))  # BatchNorm_0
    x = _Block(name="Block_0")(x, train)
    x = nn.BatchNorm(use_running_average=not train, name="my_norm")(x)
    x = _RunningScale(name="odd")(x)
    x = nn.LayerNorm()(x)  # LayerNorm_0: 1-D scale/bias but no statistics
    return nn.Dense(self.num_classes)(x.mean((1, 2)))  # Dense_0


TINY_STAGES = {
    "Conv_0": 0,
    "BatchNorm_0": 0,
    "Block_0": 1,
    "my_norm": 2,
    "odd": 2,
    "LayerNorm_0": 2,
    "Dense_0": 3,
}

ALL = {
    "Conv_0/kernel", "Conv_0/bias",
    "BatchNorm_0/scale", "BatchNorm_0/bias",
    "Block_0/Conv_0/kernel", "Block_0/BatchNorm_0/bias",
    "my_norm/scale", "my_norm/bias",
    "odd/scale",
    "LayerNorm_0/scale", "LayerNorm_0/bias",
    "Dense_0/kernel", "Dense_0/bias",
}  # fmt: skip
BN_SCALE = {"BatchNorm_0/scale", "my_norm/scale"}
BN_BIAS = {"BatchNorm_0/bias", "Block_0/BatchNorm_0/bias", "my_norm/bias"}
BN = BN_SCALE | BN_BIAS
HEAD = {"Dense_0/kernel", "Dense_0/bias"}
LAYER_NORM = {"LayerNorm_0/scale", "LayerNorm_0/bias"}


def _path(keypath) -> str:
  return "/".join(str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey))


def _trainable(labels) -> set[str]:
  leaves = jax.tree_util.tree_flatten_with_path(labels)[0]
  return {_path(kp) for kp, label in leaves if label == masks.TRAINABLE}


def _expected(params, trainable: set[str]):
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: masks.TRAINABLE if _path(kp) in trainable else masks.FROZEN, params
  )


def _concrete(abstract_variables, seed: int = 0):
  """Random params and neutral statistics without compiling `init` (keeps tests fast)."""
  rng = np.random.default_rng(seed)
  fill = {"mean": np.zeros, "var": np.ones}

  def leaf(keypath, x):
    name = _path(keypath).rsplit("/", 1)[-1]
    if name in fill and _path(keypath[:1]) == "batch_stats":
      return jnp.asarray(fill[name](x.shape, x.dtype))
    return jnp.asarray(0.5 * rng.standard_normal(x.shape), x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract_variables)


CONTAINERS = {"dict": lambda t: t, "FrozenDict": flax.core.freeze}


@pytest.fixture(scope="module")
def tiny():
  """Abstract variables (ShapeDtypeStructs): labels only need shapes."""
  variables = jax.eval_shape(TinyNet().init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  assert _trainable(_expected(variables["params"], ALL)) == ALL  # the fixture is as drawn
  return variables


# --------------------------------------------------------------------------- #
# Label trees on the small network.
# --------------------------------------------------------------------------- #

CASES = {
    "full": ALL,
    "bn": BN,
    "bn_scale": BN_SCALE,
    "bn_bias": BN_BIAS,
    "head": HEAD,
    "bn+head": BN | HEAD,
    "bn_scale+head": BN_SCALE | HEAD,
    " bn_bias + head ": BN_BIAS | HEAD,
    "from_stage(0)": ALL,
    "from_stage(2)": {p for p in ALL if TINY_STAGES[p.split("/")[0]] >= 2},
    "from_stage(3)": HEAD,
    "regex:.*/kernel": {p for p in ALL if p.endswith("/kernel")},
    "regex:Block_0/.+|Dense_0/bias": {"Block_0/Conv_0/kernel", "Block_0/BatchNorm_0/bias",
                                      "Dense_0/bias"},
    "bn_scale+regex:LayerNorm_0/.*": BN_SCALE | LAYER_NORM,
}


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("strategy", CASES)
def test_label_tree_exact(tiny, strategy, container):
  wrap = CONTAINERS[container]
  params, batch_stats = wrap(tiny["params"]), wrap(tiny["batch_stats"])
  labels = masks.make_labels(
      params, strategy, batch_stats=batch_stats, stage_of=TINY_STAGES.__getitem__
  )
  assert labels == _expected(params, CASES[strategy])
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  assert type(labels) is type(params)
  assert type(labels["Block_0"]) is type(params["Block_0"])


def test_selector_predicate_uses_every_context_keyword(tiny):
  params, stats = tiny["params"], tiny["batch_stats"]
  chosen = lambda pred: {p for p in ALL if pred(tuple(p.split("/")))}
  bn = masks.parse_strategy("bn").predicate(params, batch_stats=stats)
  assert chosen(bn) == BN
  late = masks.parse_strategy("from_stage(2)").predicate(params, batch_stats=stats,
                                                       stage_of=TINY_STAGES.__getitem__)
  assert chosen(late) == {p for p in ALL if TINY_STAGES[p.split("/")[0]] >= 2}
  odd_head = masks.parse_strategy("head").predicate(params, head="my_norm")
  assert chosen(odd_head) == {"my_norm/scale", "my_norm/bias"}
  only_odd = lambda path, module_params, module_stats: path[-1] == "my_norm"
  assert chosen(masks.parse_strategy("bn").predicate(params, batch_stats=stats,
                                                     is_norm=only_odd)) == {"my_norm/scale",
                                                                            "my_norm/bias"}


def test_selectors_add_up(tiny):
  params, stats = tiny["params"], tiny["batch_stats"]
  run = lambda s: _trainable(masks.make_labels(params, s, batch_stats=stats,
                                               stage_of=TINY_STAGES.__getitem__))
  assert run(masks.regex(r"Dense_0/.*") + "bn") == HEAD | BN
  assert run("bn_scale" + masks.regex(r"LayerNorm_0/.*")) == BN_SCALE | LAYER_NORM
  assert run(["bn_bias", masks.from_stage(3)]) == BN_BIAS | HEAD
  assert run(masks.regex(r"Conv_0/.*", r"odd/.*")) == {"Conv_0/kernel", "Conv_0/bias", "odd/scale"}
  assert masks.parse_strategy("bn+from_stage(2)").name == "bn+from_stage(2)"


def test_bn_detection_is_structural_not_by_name(tiny):
  labels = masks.make_labels(tiny["params"], "bn", batch_stats=tiny["batch_stats"])
  picked = _trainable(labels)
  assert "my_norm/scale" in picked  # a BN with a custom name
  assert not picked & LAYER_NORM  # 1-D scale/bias but no statistics
  assert "odd/scale" not in picked  # statistics, but shape mismatch
  # Renaming every top-level module does not change what is found.
  rename = {k: f"m{i}" for i, k in enumerate(tiny["params"])}
  params = {rename[k]: v for k, v in tiny["params"].items()}
  stats = {rename[k]: v for k, v in tiny["batch_stats"].items()}
  count_renamed = masks.count(params, masks.make_labels(params, "bn", batch_stats=stats))
  assert count_renamed == masks.count(tiny["params"], labels)


def test_custom_norm_predicate(tiny):
  params = tiny["params"]
  layer_norm = masks.norm_by_name(r"LayerNorm_\d+")
  # No batch_stats needed when the caller opts in to a predicate.
  assert _trainable(masks.make_labels(params, "bn", is_norm=layer_norm)) == LAYER_NORM
  both = lambda *a: masks.is_batchnorm(*a) or layer_norm(*a)
  labels = masks.make_labels(params, "bn_scale", batch_stats=tiny["batch_stats"], is_norm=both)
  assert _trainable(labels) == BN_SCALE | {"LayerNorm_0/scale"}


def test_head_resolution(tiny):
  params = tiny["params"]
  head = lambda h: _trainable(masks.make_labels(params, "head", head=h))
  assert head(None) == HEAD  # the only top-level module with a 2-D kernel
  assert head("Dense_0") == HEAD  # a top-level module
  assert head("Dense_0/kernel") == {"Dense_0/kernel"}  # a path
  assert head(r"Dense_\d+/.*") == HEAD  # a regex
  assert head("Block_0/Conv_0") == {"Block_0/Conv_0/kernel"}  # a nested module


def test_head_detection_ignores_key_order():
  params = {"z_body": {"kernel": jnp.zeros((3, 3, 1, 4))}, "a_fc": {"kernel": jnp.zeros((4, 2))}}
  labels = masks.make_labels(params, "head")
  assert _trainable(labels) == {"a_fc/kernel"}


def test_boxed_params_are_supported():
  class Boxed(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=True)(x)
      init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
      return nn.Dense(2, kernel_init=init)(x)

  variables = jax.eval_shape(Boxed().init, jax.random.key(0), jnp.zeros((1, 4)))
  labels = masks.make_labels(variables["params"], "bn+head", batch_stats=variables["batch_stats"])
  assert masks.count(variables["params"], labels) == (4 + 4 + 4 * 2 + 2, 18)


# --------------------------------------------------------------------------- #
# Helpers.
# --------------------------------------------------------------------------- #


def test_mask_count_summary(tiny):
  params, stats = tiny["params"], tiny["batch_stats"]
  labels = masks.make_labels(params, "bn+head", batch_stats=stats)
  mask = masks.trainable_mask(labels)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert mask["my_norm"]["scale"] is True and mask["Conv_0"]["kernel"] is False
  total = sum(x.size for x in jax.tree.leaves(params))
  expected = 8 + 8 + 8 + 8 + 8 + (8 * 3 + 3)  # BN scale/bias x3 (Block_0 bias only) + head
  assert masks.count(params, labels) == (expected, total)
  # A prefix label tree counts whole subtrees.
  prefix = {k: (masks.TRAINABLE if k == "Block_0" else masks.FROZEN) for k in params}
  assert masks.count(params, prefix) == (3 * 3 * 8 * 8 + 8, total)

  table = masks.summary(params, labels)
  lines = table.splitlines()
  assert lines[0].split() == ["module", "trainable", "total", "%"]
  assert lines[-1].split()[:3] == ["total", f"{expected:,}", f"{total:,}"]
  assert any(line.split()[:2] == ["my_norm", "16"] for line in lines)
  assert len(lines) == len(params) + 2
  nested = masks.summary(params, labels, depth=2)
  assert "Block_0/BatchNorm_0" in nested


def test_docstring_examples_run():
  result = doctest.testmod(masks, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 10 and result.failed == 0


# --------------------------------------------------------------------------- #
# The optimizer: frozen leaves stay put and hold no state.
# --------------------------------------------------------------------------- #


def _opt_state_sizes(opt_state) -> tuple[int, int]:
  """(float scalars, other scalars) held by an optimizer state."""
  leaves = jax.tree.leaves(opt_state)
  floats = sum(x.size for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
  return floats, sum(x.size for x in leaves) - floats


_X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
_Y = jnp.array([0, 1, 2, 1])


@jax.jit
def _loss_and_grads(params, batch_stats):
  """Cross-entropy of TinyNet with eval-mode BN; compiled once for every case below."""

  def loss_fn(p):
    logits = TinyNet().apply({"params": p, "batch_stats": batch_stats}, _X)
    return optax.softmax_cross_entropy_with_integer_labels(logits, _Y).mean()

  return jax.value_and_grad(loss_fn)(params)


@pytest.mark.parametrize(
    "strategy, container",
    [("bn+head", "dict"), ("bn+head", "FrozenDict"), ("bn_scale+from_stage(3)", "dict")],
)
def test_adam_steps_move_only_trainable_leaves(tiny, strategy, container):
  wrap = CONTAINERS[container]
  variables = _concrete(tiny)
  params, batch_stats = wrap(variables["params"]), wrap(variables["batch_stats"])
  tx, labels = masks.build(
      params, strategy, optax.adam(1e-2), batch_stats=batch_stats,
      stage_of=TINY_STAGES.__getitem__,
  )
  trainable, _ = masks.count(params, labels)
  opt_state = tx.init(params)
  floats, others = _opt_state_sizes(opt_state)
  assert floats == 2 * trainable  # mu and nu of trainable leaves only
  assert others <= 2  # Adam's step count

  update = jax.jit(tx.update)
  new = params
  for _ in range(3):
    loss, grads = _loss_and_grads(flax.core.unfreeze(new), variables["batch_stats"])
    updates, opt_state = update(wrap(grads), opt_state, new)
    new = optax.apply_updates(new, updates)
  assert np.isfinite(loss)
  assert type(new) is type(params)

  for (kp, old), new_leaf, label in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(new),
      jax.tree.leaves(labels),
  ):
    if label == masks.FROZEN:
      assert np.array_equal(old, new_leaf), _path(kp)  # bit-identical
    else:
      assert not np.allclose(old, new_leaf), _path(kp)


# --------------------------------------------------------------------------- #
# Bad input.
# --------------------------------------------------------------------------- #


def test_unknown_strategy_lists_valid_ones(tiny):
  with pytest.raises(ValueError, match=r"Unknown strategy term 'fc'.*full, bn, bn_scale, bn_bias, "
                                       r"head, from_stage\(<k>\), regex:<pattern>"):
    masks.make_labels(tiny["params"], "bn+fc", batch_stats=tiny["batch_stats"])
  for bad in ["", "bn+", "from_stage(x)", "BN"]:
    with pytest.raises(ValueError, match="Unknown strategy term"):
      masks.parse_strategy(bad)
  with pytest.raises(TypeError, match="strategy must be"):
    masks.make_labels(tiny["params"], [])


def test_bn_without_batch_stats_is_an_error(tiny):
  for strategy in ["bn", "bn_scale+head", "bn_bias"]:
    with pytest.raises(ValueError, match=r"need batch_stats.*norm_by_name"):
      masks.make_labels(tiny["params"], strategy)
  with pytest.raises(ValueError) as err:
    masks.make_labels(tiny["params"], "bn")
  assert str(err.value) == (
      "BN strategies find BatchNorm layers structurally and need batch_stats: call "
      "make_labels(params, ..., batch_stats=variables['batch_stats']). For norms without "
      "running statistics, or to match by module name instead, pass "
      "is_norm=jaxbn.masks.norm_by_name(<regex>) (or any predicate).")
  # Strategies that do not look at norms need no statistics.
  assert masks.make_labels(tiny["params"], "head")


def test_bn_with_wrong_batch_stats_is_an_error(tiny):
  with pytest.raises(ValueError, match=r"'bn' selects no parameter.*batch_stats top level: "
                                       r".*params"):
    masks.make_labels(tiny["params"], "bn", batch_stats=tiny)  # whole variables


def test_head_not_found_errors(tiny):
  params = tiny["params"]
  with pytest.raises(ValueError, match=r"Head 'classifier' \(from head=\).*Dense_0"):
    masks.make_labels(params, "bn+head", batch_stats=tiny["batch_stats"], head="classifier")
  two_dense = {**params, "Dense_1": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)}}
  with pytest.raises(ValueError, match=r"several top-level modules hold a 2-D 'kernel': "
                                       r"Dense_0, Dense_1.*head="):
    masks.make_labels(two_dense, "head")
  no_dense = {k: v for k, v in params.items() if k != "Dense_0"}
  with pytest.raises(ValueError) as err:
    masks.make_labels(no_dense, "head")
  assert str(err.value).startswith(
      "Cannot find the classifier head: no top-level module holds a 2-D 'kernel'. Pass "
      "head='<module name>' (or a path regex), or arch= for a jaxbn model. Top-level modules: "
      "BatchNorm_0, Block_0, Conv_0, LayerNorm_0, my_norm, odd.")
  with pytest.raises(ValueError, match=r"Pass variables\['params'\]"):
    masks.make_labels(tiny, "head")


def test_other_errors(tiny):
  params = tiny["params"]
  with pytest.raises(ValueError, match=r"from_stage\(k\) needs stage_of="):
    masks.make_labels(params, "from_stage(1)")
  with pytest.raises(ValueError, match=r"'from_stage\(9\)' selects no parameter"):
    masks.make_labels(params, "from_stage(9)", stage_of=TINY_STAGES.__getitem__)
  with pytest.raises(ValueError, match=r"'regex:fc/.\*' selects no parameter.*paths look like"):
    masks.make_labels(params, "regex:fc/.*")


# --------------------------------------------------------------------------- #
# jaxbn's own backbones (abstract shapes only: no FLOPs).
# --------------------------------------------------------------------------- #


def _jaxbn_variables(arch: str, num_classes: int = 2):
  models = pytest.importorskip("jaxbn.models")
  return models.init_shapes(models.create_model(arch, num_classes=num_classes), input_size=32)


@pytest.fixture(scope="module")
def resnet50():
  return _jaxbn_variables("resnet50")


def test_resnet50_counts(resnet50):
  params, stats = resnet50["params"], resnet50["batch_stats"]
  head = 2048 * 2 + 2
  count = lambda s, **kw: masks.make_labels(params, s, batch_stats=stats, **kw)
  assert masks.count(params, count("bn"))[0] == 53_120
  assert masks.count(params, count("bn_scale"))[0] == 53_120 // 2
  assert masks.count(params, count("bn_bias"))[0] == 53_120 // 2
  assert masks.count(params, count("bn+head", arch="resnet50"))[0] == 53_120 + head
  assert masks.count(params, count("bn+head"))[0] == 53_120 + head  # auto-detected fc
  assert masks.count(params, count("full"))[0] == 23_512_130


def test_resnet50_from_stage_4_is_layer4_and_fc(resnet50):
  params = resnet50["params"]
  labels = masks.make_labels(params, "from_stage(4)", arch="resnet50")
  expected = {k for k in params if k.startswith("layer4_")} | {"fc"}
  assert len(expected) == 4
  paths = {_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert labels == _expected(params, {p for p in paths if p.split("/")[0] in expected})


def test_resnet50_opt_state_has_no_frozen_moments(resnet50):
  params, stats = resnet50["params"], resnet50["batch_stats"]
  tx, labels = masks.build(params, "bn+head", optax.adam(1e-3), batch_stats=stats, arch="resnet50")
  opt_state = jax.eval_shape(tx.init, params)
  floats, others = _opt_state_sizes(opt_state)
  assert floats == 2 * (53_120 + 2048 * 2 + 2)
  assert others <= 2


def test_densenet121_bn_count_matches_paper():
  variables = _jaxbn_variables("densenet121")
  labels = masks.make_labels(
      variables["params"], "bn+head", batch_stats=variables["batch_stats"], arch="densenet121"
  )
  bn_only = masks.make_labels(variables["params"], "bn", batch_stats=variables["batch_stats"])
  assert masks.count(variables["params"], bn_only)[0] == 83_648  # Kanavati & Tsuneki, Keras
  assert masks.count(variables["params"], labels)[0] == 83_648 + 1024 * 2 + 2


# --------------------------------------------------------------------------- #
# Edge cases: overlapping unions, partial statistics, affine-less norms, heads.
# --------------------------------------------------------------------------- #

STAGE_2_UP = {p for p in ALL if TINY_STAGES[p.split("/")[0]] >= 2}


OVERLAPPING = [
    ("bn+from_stage(2)", BN | STAGE_2_UP),  # my_norm is in both
    ("from_stage(2)+bn", BN | STAGE_2_UP),
    ("full+bn", ALL),
    ("bn+full", ALL),
    ("bn+bn_scale", BN),
    ("bn_scale+bn+bn_bias", BN),
    ("head+from_stage(3)", HEAD),
    ("head+regex:Dense_0/.*", HEAD),
    (["bn", "from_stage(2)", "head"], BN | STAGE_2_UP | HEAD),
    (masks.from_stage(2) + "bn", BN | STAGE_2_UP),
    ("bn" + masks.regex(r"my_norm/.*", r".*/scale"), BN | {p for p in ALL if p.endswith("scale")}),
]


@pytest.mark.parametrize("strategy, expected", OVERLAPPING, ids=[str(s) for s, _ in OVERLAPPING])
def test_overlapping_unions_train_everything_either_selects(tiny, strategy, expected):
  assert BN & STAGE_2_UP == {"my_norm/scale", "my_norm/bias"}  # the terms overlap
  labels = masks.make_labels(tiny["params"], strategy, batch_stats=tiny["batch_stats"],
                             stage_of=TINY_STAGES.__getitem__)
  assert _trainable(labels) == expected


def test_is_batchnorm_needs_matching_mean_var_and_affine():
  c = 4
  ones, zeros = np.ones(c), np.zeros(c)
  full = {"scale": ones, "bias": zeros}
  stats = {"mean": zeros, "var": ones}
  bn = lambda params, st: masks.is_batchnorm(("any", "name"), params, st)
  assert bn(full, stats)
  assert bn({"scale": ones}, stats) and bn({"bias": zeros}, stats)  # one affine part
  assert bn(full, {**stats, "extra": np.zeros(7)})  # other statistics do not matter
  stacked = np.ones((3, c))  # a scanned BN: (L, C) params and statistics
  assert bn({"scale": stacked, "bias": stacked}, {"mean": stacked, "var": stacked})
  # Partial or mismatched statistics.
  assert not bn(full, None) and not bn(full, {})
  assert not bn(full, {"mean": zeros})  # mean without var
  assert not bn(full, {"var": ones})  # var without mean
  assert not bn(full, {"mean": zeros, "var": np.ones(c + 1)})  # var of another shape
  assert not bn(full, {"mean": zeros, "var": np.ones((1, c))})
  assert not bn(full, {"mean": np.zeros(()), "var": np.ones(())})  # scalar statistics
  assert not bn({"scale": np.ones(()), "bias": np.zeros(())},
                {"mean": np.zeros(()), "var": np.ones(())})
  # Affine parameters that do not fit the statistics, or none at all.
  assert not bn({}, stats) and not bn({"kernel": np.ones((c, c))}, stats)
  assert not bn({"scale": np.ones(c + 1), "bias": zeros}, stats)
  assert not bn({"scale": ones, "bias": np.zeros(c + 1)}, stats)
  assert not bn({"scale": stacked}, stats)


def _bn_params(c=4):
  return {"scale": jnp.ones(c), "bias": jnp.zeros(c)}


def test_partial_statistics_are_not_batchnorm_in_make_labels():
  params = {
      "good": _bn_params(),
      "no_var": _bn_params(),
      "no_mean": _bn_params(),
      "var_shape": _bn_params(),
      "head": {"kernel": jnp.zeros((4, 2))},
  }
  batch_stats = {
      "good": {"mean": jnp.zeros(4), "var": jnp.ones(4)},
      "no_var": {"mean": jnp.zeros(4)},
      "no_mean": {"var": jnp.ones(4)},
      "var_shape": {"mean": jnp.zeros(4), "var": jnp.ones(8)},
  }
  labels = masks.make_labels(params, "bn", batch_stats=batch_stats)
  assert _trainable(labels) == {"good/scale", "good/bias"}
  del batch_stats["good"]
  with pytest.raises(ValueError, match=r"'bn' selects no parameter.*no norm layer found"):
    masks.make_labels(params, "bn+head", batch_stats=batch_stats)


class _NoAffine(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=True, use_scale=False, use_bias=False)(x)  # no params
    x = nn.BatchNorm(use_running_average=True, use_scale=False, name="bias_only")(x)
    return nn.Dense(2)(x.mean((1, 2)))


def test_norms_without_scale_or_bias():
  variables = jax.eval_shape(_NoAffine().init, jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
  params, stats = variables["params"], variables["batch_stats"]
  assert "BatchNorm_0" in stats and "BatchNorm_0" not in params  # statistics only
  run = lambda s: _trainable(masks.make_labels(params, s, batch_stats=stats))
  assert run("bn") == run("bn_bias") == {"bias_only/bias"}
  assert run("bn+head") == {"bias_only/bias", "Dense_0/kernel", "Dense_0/bias"}
  with pytest.raises(ValueError, match=r"'bn_scale' selects no parameter"):
    run("bn_scale")
  tx, labels = masks.build(params, "bn", optax.adam(1e-3), batch_stats=stats)
  assert masks.count(params, labels)[0] == 4
  assert sum(x.size for x in jax.tree.leaves(jax.eval_shape(tx.init, params))) == 2 * 4 + 1


def test_nested_and_ambiguous_heads():
  params = {
      "backbone": {
          "Dense_0": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)},  # nested: not a head
          "proj": {"kernel": jnp.zeros((4, 4))},
      },
      "Dense_0": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)},
      "Dense_01": {"kernel": jnp.zeros((3, 3, 4, 4))},  # 4-D: a conv, not a head
  }
  head = lambda **kw: _trainable(masks.make_labels(params, "head", **kw))
  top = {"Dense_0/kernel", "Dense_0/bias"}
  assert head() == top  # detection: top-level modules holding a 2-D kernel
  assert head(head="Dense_0") == top  # a module path is matched from the top, whole keys
  assert head(head="backbone/Dense_0") == {"backbone/Dense_0/kernel", "backbone/Dense_0/bias"}
  assert head(head=".*Dense_0/kernel") == {"Dense_0/kernel", "backbone/Dense_0/kernel"}
  assert head(head="backbone/proj/kernel") == {"backbone/proj/kernel"}
  for partial in ["Dense", "backbone/Dense", "Dense_0/ker"]:  # not a whole key, not a full match
    with pytest.raises(ValueError, match=rf"Head '{partial}' \(from head=\) is neither"):
      head(head=partial)
  # Two top-level candidates: ambiguous, the caller must choose.
  two = {**params, "aux": {"kernel": jnp.zeros((4, 5))}}
  with pytest.raises(ValueError, match=r"several top-level modules hold a 2-D 'kernel': "
                                       r"(Dense_0, aux|aux, Dense_0)"):
    masks.make_labels(two, "head")
  assert _trainable(masks.make_labels(two, "head", head="aux")) == {"aux/kernel"}
  # A top-level module whose 2-D kernel sits one level down is not a candidate either.
  nested_only = {"enc": {"kernel": jnp.zeros((3, 3, 1, 4))},
                 "cls": {"Dense_0": {"kernel": jnp.zeros((4, 2))}}}
  with pytest.raises(ValueError, match=r"no top-level module holds a 2-D 'kernel'"):
    masks.make_labels(nested_only, "head")


def test_from_stage_bounds(tiny):
  run = lambda k: _trainable(masks.make_labels(tiny["params"], masks.from_stage(k),
                                               stage_of=TINY_STAGES.__getitem__))
  assert run(-1) == run(0) == ALL
  assert run(1) == {p for p in ALL if TINY_STAGES[p.split("/")[0]] >= 1}
  assert run(3) == HEAD
  assert masks.parse_strategy("from_stage( -1 )").name == "from_stage(-1)"


def test_summary_table_exact_layout_and_natural_order():
  params = {
      "blocks_10": {"kernel": np.zeros((2, 3))},
      "blocks_2": {"scale": np.ones(4), "bias": np.zeros(4)},
      "fc": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)},
      "temp": {"t": np.ones(())},  # one scalar
  }
  labels = masks.make_labels(params, "regex:blocks_2/scale|fc/.*|temp/t")
  assert masks.summary(params, labels) == "\n".join([
      "module     trainable  total       %",
      "blocks_2           4      8   50.00",
      "blocks_10          0      6    0.00",
      "fc                10     10  100.00",
      "temp               1      1  100.00",
      "total             15     25   60.00",
  ])
  assert masks.summary(params, labels, depth=0).splitlines()[1].split() == [
      "(root)", "15", "25", "60.00"]
  short = {"bn": {"scale": np.ones(4)}, "fc": {"kernel": np.zeros((4, 2))}}  # names < "trainable"
  assert masks.summary(short, masks.make_labels(short, "regex:fc/.*")) == "\n".join([
      "module  trainable  total       %",
      "bn              0      4    0.00",
      "fc              8      8  100.00",
      "total           8     12   66.67",
  ])


def test_where_checks_its_predicate_and_names_it():
  params = {"conv": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(4)},
            "fc": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)}}  # 4 leaves, 3 shown
  with pytest.raises(TypeError, match=r"^where\(\) needs a callable \(path, leaf\) -> bool, "
                                      r"got 'bn'\.$"):
    masks.where("bn")

  class IsBias:  # a callable object has no __name__
    def __call__(self, path, leaf):
      return path[-1] == "bias"

  assert masks.where(IsBias()).name == "where(predicate)"
  assert masks.where(IsBias(), name="biases").name == "where(biases)"

  def never(path, leaf):
    return False

  assert masks.where(never).name == "where(never)"
  with pytest.raises(ValueError) as err:
    masks.make_labels(params, masks.where(never))
  assert "where(never)" in str(err.value)
  assert "paths look like conv/bias, conv/kernel, fc/bias." in str(err.value)


def test_messages_name_the_problem(tiny):
  params = tiny["params"]
  with pytest.raises(ValueError, match=r"^norm_by_name needs at least one pattern\.$"):
    masks.norm_by_name()
  with pytest.raises(ValueError, match=r"^regex\(\) needs at least one pattern\.$"):
    masks.regex()
  assert masks.regex(r"a/.*", "b").name == "regex:a/.*|b"
  assert masks.parse_strategy("bn+regex:fc/.*|x").name == "bn+regex:fc/.*|x"
  first = [_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0][:3]]
  with pytest.raises(ValueError) as err:
    masks.make_labels(params, "regex:nothing")
  assert str(err.value).endswith(f"no path fully matches; paths look like {', '.join(first)}.")
  # The "whole variables dict" hint appears when a top-level key is 'params' or 'batch_stats'.
  with pytest.raises(ValueError) as err:
    masks.make_labels(params, "head", head="classifier")
  assert str(err.value).endswith(f"Top-level modules: {', '.join(params)}.")
  for top in ("params", "batch_stats"):
    with pytest.raises(ValueError) as err:
      masks.make_labels({top: params}, "head")
    assert str(err.value).endswith(
        f"Top-level modules: {top}. (Pass variables['params'] and variables['batch_stats'], "
        "not the whole variables dict.)")
  with pytest.raises(ValueError) as err:
    masks.make_labels(params, "bn", batch_stats={"a": {"x": jnp.zeros(1)}, "b": {}})
  assert str(err.value) == (
      "Strategy term 'bn' selects no parameter: no norm layer found (BatchNorm = a params "
      "module with scale/bias shaped like the mean/var its batch_stats path owns). Check that "
      "batch_stats is variables['batch_stats']; batch_stats top level: a, b.")
  with pytest.raises(ValueError, match=r"batch_stats top level: \(empty\)\.$"):
    masks.make_labels(params, "bn_scale", batch_stats={})
  many = {f"m{i}": {} for i in range(10)}
  with pytest.raises(ValueError, match=r"batch_stats top level: m0, m1, m2, m3, m4, m5, m6, m7\.$"):
    masks.make_labels(params, "bn_bias", batch_stats=many)


def test_build_forwards_every_option(tiny):
  params, stats = tiny["params"], tiny["batch_stats"]
  layer_norm = masks.norm_by_name(r"LayerNorm_\d+")
  for strategy, kw in [
      ("head", {"head": "Block_0/Conv_0"}),
      ("bn", {"is_norm": layer_norm}),
      ("from_stage(2)", {"stage_of": TINY_STAGES.__getitem__}),
  ]:
    _, labels = masks.build(params, strategy, optax.sgd(0.1), batch_stats=stats, **kw)
    assert labels == masks.make_labels(params, strategy, batch_stats=stats, **kw), strategy
  resnet = _jaxbn_variables("resnet18")
  _, labels = masks.build(resnet["params"], "from_stage(4)+head", optax.sgd(0.1), arch="resnet18")
  assert labels == masks.make_labels(resnet["params"], "from_stage(4)", arch="resnet18")


def test_stage_messages(tiny):
  with pytest.raises(ValueError) as err:
    masks.make_labels(tiny["params"], "from_stage(1)")
  assert str(err.value) == (
      "from_stage(k) needs stage_of= (a callable: top-level module name -> stage index, head "
      "last) or arch= naming a jaxbn model whose spec defines stage_of.")
  with pytest.raises(ValueError) as err:
    masks.make_labels(tiny["params"], "from_stage(9)", stage_of=TINY_STAGES.__getitem__)
  assert str(err.value) == (
      "Strategy term 'from_stage(9)' selects no parameter: no top-level module has stage >= 9.")


def test_make_optimizer_takes_labels_or_a_function_of_the_params():
  params = {"bn": {"scale": jnp.ones(4)}, "conv": {"kernel": jnp.ones((3, 3, 4, 4))}}
  labels = {"bn": {"scale": masks.TRAINABLE}, "conv": {"kernel": masks.FROZEN}}
  seen = []

  def labels_of(p):
    seen.append(jax.tree.structure(p))
    return labels

  for given in (labels, labels_of):
    tx = masks.make_optimizer(optax.sgd(1.0), given)
    updates, _ = tx.update(params, tx.init(params), params)
    assert float(jnp.abs(updates["conv"]["kernel"]).max()) == 0.0
    assert jnp.array_equal(updates["bn"]["scale"], -params["bn"]["scale"])
  assert seen and seen[0] == jax.tree.structure(params)  # called with the parameters


def test_strategy_messages_exactly():
  with pytest.raises(ValueError) as err:
    masks.parse_strategy("BN")
  assert str(err.value) == (
      "Unknown strategy term 'BN' in 'BN'; valid: full, bn, bn_scale, bn_bias, head, "
      "from_stage(<k>), regex:<pattern>; combine with '+', e.g. 'bn+head'.")
  with pytest.raises(TypeError) as err:
    masks.make_labels({"a": {"kernel": np.zeros((2, 2))}}, 3)
  assert str(err.value) == ("strategy must be a string, a Selector, a (path, leaf) -> bool "
                            "callable or a non-empty list of them; got 3.")


class _Pair:
  """A pytree node registered without keys: its children get FlattenedIndexKeys."""

  def __init__(self, a, b):
    self.a, self.b = a, b


jax.tree_util.register_pytree_node(_Pair, lambda p: ((p.a, p.b), None), lambda _, c: _Pair(*c))


def test_paths_through_lists_and_unkeyed_nodes():
  params = {"layers": [{"kernel": np.zeros((2, 2))}, {"kernel": np.zeros((2, 2))}],
            "pair": _Pair(np.zeros(2), np.zeros(3))}
  labels = masks.make_labels(params, "regex:layers/1/kernel|pair/1")
  assert labels["layers"][0]["kernel"] == masks.FROZEN
  assert labels["layers"][1]["kernel"] == masks.TRAINABLE
  assert (labels["pair"].a, labels["pair"].b) == (masks.FROZEN, masks.TRAINABLE)


@pytest.mark.parametrize("n, listed", [
    (4, "b/bn0, b/bn1, b/bn2, b/bn3"),
    (5, "b/bn0, b/bn1, b/bn2, b/bn3 and 1 more"),
    (6, "b/bn0, b/bn1, b/bn2, b/bn3 and 2 more"),
])
def test_norms_without_the_asked_affine_are_listed_at_most_four(n, listed):
  params = {"b": {f"bn{i}": {"bias": np.zeros(2)} for i in range(n)}}
  stats = {"b": {f"bn{i}": {"mean": np.zeros(2), "var": np.ones(2)} for i in range(n)}}
  with pytest.raises(ValueError) as err:
    masks.make_labels({**params, "fc": {"kernel": np.zeros((2, 2))}}, "bn_scale",
                      batch_stats=stats)
  assert str(err.value) == (
      f"Strategy term 'bn_scale' selects no parameter: {n} norm layer(s) were found "
      f"({listed}) but none has a 'scale' parameter (built with use_scale=False / "
      "use_bias=False?). Choose another term, e.g. 'bn' for whatever affine they have.")
