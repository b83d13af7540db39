"""Train and eval step functions, shared by the jit (mesh) and pmap paths.

``make_train_step`` returns a pure function ``(state, batch, rng, lr_scale) ->
(state, metrics)``. Under ``jax.jit`` with a batch-sharded input the mean loss
is already global; under ``jax.pmap`` pass ``axis_name`` and the gradients of
the *trainable* leaves (and the loss, and batch statistics) are averaged over
devices — frozen leaves are never reduced, so their gradients stay dead code
that XLA removes.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
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


def loss_per_example(
    logits: jax.Array, labels: jax.Array, *, multi_label: bool, label_smoothing: float = 0.0
) -> jax.Array:
  """Softmax cross-entropy (single label) or mean sigmoid BCE (multi-label)."""
  logits = logits.astype(jnp.float32)
  if multi_label:
    targets = labels.astype(jnp.float32)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return optax.softmax_cross_entropy(logits, onehot)


def probabilities(logits: jax.Array, multi_label: bool) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    labels: Any,
    *,
    bn_stats: str,
    multi_label: bool,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
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
    axis_name: pmap axis to average over; ``None`` under jit.
  """
  if bn_stats not in ("frozen", "batch"):
    raise ValueError(f"bn_stats must be 'frozen' or 'batch', got {bn_stats!r}.")
  trainable = masks.trainable_mask(labels)

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, lr_scale):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
      variables = {**state.constants, "params": params, "batch_stats": state.batch_stats}
      if bn_stats == "batch":
        logits, updated = model.apply(
            variables, batch["image"], train=True, mutable=["batch_stats"], rngs={"dropout": rng}
        )
        new_stats = updated["batch_stats"]
      else:
        logits = model.apply(
            variables, batch["image"], train=True, use_running_average=True, rngs={"dropout": rng}
        )
        new_stats = state.batch_stats
      loss = loss_per_example(
          logits, batch["label"], multi_label=multi_label, label_smoothing=label_smoothing
      ).mean()
      return loss, new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
      grads = jax.tree.map(
          lambda g, t: jax.lax.pmean(g, axis_name) if t else g, grads, trainable
      )
      loss = jax.lax.pmean(loss, axis_name)
      if bn_stats == "batch":
        new_stats = jax.lax.pmean(new_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * lr_scale, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_stats,
        opt_state=opt_state,
    )
    return new_state, {"loss": loss}

  return train_step


def make_eval_step(model: nn.Module, *, multi_label: bool) -> Callable:
  """``(variables, batch) -> {'probs', 'loss'}`` per example, BN in inference mode."""

  def eval_step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    return {
        "probs": probabilities(logits, multi_label),
        "loss": loss_per_example(logits, batch["label"], multi_label=multi_label),
    }

  return eval_step
