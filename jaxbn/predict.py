r"""Classifies an image with an ImageNet (or converted/fine-tuned) checkpoint.

Usage::

  python -m jaxbn.predict --arch efficientnet_lite0 --image cat.png --top 5
  python -m jaxbn.predict --arch resnet50 --checkpoint DIR --image x.png

Prints JSON: ``{"image": ..., "arch": ..., "top": [{"class": i, "name": ..., "prob": p}, ...]}``.
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  extras.require("train", "python -m jaxbn.predict")

import json
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", None, "Architecture, e.g. efficientnet_lite0.")
flags.DEFINE_multi_string("image", None, "Image file(s) to classify.")
flags.DEFINE_integer("top", 5, "How many classes to print.")
flags.DEFINE_string("checkpoint", None, "Directory from jaxbn.convert, or a .pth/.safetensors file.")
flags.mark_flags_as_required(["arch", "image"])


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


def predict(arch: str, images: list[str], top: int = 5, checkpoint: str | None = None) -> list[dict]:
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
  out = []
  for path, p in zip(images, probs):
    best = np.argsort(-p)[:top]
    out.append({
        "image": path,
        "arch": arch,
        "top": [
            {"class": int(i), "name": names[i] if names else str(i), "prob": round(float(p[i]), 5)}
            for i in best
        ],
    })
  return out


def main(argv: list[str]) -> None:
  del argv
  try:
    results = predict(FLAGS.arch, FLAGS.image, FLAGS.top, FLAGS.checkpoint)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


if __name__ == "__main__":
  app.run(main)
