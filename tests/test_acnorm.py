"""AC-Norm: the op against an independent numpy spec, gradients, the layer, loading, training."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbn import config as config_lib, masks, setup, step as step_lib
from jaxbn.models import acnorm
from jaxbn.models.norm import make_norm
from jaxbn.ops import acnorm_affine


def spec_numpy(g_s, b_s, g_t, b_t, tau=1.0, eps=1e-5):
  """arXiv:2307.15282 steps 1-6, literally, in float64 with explicit loops where it helps."""
  g_s, b_s, g_t, b_t = (np.asarray(v, np.float64) for v in (g_s, b_s, g_t, b_t))
  c = len(g_s)
  r_s = b_s / (np.abs(g_s) + eps)
  r_t = b_t / (np.abs(g_t) + eps)
  d = np.empty((c, c))
  for i in range(c):
    for j in range(c):
      d[i, j] = -abs(r_t[i] - r_s[j])
  p = np.empty((c, c))
  for i in range(c):
    e = np.exp(d[i] / tau - np.max(d[i] / tau))
    p[i] = e / e.sum()
  s = np.where(p >= np.diag(p)[:, None], p, 0.0)
  return s, p, g_t + s @ g_t, b_t + s @ b_t


def random_affines(rng, c, shift=0.3):
  g_s = rng.normal(size=c)  # negative γ included
  b_s = rng.normal(size=c)
  g_t = g_s + shift * rng.normal(size=c)
  b_t = b_s + shift * rng.normal(size=c)
  return [v.astype(np.float32) for v in (g_s, b_s, g_t, b_t)]


@pytest.mark.parametrize("c,tau", [(1, 1.0), (3, 1.0), (17, 0.5), (64, 1.0), (300, 2.0)])
def test_op_matches_numpy_spec_random(c, tau):
  rng = np.random.default_rng(c)
  args = random_affines(rng, c)
  s, g, b = acnorm_affine(*args, tau, 1e-5)
  ref_s, ref_p, ref_g, ref_b = spec_numpy(*args, tau=tau)
  # No entry within float32 noise of its row's P_ii: the f32 op and the f64 spec must
  # then agree on which entries are kept.
  margin = np.abs(ref_p / np.diag(ref_p)[:, None] - 1)
  np.fill_diagonal(margin, np.inf)
  assert margin.min() > 1e-5
  assert s.dtype == g.dtype == b.dtype == jnp.float32
  # (An entry far below float32's range is 0 in the op: compare kept *non-zero* entries.)
  np.testing.assert_array_equal(np.asarray(s) > 0, ref_s > np.finfo(np.float32).tiny)
  np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b, ref_b, rtol=1e-5, atol=1e-6)
  if c > 1:  # the target moved: some off-diagonal entries are kept, rows are not renormalised
    assert (np.asarray(s) > 0).sum() > c
    assert np.all(np.asarray(s).sum(1) <= 1 + 1e-6)


def test_op_hand_computed_target_moved_towards_another_source_channel():
  # r_s = [0, 1]; r_t = [0.9, 1]: target channel 0 is now closer to source channel 1.
  s, g, b = acnorm_affine([1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.9, 1.0], 1.0, 0.0)
  e = math.exp
  p00, p01 = e(-0.9) / (e(-0.9) + e(-0.1)), e(-0.1) / (e(-0.9) + e(-0.1))
  p11 = 1 / (1 + e(-1))
  np.testing.assert_allclose(s, [[p00, p01], [0.0, p11]], rtol=1e-6)
  np.testing.assert_allclose(g, [1 + p00 + p01, 1 + p11], rtol=1e-6)  # row 0 sums to 1: γ = 2
  np.testing.assert_allclose(b, [0.9 + 0.9 * p00 + p01, 1 + p11], rtol=1e-6)


def test_op_hand_computed_ties_negative_gamma_and_temperature():
  # r = [0, 0, 1] for source and target (γ = -1 for channel 1: |γ| is used).
  # Row 0: P = [1, 1, e^-2] / (2 + e^-2) at τ = 0.5, the tie with column 1 is kept.
  s, g, b = acnorm_affine([1.0, -1.0, 1.0], [0.0, 0.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 1.0],
                          0.5, 0.0)
  q = math.exp(-2.0)
  tie, own = 1 / (2 + q), 1 / (1 + 2 * q)
  np.testing.assert_allclose(s, [[tie, tie, 0], [tie, tie, 0], [0, 0, own]], rtol=1e-6)
  np.testing.assert_allclose(g, [1 + tie * 0, -1 + tie * 0, 1 + own], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(b, [0, 0, 1 + own], rtol=1e-6, atol=1e-7)
  # All channels tied: S is the full uniform matrix (nothing dropped, no renormalisation).
  s, g, _ = acnorm_affine(*(np.ones(4, np.float32),) * 4)
  np.testing.assert_allclose(s, np.full((4, 4), 0.25), rtol=1e-6)
  np.testing.assert_allclose(g, np.full(4, 2.0), rtol=1e-6)


def test_op_bfloat16_inputs_computed_in_float32():
  args = random_affines(np.random.default_rng(1), 32)
  bf = [jnp.asarray(a, jnp.bfloat16) for a in args]
  out_bf = acnorm_affine(*bf)
  out_f32 = acnorm_affine(*[np.asarray(a.astype(jnp.float32)) for a in bf])
  for x, y in zip(out_bf, out_f32):
    assert x.dtype == jnp.float32
    np.testing.assert_array_equal(x, y)


def test_op_outputs_float32_even_with_x64_enabled():
  # "Computed in float32 whatever the input dtype": with 64-bit mode on, float64
  # inputs still give float32 outputs (astype(float32), not the default float type).
  args = random_affines(np.random.default_rng(3), 5)
  with jax.enable_x64(True):
    out64 = acnorm_affine(*[jnp.asarray(a, jnp.float64) for a in args])
    assert [x.dtype for x in out64] == [jnp.float32] * 3
  for x, y in zip(out64, acnorm_affine(*args)):
    np.testing.assert_array_equal(x, y)


def _dot_precisions(jaxpr) -> list:
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn.params["precision"])
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        found += _dot_precisions(inner)
  return found


def test_op_recalibration_product_asks_for_full_precision():
  # Same numbers on CPU either way; on TPU/GPU the default would be a bf16 pass.
  closed = jax.make_jaxpr(acnorm_affine)(*(jnp.ones(3, jnp.float32),) * 4)
  highest = jax.lax.Precision.HIGHEST
  assert _dot_precisions(closed.jaxpr) == [(highest, highest)]


@pytest.mark.parametrize("shapes", [[(2, 2)] * 4, [(3,), (3,), (2,), (3,)], [()] * 4])
def test_op_rejects_anything_but_four_vectors_of_one_shape(shapes):
  args = [np.ones(s, np.float32) for s in shapes]
  got = ", ".join(str(tuple(s)) for s in shapes)
  with pytest.raises(ValueError) as info:
    acnorm_affine(*args)
  assert str(info.value) == (
      f"acnorm_affine expects four (C,) vectors of one shape; got {got}.")


def test_gradient_is_identity_plus_s_transposed_and_s_has_none():
  c = 48
  rng = np.random.default_rng(2)
  args = [jnp.asarray(a) for a in random_affines(rng, c)]
  w_g, w_b = (jnp.asarray(rng.normal(size=c), jnp.float32) for _ in range(2))

  def loss(g_s, b_s, g_t, b_t):
    _, g, b = acnorm_affine(g_s, b_s, g_t, b_t)
    return jnp.sum(jnp.sin(g) * w_g) + jnp.sum(b * b * w_b)

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
  s, g, b = acnorm_affine(*args)
  eye = jnp.eye(c)
  np.testing.assert_allclose(grads[2], (eye + s).T @ (jnp.cos(g) * w_g), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads[3], (eye + s).T @ (2 * b * w_b), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(grads[0], 0)  # the source gets no gradient
  np.testing.assert_array_equal(grads[1], 0)
  # S itself is a constant: no gradient reaches any input through it.
  r = jnp.asarray(rng.normal(size=(c, c)), jnp.float32)
  through_s = jax.grad(lambda *a: jnp.sum(acnorm_affine(*a)[0] * r), argnums=(0, 1, 2, 3))(*args)
  for gr in through_s:
    np.testing.assert_array_equal(gr, 0)


# --------------------------------------------------------------------------- #
# The layer.
# --------------------------------------------------------------------------- #


def pretrained_like(c, rng):
  return {
      "params": {"scale": rng.normal(size=c).astype(np.float32),
                 "bias": rng.normal(size=c).astype(np.float32)},
      "batch_stats": {"mean": rng.normal(size=c).astype(np.float32),
                      "var": rng.uniform(0.5, 2, size=c).astype(np.float32)},
  }


@pytest.mark.parametrize("use_running_average", [True, False])
def test_layer_at_init_is_one_plus_p_ii_times_pretrained_bn(use_running_average):
  c, eps = 24, 1e-3
  rng = np.random.default_rng(3)
  bn_vars = pretrained_like(c, rng)
  x = jnp.asarray(rng.normal(size=(4, 5, 5, c)) * 2 + 1, jnp.float32)
  bn = nn.BatchNorm(use_running_average=use_running_average, epsilon=eps)
  ref = bn.apply(bn_vars, x, mutable=["batch_stats"])[0]
  layer = acnorm.ACNorm(use_running_average=use_running_average, epsilon=eps)
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
  ac_vars = acnorm.add_source_affine(bn_vars, shapes[acnorm.SOURCE])
  y, _ = layer.apply(ac_vars, x, mutable=["batch_stats"])
  affine = [bn_vars["params"]["scale"], bn_vars["params"]["bias"]]
  s, _, _ = acnorm_affine(*affine, *affine, 1.0, eps)
  np.testing.assert_allclose(s, np.diag(np.diag(s)), atol=0)  # distinct channels: S diagonal
  np.testing.assert_allclose(y, ref * (1 + np.diag(s)), rtol=1e-5, atol=1e-5)


def test_layer_variables_modes_and_running_statistics():
  c = 8
  layer = make_norm("acnorm", use_running_average=False, epsilon=1e-5,
                    momentum=acnorm.ACNORM_MOMENTUM)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(16, 3, 3, c)) * 3 + 2, jnp.float32)
  variables = layer.init(jax.random.key(0), x)
  assert set(variables) == {"params", "batch_stats", acnorm.SOURCE}
  assert set(variables["params"]) == set(variables[acnorm.SOURCE]) == {"scale", "bias"}
  assert set(variables["batch_stats"]) == {"mean", "var"}
  np.testing.assert_array_equal(variables[acnorm.SOURCE]["scale"], variables["params"]["scale"])
  y, upd = layer.apply(variables, x, mutable=["batch_stats"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.19 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.81 + 0.19 * var, rtol=1e-5)
  # Train mode normalises with the batch: random init (all ties) gives S = 1/C, γ_eff = 2.
  np.testing.assert_allclose(y.mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(y.std((0, 1, 2)), 2, rtol=1e-3)
  # use_running_average=True (attribute or call argument): running statistics, no update.
  y_eval = acnorm.ACNorm(use_running_average=True).apply(variables, x)
  np.testing.assert_allclose(y_eval, 2 * x / np.sqrt(1 + 1e-5), rtol=1e-5)
  np.testing.assert_array_equal(acnorm.ACNorm().apply(variables, x, use_running_average=True),
                                y_eval)
  with pytest.raises(ValueError, match="no source affine"):
    acnorm.ACNorm(use_running_average=True).apply(
        {k: variables[k] for k in ("params", "batch_stats")}, x)


def test_layer_bfloat16_and_temperature_string():
  layer = make_norm("acnorm:tau=0.5", use_running_average=True, epsilon=1e-5,
                    dtype=jnp.bfloat16)
  assert layer.temperature == 0.5
  x = jnp.ones((2, 4, 4, 6), jnp.bfloat16)
  variables = layer.init(jax.random.key(0), x)
  assert variables["params"]["scale"].dtype == jnp.float32
  assert layer.apply(variables, x).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="Bad AC-Norm option"):
    make_norm("acnorm:temp=2", use_running_average=True, epsilon=1e-5)


# --------------------------------------------------------------------------- #
# Models, masks, pretrained loading, training.
# --------------------------------------------------------------------------- #


class TinyNet(nn.Module):
  """conv → AC-Norm → ReLU → conv → AC-Norm → pool → dense: quick to compile."""

  @nn.compact
  def __call__(self, x, train: bool = False, use_running_average: bool | None = None):
    use_ra = use_running_average if use_running_average is not None else not train
    for i, features in enumerate((8, 16), 1):
      x = nn.Conv(features, (3, 3), use_bias=False, name=f"conv{i}")(x)
      x = make_norm("acnorm", use_running_average=use_ra, epsilon=1e-5,
                    momentum=acnorm.ACNORM_MOMENTUM, name=f"bn{i}")(x)
      x = nn.relu(x)
    return nn.Dense(2, name="fc")(x.mean((1, 2)))


@pytest.fixture(scope="module")
def tiny():
  model = TinyNet()
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  rng = np.random.default_rng(5)
  # "Pretrained": distinct γ, β per channel, source = target.
  for name in ("bn1", "bn2"):
    for k in ("scale", "bias"):
      v = rng.normal(size=variables["params"][name][k].shape).astype(np.float32)
      variables["params"][name][k] = v
      variables[acnorm.SOURCE][name][k] = v.copy()
  batch = {"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 2, size=(16,)).astype(np.int32)}
  return model, variables, batch


@pytest.mark.parametrize("strategy", ["bn", "bn+head", "full"])
def test_masks_select_target_affine_and_steps_train_it(tiny, strategy):
  model, variables, batch = tiny
  params, stats = variables["params"], variables["batch_stats"]
  labels = masks.make_labels(params, strategy, batch_stats=stats)
  for name in ("bn1", "bn2"):
    assert labels[name] == {"scale": masks.TRAINABLE, "bias": masks.TRAINABLE}
  assert (labels["fc"]["kernel"] == masks.TRAINABLE) == (strategy != "bn")
  assert (labels["conv1"]["kernel"] == masks.TRAINABLE) == (strategy == "full")
  tx = masks.make_optimizer(optax.sgd(0.5), labels)
  constants = {acnorm.SOURCE: variables[acnorm.SOURCE]}
  state = step_lib.TrainState.create(variables, tx)
  step = jax.jit(step_lib.make_train_step(model, tx, labels, bn_stats="batch", multi_label=False))
  for _ in range(2):
    state, m = step(state, batch, jax.random.key(0), 1.0)
  assert np.isfinite(float(m["loss"]))
  assert not np.allclose(state.params["bn2"]["scale"], params["bn2"]["scale"])
  assert not np.allclose(state.batch_stats["bn2"]["mean"], stats["bn2"]["mean"])
  jax.tree.map(np.testing.assert_array_equal, state.constants, constants)  # source frozen
  assert set(state.variables) == {"params", "batch_stats", acnorm.SOURCE}


def test_pretrained_bn_checkpoint_initialises_source_and_target_alike():
  from jaxbn import treepath
  from jaxbn.weights import convert

  bn = convert.load_pretrained("efficientnet_lite0", num_classes=3)
  ac = convert.load_pretrained("efficientnet_lite0", num_classes=3, norm="acnorm")
  assert set(ac) == {"params", "batch_stats", acnorm.SOURCE}
  jax.tree.map(np.testing.assert_array_equal, ac["params"], bn["params"])
  jax.tree.map(np.testing.assert_array_equal, ac["batch_stats"], bn["batch_stats"])
  source = ac[acnorm.SOURCE]
  flat = lambda tree: {p[:-1] for p, _ in jax.tree_util.tree_leaves_with_path(tree)}  # noqa
  assert flat(source) == flat(bn["batch_stats"])  # every BN layer, nothing else
  for path in acnorm.layer_paths(ac):
    src, tgt = treepath.get(source, path), treepath.get(ac["params"], path)
    for k in ("scale", "bias"):
      np.testing.assert_array_equal(src[k], tgt[k])
      assert not np.shares_memory(src[k], tgt[k])  # a copy, not an alias


def test_trainer_builds_acnorm_with_its_momentum():
  # (The trainer's end-to-end AC-Norm run, checkpoints included, is exercised by
  # tests/test_transferability.py's validation run.)
  config = config_lib.base_config()
  config.model.arch, config.model.norm = "cbr_small", "acnorm"
  assert setup.build_model(config, 2).bn_momentum == acnorm.ACNORM_MOMENTUM
  config.bn_momentum = 0.5
  assert setup.build_model(config, 2).bn_momentum == 0.5
  config.model.norm, config.bn_momentum = "bn", 0.0
  assert setup.build_model(config, 2).bn_momentum == 0.9  # BN: the architecture's default
