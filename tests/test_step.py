"""Every option of the train step changes the result the way it should, and only that.

One step of a two-block CBR (conv-BN-ReLU, Raghu et al., arXiv:1902.07208) on a
fixed batch, through the public pieces the trainer uses: ``jaxbn.setup.build_optimizer``
(optimizer, weight decay, gradient clipping) and ``jaxbn.step.make_train_step``
(label smoothing, ``lr_scale``, BN statistics mode). Each test compares a run with
the option against one without it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbn import config as config_lib, masks, setup as setup_lib, step as step_lib
from jaxbn.models.cbr import CBR

NUM_CLASSES = 3
LR = 0.1
STRATEGY = "bn+head"  # conv kernels frozen


@functools.lru_cache(maxsize=None)
def _model(dtype=jnp.float32, dropout_rate=0.0):
  return CBR(features=(4, 8), kernel_size=3, num_classes=NUM_CLASSES, dtype=dtype,
             dropout_rate=dropout_rate)


@pytest.fixture(scope="module")
def setup():
  variables = jax.jit(_model().init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  variables = jax.tree.map(np.asarray, variables)
  rng = np.random.default_rng(0)
  batch = {
      "image": rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
      "label": (np.arange(8) % NUM_CLASSES).astype(np.int32),
  }
  labels = masks.make_labels(variables["params"], STRATEGY, batch_stats=variables["batch_stats"])
  return variables, batch, labels


def _config(optimizer="sgd", weight_decay=0.0, grad_clip_norm=0.0):
  c = config_lib.base_config()
  c.optimizer, c.weight_decay, c.grad_clip_norm = optimizer, weight_decay, grad_clip_norm
  return c


_STEPS: dict = {}


def _compiled(labels, optimizer, weight_decay, grad_clip_norm, label_smoothing, bn_stats, dtype):
  """A jitted step per option combination (for the fixture's one label tree)."""
  key = (optimizer, weight_decay, grad_clip_norm, label_smoothing, bn_stats, dtype)
  if key not in _STEPS:
    c = _config(optimizer, weight_decay, grad_clip_norm)
    tx = setup_lib.build_optimizer(c, config_lib.stage(STRATEGY, 1, LR), 1, labels)
    step = step_lib.make_train_step(
        _model(jnp.dtype(dtype).type), tx, labels, bn_stats=bn_stats, multi_label=False,
        label_smoothing=label_smoothing,
    )
    _STEPS[key] = tx, step
  return _STEPS[key]


def run(setup, *, optimizer="sgd", weight_decay=0.0, grad_clip_norm=0.0, label_smoothing=0.0,
        lr_scale=1.0, bn_stats="frozen", dtype="float32", steps=1):
  """(new state, loss of the first step) after ``steps`` steps on the fixture's batch."""
  variables, batch, labels = setup
  tx, step = _compiled(labels, optimizer, weight_decay, grad_clip_norm, label_smoothing, bn_stats,
                       dtype)
  state = step_lib.TrainState.create(variables, tx)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(0), jnp.float32(lr_scale))
    losses.append(float(metrics["loss"]))
  return jax.tree.map(np.asarray, state), losses[0]


def _leaves(tree, labels, label):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(kp): np.asarray(x)
          for (kp, x), lab in zip(flat, jax.tree.leaves(labels)) if lab == label}


def _deltas(state, setup):
  variables, _, labels = setup
  delta = jax.tree.map(lambda new, old: new - old, state.params, variables["params"])
  return _leaves(delta, labels, masks.TRAINABLE), _leaves(delta, labels, masks.FROZEN)


def _global_norm(arrays):
  return float(np.sqrt(sum(np.sum(np.square(a.astype(np.float64))) for a in arrays)))


def _assert_frozen_untouched(state, setup):
  _, frozen = _deltas(state, setup)
  assert frozen and all(not d.any() for d in frozen.values())
  np.testing.assert_array_equal(  # frozen BN statistics mode leaves them as they were
      jax.tree.leaves(state.batch_stats)[0], jax.tree.leaves(setup[0]["batch_stats"])[0])


