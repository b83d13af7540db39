r"""AC-Norm's affine recalibration as one pure jitted op (arXiv:2307.15282, steps 1-6).

Affine Collaborative Normalization (Zhang et al., arXiv 2307.15282) keeps, per
normalisation layer with ``C`` channels, the *source* affine ``γ_s, β_s`` of the
pretrained BN (frozen) and a trainable *target* affine ``γ_t, β_t`` initialised
to the same values. Each forward pass computes

1. ``r_s = β_s / (|γ_s| + ε)``, ``r_t = sg(β_t) / (|sg(γ_t)| + ε)``
2. ``D[i, j] = -|r_t[i] - r_s[j]|``  (row = target channel, column = source channel)
3. ``P = softmax(D / τ)`` over ``j``
4. ``S[i, j] = P[i, j]`` where ``P[i, j] >= P[i, i]`` (ties kept), else 0 — rows are
   **not** renormalised
5. ``S`` is a constant for autodiff (``stop_gradient``)
6. ``γ_eff = γ_t + S @ γ_t``, ``β_eff = β_t + S @ β_t`` — ``S`` multiplies the
   *target* affine, and the identity term makes the layer the vanilla BN output
   plus a recalibrated branch.

So ``∂L/∂γ_t = (I + S)ᵀ ∂L/∂γ_eff`` (same for β) and ``γ_s, β_s`` receive no
gradient. Everything is computed in float32 whatever the input dtype (bf16
inputs are upcast); the outputs are float32.

Cost: one ``(C, C)`` elementwise pass (exp, compare, select) and a ``(C, C) @
(C, 2)`` product — for ``C = 2048`` about 4 M elements, small next to a conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_EPSILON = 1e-5
DEFAULT_TEMPERATURE = 1.0


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


@jax.jit
def acnorm_affine(
    source_scale: jax.Array,
    source_bias: jax.Array,
    target_scale: jax.Array,
    target_bias: jax.Array,
    temperature: float | jax.Array = DEFAULT_TEMPERATURE,
    epsilon: float | jax.Array = DEFAULT_EPSILON,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """AC-Norm's sparse correlation matrix and effective affine.

  Args:
    source_scale, source_bias: ``γ_s, β_s``, shape ``(C,)``; frozen (no gradient).
    target_scale, target_bias: ``γ_t, β_t``, shape ``(C,)``; the gradient flows
      into them only through the ``γ_t + S γ_t`` / ``β_t + S β_t`` products.
    temperature: softmax temperature ``τ`` (> 0); a traced value is fine.
    epsilon: the ``ε`` of ``β / (|γ| + ε)`` (the BN's epsilon).

  Returns:
    ``(S, γ_eff, β_eff)``: ``S`` is ``(C, C)`` float32 with no gradient;
    ``γ_eff, β_eff`` are ``(C,)`` float32.

  >>> import jax.numpy as jnp
  >>> s, g, b = acnorm_affine(jnp.array([1., 2.]), jnp.array([0., 2.]),
  ...                         jnp.array([1., 2.]), jnp.array([0., 2.]))
  >>> [round(float(v), 4) for v in jnp.diag(s)], round(float(s[0, 1]), 4)
  ([0.7311, 0.7311], 0.0)
  """
  g_s, b_s = _f32(source_scale), _f32(source_bias)
  g_t, b_t = _f32(target_scale), _f32(target_bias)
  if g_s.ndim != 1 or not g_s.shape == b_s.shape == g_t.shape == b_t.shape:
    raise ValueError(
        "acnorm_affine expects four (C,) vectors of one shape; got "
        f"{g_s.shape}, {b_s.shape}, {g_t.shape}, {b_t.shape}."
    )
  tau = _f32(temperature)
  eps = _f32(epsilon)
  g_s, b_s = jax.lax.stop_gradient(g_s), jax.lax.stop_gradient(b_s)
  r_s = b_s / (jnp.abs(g_s) + eps)
  r_t = jax.lax.stop_gradient(b_t) / (jnp.abs(jax.lax.stop_gradient(g_t)) + eps)
  d = -jnp.abs(r_t[:, None] - r_s[None, :])
  p = jax.nn.softmax(d / tau, axis=1)
  s = jnp.where(p >= jnp.diagonal(p)[:, None], p, 0.0)
  s = jax.lax.stop_gradient(s)
  # One (C, C) @ (C, 2) product for both vectors; full f32 precision on TPU/GPU.
  recal = jnp.matmul(s, jnp.stack([g_t, b_t], axis=1), precision=jax.lax.Precision.HIGHEST)
  return s, g_t + recal[:, 0], b_t + recal[:, 1]


__all__ = ["DEFAULT_EPSILON", "DEFAULT_TEMPERATURE", "acnorm_affine"]
