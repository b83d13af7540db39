r"""Layer-by-layer representation similarity of two checkpoints (SVCCA / PWCCA / CCA).

  python -m jaxbn.analysis.similarity --arch efficientnet_lite0 \
      --a imagenet --b /tmp/tf_transfer --data pneumoniamnist --image_size 48 \
      --out docs/transfusion/cca_pretrained_vs_finetuned

Both checkpoints are run (eval mode: BN running statistics, no head) on one fixed
image set — the first ``--num_images`` images of ``--split`` of ``--data``,
preprocessed as in training (``--image_size``, the architecture's pixel
normalisation) — and the outputs of the network's **top-level modules** are
captured with Flax's ``capture_intermediates`` (the models are not modified).
``--level stage`` (default) keeps the last module of each stage
(``ModelSpec.stage_of``: the stem's BN — pre-activation —, the last block of each
stage, for EfficientNet-Lite the final ``bn1``); ``--level module`` keeps every
top-level module. For each layer, :mod:`jaxbn.analysis.cca` compares A's and B's
activations (channels = neurons; ``--mode subsample``: ``--points_per_neuron``
× channels random spatial positions, the same for A and B, spread evenly over
the images, capped by what the images have; ``--mode pool``: spatial average,
one datapoint per image).

Checkpoints (``--a``, ``--b``):

  imagenet            the registered ImageNet weights (jaxbn.weights.pytorch)
  random[:SEED]       a random initialisation (default seed 0)
  mean_var[:SEED]     Transfusion's Mean-Var initialisation from the ImageNet weights
  WORKDIR             a training run's best-validation-AUC checkpoint
                      (jaxbn.checkpoint.RunCheckpoints(WORKDIR).restore_best)
  PATH                a .pth / .safetensors file or a directory written by
                      ``python -m jaxbn.convert``

Writes to ``--out``: ``similarity.csv`` (layer, stage, module, neurons,
datapoints, datapoints per neuron, shape, cca, svcca, svcca_dims_a/b, pwcca),
``similarity.png`` (line plot of the three measures per layer over a heatmap of
the same numbers), with ``--cross`` also ``cross_svcca.csv/png`` (SVCCA of every
layer of A against every layer of B, spatially pooled so that the datapoints
correspond), and ``similarity.json`` (the arguments). A progress bar shows the
forward passes and the CCA computations. Layers with fewer than 10 datapoints per
neuron are flagged (``*``): their CCA numbers are biased upwards.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
from absl import flags

from jaxbn import cli
from jaxbn.analysis import cca as cca_lib
from jaxbn.plotting import pyplot, save_figure


# --------------------------------------------------------------------------- #
# Checkpoints.
# --------------------------------------------------------------------------- #


def _is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "best")) or os.path.isdir(
      os.path.join(path, "checkpoints"))


def load_variables(arch: str, source: str, *, num_classes: int = 2,
                   model_kwargs: dict | None = None) -> dict[str, Any]:
  """Backbone variables (head removed) of ``arch`` from a checkpoint spec (module docstring).

  ``num_classes`` is the head size a training WORKDIR was trained with (needed
  to restore it; the head is then dropped).
  """
  import jax

  from jaxbn.models import create_model, get_spec, init_shapes
  from jaxbn.weights import init as init_lib

  kw = dict(model_kwargs or {})
  head = get_spec(arch).head
  parsed = init_lib.parse_init(source)
  path = parsed.source if parsed.kind == "pretrained" else None
  if path is None or (os.path.exists(path) and not _is_workdir(path)):
    model = create_model(arch, num_classes=0, **kw)
    variables = init_lib.initial_variables(model, jax.random.key(0), arch=arch, init=parsed,
                                           stage_widths=kw.get("stage_widths"))
  elif os.path.isdir(path):
    from jaxbn.checkpoint import RunCheckpoints

    abstract = init_shapes(create_model(arch, num_classes=num_classes, **kw))
    ckpts = RunCheckpoints(source)
    try:
      best = ckpts.restore_best(abstract)
    except Exception as e:  # orbax: structure / shape mismatch
      raise ValueError(
          f"Cannot restore {source}'s best checkpoint as {arch} with a {num_classes}-class "
          f"head ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check "
          "--arch, --num_classes and --stage_widths.") from None
    finally:
      ckpts.close()
    if best is None:
      raise ValueError(f"{source} has no best checkpoint yet (no evaluation finished).")
    variables = best[0]
  else:
    raise ValueError(
        f"Unknown checkpoint {source!r}: imagenet | random[:SEED] | mean_var[:SEED] | a "
        "training workdir | a .pth/.safetensors file | a converted checkpoint directory.")
  variables = jax.tree.map(np.asarray, dict(variables))
  return {c: {k: v for k, v in dict(t).items() if k != head}
          for c, t in variables.items() if c in ("params", "batch_stats")}


# --------------------------------------------------------------------------- #
# Activations.
# --------------------------------------------------------------------------- #


def _top_level(mdl, method_name: str) -> bool:
  return method_name == "__call__" and len(mdl.path) == 1


def make_capture(model):
  """``(variables, images) → {top-level module: output}``, jitted, in call order.

  A jitted function returns dicts with sorted keys; the call order (Flax records
  intermediates in the order the modules run) is read while tracing.
  """
  import jax

  order: list[str] = []

  @jax.jit
  def run(variables, images):
    _, state = model.apply(variables, images, capture_intermediates=_top_level,
                           mutable=["intermediates"])
    inter = state["intermediates"]
    order[:] = list(inter)
    return {name: inter[name]["__call__"][-1] for name in inter}

  def capture(variables, images):
    out = run(variables, images)
    return {name: out[name] for name in order}

  return capture


def select_layers(arch: str, names: Sequence[str], level: str) -> list[tuple[str, int]]:
  """``(module, stage)`` pairs to compare, in network order (``names`` in call order)."""
  from jaxbn.models import get_spec

  spec = get_spec(arch)
  named = [(n, spec.stage_of(n)) for n in names if n != spec.head]
  if level == "module":
    return named
  if level != "stage":
    raise ValueError(f"level must be 'stage' or 'module', got {level!r}.")
  last: dict[int, str] = {}
  for n, s in named:
    last[s] = n
  return [(n, s) for n, s in named if last[s] == n]


def _data_config(data: str, data_dir: str | None):
  from jaxbn.config import base_config

  c = base_config().data
  c.name = data
  if data_dir:
    c.data_dir = data_dir
  c.augment = False
  return c


def collect(
    arch: str,
    variables_a: dict,
    variables_b: dict,
    *,
    data: str = "pneumoniamnist",
    data_dir: str | None = None,
    split: str = "test",
    num_images: int = 500,
    image_size: int = 64,
    batch_size: int = 50,
    level: str = "stage",
    mode: str = "subsample",
    points_per_neuron: int = cca_lib.POINTS_PER_NEURON,
    pooled_too: bool = False,
    seed: int = 0,
    model_kwargs_a: dict | None = None,
    model_kwargs_b: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
  """Runs both variable sets on the image set; returns per-layer neuron × datapoint arrays.

  Returns ``{"layers": [(module, stage, shape)], "a": {module: (C, D)}, "b": ...,
  "pooled_a"/"pooled_b": {module: (C, num_images)} (with ``pooled_too``),
  "num_images": n}``.
  """
  from tqdm.auto import tqdm

  from jaxbn.data import pipeline
  from jaxbn.models import create_model, get_spec

  spec = get_spec(arch)
  kw_a, kw_b = dict(model_kwargs_a or {}), dict(model_kwargs_b or {})
  cap_a = make_capture(create_model(arch, num_classes=0, **kw_a))
  cap_b = cap_a if kw_b == kw_a else make_capture(create_model(arch, num_classes=0, **kw_b))
  it = pipeline.eval_iterator(_data_config(data, data_dir), split, batch_size=batch_size,
                              image_size=image_size, mean=spec.mean, std=spec.std)
  chunks_a: dict[str, list] = {}
  chunks_b: dict[str, list] = {}
  pooled_a: dict[str, list] = {}
  pooled_b: dict[str, list] = {}
  layers: list[tuple[str, int, tuple]] | None = None
  per_image: dict[str, int] = {}
  seen = 0
  bar = tqdm(total=num_images, desc="activations", unit="img", disable=not progress)
  for batch_idx, batch in enumerate(it):
    if seen >= num_images:
      break
    keep = int(min(np.sum(batch["mask"] > 0), num_images - seen))
    images = batch["image"]
    out_a = {k: np.asarray(v)[:keep] for k, v in cap_a(variables_a, images).items()}
    out_b = {k: np.asarray(v)[:keep] for k, v in cap_b(variables_b, images).items()}
    if layers is None:
      chosen = select_layers(arch, list(out_a), level)
      missing = [n for n, _ in chosen if n not in out_b]
      if missing:
        raise ValueError(f"Checkpoint B's model has no module {missing[0]!r}.")
      layers = [(n, s, tuple(out_a[n].shape[1:])) for n, s in chosen]
      for n, _, shape in layers:
        positions = int(np.prod(shape[:-1])) if len(shape) == 3 else 1
        want = cca_lib.points_needed(shape[-1], points_per_neuron)
        per_image[n] = max(1, min(positions, math.ceil(want / num_images)))
    for li, (n, _, shape) in enumerate(layers):
      a, b = out_a[n], out_b[n]
      if a.shape[1:-1] != b.shape[1:-1]:
        raise ValueError(f"Layer {n}: spatial shapes differ, {a.shape} vs {b.shape}.")
      if a.ndim == 2 or mode == "pool":
        fa, fb = cca_lib.conv_neurons(a, mode="pool"), cca_lib.conv_neurons(b, mode="pool")
      else:
        hw = a.shape[1] * a.shape[2]
        rng = np.random.default_rng([seed, li, batch_idx])
        idx = np.stack([rng.choice(hw, per_image[n], replace=False) for _ in range(keep)])
        rows = np.arange(keep)[:, None]
        fa = a.reshape(keep, hw, -1)[rows, idx].reshape(-1, a.shape[-1]).T
        fb = b.reshape(keep, hw, -1)[rows, idx].reshape(-1, b.shape[-1]).T
      chunks_a.setdefault(n, []).append(fa.astype(np.float32))
      chunks_b.setdefault(n, []).append(fb.astype(np.float32))
      if pooled_too:
        pooled_a.setdefault(n, []).append(cca_lib.conv_neurons(a, mode="pool"))
        pooled_b.setdefault(n, []).append(cca_lib.conv_neurons(b, mode="pool"))
    seen += keep
    bar.update(keep)
  bar.close()
  if layers is None or seen == 0:
    raise ValueError(f"The {split} split of {data} is empty.")
  cat = lambda d: {k: np.concatenate(v, axis=1) for k, v in d.items()}
  return {"layers": layers, "a": cat(chunks_a), "b": cat(chunks_b),
          "pooled_a": cat(pooled_a), "pooled_b": cat(pooled_b), "num_images": seen}


# --------------------------------------------------------------------------- #
# Similarities, CSV, plots.
# --------------------------------------------------------------------------- #


def compare(acts: dict, *, svcca_variance: float = 0.99, svcca_keep: int | None = None,
            epsilon: float = cca_lib.DEFAULT_EPSILON, progress: bool = True) -> list[dict]:
  """CCA, SVCCA and PWCCA per layer of :func:`collect`'s output (one row per layer)."""
  from tqdm.auto import tqdm

  rows = []
  for i, (name, stage, shape) in enumerate(tqdm(acts["layers"], desc="CCA", unit="layer",
                                                disable=not progress)):
    x, y = acts["a"][name].astype(np.float64), acts["b"][name].astype(np.float64)
    dims_a = cca_lib.top_directions(x, svcca_variance, svcca_keep and min(svcca_keep, *x.shape))
    dims_b = cca_lib.top_directions(y, svcca_variance, svcca_keep and min(svcca_keep, *y.shape))
    rows.append({
        "layer": i,
        "stage": stage,
        "module": name,
        "shape": "x".join(map(str, shape)),
        "neurons": x.shape[0],
        "datapoints": x.shape[1],
        "points_per_neuron": round(x.shape[1] / x.shape[0], 2),
        "cca": cca_lib.cca_similarity(x, y, epsilon),
        "svcca": cca_lib.cca(dims_a, dims_b, epsilon).mean,
        "svcca_dims_a": dims_a.shape[0],
        "svcca_dims_b": dims_b.shape[0],
        "pwcca": cca_lib.pwcca(x, y, epsilon),
    })
  return rows


