r"""Pictures of the first convolution's filters of one or two checkpoints, side by side.

  python -m jaxbn.analysis.filters --arch efficientnet_lite0 \
      --a imagenet --b /tmp/tf_transfer --label_a "ImageNet" --label_b "fine-tuned" \
      --out docs/transfusion/filters_lite0.png

The first convolution is the top-level module of the lowest stage whose kernel
is ``(k, k, 3, C)`` (ResNet/CBR ``conv1``, DenseNet ``conv0``, EfficientNet-Lite
``conv_stem``). Each filter is drawn as a k×k RGB picture, scaled (``--scale``)
``filter``: its own min..max to 0..1 (shows the shapes: Gabors, colour blobs), or
``layer``: 0 is mid-grey and ±(largest |w| of the checkpoint's layer) are 0 and 1
(shows magnitudes). ``--diff`` adds a third panel, B − A (scaled per filter as
``layer``). Checkpoint forms as in :mod:`jaxbn.analysis.similarity` (``imagenet``,
``random[:SEED]``, ``mean_var[:SEED]``, a training WORKDIR (best checkpoint), a
.pth/.safetensors file or a converted directory).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Sequence

import numpy as np
from absl import flags

from jaxbn import cli
from jaxbn.plotting import pyplot, save_figure


def first_conv(arch: str, params: dict) -> tuple[str, np.ndarray]:
  """``(module name, kernel (k, k, 3, C))`` of the first RGB convolution of ``params``."""
  from jaxbn.models import get_spec

  spec = get_spec(arch)
  found = []
  for name, module in params.items():
    kernel = module.get("kernel") if isinstance(module, dict) else None
    if kernel is not None and np.ndim(kernel) == 4 and np.shape(kernel)[2] == 3:
      found.append((spec.stage_of(name), name, np.asarray(kernel)))
  if not found:
    raise ValueError(f"No top-level (k, k, 3, C) convolution in {arch}'s params.")
  _, name, kernel = min(found, key=lambda t: t[0])
  return name, kernel


def filter_grid(kernel: np.ndarray, scale: str = "filter", max_filters: int | None = None,
                pad: int = 1) -> np.ndarray:
  """Tiles the filters of ``kernel`` (k, k, 3, C) into one RGB image in [0, 1]."""
  k = kernel.shape[0]
  c = kernel.shape[-1] if max_filters is None else min(kernel.shape[-1], max_filters)
  filters = np.transpose(kernel[..., :c], (3, 0, 1, 2)).astype(np.float64)  # (C, k, k, 3)
  if scale == "filter":
    lo = filters.min(axis=(1, 2, 3), keepdims=True)
    hi = filters.max(axis=(1, 2, 3), keepdims=True)
    filters = (filters - lo) / np.where(hi > lo, hi - lo, 1.0)
  elif scale == "layer":
    m = np.abs(filters).max()
    filters = 0.5 + 0.5 * filters / (m if m > 0 else 1.0)
  else:
    raise ValueError(f"scale must be 'filter' or 'layer', got {scale!r}.")
  cols = math.ceil(math.sqrt(c))
  rows = math.ceil(c / cols)
  grid = np.ones((rows * (k + pad) + pad, cols * (k + pad) + pad, 3))
  for i in range(c):
    r, q = divmod(i, cols)
    grid[pad + r * (k + pad): pad + r * (k + pad) + k,
         pad + q * (k + pad): pad + q * (k + pad) + k] = filters[i]
  return np.clip(grid, 0.0, 1.0)


def plot_filters(panels: list[tuple[str, np.ndarray]], path: str, title: str,
                 scale: str = "filter", max_filters: int | None = None) -> None:
  """One panel per ``(label, kernel)``; a label starting with ``Δ`` is scaled as ``layer``."""
  plt = pyplot()

  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0),
                           constrained_layout=True, squeeze=False)
  for ax, (label, kernel) in zip(axes[0], panels):
    mode = "layer" if label.startswith("Δ") else scale
    ax.imshow(filter_grid(kernel, mode, max_filters), interpolation="nearest")
    ax.set_title(label, fontsize=9)
    ax.axis("off")
  fig.suptitle(title, fontsize=9)
  save_figure(fig, path, dpi=150)


PROG = "python -m jaxbn.analysis.filters"
FLAGS = flags.FlagValues()
flags.DEFINE_string("arch", None, "registered architecture", flag_values=FLAGS)
flags.DEFINE_string("a", None, "checkpoint (imagenet | random[:S] | mean_var[:S] | WORKDIR | "
                    ".pth/.safetensors/converted dir)", flag_values=FLAGS)
flags.DEFINE_string("b", None, "optional second checkpoint, drawn beside A", flag_values=FLAGS)
flags.DEFINE_string("label_a", None, "name of A in the picture (default: --a)", flag_values=FLAGS)
flags.DEFINE_string("label_b", None, "name of B in the picture (default: --b)", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", 2, "head size of a WORKDIR checkpoint (needed to restore it)",
                     flag_values=FLAGS)
flags.DEFINE_string("stage_widths", None, "ResNet stage_widths (slim models)", flag_values=FLAGS)
flags.DEFINE_enum("scale", "filter", ["filter", "layer"], "per-filter or per-layer colour scale",
                  flag_values=FLAGS)
flags.DEFINE_integer("max_filters", 64, "draw at most this many filters", flag_values=FLAGS)
flags.DEFINE_bool("diff", False, "add a B − A panel", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output .png", flag_values=FLAGS)
flags.mark_flags_as_required(["arch", "a", "out"], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, prog=PROG, doc=__doc__)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from jaxbn.analysis.similarity import _widths, load_variables

  kw = {"stage_widths": _widths(args.stage_widths)} if args.stage_widths else {}
  try:
    sources = [(args.label_a or args.a, args.a)] + (
        [(args.label_b or args.b, args.b)] if args.b else [])
    panels, name = [], None
    for label, source in sources:
      v = load_variables(args.arch, source, num_classes=args.num_classes, model_kwargs=kw)
      name, kernel = first_conv(args.arch, v["params"])
      panels.append((label, kernel))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.diff:
    if len(panels) != 2:
      print("error: --diff needs --b", file=sys.stderr)
      return 2
    panels.append(("Δ B − A", panels[1][1] - panels[0][1]))
  kshape = panels[0][1].shape
  shown = min(kshape[-1], args.max_filters)
  title = (f"{args.arch} {name}: {shown} of {kshape[-1]} filters "
           f"{kshape[0]}×{kshape[1]}×3, scaled per {args.scale}")
  if len(panels) >= 2:
    a, b = panels[0][1], panels[1][1]
    rel = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))
    title += f"; ‖B − A‖ / ‖A‖ = {rel:.3f}"
  plot_filters(panels, args.out, title, args.scale, args.max_filters)
  print(f"wrote {args.out} ({title})")
  return 0


if __name__ == "__main__":
  cli.run(main)