def _logits(setup, params=None, dtype=jnp.float32):
  variables, batch, _ = setup
  variables = {**variables, "params": variables["params"] if params is None else params}
  return _model(dtype).apply(variables, batch["image"], train=True, use_running_average=True)


# --------------------------------------------------------------------------- #
# Label smoothing.
# --------------------------------------------------------------------------- #


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  logp = jax.nn.log_softmax(logits)
  for eps in (0.0, 0.1, 0.3):
    # Szegedy et al. (arXiv:1512.00567): target (1 - ε) one-hot + ε / K.
    expected = -((1 - eps) * np.take_along_axis(logp, labels[:, None], 1)[:, 0]
                 + eps * np.mean(logp, axis=-1))
    got = step_lib.loss_per_example(jnp.asarray(logits), labels, multi_label=False,
                                    label_smoothing=eps)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Multi-label: each binary target moves ε/2 towards ½.
  targets = (rng.random((5, 4)) < 0.5).astype(np.float32)
  eps = 0.2
  soft = targets * (1 - eps) + eps / 2
  expected = np.mean(-(soft * jax.nn.log_sigmoid(logits) + (1 - soft) * jax.nn.log_sigmoid(-logits)),
                     axis=-1)
  got = step_lib.loss_per_example(jnp.asarray(logits), targets, multi_label=True,
                                  label_smoothing=eps)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_label_smoothing_changes_the_step_loss_and_update_only(setup):
  plain, loss = run(setup)
  smooth, loss_smooth = run(setup, label_smoothing=0.2)
  logits = _logits(setup)
  labels = setup[1]["label"]
  expected = np.mean(step_lib.loss_per_example(logits, labels, multi_label=False,
                                               label_smoothing=0.2))
  assert loss == pytest.approx(float(np.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))), rel=1e-5)
  assert loss_smooth == pytest.approx(float(expected), rel=1e-5)
  assert abs(loss_smooth - loss) > 1e-3
  moved, _ = _deltas(smooth, setup)
  moved_plain, _ = _deltas(plain, setup)
  assert any(not np.allclose(moved[k], moved_plain[k]) for k in moved)
  _assert_frozen_untouched(smooth, setup)


def test_mixup_trains_on_the_mixed_batch_with_the_mixed_loss(setup):
  variables, batch, labels = setup
  tx = setup_lib.build_optimizer(_config(), config_lib.stage(STRATEGY, 1, LR), 1, labels)
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen",
                                          multi_label=False, mixup_alpha=0.4))
  state = step_lib.TrainState.create(variables, tx)
  key = jax.random.key(3)
  _, metrics = step(state, batch, key, jnp.float32(1.0))
  # The step's draws: its key folded with the step number, then with MIXUP_STREAM.
  draw = jax.random.fold_in(jax.random.fold_in(key, 0), step_lib.MIXUP_STREAM)
  images, targets = step_lib.mixup(jnp.asarray(batch["image"]), jnp.asarray(batch["label"]),
                                   draw, 0.4)
  (lam, y), (rest, y_perm) = targets
  assert 0 < float(lam) < 1 and float(lam + rest) == pytest.approx(1.0)
  assert not np.array_equal(np.asarray(y_perm), np.asarray(y))  # another order
  logits = _model().apply(variables, images, train=True, use_running_average=True)
  expected = np.mean(
      float(lam) * optax.softmax_cross_entropy_with_integer_labels(logits, y)
      + float(rest) * optax.softmax_cross_entropy_with_integer_labels(logits, y_perm))
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
  _, plain_loss = run(setup)
  assert abs(float(metrics["loss"]) - plain_loss) > 1e-3
  with pytest.raises(ValueError, match="mixup_alpha"):
    step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen", multi_label=False,
                             mixup_alpha=-1.0)


def test_balanced_class_weights_make_every_class_weigh_the_same():
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 0])
  w = step_lib.balanced_class_weights(labels, 4)  # class 3 has no example
  counts = np.bincount(labels, minlength=4)
  np.testing.assert_allclose(w[:3] * counts[:3], [8 / 4] * 3)  # N / K per class
  assert w[3] == 0.0
  assert np.mean(w[labels]) == pytest.approx(3 / 4)  # 3 of the 4 classes are present
  np.testing.assert_allclose(step_lib.balanced_class_weights(np.arange(6) % 3, 3), [1.0] * 3)


