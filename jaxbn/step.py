"""Train and eval step functions, shared by the jit (mesh) and pmap paths.

``make_train_step`` returns a pure function ``(state, batch, rng, lr_scale) ->
(state, metrics)``. Under ``jax.jit`` with a batch-sharded input the mean loss
is already global; under ``jax.pmap`` pass ``axis_name`` and the gradients (and
the loss, and batch statistics) are averaged over devices.

Only what trains is differentiated: the step splits ``params`` by the mask
labels into the trainable leaves, which ``jax.value_and_grad`` sees, and the
frozen ones, which the loss closes over as constants. The optimizer (a
``jaxbn.masks.make_optimizer`` partition: frozen leaves hold no state) updates
the trainable leaves; frozen leaves are passed through untouched, with no
zero gradient, zero update or ``p + 0`` pass over them.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbn import masks


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Variable collections the model reads but neither trains nor updates, e.g.
  # AC-Norm's frozen source affine {'acnorm_source': ...}; {} for BN models.
  constants: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict[str, Any]:
    return {**self.constants, "params": self.params, "batch_stats": self.batch_stats}

  @classmethod
  def create(cls, variables: Any, tx: optax.GradientTransformation, step: int = 0
             ) -> "TrainState":
    """The one constructor: ``variables`` (``{'params', 'batch_stats', ...}``) and ``tx``.

    Collections other than ``params`` and ``batch_stats`` become ``constants``.

    >>> s = TrainState.create({"params": {"w": jnp.ones(2)}, "batch_stats": {}}, optax.sgd(0.1))
    >>> int(s.step), s.constants
    (0, {})
    """
    variables = dict(variables)
    params = variables.pop("params")
    batch_stats = variables.pop("batch_stats", {})
    return cls(step=jnp.asarray(step, jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), constants=variables)


def ordinal_targets(labels: jax.Array, num_classes: int, scale: float) -> jax.Array:
  """Soft ordinal labels (SORD, Díaz & Marathe 2019): ``softmax_k(-scale (k - y)²)``.

  For classes whose indices are ordered (grades): a near grade gets more of the target than
  a far one. ``scale`` → ∞ is the one-hot target.

  >>> [round(float(p), 3) for p in ordinal_targets(jnp.array([0]), 3, 1.0)[0]]
  [0.721, 0.265, 0.013]
  """
  k = jnp.arange(num_classes, dtype=jnp.float32)
  return jax.nn.softmax(-scale * (k - labels[..., None].astype(jnp.float32)) ** 2, axis=-1)


def loss_per_example(
    logits: jax.Array, labels: jax.Array, *, multi_label: bool, label_smoothing: float = 0.0,
    ordinal_scale: float = 0.0,
) -> jax.Array:
  """Softmax cross-entropy (single label) or mean sigmoid BCE (multi-label).

  ``ordinal_scale`` > 0 (single label): the targets are :func:`ordinal_targets`.
  """
  logits = logits.astype(jnp.float32)
  if multi_label:
    targets = labels.astype(jnp.float32)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
  if ordinal_scale:
    targets = ordinal_targets(labels, logits.shape[-1], ordinal_scale)
  else:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def pairwise_auc_loss(scores: jax.Array, positives: jax.Array, margin: float = 1.0) -> jax.Array:
  """A batch's squared-hinge AUC surrogate, averaged over classes (one-vs-rest).

  For class k, every pair of a positive i and a negative j in the batch costs
  ``max(0, margin - (s_ik - s_jk))²`` (the square loss of deep AUC maximisation, Yuan et al.
  2021, arXiv 2012.03173, on all pairs). The mean over a class's pairs is averaged over the
  classes that have both a positive and a negative in the batch; a batch with none gives 0.

  Args:
    scores: [B, K] scores whose per-class ranking is evaluated (e.g. probabilities).
    positives: [B, K], 1 where example b is a positive of class k, else 0.
    margin: the score gap below which a pair costs.

  >>> s = jnp.array([[0.9], [0.2]])
  >>> round(float(pairwise_auc_loss(s, jnp.array([[1], [0]]))), 4)  # (1 - 0.7)²
  0.09
  """
  pos = positives.astype(jnp.float32)
  pairs = pos[:, None, :] * (1.0 - pos)[None, :, :]  # [i, j, k]: i positive, j negative
  gaps = scores[:, None, :] - scores[None, :, :]
  hinge = jnp.square(jnp.maximum(margin - gaps.astype(jnp.float32), 0.0))
  count = pairs.sum(axis=(0, 1))
  per_class = (hinge * pairs).sum(axis=(0, 1)) / jnp.maximum(count, 1.0)
  has_pairs = (count > 0).astype(jnp.float32)
  return (per_class * has_pairs).sum() / jnp.maximum(has_pairs.sum(), 1.0)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Per-class loss weights ``N / (K n_c)`` for single-label ``labels`` (int [N]).

  Every class then carries the same total weight, and the weights average 1 over the
  training examples (scikit-learn's ``class_weight="balanced"``), so the loss keeps its
  scale. A class with no training example gets 0.

  >>> balanced_class_weights(np.array([0, 0, 0, 1]), 2).tolist()
  [0.6666666666666666, 2.0]
  """
  counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes)[:num_classes]
  weights = np.zeros(num_classes)
  seen = counts > 0
  weights[seen] = counts.sum() / (num_classes * counts[seen])
  return weights