def cross_svcca(acts: dict, *, svcca_variance: float = 0.99,
                progress: bool = True) -> tuple[list[str], np.ndarray]:
  """SVCCA of every layer of A against every layer of B on spatially pooled activations."""
  from tqdm.auto import tqdm

  names = [n for n, _, _ in acts["layers"]]
  red_a = [cca_lib.top_directions(acts["pooled_a"][n].astype(np.float64), svcca_variance)
           for n in names]
  red_b = [cca_lib.top_directions(acts["pooled_b"][n].astype(np.float64), svcca_variance)
           for n in names]
  m = np.zeros((len(names), len(names)))
  with tqdm(total=m.size, desc="cross SVCCA", disable=not progress) as bar:
    for i in range(len(names)):
      for j in range(len(names)):
        m[i, j] = cca_lib.cca(red_a[i], red_b[j]).mean
        bar.update()
  return names, m


def write_csv(rows: list[dict], path: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
  os.replace(tmp, path)


def _tick(r: dict, level: str) -> str:
  flag = "*" if r["points_per_neuron"] < cca_lib.POINTS_PER_NEURON else ""
  name = f"stage {r['stage']}" if level == "stage" else r["module"]
  return f"{name}{flag}\n{r['module']}" if level == "stage" else f"{name}{flag}"


def plot_similarity(rows: list[dict], path: str, title: str, level: str = "stage") -> None:
  """Line plot (CCA, SVCCA, PWCCA per layer) over a heatmap of the same numbers."""
  plt = pyplot()

  metrics = ("svcca", "pwcca", "cca")
  x = np.arange(len(rows))
  ticks = [_tick(r, level) for r in rows]
  width = max(6.0, 0.6 * len(rows) + 2)
  fig, (ax, hm) = plt.subplots(2, 1, figsize=(width, 6.5), height_ratios=(3, 1.3),
                               constrained_layout=True)
  for m, marker in zip(metrics, "osd"):
    ax.plot(x, [r[m] for r in rows], marker=marker, label=m.upper())
  ax.set_ylim(0, 1.02)
  ax.set_xticks(x, ticks, fontsize=7, rotation=0 if level == "stage" else 60)
  ax.set_ylabel("similarity (A vs B)")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left")
  ax.set_title(title, fontsize=9)
  grid = np.array([[r[m] for r in rows] for m in metrics])
  im = hm.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
  for i in range(grid.shape[0]):
    for j in range(grid.shape[1]):
      hm.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
              color="white" if grid[i, j] < 0.6 else "black")
  hm.set_yticks(range(len(metrics)), [m.upper() for m in metrics], fontsize=7)
  hm.set_xticks(x, [t.split("\n")[0] for t in ticks], fontsize=6,
                rotation=0 if level == "stage" else 60)
  fig.colorbar(im, ax=hm, fraction=0.02)
  save_figure(fig, path)