def test_class_weights_scale_each_examples_loss_by_its_class(setup):
  variables, batch, labels = setup
  tx = setup_lib.build_optimizer(_config(), config_lib.stage(STRATEGY, 1, LR), 1, labels)
  weights = np.array([0.5, 1.0, 3.0])
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen",
                                          multi_label=False, class_weights=weights))
  state, metrics = step(step_lib.TrainState.create(variables, tx), batch, jax.random.key(0),
                        jnp.float32(1.0))
  per_example = optax.softmax_cross_entropy_with_integer_labels(_logits(setup), batch["label"])
  expected = np.mean(weights[batch["label"]] * np.asarray(per_example))
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
  plain, plain_loss = run(setup)
  assert abs(float(metrics["loss"]) - plain_loss) > 1e-3
  moved, _ = _deltas(jax.tree.map(np.asarray, state), setup)
  moved_plain, _ = _deltas(plain, setup)
  assert any(not np.allclose(moved[k], moved_plain[k]) for k in moved)
  with pytest.raises(ValueError, match="multi-label"):
    step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen", multi_label=True,
                             class_weights=weights)


def test_ordinal_targets_weigh_each_grade_by_its_squared_distance():
  # SORD (Díaz & Marathe 2019): target_k ∝ exp(-s (k - y)²), a near grade before a far one.
  labels = np.array([0, 2, 4])
  for scale in (0.5, 2.0):
    got = np.asarray(step_lib.ordinal_targets(jnp.asarray(labels), 5, scale))
    k = np.arange(5)
    expected = np.exp(-scale * (k[None] - labels[:, None]) ** 2)
    np.testing.assert_allclose(got, expected / expected.sum(1, keepdims=True), rtol=1e-5)
  middle = np.asarray(step_lib.ordinal_targets(jnp.asarray([2]), 5, 2.0))[0]
  assert middle[2] > middle[1] > middle[0] and middle[1] == pytest.approx(middle[3])
  assert middle[0] == pytest.approx(middle[4])
  sharp = np.asarray(step_lib.ordinal_targets(jnp.asarray([1]), 3, 50.0))
  np.testing.assert_allclose(sharp, [[0, 1, 0]], atol=1e-6)  # large scale: one-hot


def test_ordinal_scale_trains_on_the_soft_ordinal_cross_entropy(setup):
  variables, batch, labels = setup
  tx = setup_lib.build_optimizer(_config(), config_lib.stage(STRATEGY, 1, LR), 1, labels)
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen",
                                          multi_label=False, ordinal_scale=1.0))
  state, metrics = step(step_lib.TrainState.create(variables, tx), batch, jax.random.key(0),
                        jnp.float32(1.0))
  logp = np.asarray(jax.nn.log_softmax(_logits(setup)))
  soft = np.asarray(step_lib.ordinal_targets(jnp.asarray(batch["label"]), NUM_CLASSES, 1.0))
  assert float(metrics["loss"]) == pytest.approx(float(np.mean(-(soft * logp).sum(-1))), rel=1e-5)
  _, plain_loss = run(setup)
  assert abs(float(metrics["loss"]) - plain_loss) > 1e-3
  with pytest.raises(ValueError, match="multi-label: set --config.ordinal_scale=0"):
    step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen", multi_label=True,
                             ordinal_scale=1.0)


def _pairwise_auc_loop(scores, positives, margin):
  """The surrogate by its definition: a loop over each class's positive-negative pairs."""
  per_class = []
  for k in range(scores.shape[1]):
    pos = [i for i in range(len(scores)) if positives[i, k]]
    neg = [j for j in range(len(scores)) if not positives[j, k]]
    if pos and neg:
      per_class.append(np.mean([max(0.0, margin - (scores[i, k] - scores[j, k])) ** 2
                                for i in pos for j in neg]))
  return np.mean(per_class) if per_class else 0.0


