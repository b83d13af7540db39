r"""TruncatedTL (Peng, Liang, Sun et al., 2021): where to cut a pretrained backbone.

Keep the bottom of an ImageNet backbone, drop the rest, put global average
pooling + one dense layer on top and fine-tune everything kept
(``create_model(arch, truncate_at=cut)``; the cuts of an architecture are
:func:`jaxbn.models.cut_points`). This module chooses the cut and measures what
it buys::

    python -m jaxbn.main --config=configs/truncated_search.py --workdir=/tmp/ttl

:func:`search` (``config.task = "truncated_search"``) trains every block-level
cut (after each stage; plus the full network), then the layer-level cuts
around the best block (between its two neighbouring block-level cuts), each
with :func:`jaxbn.train.train_and_evaluate` in ``workdir/runs/<cut>``, and
chooses the cut with the best **validation** AUC (ties: the smaller model).
Test AUC is reported for the chosen cut (and the full network, the
baseline) only, and never looked at while choosing. It then writes
``workdir/truncated_search.{md,json}`` (atomically) with, for every trained cut:
parameters, MACs, measured inference latency (batch 1 and batch 64, all models
timed round-robin in this one process, so the ratios to the full network
compare like with like) and validation AUC. A rerun reuses finished runs and
resumes unfinished ones.

MACs are multiply-accumulates of the convolutions and dense layers of the
traced forward pass (:func:`count_macs` walks the jaxpr of the jitted
``model.apply`` and counts every ``conv_general_dilated`` / ``dot_general``),
the convention of torchvision's model table (ResNet-50 at 224 px: 4.09 G);
batch-norm, activations, pooling and residual additions are not counted.
EfficientNet-Lite's depthwise convolutions are traced as grouped convolutions
for counting (on CPU they run as shifted multiply-adds, the same arithmetic).
XLA's own estimate of the compiled computation (``cost_analysis()["flops"]``,
which also counts element-wise work) is kept in the JSON as ``xla_flops``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import statistics
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbn.models import registry

FULL = "full"  # the name of the untruncated network in tables and run directories


# --------------------------------------------------------------------------- #
# Cuts.
# --------------------------------------------------------------------------- #


def ttl_cut_name(arch: str, k: int) -> str:
  """The jaxbn name of the spec's layer-level "cut k" (keeps the stem + k−1 blocks).

  ResNet-50: k = 1 … 16; ``ttl_cut_name("resnet50", 12) == "layer3_3"`` (the
  paper's "layer3[3]").
  """
  if registry.get_spec(arch).family != "resnet":
    raise ValueError(f"TTL's cut k numbering is defined for ResNets, not {arch!r}.")
  layer = registry.cut_points(arch, "layer")
  if not 1 <= k <= len(layer):
    raise ValueError(f"{arch} has layer-level cuts k = 1 … {len(layer)}, not {k}.")
  return layer[k - 1]


def depth(arch: str, cut: str | None) -> float:
  """How much of the network ``cut`` keeps (kept top-level modules; full: inf)."""
  return math.inf if cut is None else len(registry.get_cut(arch, cut).kept)


def layer_candidates(arch: str, best: str | None, block_cuts: Sequence[str | None]) -> list[str]:
  """Layer-level cuts strictly between the block-level cuts on either side of ``best``.

  ``block_cuts`` are the block-level candidates that were trained (None: the
  full network). Cuts that build the same model as a trained block-level cut
  (``layer3_5`` = ``layer3`` in ResNet-50) are left out.
  """
  here = depth(arch, best)
  depths = sorted({depth(arch, c) for c in block_cuts})
  lower = max((d for d in depths if d < here), default=0)
  upper = min((d for d in depths if d > here), default=math.inf)
  out, seen = [], set(depths)
  for name in registry.cut_points(arch, "layer"):
    d = depth(arch, name)
    if lower < d < upper and d not in seen:
      out.append(name)
      seen.add(d)
  return out


# --------------------------------------------------------------------------- #
# Cost: parameters, MACs, latency.
# --------------------------------------------------------------------------- #


def _subjaxprs(params: dict) -> Iterable[tuple[Any, int]]:
  """(jaxpr, repetitions) nested in an equation's params (pjit, remat, scan, ...)."""
  for key, value in params.items():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      inner = getattr(v, "jaxpr", v)  # ClosedJaxpr -> Jaxpr
      if isinstance(inner, jax.extend.core.Jaxpr):
        yield inner, int(params.get("length", 1)) if key == "jaxpr" else 1


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += math.prod(out) * (math.prod(rhs) // out_features)
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    for sub, reps in _subjaxprs(eqn.params):
      total += reps * _jaxpr_macs(sub)
  return total


def count_macs(model, image_size: int, batch: int = 1) -> int:
  """Multiply-accumulates of ``model``'s inference forward pass on ``batch`` images.

  Counted from the jaxpr of the jitted ``model.apply`` (abstract shapes only:
  nothing is computed): every convolution and dense layer, see the module doc.
  """
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  fn = jax.jit(functools.partial(model.apply, train=False))
  return _jaxpr_macs(jax.make_jaxpr(fn)(variables, x).jaxpr)


def macs_model(arch: str, num_classes: int, truncate_at: str | None, **kwargs: Any):
  """The model to count MACs on (EfficientNet depthwise convs as real convolutions)."""
  if registry.get_spec(arch).family == "efficientnet_lite":
    kwargs.setdefault("depthwise_impl", "conv")
  return registry.create_model(arch, num_classes=num_classes, truncate_at=truncate_at, **kwargs)


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None else None


def _stand_in_variables(model, image_size: int, rng: np.random.Generator) -> Any:
  """Random variables of the right shapes without compiling ``model.init``."""
  shapes = registry.init_shapes(model, image_size)

  def fill(path, leaf):
    name = getattr(path[-1], "key", None)
    if name in ("var", "scale"):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.05 * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def measure_latency(
    models: dict[str, Any],
    image_size: int,
    batch_sizes: Sequence[int] = (1, 64),
    reps: int = 20,
    seed: int = 0,
) -> dict[str, dict]:
  """Inference time of several models, measured side by side.

  Every ``model.apply`` (eval mode, random variables: time does not depend on
  the values) is compiled for every batch size and run twice; then the timed
  calls go round-robin, one of each (model, batch size) in turn, ``reps``
  times, so that all models see the same machine load. Returns, per name:
  ``{"b{n}_ms": median ms per call, "b{n}_images_per_s": ..., "xla_flops":
  XLA's flop estimate for one image}``.
  """
  rng = np.random.default_rng(seed)
  runs = {}
  out: dict[str, dict] = {name: {} for name in models}
  for name, model in models.items():
    variables = _stand_in_variables(model, image_size, rng)
    for bs in batch_sizes:
      x = jnp.asarray(rng.normal(size=(bs, image_size, image_size, 3)), jnp.float32)
      compiled = jax.jit(functools.partial(model.apply, train=False)).lower(variables, x).compile()
      for _ in range(2):
        jax.block_until_ready(compiled(variables, x))
      runs[(name, bs)] = (compiled, variables, x, [])
      if bs == 1:
        out[name]["xla_flops"] = _xla_flops(compiled)
  for _ in range(reps):
    for compiled, variables, x, times in runs.values():
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(variables, x))
      times.append(time.perf_counter() - t0)
  for (name, bs), (_, _, _, times) in runs.items():
    med = statistics.median(times)
    out[name][f"b{bs}_ms"] = 1e3 * med
    out[name][f"b{bs}_images_per_s"] = bs / med
  return out


# --------------------------------------------------------------------------- #
# The search task.
# --------------------------------------------------------------------------- #


def _run_name(cut: str | None) -> str:
  return FULL if cut is None else cut


def _train_cut(config: ml_collections.ConfigDict, cut: str | None, workdir: str) -> dict:
  """Trains one cut in ``workdir/runs/<cut>`` (or reuses its finished results)."""
  import json

  from jaxbn import train

  run_dir = os.path.join(workdir, "runs", _run_name(cut))
  done = os.path.join(run_dir, "results.json")
  if os.path.exists(done):
    logging.info("TruncatedTL: %s already trained, reusing %s.", _run_name(cut), done)
    with open(done) as f:
      return json.load(f)
  sub = ml_collections.ConfigDict(config.to_dict())
  sub.task = "train"
  sub.model.truncate_at = cut
  logging.info("TruncatedTL: training cut %s in %s.", _run_name(cut), run_dir)
  return train.train_and_evaluate(sub, run_dir)


def _choose(arch: str, results: dict) -> str | None:
  """Best validation AUC; ties go to the smaller model."""
  return max(results, key=lambda c: (results[c]["best_val_auc"], -depth(arch, c)))


def _csv(value: Any) -> list[str]:
  if not value:
    return []
  if isinstance(value, str):
    value = re.split(r"[,+;\s]+", value)
  return [str(v).strip() for v in value if str(v).strip()]


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The two-stage TruncatedTL search (see the module doc); returns the table as a dict."""
  from jaxbn.data import pipeline

  arch = config.model.arch
  s = config.search
  block = _csv(s.block_cuts) or registry.cut_points(arch, "block")
  for cut in block:
    registry.get_cut(arch, cut)  # clear error for a bad name, before any training
  block_candidates: list[str | None] = [*block, *([None] if s.include_full else [])]

  results: dict[str | None, dict] = {}
  for cut in block_candidates:
    results[cut] = _train_cut(config, cut, workdir)
  best_block = _choose(arch, results)
  layer = layer_candidates(arch, best_block, block_candidates) if s.layer_level else []
  logging.info("TruncatedTL: best block-level cut %s (val AUC %.4f); layer-level candidates: "
               "%s.", _run_name(best_block), results[best_block]["best_val_auc"],
               ", ".join(layer) or "none")
  for cut in layer:
    results[cut] = _train_cut(config, cut, workdir)
  chosen = _choose(arch, results)

  info = pipeline.get_dataset_info(config.data)
  num_classes = info.num_classes
  image_size = config.data.image_size
  native = registry.get_spec(arch).input_size
  cuts = sorted({*results, None}, key=lambda c: depth(arch, c))
  models = {_run_name(c): registry.create_model(arch, num_classes=num_classes, truncate_at=c)
            for c in cuts}
  batch_sizes = tuple(int(b) for b in _csv(s.latency_batch_sizes))
  logging.info("TruncatedTL: timing %d models, batch sizes %s, %d round-robin repetitions.",
               len(models), batch_sizes, s.latency_reps)
  latency = measure_latency(models, image_size, batch_sizes, s.latency_reps, seed=config.seed)

  full = latency[FULL]
  rows = []
  for c in cuts:
    name = _run_name(c)
    r = results.get(c)
    row = {
        "cut": name,
        "level": FULL if c is None else registry.get_cut(arch, c).level,
        "trained": r is not None,
        "chosen": r is not None and c == chosen,
        "params": registry.count_params(registry.init_shapes(models[name])["params"]),
        "macs": count_macs(macs_model(arch, num_classes, c), image_size),
        "macs_native": count_macs(macs_model(arch, num_classes, c), native),
        "xla_flops": latency[name]["xla_flops"],
        "val_auc": r["best_val_auc"] if r else None,
        # Test AUC only where it informs without choosing: the chosen cut, the baseline.
        "test_auc": r["test_auc"] if r and (c == chosen or c is None) else None,
        "steps": r["total_steps"] if r else None,
        "train_wall_s": r["wall_time_s"] if r else None,
    }
    for bs in batch_sizes:
      row[f"b{bs}_ms"] = round(latency[name][f"b{bs}_ms"], 3)
      row[f"b{bs}_images_per_s"] = round(latency[name][f"b{bs}_images_per_s"], 1)
      row[f"b{bs}_ratio"] = round(latency[name][f"b{bs}_ms"] / full[f"b{bs}_ms"], 3)
    if registry.get_spec(arch).family == "resnet" and c is not None and \
        registry.get_cut(arch, c).level == "layer":
      row["ttl_k"] = registry.cut_points(arch, "layer").index(c) + 1
    rows.append(row)

  table = {
      "arch": arch,
      "dataset": info.name,
      "image_size": image_size,
      "native_size": native,
      "init": config.model.init,
      "budget": {
          "warmup": {k: config.warmup[k] for k in ("strategy", "epochs", "lr", "schedule")},
          "finetune": {k: config.finetune[k] for k in ("strategy", "epochs", "lr", "schedule")},
          "batch_size": config.batch_size,
          "max_steps": config.max_steps,
          "bn_stats": config.bn_stats,
      },
      "block_candidates": [_run_name(c) for c in block_candidates],
      "best_block": _run_name(best_block),
      "layer_candidates": layer,
      "chosen": _run_name(chosen),
      "selection": "best validation AUC (ties: fewer kept modules); test never used",
      "latency": {"batch_sizes": list(batch_sizes), "reps": s.latency_reps,
                  "statistic": "median, round-robin", "device": jax.devices()[0].device_kind,
                  "num_devices": 1},
      "macs": "conv + dense multiply-accumulates of the traced forward (jaxbn.truncated)",
      "rows": rows,
  }
  if jax.process_index() == 0:
    from jaxbn.io import write_json_atomic, write_text_atomic

    write_json_atomic(os.path.join(workdir, "truncated_search.json"), table)
    write_text_atomic(os.path.join(workdir, "truncated_search.md"), markdown(table) + "\n")
  logging.info("TruncatedTL: chosen cut %s.\n%s", _run_name(chosen), markdown(table))
  return table


# --------------------------------------------------------------------------- #
# Reporting.
# --------------------------------------------------------------------------- #


def _si(n: float | None) -> str:
  if n is None:
    return "—"
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:.0f} {unit}"
  return f"{n:.0f}"


def markdown(table: dict) -> str:
  """The search table in markdown: one row per cut, the chosen one in bold."""
  bs = table["latency"]["batch_sizes"]
  size, native = table["image_size"], table["native_size"]
  head = ["cut", "level", "params", f"MACs {size}px", f"MACs {native}px"]
  for b in bs:
    head += [f"b{b} ms", f"b{b} img/s", f"b{b} × full"]
  head += ["val AUC", "test AUC"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
  for r in table["rows"]:
    cut = f"**{r['cut']}** (chosen)" if r["chosen"] else r["cut"]
    if "ttl_k" in r:
      cut += f" (k={r['ttl_k']})"
    cells = [cut, r["level"], f"{r['params']:,}", _si(r["macs"]), _si(r["macs_native"])]
    for b in bs:
      cells += [f"{r[f'b{b}_ms']:.2f}", f"{r[f'b{b}_images_per_s']:.0f}",
                f"{r[f'b{b}_ratio']:.2f}"]
    cells += ["—" if r["val_auc"] is None else f"{r['val_auc']:.4f}",
              "—" if r["test_auc"] is None else f"{r['test_auc']:.4f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)