def plot_cross(names: list[str], m: np.ndarray, path: str, title: str, label_a: str,
               label_b: str) -> None:
  plt = pyplot()

  fig, ax = plt.subplots(figsize=(1 + 0.45 * len(names), 0.5 + 0.45 * len(names)),
                         constrained_layout=True)
  im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", origin="lower")
  ax.set_xticks(range(len(names)), names, rotation=70, fontsize=6)
  ax.set_yticks(range(len(names)), names, fontsize=6)
  ax.set_xlabel(f"B: {label_b}", fontsize=8)
  ax.set_ylabel(f"A: {label_a}", fontsize=8)
  ax.set_title(title, fontsize=8)
  fig.colorbar(im, ax=ax, fraction=0.04)
  save_figure(fig, path)


# --------------------------------------------------------------------------- #
# CLI.
# --------------------------------------------------------------------------- #


def _widths(text: str | None):
  return tuple(int(t) for t in text.replace("(", "").replace(")", "").split(",")) if text else None


PROG = "python -m jaxbn.analysis.similarity"
FLAGS = flags.FlagValues()
_F = dict(flag_values=FLAGS)
flags.DEFINE_string("arch", None, "registered architecture of both checkpoints", **_F)
flags.DEFINE_string("a", None, "checkpoint A (imagenet | random[:S] | mean_var[:S] | WORKDIR | "
                    ".pth/.safetensors/converted dir)", **_F)