def test_pairwise_auc_loss_is_the_mean_squared_hinge_over_each_classes_pairs():
  rng = np.random.default_rng(0)
  scores = rng.random((12, 4)).astype(np.float32)
  single = np.eye(4)[rng.integers(0, 3, 12)]  # class 3 has no positive: it is left out
  multi = (rng.random((12, 4)) < 0.4).astype(np.float32)
  multi[:, 0] = 1  # class 0 has no negative: left out too
  for positives in (single, multi):
    for margin in (0.3, 1.0, 2.0):
      got = float(step_lib.pairwise_auc_loss(jnp.asarray(scores), jnp.asarray(positives), margin))
      assert got == pytest.approx(_pairwise_auc_loop(scores, positives, margin), rel=1e-5)
  ranked = np.array([[0.9], [0.8], [0.1]], np.float32)  # every positive above every negative
  assert float(step_lib.pairwise_auc_loss(ranked, np.array([[1], [1], [0]]), 0.5)) == 0.0
  assert float(step_lib.pairwise_auc_loss(ranked, np.ones((3, 1)), 1.0)) == 0.0  # no pair


def test_auc_loss_weight_adds_the_weighted_surrogate_of_the_probabilities(setup):
  variables, batch, labels = setup
  tx = setup_lib.build_optimizer(_config(), config_lib.stage(STRATEGY, 1, LR), 1, labels)
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen",
                                          multi_label=False, auc_loss_weight=0.5,
                                          auc_loss_margin=0.8))
  state, metrics = step(step_lib.TrainState.create(variables, tx), batch, jax.random.key(0),
                        jnp.float32(1.0))
  logits = _logits(setup)
  probs = np.asarray(jax.nn.softmax(logits))
  cross_entropy = np.mean(np.asarray(
      optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])))
  surrogate = _pairwise_auc_loop(probs, np.eye(NUM_CLASSES)[batch["label"]], 0.8)
  assert float(metrics["loss"]) == pytest.approx(cross_entropy + 0.5 * surrogate, rel=1e-5)
  plain, _ = run(setup)
  moved, _ = _deltas(jax.tree.map(np.asarray, state), setup)
  moved_plain, _ = _deltas(plain, setup)
  assert any(not np.allclose(moved[k], moved_plain[k]) for k in moved)
  _assert_frozen_untouched(jax.tree.map(np.asarray, state), setup)
  # multi-label: the sigmoid probabilities, each label's positives ranked above its negatives
  multi_hot = (np.arange(8 * NUM_CLASSES).reshape(8, NUM_CLASSES) % 3 == 0).astype(np.float32)
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen",
                                          multi_label=True, auc_loss_weight=2.0))
  _, metrics = step(step_lib.TrainState.create(variables, tx), {**batch, "label": multi_hot},
                    jax.random.key(0), jnp.float32(1.0))
  bce = float(optax.sigmoid_binary_cross_entropy(logits, multi_hot).mean())
  surrogate = _pairwise_auc_loop(np.asarray(jax.nn.sigmoid(logits)), multi_hot, 1.0)
  assert float(metrics["loss"]) == pytest.approx(bce + 2.0 * surrogate, rel=1e-5)
  with pytest.raises(ValueError, match="set --config.mixup_alpha=0 or --config.auc_loss_weight=0"):
    step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen", multi_label=False,
                             auc_loss_weight=1.0, mixup_alpha=0.2)


# --------------------------------------------------------------------------- #
# Optimizer options: lr scale, gradient clipping, weight decay.
# --------------------------------------------------------------------------- #


def test_lr_scale_scales_the_update_and_nothing_else(setup):
  full, loss = run(setup, optimizer="adam")
  half, loss_half = run(setup, optimizer="adam", lr_scale=0.5)
  still, _ = run(setup, optimizer="adam", lr_scale=0.0)
  assert loss_half == loss
  d_full, _ = _deltas(full, setup)
  d_half, _ = _deltas(half, setup)
  for k in d_full:
    assert np.abs(d_full[k]).max() > 0, k
    np.testing.assert_allclose(d_half[k], 0.5 * d_full[k], rtol=1e-4, atol=1e-7, err_msg=k)
  assert all(not d.any() for d in _deltas(still, setup)[0].values())
  # The optimizer's own state (Adam's moments) is updated and does not depend on the scale.
  tx, _ = _compiled(setup[2], "adam", 0.0, 0.0, 0.0, "frozen", "float32")
  init = tx.init(setup[0]["params"])
  assert jax.tree.structure(full.opt_state) == jax.tree.structure(init)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(full.opt_state),
                                                      jax.tree.leaves(init)))
  for a, b in zip(jax.tree.leaves(full.opt_state), jax.tree.leaves(half.opt_state)):
    np.testing.assert_array_equal(a, b)
  _assert_frozen_untouched(half, setup)


