"""Test-time augmentation (TTA): class probabilities averaged over views of each image.

An evaluation option, reported beside (never instead of) the plain score: the
trainer's ``results.json`` gets ``tta_*`` fields. ``config.tta`` names the views,
comma- or plus-separated; the identity view is always included:

  hflip: the image mirrored left-right (only where the data allow it: the
    trainer does not check; ``data.hflip`` is the training-time equivalent).
  vflip: mirrored up-down.
  shift: four copies shifted by ``tta_shift`` × the image side (default 1/16)
    up, down, left and right, the uncovered border repeating the edge pixels.

Views act on the normalised batch inside the compiled evaluation step. Averaging
predictions over flips and shifts is the classic TTA (Krizhevsky et al. 2012;
for medical images, Wang et al. 2019, arXiv:1810.07884).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbn import step as step_lib

VIEWS = ("hflip", "vflip", "shift")


def parse_views(spec: str | Sequence[str] | None) -> tuple[str, ...]:
  """``"hflip,shift"`` (or ``"hflip+shift"``) → ``("hflip", "shift")``; empty → ``()`` (off)."""
  if not spec:
    return ()
  if isinstance(spec, str):
    spec = spec.replace("+", ",").split(",")
  names = [v.strip() for v in spec if v.strip()]
  unknown = [v for v in names if v not in VIEWS]
  if unknown:
    raise ValueError(f"Unknown TTA view(s) {unknown}: use a comma-separated subset of "
                     f"{', '.join(VIEWS)} in --config.tta.")
  return tuple(dict.fromkeys(names))


def shift_image(images: jax.Array, dy: int, dx: int) -> jax.Array:
  """``[B, H, W, C]`` shifted by (dy, dx) pixels (content moves down/right for positive
  values); the uncovered border repeats the nearest edge pixel."""
  h, w = images.shape[1], images.shape[2]
  pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
  padded = jnp.pad(images, pad, mode="edge")
  y0, x0 = max(-dy, 0), max(-dx, 0)
  return padded[:, y0:y0 + h, x0:x0 + w, :]


def make_views(views: Sequence[str], image_size: int, shift: float = 1 / 16
               ) -> list[Callable[[jax.Array], jax.Array]]:
  """The view functions, identity first."""
  out = [lambda x: x]
  if "hflip" in views:
    out.append(lambda x: x[:, :, ::-1, :])
  if "vflip" in views:
    out.append(lambda x: x[:, ::-1, :, :])
  if "shift" in views:
    k = max(1, round(shift * image_size))
    for dy, dx in ((k, 0), (-k, 0), (0, k), (0, -k)):
      out.append(lambda x, dy=dy, dx=dx: shift_image(x, dy, dx))
  return out


def average_probs(probs: jax.Array) -> jax.Array:
  """``[V, B, K]`` per-view probabilities → ``[B, K]`` mean."""
  return jnp.mean(probs, axis=0)


def loss_from_probs(probs: jax.Array, labels: jax.Array, multi_label: bool) -> jax.Array:
  """Cross-entropy (or mean BCE for multi-label) of averaged probabilities, per example."""
  eps = 1e-7
  p = jnp.clip(probs, eps, 1 - eps)
  if multi_label:
    y = labels.astype(jnp.float32)
    return -jnp.mean(y * jnp.log(p) + (1 - y) * jnp.log(1 - p), axis=-1)
  return -jnp.log(jnp.take_along_axis(p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0])


def make_eval_step(model: nn.Module, *, multi_label: bool, views: Sequence[str],
                   image_size: int, shift: float = 1 / 16) -> Callable:
  """Like :func:`jaxbn.step.make_eval_step`, probabilities averaged over the views."""
  fns = make_views(views, image_size, shift)

  def eval_step(variables, batch):
    images = batch["image"]
    probs = jnp.stack([
        step_lib.probabilities(model.apply(variables, f(images), train=False), multi_label)
        for f in fns])
    p = average_probs(probs)
    return {"probs": p, "loss": loss_from_probs(p, batch["label"], multi_label)}

  return eval_step