def probabilities(logits: jax.Array, multi_label: bool) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)


def split_trainable(params: Any, trainable: Any) -> tuple[list, list, Callable[[list, list], Any]]:
  """``params`` → (trainable leaves, frozen leaves, ``merge(trainable, frozen) -> params``).

  ``trainable`` is a boolean tree (``masks.trainable_mask``), equal to ``params``'
  structure or a prefix of it (a ``True`` module marks all its leaves).

  >>> t, f, merge = split_trainable({"a": 1, "b": 2}, {"a": True, "b": False})
  >>> t, f, merge([10], f)
  ([1], [2], {'a': 10, 'b': 2})
  """
  mask = [bool(m) for m, sub in zip(*_prefix_leaves(trainable, params))
          for _ in jax.tree.leaves(sub)]
  leaves, treedef = jax.tree.flatten(params)
  train = [x for x, m in zip(leaves, mask) if m]
  frozen = [x for x, m in zip(leaves, mask) if not m]

  def merge(train_leaves: list, frozen_leaves: list) -> Any:
    t, f = iter(train_leaves), iter(frozen_leaves)
    return treedef.unflatten([next(t) if m else next(f) for m in mask])

  return train, frozen, merge


def _prefix_leaves(prefix: Any, tree: Any) -> tuple[list, list]:
  leaves, treedef = jax.tree.flatten(prefix)
  return leaves, treedef.flatten_up_to(tree)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    labels: Any,
    *,
    bn_stats: str,
    multi_label: bool,
    label_smoothing: float = 0.0,
    ordinal_scale: float = 0.0,
    auc_loss_weight: float = 0.0,
    auc_loss_margin: float = 1.0,
    mixup_alpha: float = 0.0,
    class_weights: Any = None,
    axis_name: str | None = None,
    grad_wrt: str = "trainable",
) -> Callable:
  """The training step.

  Args:
    model: a jaxbn (or any) Flax model with ``train``/``use_running_average``.
    tx: the optimizer (frozen leaves mapped to ``set_to_zero`` by jaxbn.masks).
    labels: the mask label tree of ``tx`` (static).
    bn_stats: ``"frozen"`` (BN in inference mode; ``batch_stats`` untouched) or
      ``"batch"`` (batch statistics; running averages updated).
    multi_label: sigmoid BCE instead of softmax cross-entropy.
    label_smoothing: label smoothing factor.
    ordinal_scale: single-label only: soft ordinal targets (:func:`ordinal_targets`) when
      > 0, for classes whose indices are ordered; 0 = one-hot.
    auc_loss_weight: when > 0, the loss adds this times :func:`pairwise_auc_loss` of the
      batch's probabilities (each device's rows under pmap), with ``auc_loss_margin``.
      Not with mixup, whose mixed images have no single class.
    mixup_alpha: mixup (Zhang et al. 2018, arXiv 1710.09412) when > 0: each step trains
      on ``λ x + (1 - λ) x[perm]`` with the loss ``λ L(y) + (1 - λ) L(y[perm])``, one
      ``λ ~ Beta(α, α)`` per step and ``perm`` a random permutation of the batch (of
      each device's rows under pmap). 0 = off (the step is then unchanged, dropout
      draws included).
    class_weights: single-label only: a weight per class ([num_classes], e.g.
      :func:`balanced_class_weights`) that scales each example's loss by its class's
      (under mixup, each of the two targets' by its own); ``None`` = unweighted.
    axis_name: pmap axis to average over; ``None`` under jit.
    grad_wrt: ``"trainable"`` (differentiate the trainable leaves only, frozen ones
      are constants) or ``"all"`` (every leaf; frozen leaves get zero updates —
      the earlier step, kept to measure the difference; same results).
  """
  if bn_stats not in ("frozen", "batch"):
    raise ValueError(f"bn_stats must be 'frozen' or 'batch', got {bn_stats!r}.")
  if grad_wrt not in ("trainable", "all"):
    raise ValueError(f"grad_wrt must be 'trainable' or 'all', got {grad_wrt!r}.")
  if mixup_alpha < 0:
    raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}.")
  if class_weights is not None and multi_label:
    raise ValueError("class_weights weigh the classes of single-label data; "
                     "this data set is multi-label.")
  if ordinal_scale and multi_label:
    raise ValueError("ordinal_scale orders the classes of single-label data, and this data set "
                     "is multi-label: set --config.ordinal_scale=0.")
  if auc_loss_weight and mixup_alpha:
    raise ValueError("auc_loss_weight ranks each class's positives above its negatives, and a "
                     "mixed image is neither: set --config.mixup_alpha=0 or "
                     "--config.auc_loss_weight=0.")
  trainable = masks.trainable_mask(labels)
  class_weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

  def weighted(loss: jax.Array, label: jax.Array) -> jax.Array:
    return loss if class_weights is None else loss * class_weights[label]

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, lr_scale):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    if grad_wrt == "trainable":
      train, frozen, merge = split_trainable(state.params, trainable)
    else:  # every leaf is differentiated
      train, frozen, merge = split_trainable(state.params, True)

    images, targets = batch["image"], [(1.0, batch["label"])]
    if mixup_alpha > 0:
      images, targets = mixup(images, batch["label"], jax.random.fold_in(rng, MIXUP_STREAM),
                              mixup_alpha)

    def loss_fn(train_leaves):
      params = merge(train_leaves, frozen)
      variables = {**state.constants, "params": params, "batch_stats": state.batch_stats}
      if bn_stats == "batch":
        logits, updated = model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        new_stats = updated["batch_stats"]
      else:
        logits = model.apply(
            variables, images, train=True, use_running_average=True, rngs={"dropout": rng}
        )
        new_stats = state.batch_stats
      loss = sum(weight * weighted(loss_per_example(
          logits, label, multi_label=multi_label, label_smoothing=label_smoothing,
          ordinal_scale=ordinal_scale,
      ), label) for weight, label in targets).mean()
      if auc_loss_weight:
        label = batch["label"]
        positives = label if multi_label else jax.nn.one_hot(label, logits.shape[-1])
        loss = loss + auc_loss_weight * pairwise_auc_loss(
            probabilities(logits, multi_label), positives, auc_loss_margin)
      return loss, new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(train)
    if axis_name is not None:
      if grad_wrt == "trainable":
        grads = jax.lax.pmean(grads, axis_name)
      else:  # frozen gradients are never reduced: they stay dead code
        grads = jax.tree.map(
            lambda g, t: jax.lax.pmean(g, axis_name) if t else g,
            merge(grads, frozen), trainable)
        grads = jax.tree.leaves(grads)
      loss = jax.lax.pmean(loss, axis_name)
      if bn_stats == "batch":
        new_stats = jax.lax.pmean(new_stats, axis_name)
    # The optimizer is a partition over the whole tree; frozen leaves get zeros that
    # only its set_to_zero branch sees (and whose updates nothing reads: XLA drops them).
    full_grads = merge(grads, [jnp.zeros_like(x) for x in frozen])
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    if grad_wrt == "trainable":
      t_updates, _, _ = split_trainable(updates, trainable)
      new_params = merge(
          optax.apply_updates(train, [u * lr_scale for u in t_updates]), frozen)
    else:
      updates = jax.tree.map(lambda u: u * lr_scale, updates)
      new_params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        batch_stats=new_stats,
        opt_state=opt_state,
    )
    return new_state, {"loss": loss}

  return train_step