def test_gradient_clipping_bounds_the_global_norm_of_trainable_gradients(setup):
  plain, loss = run(setup)  # SGD, first step: update = -lr * g
  g_norm = _global_norm(_deltas(plain, setup)[0].values()) / LR
  assert g_norm > 0.05
  clip = g_norm / 4
  clipped, loss_clipped = run(setup, grad_clip_norm=clip)
  assert loss_clipped == loss
  d_plain, _ = _deltas(plain, setup)
  d_clip, _ = _deltas(clipped, setup)
  # Same direction, global norm exactly `clip`: the norm is over trainable leaves only.
  assert _global_norm(d_clip.values()) / LR == pytest.approx(clip, rel=1e-4)
  for k in d_plain:
    np.testing.assert_allclose(d_clip[k], d_plain[k] * clip / g_norm, rtol=1e-3, atol=1e-8)
  # A bound above the norm changes nothing.
  loose, _ = run(setup, grad_clip_norm=4 * g_norm)
  for k, d in _deltas(loose, setup)[0].items():
    np.testing.assert_allclose(d, d_plain[k], rtol=1e-6, atol=1e-9)
  _assert_frozen_untouched(clipped, setup)


def test_weight_decay_shrinks_trainable_leaves_only(setup):
  variables, _, labels = setup
  wd = 0.5
  adam, loss = run(setup, optimizer="adamw")
  decayed, loss_decayed = run(setup, optimizer="adamw", weight_decay=wd)
  assert loss_decayed == loss
  old = _leaves(variables["params"], labels, masks.TRAINABLE)
  d_adam, _ = _deltas(adam, setup)
  d_decayed, _ = _deltas(decayed, setup)
  # AdamW (Loshchilov & Hutter, arXiv:1711.05101): the decay adds -lr * wd * θ.
  for k in old:
    np.testing.assert_allclose(d_decayed[k] - d_adam[k], -LR * wd * old[k], rtol=1e-4,
                               atol=1e-6, err_msg=k)
  assert any(np.abs(v).max() > 0.1 for v in old.values())
  _assert_frozen_untouched(decayed, setup)  # frozen conv kernels are not decayed


# --------------------------------------------------------------------------- #
# Compute dtype and BN statistics mode.
# --------------------------------------------------------------------------- #


def test_bfloat16_compute_keeps_float32_params_and_close_results(setup):
  f32, loss = run(setup)
  bf16, loss_bf16 = run(setup, dtype="bfloat16")
  assert _logits(setup, dtype=jnp.bfloat16).dtype == jnp.float32  # the head casts back
  for tree in (bf16.params, bf16.batch_stats, bf16.opt_state):
    assert all(x.dtype in (np.float32, np.int32) for x in jax.tree.leaves(tree))
  assert loss_bf16 != loss  # computed in bfloat16 ...
  assert loss_bf16 == pytest.approx(loss, rel=2e-2)  # ... to bfloat16 precision
  d32, _ = _deltas(f32, setup)
  d16, _ = _deltas(bf16, setup)
  a = np.concatenate([d.ravel() for d in d32.values()])
  b = np.concatenate([d16[k].ravel() for k in d32])
  assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
  _assert_frozen_untouched(bf16, setup)


