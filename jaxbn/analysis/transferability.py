r"""AC-Corr: rank candidate pretrained models for a target task (AC-Norm, arXiv:2307.15282).

``python -m jaxbn.main --config=configs/transferability.py --workdir=DIR``

For every candidate (an architecture plus its initialisation: ``imagenet``, a
checkpoint path, or ``random`` as a control; architectures may differ):

1. build it with AC-Norm layers (``norm='acnorm'``: source and target affine both
   from the pretrained BN, as in arXiv:2307.15282) and a new head initialised as PyTorch's
   ``nn.Linear`` (as in the PyTorch reference; ``transfer.head_init='random'``).
   jaxbn's usual zero head (``'zero'``) would leave the backbone's first gradient
   at exactly zero, so one step would not move any AC-Norm layer;
2. fine-tune it for ``transfer.steps`` steps (default 1, the abstract's "single
   backpropagation step") on the target training set with ``transfer.strategy``
   (default ``full``) and ``config.optimizer`` (Adam) at ``transfer.lr``;
3. per selected AC-Norm layer compute ``S`` (``τ = transfer.temperature``, default 1,
   the layer's own ε) and sum all its entries; **AC-Corr** is the mean of these
   sums over the selected layers (``transfer.layers``: a regex fully matching
   ``'/'``-joined module paths; empty = every AC-Norm layer, i.e. every pretrained
   BN layer).

The ranked table goes to ``DIR/transferability.md`` and ``DIR/transferability.json``
(both written atomically), and each candidate's per-layer ``sum(S) / C`` against
depth to ``DIR/transferability_layers.png``. ``AC-Corr / C`` (each layer's sum
divided by its channel count, averaged) is reported beside it: a layer's sum grows with ``C``
(each row of ``S`` sums to at most 1), so the raw score also measures width.

With ``transfer.validate=True`` each candidate is then fine-tuned by jaxbn's
trainer with this config's own training fields (stages, ``bn_stats``, norm
``transfer.validate_norm`` or ``model.norm``) for at most
``transfer.validate_steps`` steps, in ``DIR/validate/<candidate>`` (a finished
run is reused, an interrupted one resumes), and Kendall's τ
(``scipy.stats.kendalltau``) between AC-Corr and the best validation AUC says
which direction of the score predicts better transfer: τ > 0 "higher is
better", τ < 0 "lower is better". With a handful of candidates τ is coarse (its
p-value is reported too).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbn import masks, setup, step as step_lib, train
from jaxbn.data import pipeline
from jaxbn.models import acnorm, get_spec, norm as norm_lib
from jaxbn.io import write_json_atomic, write_text_atomic
from jaxbn.ops.acnorm import acnorm_affine
from jaxbn.plotting import pyplot, save_figure

JSON_NAME = "transferability.json"
MD_NAME = "transferability.md"
PNG_NAME = "transferability_layers.png"  # AC-Corr per layer vs depth, one line per candidate


# --------------------------------------------------------------------------- #
# Candidates.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One pretrained model to score: ``arch@init`` (``init`` as ``config.model.init``)."""

  arch: str
  init: str = "imagenet"

  @property
  def name(self) -> str:
    init = self.init if self.init in ("imagenet", "random") else os.path.basename(
        os.path.normpath(self.init))
    return f"{self.arch}@{init}"


def parse_candidates(spec: str | Sequence[str]) -> list[Candidate]:
  """``'efficientnet_lite0@imagenet;resnet50@/ckpt.pth;cbr_small@random'`` -> candidates.

  Items are separated by ``;``, ``,`` or whitespace (or given as a sequence);
  ``arch`` alone means ``arch@imagenet``.

  >>> [c.name for c in parse_candidates("efficientnet_lite0; cbr_small@random")]
  ['efficientnet_lite0@imagenet', 'cbr_small@random']
  """
  items = re.split(r"[;,\s]+", spec) if isinstance(spec, str) else list(spec)
  out = []
  for item in filter(None, (i.strip() for i in items)):
    arch, _, init = item.partition("@")
    get_spec(arch)  # unknown architecture: a clear error now, not after other candidates ran
    out.append(Candidate(arch.strip(), init.strip() or "imagenet"))
  if not out:
    raise ValueError("transfer.candidates is empty: give e.g. "
                     "'efficientnet_lite0@imagenet;efficientnet_lite1@imagenet'.")
  names = [c.name for c in out]
  if len(set(names)) != len(names):
    raise ValueError(f"Duplicate candidates in {names}.")
  return out