MIXUP_STREAM = 0x6D6978  # folded into the step's key for mixup's draws ("mix")


def mixup(images: jax.Array, labels: jax.Array, rng: jax.Array, alpha: float
          ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
  """Mixup of one batch: the mixed images and the ``[(λ, labels), (1 - λ, labels[perm])]``
  whose weighted per-example losses sum to the mixed-target loss (cross-entropy and
  BCE are linear in the target).

  >>> x, y = jnp.arange(4.0).reshape(4, 1), jnp.arange(4)
  >>> mixed, targets = mixup(x, y, jax.random.key(0), alpha=0.2)
  >>> (lam, a), (rest, b) = targets
  >>> bool(jnp.allclose(mixed[:, 0], lam * a + rest * b))
  True
  """
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha).astype(images.dtype)
  perm = jax.random.permutation(perm_rng, images.shape[0])
  mixed = lam * images + (1 - lam) * images[perm]
  return mixed, [(lam, labels), (1 - lam, labels[perm])]


def make_eval_step(model: nn.Module, *, multi_label: bool) -> Callable:
  """``(variables, batch) -> {'probs', 'loss'}`` per example, BN in inference mode."""

  def eval_step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    return {
        "probs": probabilities(logits, multi_label),
        "loss": loss_per_example(logits, batch["label"], multi_label=multi_label),
    }

  return eval_step