flags.DEFINE_string("b", None, "checkpoint B (same forms)", **_F)
flags.DEFINE_string("label_a", None, "name of A in the plots (default: --a)", **_F)
flags.DEFINE_string("label_b", None, "name of B in the plots (default: --b)", **_F)
flags.DEFINE_string("data", "pneumoniamnist", "data set (as config.data.name)", **_F)
flags.DEFINE_string("data_dir", None, "as config.data.data_dir", **_F)
flags.DEFINE_string("split", "test", "train | val | test", **_F)
flags.DEFINE_integer("num_images", 500, "first N images of the split", **_F)
flags.DEFINE_integer("image_size", 64, "as config.data.image_size", **_F)
flags.DEFINE_integer("batch_size", 50, "images per forward pass", **_F)
flags.DEFINE_integer("num_classes", None,
                     "head size of a WORKDIR checkpoint (default: the data set's classes)", **_F)
flags.DEFINE_string("stage_widths", None,
                    "ResNet stage_widths of both models, e.g. 64,128,128,256 (slim)", **_F)
flags.DEFINE_string("stage_widths_b", None, "stage_widths of B only", **_F)
flags.DEFINE_enum("level", "stage", ["stage", "module"], "compare stages or every module", **_F)
flags.DEFINE_enum("mode", "subsample", ["subsample", "pool"],
                  "conv layers: subsample spatial positions or average-pool them", **_F)
