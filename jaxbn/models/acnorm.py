r"""``ACNorm``: AC-Norm (Zhang et al., arXiv 2307.15282) as a drop-in Flax BatchNorm.

``norm='acnorm'`` in any jaxbn model (``create_model(arch, norm='acnorm')``,
``--config.model.norm=acnorm``) builds every normalisation layer as an
:class:`ACNorm`. Its variables, per layer with ``C`` channels:

==================  ==================  ==================================================
collection          names               what
==================  ==================  ==================================================
``params``          ``scale``, ``bias``  target affine ``γ_t, β_t`` (trainable; the names a
                                        BN has, so :mod:`jaxbn.masks`' ``bn*`` strategies
                                        select them)
``batch_stats``     ``mean``, ``var``    running statistics, as ``nn.BatchNorm``
``acnorm_source``   ``scale``, ``bias``  frozen source affine ``γ_s, β_s`` (never a param,
                                        so no optimizer ever sees it)
==================  ==================  ==================================================

Loading a pretrained *BN* checkpoint into an ``norm='acnorm'`` model
(:func:`jaxbn.weights.pytorch.convert_state_dict` / ``load_pretrained``)
initialises target and source from the same pretrained ``γ, β``
(:func:`add_source_affine`), and the running statistics from the BN's. With
random initialisation both affines start at ``γ = 1, β = 0``.

Forward (arXiv:2307.15282): ``(S, γ_eff, β_eff) = jaxbn.ops.acnorm_affine(γ_s, β_s,
γ_t, β_t, τ, ε)``; ``x̂ = (x - μ) / sqrt(σ² + ε)`` with batch statistics in
training and running statistics with ``use_running_average=True``; ``y = x̂ γ_eff +
β_eff``. Note what this means (it is the reference behaviour): at initialisation
``S`` is diagonal and ``y = (1 + P_ii) · BN_pretrained(x)`` — the layer does *not*
reproduce the pretrained network's function.

Running statistics are updated once per training step with Flax's convention
``running = m * running + (1 - m) * batch`` (biased batch variance, as
``nn.BatchNorm``). The reference PyTorch layer updates them twice per step with
torch momentum 0.1, an effective ``1 - 0.9² = 0.19``; so AC-Norm's default is
Flax momentum :data:`ACNORM_MOMENTUM` ``= 0.81``, whatever the backbone's BN
momentum (jaxbn's trainer uses it unless ``--config.bn_momentum`` is set; with
``create_model`` pass ``bn_momentum=ACNORM_MOMENTUM``, since the model's own
``bn_momentum`` default is its BN's).

The trainer carries ``acnorm_source`` in ``TrainState.constants`` (collections
the model reads but neither trains nor updates), so it flows through the train
step, evaluation and both checkpoints.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbn import treepath
from jaxbn.ops.acnorm import DEFAULT_TEMPERATURE, acnorm_affine

SOURCE = "acnorm_source"  # the variable collection of the frozen source affine
CORR = "acnorm_corr"  # name of the sown S in the 'intermediates' collection
ACNORM_MOMENTUM = 0.81  # Flax convention; = torch 0.19 = the reference's two 0.1 updates


class ACNorm(nn.Module):
  """AC-Norm over the last (channel) axis; the same call convention as ``nn.BatchNorm``.

  Attributes:
    use_running_average: normalise with the running statistics (and leave them
      untouched) instead of the batch's; may also be passed to ``__call__``.
    momentum: running-statistics momentum, Flax convention (default 0.81, see
      the module docstring).
    epsilon: the BN's ε, used for the variance and in ``β / (|γ| + ε)``.
    temperature: the softmax temperature ``τ``.
    dtype: output / computation dtype of the normalised activations (statistics
      and the affine are float32, as in ``nn.BatchNorm``).
    param_dtype: dtype of the parameters and the source affine.
    axis_name: pmap axis to average batch statistics over (as ``nn.BatchNorm``).
  """

  use_running_average: bool | None = None
  momentum: float = ACNORM_MOMENTUM
  epsilon: float = 1e-5
  temperature: float = DEFAULT_TEMPERATURE
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    """Normalises ``x`` (``(..., C)``).

    ``S`` is also sown as ``intermediates/acnorm_corr`` (only when the caller
    makes ``'intermediates'`` mutable; free otherwise). Without a forward pass,
    :func:`correlations` recomputes every layer's ``S`` from the variables.
    """
    use_ra = nn.merge_param("use_running_average", self.use_running_average,
                            use_running_average)
    c = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
    if not self.is_initializing() and not self.has_variable(SOURCE, "scale"):
      raise ValueError(
          f"AC-Norm layer {'/'.join(self.path) or '(root)'} has no source affine: apply the "
          f"model with the {SOURCE!r} collection too (variables = {{'params', 'batch_stats', "
          f"{SOURCE!r}}}; jaxbn's trainer keeps it in TrainState.constants)."
      )
    # At init the source equals the target (both from scale_init/bias_init); a
    # pretrained BN checkpoint overwrites both with the same values.
    source_scale = self.variable(SOURCE, "scale", lambda: jnp.asarray(scale, self.param_dtype))
    source_bias = self.variable(SOURCE, "bias", lambda: jnp.asarray(bias, self.param_dtype))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

    if use_ra:
      mean, var = ra_mean.value, ra_var.value
    else:
      # Flax's fast variance (E[x²] - E[x]², clipped at 0), in float32.
      xf = jnp.asarray(x, jnp.float32)
      mean, mean2 = xf.mean(axes), jnp.square(xf).mean(axes)
      if self.axis_name is not None and not self.is_initializing():
        mean, mean2 = jax.lax.pmean(jnp.stack([mean, mean2]), self.axis_name)
      var = jnp.maximum(0.0, mean2 - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    corr, scale_eff, bias_eff = acnorm_affine(
        source_scale.value, source_bias.value, scale, bias, self.temperature, self.epsilon
    )
    # As nn.BatchNorm: y = (x - mean) * (rsqrt(var + eps) * scale) + bias.
    y = x - mean
    y = y * (jax.lax.rsqrt(var + self.epsilon) * scale_eff)
    y = y + bias_eff
    self.sow("intermediates", CORR, corr)
    dtype = self.dtype if self.dtype is not None else jnp.result_type(x, jnp.float32)
    return jnp.asarray(y, dtype)


# --------------------------------------------------------------------------- #
# Variables: pretrained BN → AC-Norm, and reading S back.
# --------------------------------------------------------------------------- #


def add_source_affine(variables: Mapping[str, Any], source_shapes: Mapping[str, Any]) -> dict:
  """``variables`` plus an ``acnorm_source`` collection copied from ``params``.

  For every AC-Norm layer in ``source_shapes`` (the model's abstract
  ``acnorm_source`` tree, e.g. ``jax.eval_shape(model.init, ...)['acnorm_source']``)
  the frozen source ``scale``/``bias`` become copies of the layer's ``params``
  ``scale``/``bias`` — the pretrained BN's ``γ, β``, which also initialise the
  target. Used when a BN checkpoint is loaded into an ``norm='acnorm'`` model.
  A ``variables`` that already has the collection is returned unchanged.
  """
  variables = dict(variables)
  if SOURCE in variables:
    return variables
  source: dict[str, Any] = {}
  for path, leaves in treepath.modules(source_shapes).items():
    module_params = treepath.get(variables["params"], path)
    node = source
    for k in path:
      node = node.setdefault(k, {})
    for name, shape in leaves.items():
      value = np.array(module_params[name], dtype=shape.dtype, copy=True)
      if value.shape != tuple(shape.shape):
        raise ValueError(f"AC-Norm source {'/'.join(path)}/{name}: params have shape "
                         f"{value.shape}, the model expects {tuple(shape.shape)}.")
      node[name] = value
  variables[SOURCE] = source
  return variables


def layer_paths(variables: Mapping[str, Any]) -> list[tuple[str, ...]]:
  """Module paths of the AC-Norm layers (those holding an ``acnorm_source`` affine)."""
  return sorted(treepath.modules(variables.get(SOURCE, {})))


def layer_affines(variables: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[Any, ...]]:
  """``{module path: (γ_s, β_s, γ_t, β_t)}`` of every AC-Norm layer (sorted by path)."""
  out = {}
  for path in layer_paths(variables):
    src, tgt = treepath.get(variables[SOURCE], path), treepath.get(variables["params"], path)
    out[path] = (src["scale"], src["bias"], tgt["scale"], tgt["bias"])
  return out


def layer_settings(model: nn.Module, variables: Mapping[str, Any],
                   image_size: int = 32) -> dict[tuple[str, ...], dict[str, float]]:
  """``{module path: {'epsilon', 'temperature'}}`` of every :class:`ACNorm` of ``model``.

  Found by tracing one inference-mode call under ``jax.eval_shape`` (nothing
  is computed or compiled).
  """
  found: dict[tuple[str, ...], dict[str, float]] = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, ACNorm) and context.method_name == "__call__":
      found[tuple(context.module.path)] = {"epsilon": float(context.module.epsilon),
                                           "temperature": float(context.module.temperature)}
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x), dict(variables), x)
  return found


__all__ = [
    "ACNORM_MOMENTUM",
    "ACNorm",
    "SOURCE",
    "add_source_affine",
    "layer_affines",
    "layer_paths",
    "layer_settings",
]