def test_bn_stats_mode_batch_updates_running_statistics(setup):
  variables, images, _ = setup[0], setup[1]["image"], setup[2]
  frozen, loss_frozen = run(setup)
  batch, loss_batch = run(setup, bn_stats="batch")
  assert loss_batch != loss_frozen  # normalised with batch statistics
  old = variables["batch_stats"]
  assert jax.tree.structure(frozen.batch_stats) == jax.tree.structure(old)
  assert jax.tree.structure(batch.batch_stats) == jax.tree.structure(old)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen.batch_stats),
                                                  jax.tree.leaves(old)))
  # The running averages are the model's own update on this batch, nothing else.
  _, updated = _model().apply(variables, images, train=True, mutable=["batch_stats"])
  _assert_trees_close(batch.batch_stats, updated["batch_stats"], rtol=1e-6, atol=1e-7)
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(batch.batch_stats),
                                                      jax.tree.leaves(old)))
  with pytest.raises(ValueError, match="bn_stats must be 'frozen' or 'batch'"):
    step_lib.make_train_step(_model(), optax.sgd(0.1), setup[2], bn_stats="running",
                             multi_label=False)


# --------------------------------------------------------------------------- #
# The eval step.
# --------------------------------------------------------------------------- #


def test_eval_step_probabilities_and_per_example_loss(setup):
  variables, batch, _ = setup
  logits = np.asarray(_model().apply(variables, batch["image"], train=False), np.float64)
  out = step_lib.make_eval_step(_model(), multi_label=False)(variables, batch)
  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(out["probs"], softmax, rtol=1e-5)
  np.testing.assert_allclose(
      out["loss"], -np.log(softmax[np.arange(len(logits)), batch["label"]]), rtol=1e-5)
  # Multi-label: sigmoid per output and the mean binary cross-entropy over outputs.
  targets = (np.arange(8 * NUM_CLASSES).reshape(8, NUM_CLASSES) % 2).astype(np.float32)
  out = step_lib.make_eval_step(_model(), multi_label=True)(variables, {**batch, "label": targets})
  sigmoid = 1 / (1 + np.exp(-logits))
  np.testing.assert_allclose(out["probs"], sigmoid, rtol=1e-5)
  bce = -(targets * np.log(sigmoid) + (1 - targets) * np.log(1 - sigmoid)).mean(-1)
  np.testing.assert_allclose(out["loss"], bce, rtol=1e-4)
  half = jnp.asarray(logits, jnp.bfloat16)
  assert step_lib.probabilities(half, multi_label=False).dtype == jnp.float32
  assert step_lib.probabilities(half, multi_label=True).dtype == jnp.float32


# --------------------------------------------------------------------------- #
# grad_wrt, the pmap path and the dropout keys.
# --------------------------------------------------------------------------- #


def _state(variables, tx):
  return step_lib.TrainState(
      step=jnp.asarray(0, jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))


_FNS: dict = {}


def _step_fn(labels, model, bn_stats, grad_wrt, axis_devices):
  """One compiled step per option combination (jit, or pmap over ``axis_devices``)."""
  key = (model, bn_stats, grad_wrt, axis_devices)
  if key not in _FNS:
    tx = masks.make_optimizer(optax.sgd(LR), labels)
    fn = step_lib.make_train_step(model, tx, labels, bn_stats=bn_stats, multi_label=False,
                                  grad_wrt=grad_wrt, axis_name="batch" if axis_devices else None)
    _FNS[key] = tx, (jax.jit(fn) if not axis_devices else jax.pmap(
        fn, axis_name="batch", in_axes=(0, 0, None, None), devices=jax.devices()[:axis_devices]))
  return _FNS[key]