flags.DEFINE_integer("points_per_neuron", cca_lib.POINTS_PER_NEURON, "datapoints per neuron", **_F)
flags.DEFINE_float("svcca_variance", 0.99, "SVCCA keeps this fraction of the variance", **_F)
flags.DEFINE_integer("svcca_keep", None,
                     "SVCCA keeps exactly this many directions instead of --svcca_variance", **_F)
flags.DEFINE_bool("cross", False, "also SVCCA of every layer of A vs every layer of B (pooled)",
                  **_F)
flags.DEFINE_integer("seed", 0, "which spatial positions", **_F)
flags.DEFINE_string("out", None, "output directory", **_F)
flags.DEFINE_integer(
    "threads", 0, "BLAS threads for the CCA (0 = the library default; 1 on a busy machine)", **_F)
flags.DEFINE_bool("no_progress", False, "no progress bars", **_F)
flags.mark_flags_as_required(["arch", "a", "b", "out"], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, prog=PROG, doc=__doc__)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from jaxbn.tf_setup import hide_gpus_from_tf

  hide_gpus_from_tf()
  from jaxbn.data import pipeline

  kw_a = {"stage_widths": _widths(args.stage_widths)} if args.stage_widths else {}
  kw_b = ({"stage_widths": _widths(args.stage_widths_b)} if args.stage_widths_b else dict(kw_a))
  num_classes = args.num_classes or pipeline.get_dataset_info(
      _data_config(args.data, args.data_dir)).num_classes
  progress = not args.no_progress
  if args.threads:
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
  try:
    va = load_variables(args.arch, args.a, num_classes=num_classes, model_kwargs=kw_a)
    vb = load_variables(args.arch, args.b, num_classes=num_classes, model_kwargs=kw_b)
    acts = collect(args.arch, va, vb, data=args.data, data_dir=args.data_dir, split=args.split,
                   num_images=args.num_images, image_size=args.image_size,
                   batch_size=args.batch_size, level=args.level, mode=args.mode,
                   points_per_neuron=args.points_per_neuron, pooled_too=args.cross,
                   seed=args.seed, model_kwargs_a=kw_a, model_kwargs_b=kw_b, progress=progress)
    rows = compare(acts, svcca_variance=args.svcca_variance, svcca_keep=args.svcca_keep,
                   progress=progress)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  label_a, label_b = args.label_a or args.a, args.label_b or args.b
  write_csv(rows, os.path.join(args.out, "similarity.csv"))
  sv = (f"SVCCA {args.svcca_keep} dirs" if args.svcca_keep
        else f"SVCCA {args.svcca_variance:.0%} var")
  title = (f"{args.arch}: A = {label_a} vs B = {label_b}\n{args.data} {args.split}, "
           f"{acts['num_images']} images at {args.image_size} px, {args.mode} "
           f"({args.points_per_neuron} points/neuron), {sv}; * = fewer points/neuron")
  plot_similarity(rows, os.path.join(args.out, "similarity.png"), title, args.level)
  if args.cross:
    names, m = cross_svcca(acts, svcca_variance=args.svcca_variance, progress=progress)
    with open(os.path.join(args.out, "cross_svcca.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["A \\ B"] + names)
      for n, row in zip(names, m):
        w.writerow([n] + [f"{v:.6f}" for v in row])
    plot_cross(names, m, os.path.join(args.out, "cross_svcca.png"),
               f"{args.arch}: SVCCA (pooled, {acts['num_images']} images)", label_a, label_b)
  with open(os.path.join(args.out, "similarity.json"), "w") as f:
    json.dump({"args": vars(args), "num_images": acts["num_images"], "rows": rows}, f, indent=1)
  width = max(len(r["module"]) for r in rows)
  print(f"{'stage':>5} {'module':<{width}} {'neurons':>7} {'pts/n':>6} "
        f"{'CCA':>6} {'SVCCA':>6} {'PWCCA':>6}")
  for r in rows:
    print(f"{r['stage']:>5} {r['module']:<{width}} {r['neurons']:>7} "
          f"{r['points_per_neuron']:>6} {r['cca']:6.3f} {r['svcca']:6.3f} {r['pwcca']:6.3f}")
  print(f"wrote {args.out}/similarity.csv, similarity.png"
        + (", cross_svcca.csv, cross_svcca.png" if args.cross else ""))
  return 0


if __name__ == "__main__":
  cli.run(main)
