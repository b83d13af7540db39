"""Layers shared by the backbones: conv/norm factories, the depthwise conv, the classifier tail."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxbn.models import norm as norm_lib


def conv_and_norm(model: nn.Module, train: bool, use_running_average: bool | None, *,
                  epsilon: float, **conv_kwargs: Any) -> tuple[Callable[..., nn.Module], ...]:
  """A backbone's bias-free ``nn.Conv`` and its norm layer factory (:func:`make_norm`).

  ``model`` supplies the attributes every jaxbn backbone has: ``dtype``,
  ``norm``, ``bn_momentum`` and ``bn_axis_name``. BN normalises with batch
  statistics when ``train``, unless ``use_running_average`` says otherwise
  (``train=True, use_running_average=True``: dropout on, frozen statistics).
  ``conv_kwargs`` (e.g. ``kernel_init``, ``padding``) go to every conv.
  """
  use_ra = use_running_average if use_running_average is not None else not train
  conv = functools.partial(nn.Conv, use_bias=False, dtype=model.dtype, param_dtype=jnp.float32,
                           **conv_kwargs)
  norm = functools.partial(
      norm_lib.make_norm, model.norm, use_running_average=use_ra, epsilon=epsilon,
      momentum=model.bn_momentum, axis_name=model.bn_axis_name, dtype=model.dtype,
  )
  return conv, norm


def depthwise_conv_shifts(
    x: jax.Array, kernel: jax.Array, stride: int, padding: Sequence[tuple[int, int]]
) -> jax.Array:
  """Depthwise conv as k*k shifted multiply-adds (NHWC, kernel (kh, kw, 1, C)).

  Same result as ``lax.conv_general_dilated(..., feature_group_count=C)``. XLA's
  CPU backend lowers grouped convolutions to a slow generic loop (10-20x slower
  than this for EfficientNet shapes, forward and backward); shifted slices are
  plain vectorised element-wise work on every backend.
  """
  kh, kw = kernel.shape[:2]
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w, c = x.shape
  out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(
          x, (0, i, j, 0), (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
          (1, stride, stride, 1),
      )
      term = patch * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """Depthwise 2-D convolution with the parameter layout of ``nn.Conv``.

  The ``kernel`` is (kh, kw, 1, C), exactly what ``nn.Conv(C, ...,
  feature_group_count=C)`` creates, so checkpoints and masks see no
  difference. ``impl``: ``"conv"`` (XLA grouped convolution, the fast path on
  GPU/TPU), ``"shifts"`` (:func:`depthwise_conv_shifts`, the fast path on CPU)
  or ``"auto"`` (shifts on CPU, conv elsewhere).
  """

  kernel_size: tuple[int, int]
  strides: int = 1
  padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param(
        "kernel", self.kernel_init, (*self.kernel_size, 1, channels), self.param_dtype
    )
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "shifts" if jax.default_backend() == "cpu" else "conv"
    if impl == "shifts":
      return depthwise_conv_shifts(x, kernel, self.strides, self.padding)
    if impl == "conv":
      return lax.conv_general_dilated(
          x, kernel, (self.strides, self.strides), [tuple(p) for p in self.padding],
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
      )
    raise ValueError(f"DepthwiseConv impl must be auto | conv | shifts, got {impl!r}.")


# Global pooling of the head: average (every checkpoint's own), max, or both concatenated
# (twice the features, so twice the head's weights).
POOLS = ("avg", "max", "avgmax")


def check_pool(pool: str) -> None:
  """Raises ``ValueError`` unless ``pool`` is one of :data:`POOLS`."""
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {' | '.join(POOLS)}, got {pool!r}.")


def global_pool(x: jax.Array, pool: str = "avg") -> jax.Array:
  """(N, H, W, C) → float32 (N, C), or (N, 2C) for ``avgmax`` (average first, then max)."""
  x = x.astype(jnp.float32)
  if pool == "avg":
    return jnp.mean(x, axis=(1, 2))
  if pool == "max":
    return jnp.max(x, axis=(1, 2))
  check_pool(pool)
  return jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)


# The families whose blocks are residual, so that stochastic depth can drop their branches.
DROP_PATH_FAMILIES = ("efficientnet_lite", "resnet")


def drop_path(x: jax.Array, rate: float, *, train: bool) -> jax.Array:
  """Stochastic depth (Huang et al. 2016, arXiv 1603.09382) of a residual branch.

  In training, each example's branch ``x`` is zeroed with probability ``rate`` and kept
  ones are scaled by ``1 / (1 - rate)`` (Flax ``Dropout`` broadcast over all but the batch
  axis, drawing from the ``dropout`` stream); otherwise, or at rate 0, ``x`` is returned.
  Call it inside a ``@nn.compact`` method, on the branch before it joins the shortcut.
  """
  if not train or rate == 0.0:
    return x
  return nn.Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=False)(x)


def block_drop_rates(rate: float, num_blocks: int) -> list[float]:
  """Per-block stochastic-depth rates, growing linearly with depth: ``rate * i / num_blocks``.

  As EfficientNet's reference code (``drop_connect_rate * idx / len(blocks)``): the first
  block is never dropped, and the rates index the whole network, so a TruncatedTL cut
  keeps its blocks' rates.

  >>> block_drop_rates(0.5, 4)
  [0.0, 0.125, 0.25, 0.375]
  """
  return [rate * i / num_blocks for i in range(num_blocks)]


def classifier_tail(
    x: jax.Array,
    *,
    num_classes: int,
    dropout_rate: float,
    train: bool,
    dtype: Any,
    name: str,
    kernel_init: Callable[..., Any] = nn.linear.default_kernel_init,
    taps: Sequence[jax.Array] = (),
    pool: str = "avg",
) -> jax.Array:
  """Global pooling → dropout → a new ``Dense`` head, every family's tail.

  Call it inside a ``@nn.compact`` method: the ``Dropout`` and the ``Dense``
  (called ``name``, the spec's ``head``) become submodules of the calling
  model. Pooling and logits are float32 whatever the compute ``dtype``;
  ``num_classes == 0`` returns the pooled (N, C) features, without a head.
  ``taps``: earlier feature maps (``head_taps``), each pooled the same way and
  concatenated before ``x``'s features (a multi-scale head). ``pool``: one of
  :data:`POOLS` (:func:`global_pool`).
  """
  pooled = [global_pool(t, pool) for t in (*taps, x)]
  x = pooled[0] if len(pooled) == 1 else jnp.concatenate(pooled, axis=-1)
  if num_classes == 0:
    return x
  x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  x = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
               name=name)(x)
  return jnp.asarray(x, jnp.float32)