def _one_step(setup, *, axis_devices=0, bn_stats="frozen", grad_wrt="trainable", batch=None,
              model=None, rng=0, step=0, lr_scale=1.0):
  """(state, loss) after one SGD step; on ``axis_devices`` pmap devices when > 0."""
  variables, full_batch, labels = setup
  batch = full_batch if batch is None else batch
  tx, fn = _step_fn(labels, model or _model(), bn_stats, grad_wrt, axis_devices)
  state = _state(variables, tx).replace(step=jnp.asarray(step, jnp.int32))
  key = jax.random.key(rng)
  if not axis_devices:
    new, metrics = fn(state, batch, key, jnp.float32(lr_scale))
    return jax.tree.map(np.asarray, new), float(metrics["loss"])
  n = axis_devices
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), state)
  shards = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
  new, metrics = fn(stacked, shards, key, jnp.float32(1.0))
  for leaf in jax.tree.leaves(new):  # every device holds the same state
    np.testing.assert_array_equal(leaf[0], leaf[-1])
  return jax.tree.map(lambda x: np.asarray(x[0]), new), float(metrics["loss"][0])


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@pytest.mark.parametrize("bn_stats", ["frozen", "batch"])
def test_grad_wrt_all_gives_the_same_step(setup, bn_stats):
  new, loss = _one_step(setup, bn_stats=bn_stats)
  old, loss_old = _one_step(setup, bn_stats=bn_stats, grad_wrt="all")
  assert loss_old == loss
  assert int(new.step) == int(old.step) == 1
  _assert_trees_close(new, old, rtol=1e-6, atol=1e-7)
  half, _ = _one_step(setup, bn_stats=bn_stats, grad_wrt="all", lr_scale=0.5)
  d_new, _ = _deltas(new, setup)
  d_half, _ = _deltas(half, setup)
  for k in d_new:  # lr_scale scales grad_wrt='all' updates too
    np.testing.assert_allclose(d_half[k], 0.5 * d_new[k], rtol=1e-4, atol=1e-7, err_msg=k)
  if bn_stats == "frozen":
    _assert_frozen_untouched(old, setup)
  with pytest.raises(ValueError, match="^grad_wrt must be 'trainable' or 'all', got 'some'.$"):
    step_lib.make_train_step(_model(), optax.sgd(0.1), setup[2], bn_stats="frozen",
                             multi_label=False, grad_wrt="some")


@pytest.mark.parametrize("grad_wrt", ["trainable", "all"])
def test_pmap_step_averages_gradients_loss_and_batch_statistics(setup, grad_wrt):
  # Frozen statistics: an example's loss does not depend on its shard, so two
  # devices with half the batch each take the one-device step on the whole batch.
  jit_state, jit_loss = _one_step(setup, grad_wrt=grad_wrt)
  pmap_state, pmap_loss = _one_step(setup, axis_devices=2, grad_wrt=grad_wrt)
  assert pmap_loss == pytest.approx(jit_loss, rel=1e-6)
  _assert_trees_close(pmap_state, jit_state, rtol=1e-5, atol=1e-7)
  if grad_wrt == "all":
    return  # the statistics' reduction below does not depend on grad_wrt
  # Batch statistics (no bn_axis_name): each device normalises with its shard's;
  # the running averages are averaged over the devices.
  _, batch, _ = setup
  halves = [jax.tree.map(lambda x, i=i: x[4 * i:4 * (i + 1)], batch) for i in (0, 1)]
  per_shard = [_one_step(setup, bn_stats="batch", grad_wrt=grad_wrt, batch=h) for h in halves]
  both, loss = _one_step(setup, axis_devices=2, bn_stats="batch", grad_wrt=grad_wrt)
  assert loss == pytest.approx((per_shard[0][1] + per_shard[1][1]) / 2, rel=1e-6)
  _assert_trees_close(both.batch_stats, jax.tree.map(
      lambda a, b: (a + b) / 2, per_shard[0][0].batch_stats, per_shard[1][0].batch_stats),
      rtol=1e-5, atol=1e-7)
  _assert_trees_close(both.params, jax.tree.map(  # SGD: the mean update is the mean gradient's
      lambda a, b: (a + b) / 2, per_shard[0][0].params, per_shard[1][0].params),
      rtol=1e-5, atol=1e-6)


def test_dropout_keys_differ_per_step_and_per_device(setup):
  model = _model(dropout_rate=0.5)
  _, loss = _one_step(setup, model=model)
  assert _one_step(setup, model=model)[1] == loss  # deterministic in (rng, step)
  assert _one_step(setup, model=model, step=1)[1] != loss  # another mask at another step
  # The same four examples on both devices: they differ only if the devices draw
  # different masks (device 0 draws what a one-device pmap draws).
  _, batch, _ = setup
  four = jax.tree.map(lambda x: x[:4], batch)
  twice = jax.tree.map(lambda x: np.concatenate([x, x]), four)
  _, one_device = _one_step(setup, model=model, axis_devices=1, batch=four)
  _, two_devices = _one_step(setup, model=model, axis_devices=2, batch=twice)
  assert two_devices != pytest.approx(one_device, rel=1e-6)


