"""Flax NNX: BN-only filters for ``nnx.Optimizer`` / ``nnx.grad``, and jaxbn's backbones as NNX
modules.

**Filters.** :func:`jaxbn.masks.nnx_filter` (also ``jaxbn.nnx.nnx_filter``) resolves a
:mod:`jaxbn.masks` strategy on an NNX model and returns an NNX filter (a
hashable ``(path, variable) -> bool`` predicate) that is true for the
selected ``nnx.Param`` s only::

    f = jaxbn.masks.nnx_filter(model, "bn+head")
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=f)    # state for f only
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, f))(model, x, y)
    optimizer.update(model, grads)

``nnx.grad`` then differentiates with respect to the selected parameters only:
the gradient tree holds nothing else, and the weight-gradient computations of
the frozen layers are never part of the program. BatchNorm is found
structurally, as for Linen (:func:`jaxbn.masks.is_batchnorm`): a module whose
``nnx.BatchStat`` ``mean``/``var`` sit beside ``nnx.Param`` ``scale``/``bias``
of the same shape (``nnx.BatchNorm`` or a user's own layer), never by name, so
an ``nnx.LayerNorm`` is never taken for one. Every strategy works (``full``,
``bn``, ``bn_scale``, ``bn_bias``, ``head``, ``bn+head``, ``from_stage(k)``,
``regex:...``, :func:`jaxbn.masks.where` predicates, sums and differences).

**Backbones.** :func:`create_model` returns a :class:`Backbone`: the registered
Linen network wrapped by ``flax.nnx.bridge.ToNNX``, with the converted ImageNet
weights (or a random init) loaded as ``nnx.Param`` / ``nnx.BatchStat`` variables
under the Linen module paths (``bn0/scale``, ``blocks_3/bn1/mean``,
``fc/kernel``). It follows NNX's modes: ``model.train()`` (dropout on, batch
statistics, running averages updated in place), ``model.eval()``, and BN-only
fine-tuning with frozen statistics (Kanavati & Tsuneki 2021, arXiv:2102.05543)::

    model = jaxbn.nnx.create_model("efficientnet_lite0", 2, pretrained=True)
    model.train(); model.set_attributes(use_running_average=True)

Why the bridge and not a second, native NNX implementation of every family:
the Linen modules are the ones the checkpoint converters and the torch parity
tests pin number for number, and they carry TruncatedTL cuts,
bfloat16 compute and the CPU depthwise lowering. Wrapping them gives every
registered architecture, with all those options, one source of truth, the same
XLA program (so the same speed), and equality with the Linen model by
construction rather than by a port that must be kept in step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxbn import masks

# Filters live in jaxbn.masks (no NNX import until used); re-exported here.
Selected, labels, nnx_filter = masks.NNXFilter, masks.nnx_labels, masks.nnx_filter


# --------------------------------------------------------------------------- #
# Backbones.
# --------------------------------------------------------------------------- #


class Backbone(nnx.bridge.ToNNX):
  """A jaxbn Linen backbone as an NNX module (``flax.nnx.bridge.ToNNX``).

  Variables live under the Linen paths (``model.fc['kernel']`` is an
  ``nnx.Param``, ``model.bn0['mean']`` an ``nnx.BatchStat``). Call it on NHWC
  images normalised with the architecture's ``spec.mean``/``spec.std``. Its
  mode is two NNX attributes, set by ``model.train()`` / ``model.eval()`` /
  ``model.set_attributes(...)``:

  * ``deterministic``: dropout off;
  * ``use_running_average``: BN normalises with the running statistics; when
    False it uses batch statistics and updates ``mean``/``var`` in place.

  New models start in eval mode (a pretrained backbone is an inference
  model until you ask for training).
  """

  def __init__(self, module, rngs: nnx.Rngs):
    super().__init__(module, rngs=rngs)
    self.to_nnx__deterministic = True
    self.to_nnx__use_running_average = True

  # Properties so that set_attributes finds them while ToNNX keeps them out of
  # the Linen variables it rebuilds from the module's attributes.
  @property
  def deterministic(self) -> bool:
    return self.to_nnx__deterministic

  @deterministic.setter
  def deterministic(self, value: bool) -> None:
    self.to_nnx__deterministic = bool(value)

  @property
  def use_running_average(self) -> bool:
    return self.to_nnx__use_running_average

  @use_running_average.setter
  def use_running_average(self, value: bool) -> None:
    self.to_nnx__use_running_average = bool(value)

  def __call__(self, x, *, train: bool | None = None, use_running_average: bool | None = None,
               rngs=None):
    """Logits (float32) in the current mode; ``train``/``use_running_average`` override it."""
    train = (not self.deterministic) if train is None else train
    use_ra = self.use_running_average if use_running_average is None else use_running_average
    return super().__call__(
        x, train=train, use_running_average=use_ra, rngs=rngs,
        mutable=False if use_ra else ["batch_stats"],
    )

  def variables(self) -> dict[str, Any]:
    """The Linen variables dict (``{'params', 'batch_stats', ...}``) of this module."""
    attrs = {k: v for k, v in vars(self).items()
             if not k.startswith("to_nnx__") and not k.startswith("_pytree__")}
    return nnx.bridge.variables.nnx_attrs_to_linen_vars(attrs)


def from_linen(module, variables: Any, rngs: nnx.Rngs | None = None) -> Backbone:
  """A :class:`Backbone` for a Linen ``module`` holding ``variables`` (copied).

  ``rngs``: the dropout stream (default ``nnx.Rngs(0)``).
  """
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  model = Backbone(module, rngs=nnx.Rngs(dropout=rngs.dropout()))
  variables = flax.core.unfreeze(jax.tree.map(jnp.array, variables))  # own copies
  attrs = nnx.bridge.variables.linen_vars_to_nnx_attrs(variables)
  for name, value in attrs.items():
    setattr(model, name, nnx.data(value))
  return model


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    pretrained: bool | str = False,
    rngs: nnx.Rngs | None = None,
    input_size: int = 64,
    **kwargs: Any,
) -> Backbone:
  """A jaxbn architecture as an NNX module.

  Args:
    name: a registered architecture (``jaxbn.models.available_models()``).
    num_classes: size of the new head ``spec.head`` (zero-initialised when
      pretrained, as jaxbn's Linen path does); ``0``: pooled features.
    pretrained: ``True`` for the registered ImageNet checkpoint, a path
      (``.pth``, ``.safetensors`` or a ``python -m jaxbn.convert`` directory),
      or ``False`` for a random init.
    rngs: ``nnx.Rngs``; its ``params`` stream initialises (random init) and its
      ``dropout`` stream drives dropout (each falls back to ``default``).
    input_size: the square input used to build the random init (the variables
      do not depend on it).
    **kwargs: as for :func:`jaxbn.models.create_model` (``dtype``,
      ``dropout_rate``, ``truncate_at``, ...; ``norm='acnorm'`` is Linen only).
  """
  from jaxbn.models import registry

  if str(kwargs.get("norm", "bn")).startswith("acnorm"):
    raise ValueError(
        "norm='acnorm' has no NNX form: AC-Norm keeps its frozen source affine under the "
        "same names as its trained one (acnorm_source/.../scale beside params/.../scale), "
        "and an NNX module holds one variable per name. Use the Linen model "
        "(api='linen') for AC-Norm."
    )
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  module = registry.create_model(name, num_classes, **kwargs)
  if pretrained:
    from jaxbn.weights import load_pretrained

    source = None if pretrained is True else pretrained
    variables = load_pretrained(name, source, num_classes=num_classes, **kwargs)
  else:
    variables = registry.init_variables(module, rngs.params(), input_size)
  return from_linen(module, variables, rngs)


# --------------------------------------------------------------------------- #
# A functional train step (for benchmarks and compiled loops).
# --------------------------------------------------------------------------- #


def make_train_step(model: Backbone, strategy: Any, tx, *, bn_stats: str = "frozen",
                    arch: str | None = None):
  """``(step, state)``: a pure ``(state, batch, rng, lr_scale) -> (state, metrics)`` step.

  The NNX counterpart of :func:`jaxbn.step.make_train_step`, written the way
  NNX documents for hot loops: the model and its ``nnx.Optimizer`` are split
  once into a graph definition and a state pytree, and the step merges them
  inside ``jax.jit``. Gradients are taken with
  ``nnx.grad(..., argnums=nnx.DiffState(0, f))`` for the strategy's filter
  ``f`` only. ``bn_stats``: ``"frozen"`` (running statistics) or ``"batch"``.
  ``rng`` and ``lr_scale`` are accepted for signature parity and unused (the
  model's own dropout stream is part of the state).
  """
  from jaxbn import step as step_lib

  if bn_stats not in ("frozen", "batch"):
    raise ValueError(f"bn_stats must be 'frozen' or 'batch', got {bn_stats!r}.")
  f = nnx_filter(model, strategy, arch=arch)
  model.train()
  model.set_attributes(use_running_average=bn_stats == "frozen")
  optimizer = nnx.Optimizer(model, tx, wrt=f)
  graphdef, state = nnx.split((model, optimizer))

  def loss_fn(model, batch):
    logits = model(batch["image"])
    return step_lib.loss_per_example(logits, batch["label"], multi_label=False).mean()

  def train_step(state, batch, rng, lr_scale):
    del rng, lr_scale
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, f))(model, batch)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss}

  return train_step, state
