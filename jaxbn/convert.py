r"""Converts a published ImageNet checkpoint into an orbax checkpoint of Flax variables.

Usage::

  python -m jaxbn.convert --arch resnet50 --out /tmp/resnet50          # known, cached
  python -m jaxbn.convert --arch resnet50 --src resnet50.pth --out DIR  # local file
  python -m jaxbn.convert --arch efficientnet_lite0 --num_classes 2 --out DIR

``--num_classes`` -1 (default) keeps the ImageNet head, 0 drops it, N builds a
new zero-initialised N-way head.
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  extras.require("train", "python -m jaxbn.convert")

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", None, "Architecture, e.g. resnet50, densenet121, efficientnet_lite0.")
flags.DEFINE_string("src", None, "Local .pth/.safetensors file (default: the known checkpoint).")
flags.DEFINE_string("out", None, "Output directory for the orbax checkpoint.")
flags.DEFINE_integer("num_classes", -1, "-1 keep the ImageNet head, 0 drop it, N new (zero) head.")
flags.mark_flags_as_required(["arch", "out"])


def main(argv: list[str]) -> None:
  del argv
  from jaxbn import cli

  cli.quiet_library_logs()
  from jaxbn.models import count_params, get_spec
  from jaxbn.weights import hub, pytorch, store

  num_classes = None if FLAGS.num_classes < 0 else FLAGS.num_classes
  try:
    path = FLAGS.src or hub.fetch(FLAGS.arch)
    state_dict = pytorch.load_state_dict(path)
    variables = pytorch.convert_state_dict(
        FLAGS.arch, state_dict, num_classes=num_classes
    )
  except ValueError as e:  # CheckpointError and unknown --arch
    sys.exit(f"error: {e}")
  head = variables["params"].get(get_spec(FLAGS.arch).head)
  classes = head["bias"].shape[0] if head else 0
  manifest = {
      "arch": FLAGS.arch,
      "num_classes": int(classes),
      "source": str(path),
      "sha256": hub.sha256sum(path),
      "num_params": count_params(variables["params"]),
  }
  store.save_variables(FLAGS.out, variables, manifest)
  print(f"wrote {FLAGS.out}: {manifest['num_params']:,} params, {classes} classes, from {path}")


if __name__ == "__main__":
  app.run(main)