def test_batch_statistics_step_draws_dropout_masks_and_takes_the_multi_label_loss(setup):
  """The bn_stats='batch' branch passes the dropout key and the loss options on."""
  variables, batch, labels = setup
  model = _model(dropout_rate=0.5)
  _, loss = _one_step(setup, model=model, bn_stats="batch")
  assert _one_step(setup, model=model, bn_stats="batch")[1] == loss
  assert _one_step(setup, model=model, bn_stats="batch", step=1)[1] != loss
  targets = (np.arange(8 * NUM_CLASSES).reshape(8, NUM_CLASSES) % 2).astype(np.float32)
  tx = masks.make_optimizer(optax.sgd(LR), labels)
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="batch",
                                          multi_label=True))
  _, metrics = step(_state(variables, tx), {**batch, "label": targets}, jax.random.key(0),
                    jnp.float32(1.0))
  logits, _ = _model().apply(variables, batch["image"], train=True, mutable=["batch_stats"])
  bce = optax.sigmoid_binary_cross_entropy(logits, targets).mean()
  assert float(metrics["loss"]) == pytest.approx(float(bce), rel=1e-5)


def test_probabilities_and_multi_label_loss_are_float32_even_with_x64_enabled():
  # (The softmax loss follows one_hot's default dtype, float64 under x64.)
  logits = np.random.default_rng(2).normal(size=(4, 3))
  targets = (np.arange(12).reshape(4, 3) % 2).astype(np.float64)
  with jax.enable_x64(True):
    x64 = jnp.asarray(logits, jnp.float64)
    assert step_lib.probabilities(x64, False).dtype == jnp.float32
    assert step_lib.probabilities(x64, True).dtype == jnp.float32
    for smoothing in (0.0, 0.1):
      loss = step_lib.loss_per_example(x64, jnp.asarray(targets), multi_label=True,
                                       label_smoothing=smoothing)
      assert loss.dtype == jnp.float32


def test_default_step_has_no_label_smoothing(setup):
  # Built here, not taken from a cache, so that this test reaches make_train_step.
  variables, batch, labels = setup
  tx = masks.make_optimizer(optax.sgd(LR), labels)
  step = jax.jit(step_lib.make_train_step(_model(), tx, labels, bn_stats="frozen",
                                          multi_label=False))
  _, metrics = step(_state(variables, tx), batch, jax.random.key(0), jnp.float32(1.0))
  assert float(metrics["loss"]) == pytest.approx(float(np.mean(
      optax.softmax_cross_entropy_with_integer_labels(_logits(setup), batch["label"]))), rel=1e-5)


def test_eval_step_asks_for_inference_mode_explicitly():
  import flax.linen as nn

  class TrainsByDefault(nn.Module):  # a model whose own default is training mode
    @nn.compact
    def __call__(self, x, train=True):
      return nn.Dense(2)(x.reshape(len(x), -1)) * (3.0 if train else 1.0)

  model = TrainsByDefault()
  x = np.ones((2, 4), np.float32)
  variables = model.init(jax.random.key(0), x)
  out = step_lib.make_eval_step(model, multi_label=False)(
      variables, {"image": x, "label": np.zeros(2, np.int32)})
  logits = model.apply(variables, x, train=False)
  np.testing.assert_allclose(out["probs"], jax.nn.softmax(logits), rtol=1e-6)


def test_train_state_create_splits_the_collections():
  tx = optax.adam(1e-3)
  params = {"w": jnp.ones(3)}
  bare = step_lib.TrainState.create({"params": params}, tx)
  assert bare.batch_stats == {} and bare.constants == {} and int(bare.step) == 0
  source = {"bn": {"scale": jnp.ones(3)}}
  full = step_lib.TrainState.create(
      {"params": params, "batch_stats": {"bn": {"mean": jnp.zeros(3)}}, "acnorm_source": source},
      tx, step=7)
  assert full.constants == {"acnorm_source": source}
  assert set(full.batch_stats["bn"]) == {"mean"} and int(full.step) == 7
  assert jax.tree.structure(full.opt_state) == jax.tree.structure(tx.init(params))
  with jax.enable_x64(True):
    assert step_lib.TrainState.create({"params": params}, tx, step=3).step.dtype == jnp.int32