def candidate_config(config: ml_collections.ConfigDict, cand: Candidate,
                     norm: str | None = None) -> ml_collections.ConfigDict:
  """A copy of ``config`` for one candidate: its arch and init, and ``norm`` if given."""
  c = copy.deepcopy(config)
  c.model.arch, c.model.init = cand.arch, cand.init
  if norm:
    c.model.norm = norm
  return c


# --------------------------------------------------------------------------- #
# Scoring one candidate.
# --------------------------------------------------------------------------- #


@functools.partial(jax.jit, static_argnums=1)
def _summaries(affines: dict, options: tuple) -> dict:
  """Per layer: sum, trace and kept off-diagonal entries of ``S`` (one compile for all)."""
  out = {}
  for name, (eps, tau) in options:
    s = acnorm_affine(*affines[name], tau, eps)[0]
    off = s - jnp.diag(jnp.diagonal(s))
    out[name] = {"sum": jnp.sum(s), "trace": jnp.trace(s), "offdiag_kept": jnp.sum(off > 0)}
  return out


def layer_statistics(variables: dict, settings: dict | None) -> dict[str, dict]:
  """``{path: {channels, sum, trace, offdiag_kept}}`` of ``S`` for every AC-Norm layer.

  ``S`` depends only on the affines (``params`` and ``acnorm_source``); each
  layer's ε and τ come from ``settings`` (:func:`jaxbn.models.acnorm.layer_settings`;
  ``None``: ε = 1e-5, τ = 1 everywhere). Layers come in forward (depth) order
  when ``settings`` is given (it is recorded from a forward pass), else sorted.
  """
  affines, options, channels = {}, [], {}
  for path, affine in acnorm.layer_affines(variables).items():
    name = "/".join(path)
    affines[name] = affine
    opts = (settings or {}).get(path, {"epsilon": 1e-5, "temperature": 1.0})
    options.append((name, (float(opts["epsilon"]), float(opts["temperature"]))))
    channels[name] = int(np.shape(affine[2])[0])
  if not affines:
    raise ValueError("The model has no AC-Norm layer (build it with norm='acnorm').")
  out = jax.device_get(_summaries(affines, tuple(options)))
  order = ["/".join(p) for p in (settings or {}) if "/".join(p) in out]
  order += sorted(set(out) - set(order))
  return {name: {"channels": channels[name], "sum": float(out[name]["sum"]),
                 "trace": float(out[name]["trace"]),
                 "offdiag_kept": int(out[name]["offdiag_kept"])} for name in order}


