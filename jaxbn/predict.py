r"""Classifies images with an ImageNet, converted or fine-tuned checkpoint.

Usage::

  python -m jaxbn.predict --arch efficientnet_lite0 --image cat.png --top 5
  python -m jaxbn.predict --arch resnet50 --checkpoint DIR --image x.png
  python -m jaxbn.predict --workdir runs/my_images --image x.png --image y.png

``--workdir``: a finished ``python -m jaxbn.main`` run. Its final model (the
best-validation-AUC checkpoint, ``WORKDIR/best``, or with ``soup_size`` the average of
``WORKDIR/soup``) classifies the images, preprocessed as the run's
evaluation did (resized to its ``image_size``, no crop, its normalisation), and
the classes are named as in its data set (``results.json``'s ``class_names``).
Otherwise ``--arch`` with the ImageNet checkpoint (or ``--checkpoint``) and
ImageNet preprocessing (short side to size/0.875, centre crop).

Prints JSON: ``{"image": ..., "arch": ..., "top": [{"class": i, "name": ..., "prob": p}, ...]}``
(a list for several images). Multi-label runs give each label's sigmoid probability.
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  extras.require("train", "python -m jaxbn.predict")

import json
import os
import sys
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", None, "Architecture, e.g. efficientnet_lite0.")
flags.DEFINE_multi_string("image", None, "Image file(s) to classify.")
flags.DEFINE_integer("top", 5, "How many classes to print.")
flags.DEFINE_string("checkpoint", None,
                    "Directory from jaxbn.convert, or a .pth/.safetensors file.")
flags.DEFINE_string("workdir", None, "A finished training workdir: its best checkpoint, "
                    "preprocessing and class names (--arch is read from it).")
flags.mark_flags_as_required(["image"])


def load_image(path: str, size: int, mean, std):
  """ImageNet eval preprocessing: resize the short side to size/0.875, centre crop."""
  import numpy as np
  from PIL import Image

  try:
    img = Image.open(path).convert("RGB")
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read image {path}: {e}") from None
  short = round(size / 0.875)
  w, h = img.size
  scale = short / min(w, h)
  img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
  w, h = img.size
  left, top = (w - size) // 2, (h - size) // 2
  img = img.crop((left, top, left + size, top + size))
  x = np.asarray(img, np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def predict(arch: str, images: list[str], top: int = 5,
            checkpoint: str | None = None) -> list[dict]:
  import jax
  import numpy as np

  from jaxbn.data.imagenet import imagenet_class_names
  from jaxbn.models import create_model, get_spec
  from jaxbn.weights import pytorch

  spec = get_spec(arch)
  variables = pytorch.load_pretrained(arch, checkpoint)
  num_classes = variables["params"][spec.head]["bias"].shape[0]
  model = create_model(arch, num_classes=num_classes)
  x = np.stack([load_image(p, spec.input_size, spec.mean, spec.std) for p in images])
  probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(variables, x), axis=-1))
  names = imagenet_class_names() if num_classes == 1000 else None
  return [{"image": path, "arch": arch, "top": _top(p, names, top)}
          for path, p in zip(images, probs)]


def _read_run(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    raise ValueError(f"{workdir} has no results.json; pass the --workdir of a finished "
                     "`python -m jaxbn.main` run.")
  with open(path) as f:
    return json.load(f)


def _top(probs, names, top: int) -> list[dict]:
  import numpy as np

  best = np.argsort(-probs)[:top]
  return [{"class": int(i), "name": names[i] if names else str(i),
           "prob": round(float(probs[i]), 5)} for i in best]


def load_final_model(workdir: str) -> tuple[Any, dict, dict, int, list[int]]:
  """A finished run's ``(model, variables, results, best step, soup steps)``.

  The variables are its final model's (the best checkpoint, or with ``soup_size`` the
  soup's average), as host arrays whatever devices trained it; ``results`` is its
  ``results.json``.
  """
  import jax
  import ml_collections
  import numpy as np

  from jaxbn import setup
  from jaxbn.checkpoint import RunCheckpoints
  from jaxbn.models import get_spec

  run = _read_run(workdir)
  ckpts = RunCheckpoints(workdir, soup=int(run.get("soup_size", 0)))
  try:
    step = ckpts.best.latest_step()
    final = ckpts.restore_final()  # host arrays, whatever devices trained the run
  finally:
    ckpts.close()
  if final is None:
    raise ValueError(f"{workdir} has no best checkpoint (no evaluation finished).")
  variables, soup_steps = final
  variables = jax.tree.map(np.asarray, dict(variables))
  num_classes = int(variables["params"][get_spec(run["arch"]).head]["bias"].shape[0])
  config = ml_collections.ConfigDict({"model": run["model"], "bn_momentum": 0.0})
  return setup.build_model(config, num_classes), variables, run, int(step), list(soup_steps)


def predict_workdir(workdir: str, images: list[str], top: int = 5) -> list[dict]:
  """Classifies ``images`` with a training run's final model (best checkpoint or soup)."""
  import jax
  import ml_collections
  import numpy as np

  from jaxbn.data import fields as data_fields, pipeline
  from jaxbn.models import get_spec
  from jaxbn.tf_setup import import_tensorflow

  tf = import_tensorflow()

  model, variables, run, step, soup_steps = load_final_model(workdir)
  arch = run["arch"]
  spec = get_spec(arch)
  std = np.asarray(spec.std, np.float32)
  scale, offset = 1.0 / (255.0 * std), -np.asarray(spec.mean, np.float32) / std
  multi_label = bool(run.get("multi_label", False))
  resize = data_fields.get(ml_collections.ConfigDict(run.get("config", {}).get("data", {})),
                           "resize")  # as the run's evaluation resized
  batch = []
  for path in images:
    try:
      image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
      raise ValueError(f"Cannot read image {path}: {str(e).splitlines()[0]}") from None
    out = pipeline.preprocess({"image": image, "label": 0}, image_size=int(run["image_size"]),
                              scale=tf.constant(scale), offset=tf.constant(offset),
                              multi_label=False, resize=resize)
    batch.append(out["image"].numpy())
  logits = jax.jit(model.apply)(variables, np.stack(batch))
  probs = np.asarray(jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1))
  names = run.get("class_names")
  where = {"checkpoint_step": int(step)}
  if soup_steps:
    where["soup_steps"] = [int(s) for s in soup_steps]
  return [{"image": path, "arch": arch, "workdir": workdir, **where,
           "top": _top(p, names, top)} for path, p in zip(images, probs)]


def main(argv: list[str]) -> None:
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the JSON
  try:
    if FLAGS.workdir:
      if FLAGS.checkpoint:
        raise ValueError("--checkpoint and --workdir exclude each other: give one.")
      results = predict_workdir(FLAGS.workdir, FLAGS.image, FLAGS.top)
    elif not FLAGS.arch:
      raise ValueError("give --arch (ImageNet or --checkpoint weights) "
                       "or --workdir (a training run).")
    else:
      results = predict(FLAGS.arch, FLAGS.image, FLAGS.top, FLAGS.checkpoint)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


if __name__ == "__main__":
  app.run(main)
