"""Train-time augmentation as tf.data ops: rotations, shifts, vertical flips; brightness, contrast.

Applied to each preprocessed training image (``[S, S, C]`` float32, already
resized and normalised) after :func:`jaxbn.data.pipeline.preprocess`, whose
random resized crop and horizontal flip come first. Every op draws from a
stateless per-example seed, so a training stream stays reproducible.

Data config fields (all off by default; ``data.augment=False`` turns these off
too):

  rotate_deg: float, default 0. Rotation by an angle uniform in
    ``[-rotate_deg, rotate_deg]`` degrees about the image centre.
  shift: float, default 0. Translation by up to ``shift`` × the image side,
    independently along x and y.
  vflip: bool, default False. Random vertical (up/down) flip — set it only
    where the data allow it (e.g. histology or blood-cell images, not chest
    X-rays); horizontal flips are ``data.hflip``.
  brightness: float, default 0. Adds one δ uniform in ``[-brightness, brightness]`` to
    every pixel and channel, in units of the [0, 1] pixel range.
  contrast: float, default 0. Scales each channel's deviations from its mean over the
    image by a factor uniform in ``[1 - contrast, 1 + contrast]`` (``tf.image.adjust_contrast``).

The intensity changes act on the pixels the image was normalised from: contrast first,
then brightness, then a clip to [0, 1], then the normalisation again
(:func:`random_intensity`).

Pixels shifted in from outside the image repeat the nearest edge pixel
(``fill_mode='NEAREST'``), so no artificial black border is introduced.
Small rotations and shifts are the standard label-preserving augmentations for
medical images (e.g. Shorten & Khoshgoftaar 2019, doi:10.1186/s40537-019-0197-0;
MedMNIST v2, arXiv:2110.14795).
"""

from __future__ import annotations

import math

import ml_collections
import tensorflow as tf

from jaxbn.data import fields

DEFAULTS = {k: fields.FIELDS[k][0] for k in ("rotate_deg", "shift", "vflip")}
INTENSITY_DEFAULTS = {k: fields.FIELDS[k][0] for k in ("brightness", "contrast")}


def settings(config: ml_collections.ConfigDict) -> dict:
  """``rotate_deg``, ``shift``, ``vflip`` of a data config (defaults where missing)."""
  out = {k: config.get(k, v) for k, v in DEFAULTS.items()}
  if out["rotate_deg"] < 0 or not 0 <= out["shift"] < 0.5:
    raise ValueError(f"data.rotate_deg must be >= 0 and data.shift in [0, 0.5), got "
                     f"{out['rotate_deg']} and {out['shift']}.")
  if not config.get("augment", True):
    out = dict(DEFAULTS)
  return out


def intensity_settings(config: ml_collections.ConfigDict) -> dict:
  """``brightness``, ``contrast`` of a data config (defaults where missing; off without
  ``augment``)."""
  out = {k: config.get(k, v) for k, v in INTENSITY_DEFAULTS.items()}
  if not 0 <= out["brightness"] <= 1 or not 0 <= out["contrast"] <= 1:
    raise ValueError(f"data.brightness and data.contrast must be in [0, 1], got "
                     f"{out['brightness']} and {out['contrast']}.")
  if not config.get("augment", True):
    out = dict(INTENSITY_DEFAULTS)
  return out


def random_intensity(image: tf.Tensor, seed: tf.Tensor, *, scale, offset,
                     brightness: float = 0.0, contrast: float = 0.0) -> tf.Tensor:
  """One normalised image ``[H, W, C]``, its contrast and brightness randomly changed.

  Args:
    image: ``p * 255 * scale + offset`` for pixels ``p`` in [0, 1] (the pipeline's
      normalisation, ``scale`` and ``offset`` per channel).
    seed: int [2] stateless seed.
    scale, offset: the normalisation, [C] each.
    brightness, contrast: see the module docstring.
  """
  if not (brightness or contrast):
    return image
  contrast_seed, brightness_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  unit = 255.0 * tf.cast(scale, tf.float32)
  offset = tf.cast(offset, tf.float32)
  pixels = (tf.cast(image, tf.float32) - offset) / unit
  factor = tf.random.stateless_uniform([], contrast_seed, 1 - contrast, 1 + contrast)
  mean = tf.reduce_mean(pixels, axis=(0, 1), keepdims=True)
  delta = tf.random.stateless_uniform([], brightness_seed, -brightness, brightness)
  pixels = tf.clip_by_value((pixels - mean) * factor + mean + delta, 0.0, 1.0)
  out = tf.cast(pixels * unit + offset, image.dtype)
  out.set_shape(image.shape)
  return out


def is_active(rotate_deg: float = 0.0, shift: float = 0.0, vflip: bool = False) -> bool:
  return bool(rotate_deg or shift or vflip)


def affine_matrix(angle: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, height: tf.Tensor,
                  width: tf.Tensor) -> tf.Tensor:
  """The 8 projective-transform parameters (output → input pixel map) of a rotation by
  ``angle`` (radians) about the centre followed by a shift of (``dx``, ``dy``) pixels."""
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (tf.cast(width, tf.float32) - 1) / 2, (tf.cast(height, tf.float32) - 1) / 2
  # input = R^-1 (output - centre - shift) + centre
  ox, oy = cx + dx, cy + dy
  a0, a1 = cos, sin
  b0, b1 = -sin, cos
  a2 = cx - a0 * ox - a1 * oy
  b2 = cy - b0 * ox - b1 * oy
  zero = tf.zeros_like(angle)
  return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


def random_affine(image: tf.Tensor, seed: tf.Tensor, *, rotate_deg: float = 0.0,
                  shift: float = 0.0, vflip: bool = False) -> tf.Tensor:
  """One image ``[H, W, C]`` float, randomly rotated/shifted/flipped; same shape and dtype.

  Args:
    image: the image (float32).
    seed: int [2] stateless seed.
    rotate_deg, shift, vflip: see the module docstring.
  """
  if not is_active(rotate_deg, shift, vflip):
    return image
  rot_seed, shift_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  dtype, shape = image.dtype, image.shape
  if vflip:
    image = tf.image.stateless_random_flip_up_down(image, flip_seed)
  if rotate_deg or shift:
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    max_angle = math.radians(rotate_deg)
    angle = tf.random.stateless_uniform([], rot_seed, -max_angle, max_angle)
    d = tf.random.stateless_uniform([2], shift_seed, -shift, shift)
    dx, dy = d[0] * tf.cast(width, tf.float32), d[1] * tf.cast(height, tf.float32)
    transform = affine_matrix(angle, dx, dy, height, width)
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None],
        output_shape=tf.stack([height, width]), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="NEAREST")[0]
  image = tf.cast(image, dtype)
  image.set_shape(shape)
  return image