def torch_linear_init(shapes: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A new head as PyTorch's ``nn.Linear`` initialises it: U(±1/sqrt(fan_in)) (the reference's)."""
  fan_in = shapes["kernel"].shape[0]
  bound = 1.0 / math.sqrt(fan_in)
  return {k: rng.uniform(-bound, bound, v.shape).astype(v.dtype) for k, v in shapes.items()}


def select_layers(layers: dict[str, dict], pattern: str) -> dict[str, dict]:
  """Layers whose module path fully matches ``pattern`` (all when it is empty)."""
  if not pattern:
    return dict(layers)
  regex = re.compile(pattern)
  chosen = {k: v for k, v in layers.items() if regex.fullmatch(k)}
  if not chosen:
    raise ValueError(f"transfer.layers={pattern!r} matches no AC-Norm layer; paths look like "
                     f"{', '.join(list(layers)[:4])}.")
  return chosen


def score_candidate(config: ml_collections.ConfigDict, cand: Candidate, info,
                    compiled: dict | None = None) -> dict:
  """Fine-tunes ``cand`` for ``transfer.steps`` AC-Norm steps; returns its AC-Corr record.

  ``compiled`` (a dict kept across the candidates of one run) shares the compiled
  train step between candidates of the same architecture.
  """
  t = config.transfer
  compiled = {} if compiled is None else compiled
  cfg = candidate_config(config, cand, norm=acnorm_norm(t.temperature))
  spec = get_spec(cand.arch)
  model = setup.build_model(cfg, info.num_classes)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  start = time.time()
  variables = setup.initial_variables(cfg, model, init_rng)
  variables = jax.tree.map(np.asarray, dict(variables))
  if t.head_init == "random" and cand.init != "random":
    head = variables["params"][spec.head]
    variables["params"] = dict(variables["params"])
    variables["params"][spec.head] = torch_linear_init(head, np.random.default_rng(config.seed))
  elif t.head_init not in ("random", "zero"):
    raise ValueError(f"transfer.head_init must be 'random' or 'zero', got {t.head_init!r}.")
  settings = acnorm.layer_settings(model, variables, config.data.image_size)
  before = layer_statistics(variables, settings)

  if cand.arch not in compiled:  # only arch and init differ between candidates
    labels = masks.make_labels(variables["params"], t.strategy,
                               batch_stats=variables["batch_stats"], arch=cand.arch)
    stage = ml_collections.ConfigDict(dict(lr=float(t.lr), schedule="constant", warmup_steps=0))
    tx = setup.build_optimizer(cfg, stage, max(1, t.steps), labels)
    compiled[cand.arch] = tx, jax.jit(step_lib.make_train_step(
        model, tx, labels, bn_stats=cfg.bn_stats, multi_label=info.multi_label))
  tx, step = compiled[cand.arch]
  state = step_lib.TrainState.create(variables, tx)
  batches = pipeline.train_iterator(
      cfg.data, batch_size=t.batch_size or cfg.batch_size, image_size=cfg.data.image_size,
      mean=spec.mean, std=spec.std, seed=config.seed, process_index=0, process_count=1,
  )
  losses = []
  for _ in range(t.steps):
    batch = next(batches)
    state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()}, step_rng, 1.0)
    losses.append(float(metrics["loss"]))
  after = layer_statistics(jax.device_get(state.variables), settings)
  chosen = select_layers(after, t.layers)
  sums = [v["sum"] for v in chosen.values()]
  per_channel = [v["sum"] / v["channels"] for v in chosen.values()]
  record = {
      "candidate": cand.name, "arch": cand.arch, "init": cand.init,
      "ac_corr": float(np.mean(sums)),
      "ac_corr_per_channel": float(np.mean(per_channel)),
      "ac_corr_at_init": float(np.mean([before[k]["sum"] for k in chosen])),
      "num_layers": len(chosen),
      "mean_channels": float(np.mean([v["channels"] for v in chosen.values()])),
      "offdiag_kept": int(sum(v["offdiag_kept"] for v in chosen.values())),
      "steps": t.steps, "train_loss": losses,
      "params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
      "seconds": round(time.time() - start, 1),
      "layers": chosen,
  }
  logging.info("AC-Corr %s: %.4f (per channel %.5f, at init %.4f) over %d layers, %d "
               "off-diagonal entries kept, %.0fs.", cand.name, record["ac_corr"],
               record["ac_corr_per_channel"], record["ac_corr_at_init"], len(chosen),
               record["offdiag_kept"], record["seconds"])
  return record


def acnorm_norm(temperature: float) -> str:
  """The ``norm`` string of AC-Norm with softmax temperature ``temperature``."""
  return str(norm_lib.Norm("acnorm", float(temperature)))


# --------------------------------------------------------------------------- #
# Validation: does AC-Corr predict the AUC fine-tuning reaches?
# --------------------------------------------------------------------------- #


def validate_candidate(config: ml_collections.ConfigDict, cand: Candidate, workdir: str) -> dict:
  """Fine-tunes ``cand`` with the config's training fields; returns its results.json."""
  t = config.transfer
  cfg = candidate_config(config, cand, norm=t.validate_norm or None)
  cfg.task = "train"
  if t.validate_steps:
    cfg.max_steps = int(t.validate_steps)
  run_dir = os.path.join(workdir, "validate", re.sub(r"[^A-Za-z0-9_.@-]+", "_", cand.name))
  done = os.path.join(run_dir, "results.json")
  if os.path.isfile(done):
    with open(done) as f:
      logging.info("Validation of %s: reusing %s.", cand.name, done)
      return json.load(f)
  logging.info("Validation of %s: fine-tuning in %s (%s).", cand.name, run_dir,
               f"at most {cfg.max_steps} steps" if cfg.max_steps else "the stages' full length")
  return train.train_and_evaluate(cfg, run_dir)


def rank_correlations(records: Sequence[dict]) -> dict:
  """Kendall τ of AC-Corr (and AC-Corr / C) against ``best_val_auc`` over ``records``.

  A random-init control has γ = 1, β = 0 in every layer, so its ``S`` is uniform
  and its AC-Corr is just the mean channel count: it can decide τ on its own.
  With such controls and at least two other candidates, ``ac_corr_pretrained_only``
  is τ without them.
  """
  aucs = [r["best_val_auc"] for r in records]
  out = {"ac_corr": kendall([r["ac_corr"] for r in records], aucs),
         "ac_corr_per_channel": kendall([r["ac_corr_per_channel"] for r in records], aucs)}
  pretrained = [r for r in records if r["init"] != "random"]
  if 2 <= len(pretrained) < len(records):
    out["ac_corr_pretrained_only"] = kendall(
        [r["ac_corr"] for r in pretrained], [r["best_val_auc"] for r in pretrained])
  return out


def kendall(scores: Sequence[float], aucs: Sequence[float]) -> dict:
  """Kendall's τ (tau-b) of score vs AUC, its p-value, and the direction it supports."""
  from scipy import stats

  res = stats.kendalltau(scores, aucs)
  tau, p = float(res.statistic), float(res.pvalue)
  if not math.isfinite(tau) or tau == 0:
    direction = "none (τ = 0 or undefined)"
  elif tau > 0:
    direction = "higher AC-Corr predicts higher validation AUC"
  else:
    direction = "lower AC-Corr predicts higher validation AUC"
  return {"tau": tau if math.isfinite(tau) else None, "p_value": p if math.isfinite(p) else None,
          "n": len(scores), "direction": direction}


# --------------------------------------------------------------------------- #
# The task.
# --------------------------------------------------------------------------- #


def _fmt(x, spec=".4f") -> str:
  return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(report: dict) -> str:
  """The ranked table (and the validation summary) as markdown."""
  t = report["settings"]
  validated = any("best_val_auc" in r for r in report["ranking"])
  head = ("| rank | candidate | AC-Corr | AC-Corr / C | AC-Corr at init | layers | params |"
          + (" val AUC | test AUC |" if validated else ""))
  lines = [
      f"AC-Corr on {report['dataset']} ({t['steps']} AC-Norm step(s), strategy {t['strategy']}, "
      f"{t.get('optimizer', 'adam')} lr {t['lr']:g}, batch {t['batch_size']}, "
      f"{t['image_size']} px, τ = "
      f"{t['temperature']:g}, layers: {t['layers'] or 'all AC-Norm layers'}); ranked by "
      "AC-Corr, highest first:",
      "",
      head,
      "|---:|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if validated else ""),
  ]
  for i, r in enumerate(report["ranking"], 1):
    row = (f"| {i} | {r['candidate']} | {_fmt(r['ac_corr'])} | {_fmt(r['ac_corr_per_channel'])} "
           f"| {_fmt(r['ac_corr_at_init'])} | {r['num_layers']} | {r['params']:,} |")
    if validated:
      row += f" {_fmt(r.get('best_val_auc'))} | {_fmt(r.get('test_auc'))} |"
    lines.append(row)
  if "validation" in report:
    v = report["validation"]
    lines += [
        "",
        "Validation: each candidate fine-tuned by jaxbn's trainer ("
        + (f"at most {v['max_steps']} steps" if v["max_steps"] else "the stages' full length")
        + f"; norm {v['norm']}, stages {v['stages']}, BN statistics {v['bn_stats']}). Kendall τ "
        f"between AC-Corr and best validation AUC: {_fmt(v['ac_corr']['tau'], '.3f')} "
        f"(p = {_fmt(v['ac_corr']['p_value'], '.2f')}, n = {v['ac_corr']['n']}): "
        f"{v['ac_corr']['direction']}. AC-Corr / C: τ = "
        f"{_fmt(v['ac_corr_per_channel']['tau'], '.3f')} "
        f"(p = {_fmt(v['ac_corr_per_channel']['p_value'], '.2f')}): "
        f"{v['ac_corr_per_channel']['direction'].replace('AC-Corr', 'AC-Corr / C')}.",
    ]
    if "ac_corr_pretrained_only" in v:
      k = v["ac_corr_pretrained_only"]
      lines[-1] += (f" Without the random-init control(s): τ = {_fmt(k['tau'], '.3f')} "
                    f"(p = {_fmt(k['p_value'], '.2f')}, n = {k['n']}): {k['direction']}.")
  return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Scores (and optionally validates) every candidate; writes the ranked table."""
  t = config.transfer
  if t.steps < 0:
    raise ValueError(f"transfer.steps must be >= 0, got {t.steps}.")
  candidates = parse_candidates(t.candidates)
  info = pipeline.get_dataset_info(config.data)
  os.makedirs(workdir, exist_ok=True)
  compiled: dict = {}
  records = [score_candidate(config, c, info, compiled) for c in candidates]
  ranking = sorted(records, key=lambda r: r["ac_corr"], reverse=True)
  report = {
      "dataset": info.name,
      "settings": {
          "steps": t.steps, "strategy": t.strategy, "optimizer": config.optimizer, "lr": t.lr,
          "temperature": t.temperature,
          "layers": t.layers, "head_init": t.head_init, "bn_stats": config.bn_stats,
          "batch_size": t.batch_size or config.batch_size, "image_size": config.data.image_size,
          "seed": config.seed,
      },
      "note": ("AC-Corr = mean over the selected AC-Norm layers of sum(S) (τ as set); "
               "AC-Corr / C divides each layer's sum by its channel count first. "
               "The authors do not state which direction is better; see 'validation'."),
      "ranking": ranking,
  }
  _write_report(workdir, report)
  if t.validate:
    for r, c in zip(records, candidates):
      res = validate_candidate(config, c, workdir)
      r["best_val_auc"], r["test_auc"] = res["best_val_auc"], res["test_auc"]
      r["validation_steps"] = res["total_steps"]
      _write_report(workdir, report)  # partial results survive an interruption
    report["validation"] = {
        "max_steps": t.validate_steps, "norm": t.validate_norm or config.model.norm,
        "bn_stats": config.bn_stats,
        "stages": ", ".join(f"{n} {s.strategy} lr {s.lr:g}" for n, s in setup.stages_of(config)),
        **rank_correlations(records),
    }
    _write_report(workdir, report)
  logging.info("AC-Corr ranking written to %s:\n%s", os.path.join(workdir, MD_NAME),
               markdown(report))
  return report


def plot_layers(report: dict, path: str) -> None:
  """Per candidate, each selected layer's ``sum(S) / C`` against its relative depth."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
  for r in report["ranking"]:
    values = [v["sum"] / v["channels"] for v in r["layers"].values()]
    depth = np.linspace(0.0, 1.0, len(values)) if len(values) > 1 else np.zeros(1)
    ax.plot(depth, values, marker=".", lw=1, label=f"{r['candidate']} (AC-Corr {r['ac_corr']:.1f})")
  ax.set_xlabel("relative depth of the AC-Norm layer (0 = stem, 1 = last)")
  ax.set_ylabel("sum(S) / C after the AC-Norm step(s)")
  ax.set_yscale("log")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  ax.set_title(f"AC-Corr layer profile on {report['dataset']}", fontsize=9)
  save_figure(fig, path)


def _write_report(workdir: str, report: dict) -> None:
  write_json_atomic(os.path.join(workdir, JSON_NAME), report)
  write_text_atomic(os.path.join(workdir, MD_NAME), markdown(report))
  plot_layers(report, os.path.join(workdir, PNG_NAME))


__all__ = [
    "Candidate",
    "candidate_config",
    "kendall",
    "layer_statistics",
    "torch_linear_init",
    "markdown",
    "parse_candidates",
    "plot_layers",
    "rank_correlations",
    "run",
    "score_candidate",
    "select_layers",
    "validate_candidate",
]
