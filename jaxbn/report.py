r"""Reports: a markdown table and plots from finished (and unfinished) training runs.

  python -m jaxbn.report /tmp/pt                      # a sweep directory (jaxbn.sweep)
  python -m jaxbn.report /tmp/bn_only /tmp/full --out=/tmp/report   # single runs

Each argument is a sweep directory (``sweep.json`` + ``runs/``), one run's
workdir (``results.json`` / ``sweep_run.json``), or any folder holding such
workdirs. ``OUT`` (default: the first argument) receives, each written
atomically (temporary file + rename):

* ``report.md``: per (dataset, architecture, strategy): seeds finished, test
  AUC and ACC as mean ± sd over seeds (sample sd; one seed shows the value
  alone), trainable parameters (count and % of the model), steps and wall time
  to the best validation AUC, the median train-step time of the last stage,
  and the run's wall time; a headline table (strategy × dataset test AUC) next
  to the MedMNIST v2 baselines where the dataset has them; notes naming every
  run that is missing, unfinished or unreadable; the sweep's exact command.
* ``val_auc_vs_step.png``, ``val_auc_vs_wall.png``: validation AUC curves per
  strategy (one panel per dataset × architecture; unfinished runs dashed).
* ``params_vs_auc.png``: trainable parameters (log) vs test AUC (mean ± sd).
* ``summary.json``, ``summary.csv``: the rows as data (mean and sd over seeds of
  validation / test AUC, plain and with TTA), for tables elsewhere.

Train-step time comes from the ``steps_per_sec`` scalars the trainer writes
to its TensorBoard events (median over the last stage, its first interval
dropped because it holds compilation); without events it falls back to wall
time / steps, marked †, which includes compilation and evaluation.
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  extras.require("train", "python -m jaxbn.report")

import dataclasses
import glob
import json
import math
import os
import statistics
import struct
import sys
import time
from typing import Any, Iterable, Sequence

from absl import flags

from jaxbn import cli
from jaxbn.io import write_json_atomic, write_text_atomic
from jaxbn.plotting import pyplot, save_figure
from jaxbn.sweep import PLAN_FILE, RESULTS, RUN_META

PROG = "python -m jaxbn.report"
FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "output directory (default: the first WORKDIR)", flag_values=FLAGS)
flags.DEFINE_string("title", "jaxbn fine-tuning report", "title of report.md", flag_values=FLAGS)

# MedMNIST v2 (Yang et al., Scientific Data 2023), test AUC / ACC, trained from scratch.
MEDMNIST_BASELINES = {
    "pneumoniamnist": {
        "ResNet-18 (28)": (0.944, 0.854), "ResNet-18 (224)": (0.956, 0.864),
        "ResNet-50 (224)": (0.962, 0.884), "Google AutoML Vision": (0.991, 0.946),
    },
    "retinamnist": {
        "ResNet-18 (28)": (0.717, 0.524), "ResNet-18 (224)": (0.710, 0.493),
        "ResNet-50 (224)": (0.716, 0.511), "Google AutoML Vision": (0.750, 0.531),
    },
}
PNGS = ("val_auc_vs_step.png", "val_auc_vs_wall.png", "params_vs_auc.png")


@dataclasses.dataclass
class RunInfo:
  name: str
  strategy: str
  arch: str
  dataset: str
  seed: int | None
  dir: str
  status: str  # done | partial | missing | broken
  fold: int | None = None  # cross-validation fold (jaxbn.sweep grid.folds), else None
  results: dict | None = None
  history: list = dataclasses.field(default_factory=list)
  step_time_s: float | None = None
  step_time_exact: bool = True  # False: wall / steps fallback
  note: str = ""

  @property
  def key(self) -> tuple[str, str, str]:
    return (self.dataset, self.arch, self.strategy)


# --------------------------------------------------------------------------- #
# Reading run directories.
# --------------------------------------------------------------------------- #


def _read_json(path: str) -> tuple[Any, str | None]:
  try:
    with open(path) as f:
      return json.load(f), None
  except FileNotFoundError:
    return None, None
  except (OSError, ValueError) as e:
    return None, f"{os.path.basename(path)} unreadable ({type(e).__name__}: {e})"


def _strategy_label(results: dict) -> str:
  strat = results.get("strategy")
  if isinstance(strat, dict):
    label = "→".join(str(v) for v in strat.values())
  else:
    label = str(strat or "?")
  if results.get("norm") not in (None, "bn"):
    label += f" ({results['norm']})"
  if results.get("bn_stats") == "batch":
    label += " (batch BN)"
  if results.get("init") not in (None, "imagenet"):
    label += f" ({results['init']} init)"
  return label


def read_events_scalars(run_dir: str, tag: str) -> list[tuple[int, float]]:
  """``(step, value)`` of one scalar tag from the run's TensorBoard event files.

  Reads the TFRecord framing directly and parses events with TensorBoard's
  protobufs (no TensorFlow import); unreadable files yield nothing.
  """
  try:
    from tensorboard.compat.proto import event_pb2
  except Exception:  # pragma: no cover - tensorboard is a dependency
    return []
  import numpy as np

  out = []
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError:
      continue
    i = 0
    while i + 12 <= len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      rec = data[i + 12:i + 12 + n]
      i += 12 + n + 4
      if len(rec) < n:
        break  # truncated tail of a file still being written
      try:
        event = event_pb2.Event.FromString(rec)
      except Exception:
        break
      for v in event.summary.value:
        if v.tag != tag:
          continue
        if v.HasField("tensor"):
          t = v.tensor
          if t.tensor_content:
            dtype = {1: np.float32, 2: np.float64}.get(t.dtype)
            if dtype is None:
              continue
            val = float(np.frombuffer(t.tensor_content, dtype)[0])
          elif t.float_val:
            val = float(t.float_val[0])
          elif t.double_val:
            val = float(t.double_val[0])
          else:
            continue
        else:
          val = float(v.simple_value)
        out.append((int(event.step), val))
  return out


def _step_time(run_dir: str, history: list, results: dict | None) -> tuple[float | None, bool]:
  """Median train-step seconds of the last stage (events), else wall/steps."""
  rates = read_events_scalars(run_dir, "steps_per_sec")
  if rates and history:
    last = history[-1].get("stage")
    earlier = [h["step"] for h in history if h.get("stage") != last]
    start = max(earlier) if earlier else 0
    in_stage = [(s, r) for s, r in sorted(rates) if s > start and r > 0]
    if len(in_stage) > 1:
      in_stage = in_stage[1:]  # its interval holds the stage's compilation
    if in_stage:
      return statistics.median(1.0 / r for _, r in in_stage), True
  if results and results.get("total_steps") and results.get("wall_time_s"):
    return results["wall_time_s"] / results["total_steps"], False
  return None, True


def _read_run(run_dir: str, planned: dict | None = None) -> RunInfo:
  meta, meta_err = _read_json(os.path.join(run_dir, RUN_META))
  meta = meta if isinstance(meta, dict) else {}
  planned = planned or {}
  results, res_err = _read_json(os.path.join(run_dir, RESULTS))
  if results is not None and not isinstance(results, dict):
    results, res_err = None, f"{RESULTS} is not a JSON object"
  src = {**(results or {}), **meta, **planned}
  info = RunInfo(
      name=src.get("name") or os.path.basename(os.path.normpath(run_dir)),
      strategy=src.get("strategy") if isinstance(src.get("strategy"), str)
      else _strategy_label(results or {}),
      arch=str(src.get("arch") or "?"),
      dataset=str(src.get("dataset") or "?"),
      seed=src.get("seed"),
      dir=run_dir,
      status="missing",
      fold=src.get("fold"),
  )
  if not os.path.isdir(run_dir):
    info.note = "not started"
    return info
  if results is not None:
    keys = ("best_val_auc",) if results.get("test_skipped") else ("test_auc", "test_acc")
    needed = [k for k in keys if not isinstance(results.get(k), (int, float))]
    if needed:
      info.status, info.note = "broken", f"{RESULTS} lacks {', '.join(needed)}"
    else:
      info.status, info.results = "done", results
      info.history = list(results.get("history") or [])
  else:
    info.status = "broken" if res_err else "partial"
    from jaxbn import checkpoint  # its layout; imported only for unfinished runs

    ckpt = checkpoint.latest_meta(run_dir)
    if ckpt:
      loop = ckpt["loop"]
      info.history = list(loop.get("history") or [])
      best = loop.get("best_val_auc")
      last = info.history[-1]["step"] if info.history else 0
      info.note = (f"unfinished: last checkpoint at step {last}, {len(info.history)} evaluations"
                   + (f", best val AUC so far {best:.4f}"
                      if isinstance(best, (int, float)) else ""))
    else:
      info.note = "unfinished: started, no checkpoint yet"
    if res_err:
      info.note = f"{res_err}; {info.note}"
  if meta_err:
    info.note = f"{info.note}; {meta_err}" if info.note else meta_err
  info.step_time_s, info.step_time_exact = _step_time(run_dir, info.history, info.results)
  return info


def _is_run_dir(path: str) -> bool:
  return any(os.path.isfile(os.path.join(path, f)) for f in (RESULTS, RUN_META))


def collect(paths: Sequence[str]) -> tuple[list[RunInfo], list[dict], list[str]]:
  """Runs under ``paths``, sweep plans found there, and notes about the inputs."""
  runs, plans, notes, seen = [], [], [], set()

  def add(info: RunInfo):
    real = os.path.realpath(info.dir)
    if real not in seen:
      seen.add(real)
      runs.append(info)

  for path in paths:
    if not os.path.isdir(path):
      notes.append(f"`{path}` does not exist or is not a directory: skipped.")
      continue
    plan, err = _read_json(os.path.join(path, PLAN_FILE))
    if err:
      notes.append(f"`{path}`: {err}; reading its run directories only.")
    if isinstance(plan, dict):
      plan = {**plan, "_path": path}
      plans.append(plan)
      for r in plan.get("runs", []):
        add(_read_run(os.path.join(path, r.get("dir", os.path.join("runs", r["name"]))), r))
      extra = sorted(glob.glob(os.path.join(path, "runs", "*")))
      for d in extra:
        if os.path.isdir(d):
          add(_read_run(d))
      continue
    if _is_run_dir(path):
      add(_read_run(path))
      continue
    found = []
    for root, dirs, files in os.walk(path):
      depth = os.path.relpath(root, path).count(os.sep)
      if RESULTS in files or RUN_META in files:
        found.append(root)
        dirs[:] = []
      elif depth >= 3:
        dirs[:] = []
      else:
        dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "best", "soup") and
                         not d.startswith("."))
    if not found:
      notes.append(f"`{path}`: no run directories (results.json / sweep_run.json) found.")
    for d in sorted(found):
      add(_read_run(d))
  return runs, plans, notes


# --------------------------------------------------------------------------- #
# Aggregation.
# --------------------------------------------------------------------------- #


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
  values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _order(plans: list[dict], runs: list[RunInfo]) -> tuple[list[str], list[str], list[str]]:
  def names(field, attr):
    out = []
    for p in plans:
      grid = (p.get("sweep_config") or {}).get("grid") or {}
      value = grid.get(field) or ""
      out += [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    out += [getattr(r, attr) for r in runs]
    return list(dict.fromkeys(x for x in out if x))

  return names("datasets", "dataset"), names("archs", "arch"), names("strategies", "strategy")


def summarize(runs: list[RunInfo], plans: list[dict] | None = None) -> list[dict]:
  """One row per (dataset, arch, strategy) present, in plan order."""
  plans = plans or []
  datasets, archs, strategies = _order(plans, runs)
  rows = []
  for ds in datasets:
    for arch in archs:
      for strat in strategies:
        group = [r for r in runs if r.key == (ds, arch, strat)]
        if not group:
          continue
        done = [r for r in group if r.status == "done"]
        res = [r.results for r in done]
        auc, auc_sd = _mean_sd([x["test_auc"] for x in res])
        acc, acc_sd = _mean_sd([x["test_acc"] for x in res])
        trainable = [x.get("trainable_params") for x in res
                     if x.get("trainable_params") is not None]
        total = [x.get("total_params") for x in res if x.get("total_params")]
        times = [r.step_time_s for r in done if r.step_time_s is not None]
        rows.append(dict(
            dataset=ds, arch=arch, strategy=strat, n_done=len(done), n_runs=len(group),
            test_auc=auc, test_auc_sd=auc_sd, test_acc=acc, test_acc_sd=acc_sd,
            trainable_params=round(statistics.fmean(trainable)) if trainable else None,
            total_params=round(statistics.fmean(total)) if total else None,
            steps_to_best=_mean_sd([x.get("steps_to_best") for x in res])[0],
            target_auc=next((x.get("target_auc") for x in res if x.get("target_auc")), None),
            n_reached=sum((x.get("steps_to_target") or -1) >= 0 for x in res),
            steps_to_target=_mean_sd([x["steps_to_target"] for x in res
                                      if (x.get("steps_to_target") or -1) >= 0])[0],
            wall_to_target_s=_mean_sd([x["wall_to_target_s"] for x in res
                                       if (x.get("steps_to_target") or -1) >= 0])[0],
            wall_to_best_s=_mean_sd([x.get("wall_to_best_s") for x in res])[0],
            step_time_s=statistics.median(times) if times else None,
            step_time_exact=all(r.step_time_exact for r in done),
            wall_time_s=_mean_sd([x.get("wall_time_s") for x in res])[0],
            total_steps=_mean_sd([x.get("total_steps") for x in res])[0],
            **_spread_fields(res),
            per_run={(r.seed, r.fold): {k: r.results.get(k) for k in SPREAD_METRICS}
                     for r in done},
            notes=[f"{r.name}: {r.status}" + (f" ({r.note})" if r.note else "")
                   for r in group if r.status != "done"],
        ))
  return rows


# Metrics compared across rows with their seed spread (results.json fields).
SPREAD_METRICS = {"best_val_auc": "val AUC", "tta_val_auc": "val AUC (TTA)",
                  "test_auc": "test AUC", "tta_test_auc": "test AUC (TTA)"}


def _spread_fields(results: list[dict]) -> dict:
  out = {}
  for key in SPREAD_METRICS:
    mean, sd = _mean_sd([x.get(key) for x in results])
    out[f"m_{key}"], out[f"sd_{key}"] = mean, sd
  return out


def within_spread(mean_a: float, sd_a: float | None, mean_b: float, sd_b: float | None
                  ) -> bool | None:
  """Is ``|mean_a - mean_b|`` smaller than the seed spread (the larger of the two sds)?

  None when neither row has an sd (one seed each): the spread is unknown.
  """
  sds = [s for s in (sd_a, sd_b) if s is not None]
  if not sds:
    return None
  return abs(mean_a - mean_b) < max(sds)


def paired_difference(a: dict, b: dict) -> tuple[float, float, int, int] | None:
  """``a - b`` over the runs both have (same seed and fold): (mean, standard error,
  pairs, pairs where ``a`` is higher); None with fewer than 2 pairs.

  Paired by seed and fold, two rows' difference is free of what the runs of one
  seed or fold share (its data order, its validation fold), which on a
  cross-validation is most of the spread.

  >>> mean, se, n, higher = paired_difference({0: 0.80, 1: 0.70, 2: 0.90},
  ...                                         {0: 0.79, 1: 0.71, 2: 0.87})
  >>> f"{mean:+.4f} ± {se:.4f}", n, higher
  ('+0.0100 ± 0.0115', 3, 2)
  """
  keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
  if len(keys) < 2:
    return None
  gains = [a[k] - b[k] for k in keys]
  se = statistics.stdev(gains) / len(gains) ** 0.5
  return statistics.fmean(gains), se, len(gains), sum(g > 0 for g in gains)


def spread_markdown(rows: list[dict]) -> list[str]:
  """Per dataset × architecture and metric: each row's mean ± sd and its difference to the
  best row, marked ``≈`` when smaller than the seed spread (not a real difference), and
  the same difference paired run by run (:func:`paired_difference`) where the rows share
  seeds (and folds)."""
  lines = []
  groups = list(dict.fromkeys((r["dataset"], r["arch"]) for r in rows))
  for key, label in SPREAD_METRICS.items():
    table = []
    for ds, arch in groups:
      group = [r for r in rows if (r["dataset"], r["arch"]) == (ds, arch)
               and r.get(f"m_{key}") is not None]
      if not group:
        continue
      best = max(group, key=lambda r: r[f"m_{key}"])
      values = lambda r: {k: v[key] for k, v in r.get("per_run", {}).items()}
      for r in group:
        mean, sd = r[f"m_{key}"], r[f"sd_{key}"]
        paired = None if r is best else paired_difference(values(r), values(best))
        if r is best:
          mark = "best"
        else:
          delta = mean - best[f"m_{key}"]
          close = within_spread(mean, sd, best[f"m_{key}"], best[f"sd_{key}"])
          mark = f"{delta:+.4f}" + {True: " ≈ (within spread)", False: "",
                                    None: " (spread unknown: 1 seed)"}[close]
        pair = "—" if paired is None else (
            f"{paired[0]:+.4f} ± {paired[1]:.4f} (higher in {paired[3]} of {paired[2]})")
        table.append(f"| {ds} | {arch} | {r['strategy']} | {r['n_done']} | {_pm(mean, sd)} | "
                     f"{mark} | {pair} |")
    if table:
      lines += [f"### {label}", "", "| dataset | arch | strategy | runs | "
                f"{label} (mean ± sd) | Δ to the best | paired Δ ± SE |",
                "|---|---|---|---|---|---|---|"] + table + [""]
  if lines:
    lines = ["## Differences and seed spread", "",
             "Δ: difference of the mean to the best row's; ≈ marks a difference smaller than "
             "the larger seed sd of the two rows (not distinguishable with these seeds). "
             "Paired Δ: the same difference over the runs both rows have with the same seed "
             "(and cross-validation fold), ± its standard error; what varies between seeds "
             "or folds cancels in it.",
             ""] + lines
  return lines


# --------------------------------------------------------------------------- #
# Markdown.
# --------------------------------------------------------------------------- #


def _pm(mean: float | None, sd: float | None, digits: int = 4) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
  return "—" if x is None else fmt.format(x)


def table_markdown(rows: list[dict], unit: str = "seeds") -> list[str]:
  """The "All results" table; ``unit``: what a row's runs are called ("seeds", or "runs"
  for a cross-validation's seeds × folds)."""
  lines = [f"| dataset | arch | strategy | {unit} | test AUC | test ACC | trainable params | "
           "trainable % | steps to best val AUC | wall to best (s) | "
           "to target val AUC (steps / s) | "
           "train step (ms) | run wall (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    pct = (100 * r["trainable_params"] / r["total_params"]
           if r["trainable_params"] is not None and r["total_params"] else None)
    step = _num(None if r["step_time_s"] is None else 1000 * r["step_time_s"], "{:,.0f}")
    if r["step_time_s"] is not None and not r["step_time_exact"]:
      step += " †"
    seeds = f"{r['n_done']}/{r['n_runs']}" + (" ⚠" if r["n_done"] < r["n_runs"] else "")
    if r["n_done"] == 0:
      target = "—"
    elif r["n_reached"] == 0:
      target = "not reached"
    else:
      target = f"{r['steps_to_target']:,.0f} / {r['wall_to_target_s']:,.0f}"
      if r["n_reached"] < r["n_done"]:
        target += f" ({r['n_reached']} of {r['n_done']} {unit})"
    lines.append(
        f"| {r['dataset']} | {r['arch']} | {r['strategy']} | {seeds} | "
        f"{_pm(r['test_auc'], r['test_auc_sd'])} | {_pm(r['test_acc'], r['test_acc_sd'])} | "
        f"{_num(r['trainable_params'])} | {_num(pct, '{:.2f}%')} | "
        f"{_num(r['steps_to_best'])} | {_num(r['wall_to_best_s'], '{:,.0f}')} | "
        f"{target} | {step} | "
        f"{_num(r['wall_time_s'], '{:,.0f}')} |")
  return lines


def headline_markdown(rows: list[dict]) -> list[str]:
  """Strategy × dataset test AUC / ACC, plus MedMNIST v2 baselines where known."""
  datasets = list(dict.fromkeys(r["dataset"] for r in rows))
  archs = list(dict.fromkeys(r["arch"] for r in rows))
  head = "| strategy | trainable % | " + " | ".join(f"{d} AUC / ACC" for d in datasets) + " |"
  lines = [head, "|---|---|" + "---|" * len(datasets)]
  for arch in archs:
    for strat in dict.fromkeys(r["strategy"] for r in rows if r["arch"] == arch):
      cells, pcts = [], []
      for d in datasets:
        r = next((x for x in rows if (x["dataset"], x["arch"], x["strategy"]) == (d, arch, strat)),
                 None)
        if r is None or r["test_auc"] is None:
          cells.append("—")
          continue
        cells.append(f"{_pm(r['test_auc'], r['test_auc_sd'], 3)} / {_pm(r['test_acc'], None, 3)}")
        if r["trainable_params"] is not None and r["total_params"]:
          pcts.append(100 * r["trainable_params"] / r["total_params"])
      label = strat if len(archs) == 1 else f"{arch} {strat}"
      pct = "—" if not pcts else (f"{min(pcts):.2f}%" if max(pcts) - min(pcts) < 0.005 else
                                  f"{min(pcts):.2f}–{max(pcts):.2f}%")
      lines.append(f"| {label} | {pct} | " + " | ".join(cells) + " |")
  baselines = [b for d in datasets for b in MEDMNIST_BASELINES.get(d, {})]
  for name in dict.fromkeys(baselines):
    cells = []
    for d in datasets:
      v = MEDMNIST_BASELINES.get(d, {}).get(name)
      cells.append("—" if v is None else f"{v[0]:.3f} / {v[1]:.3f}")
    lines.append(f"| *MedMNIST v2: {name}* | 100% | " + " | ".join(cells) + " |")
  return lines


def _plan_lines(plans: list[dict]) -> list[str]:
  lines = []
  for p in plans:
    lines.append(f"Sweep `{p.get('name', '?')}` in `{p['_path']}` "
                 f"({len(p.get('runs', []))} runs in the grid). Commands, in order:")
    lines.append("")
    lines.append("```bash")
    for inv in p.get("invocations", []):
      lines.append(inv.get("command", "?"))
    lines.append("```")
    lines.append("")
    for inv in p.get("invocations", []):
      m = inv.get("machine") or {}
      done = (f"finished {inv['finished']}: {inv.get('ran', 0)} ran, {inv.get('skipped', 0)} "
              f"skipped, {inv.get('failed', 0)} failed, {inv.get('wall_s', 0) / 60:.1f} min"
              if "finished" in inv else "did not finish (interrupted or still running)")
      lines.append(f"- started {inv.get('started', '?')}, {done}; {m.get('cpus', '?')} CPUs, "
                   f"backend {m.get('backend', '?')}, {m.get('devices', '?')} device(s), "
                   "load average at start "
                   f"{m.get('loadavg_at_start', '?')}, jax {m.get('jax', '?')}")
    cfg = p.get("sweep_config") or {}
    if cfg:
      lines.append("")
      lines.append(f"Settings: common overrides `{cfg.get('common', '')}`; per dataset:")
      for name, ds in (cfg.get("datasets") or {}).items():
        lines.append(f"- {name}: `{ds.get('overrides', '')}`, budget {ds.get('budget')}")
    lines.append("")
  return lines


def _span_minutes(plans: list[dict]) -> float | None:
  """First start to last finish over all invocations of all sweeps (None if unknown)."""
  stamps = []
  for p in plans:
    for inv in p.get("invocations", []):
      for key in ("started", "finished"):
        try:
          stamps.append(time.mktime(time.strptime(inv[key], "%Y-%m-%d %H:%M:%S")))
        except (KeyError, TypeError, ValueError):
          pass
  return (max(stamps) - min(stamps)) / 60 if len(stamps) > 1 else None


def render_markdown(runs: list[RunInfo], rows: list[dict], plans: list[dict],
                    input_notes: list[str], paths: Sequence[str], title: str,
                    command: str | None = None) -> str:
  n_done = sum(r.status == "done" for r in runs)
  total_wall = sum((r.results or {}).get("wall_time_s") or 0 for r in runs)
  span = _span_minutes(plans)
  command = command or "python -m jaxbn.report " + " ".join(paths)
  lines = [f"# {title}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `{command}` from {len(runs)} runs: "
           f"{n_done} finished, {len(runs) - n_done} not (see Notes). Budget: the finished runs "
           f"trained for {total_wall / 60:.1f} min of wall time in all (compilation and "
           f"evaluation included)"
           + (f"; the sweep took {span:.0f} min from its first start to its last finish." if span
              else "."), ""]
  cv = any(r.fold is not None for r in runs)  # a row's runs are seeds × folds, not seeds
  unit, over = ("runs", "runs (seeds × folds)") if cv else ("seeds", "seeds")
  if rows:
    lines += [f"## Headline: test AUC / ACC (mean ± sd over {over})", ""]
    lines += headline_markdown(rows)
    lines += ["", "MedMNIST v2 rows: Yang et al., Scientific Data 2023 (trained from scratch, "
              "28 px or upsampled to 224 px); the runs above use the official splits and test set.",
              ""]
    lines += spread_markdown(rows)
    lines += ["## All results", ""]
    lines += table_markdown(rows, unit)
    lines += ["", "Trainable params: the last stage's trainable parameters (e.g. everything for "
              "`fc_then_full`); %: of the whole model. Steps / wall to best: when the best "
              "validation AUC was reached (its checkpoint gives the test numbers). Train step: "
              "median over the last stage from the trainer's steps_per_sec"
              + (" († = wall time / steps, compilation and evaluation included)"
                 if any(not r["step_time_exact"] for r in rows if r["step_time_s"]) else "")
              + f". {over.capitalize()}: finished / present (⚠ = some unfinished or missing). "
              "To target: first "
              "evaluation with validation AUC ≥ the target ("
              + ", ".join(f"{d} {t}" for d, t in dict.fromkeys(
                  (r["dataset"], r["target_auc"]) for r in rows if r["target_auc"]))
              + "); wall times include compilation.", ""]
  else:
    lines += ["**No finished runs yet**: nothing to tabulate.", ""]
  lines += ["## Plots", ""]
  lines += [f"![{p[:-4]}]({p})" for p in PNGS]
  lines += [""]
  notes = list(input_notes)
  for r in runs:
    if r.status != "done":
      fold = "" if r.fold is None else f", fold {r.fold}"
      notes.append(f"`{r.name}` ({r.dataset} / {r.arch} / {r.strategy}, seed {r.seed}{fold}): "
                   f"**{r.status}** — {r.note or 'no results.json'}.")
    elif r.note:
      notes.append(f"`{r.name}`: {r.note}.")
  lines += ["## Notes", ""]
  lines += [f"- {n}" for n in notes] if notes else ["- Every run finished."]
  lines += [""]
  if plans:
    lines += ["## How this was made", ""] + _plan_lines(plans)
  return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- #
# Plots.
# --------------------------------------------------------------------------- #


def _panels(runs: list[RunInfo], rows: list[dict]) -> list[tuple[str, str]]:
  keys = [(r["dataset"], r["arch"]) for r in rows] + [(r.dataset, r.arch) for r in runs
                                                     if r.history]
  return list(dict.fromkeys(keys))


def _figure(n_panels: int):
  plt = pyplot()

  n = max(1, n_panels)
  cols = min(2, n)
  nrows = math.ceil(n / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 4.4 * nrows), squeeze=False)
  axes = axes.ravel()
  for ax in axes[n_panels:]:
    ax.set_visible(False) if n_panels else None
  return plt, fig, axes


def _colors(strategies: Iterable[str]) -> dict[str, Any]:
  import matplotlib

  cmap = matplotlib.colormaps["tab10"]
  return {s: cmap(i % 10) for i, s in enumerate(dict.fromkeys(strategies))}


def plot_curves(runs: list[RunInfo], rows: list[dict], path: str, x: str) -> None:
  panels = _panels(runs, rows)
  plt, fig, axes = _figure(len(panels))
  colors = _colors([r["strategy"] for r in rows] + [r.strategy for r in runs])
  for ax, (ds, arch) in zip(axes, panels):
    labelled = set()
    for r in runs:
      if (r.dataset, r.arch) != (ds, arch) or not r.history:
        continue
      xs = [h.get(x) for h in r.history]
      ys = [h.get("val_auc") for h in r.history]
      pts = [(a, b) for a, b in zip(xs, ys) if isinstance(a, (int, float)) and
             isinstance(b, (int, float))]
      if not pts:
        continue
      label = None if r.strategy in labelled else r.strategy
      labelled.add(r.strategy)
      ax.plot(*zip(*pts), color=colors[r.strategy], marker=".", lw=1.3, alpha=0.85,
              ls="-" if r.status == "done" else "--", label=label)
    ax.set_title(f"{ds} / {arch}")
    ax.set_xlabel("train step" if x == "step" else
                  "wall time (s: training, evaluation and compilation)")
    ax.set_ylabel("validation AUC")
    ax.grid(alpha=0.3)
    if labelled:
      ax.legend(fontsize=7, loc="lower right")
  if not panels:
    axes[0].text(0.5, 0.5, "no runs with validation history", ha="center", va="center")
    axes[0].set_axis_off()
  save_figure(fig, path, dpi=110)


def plot_params_vs_auc(rows: list[dict], path: str) -> None:
  done = [r for r in rows if r["test_auc"] is not None and r["trainable_params"]]
  panels = list(dict.fromkeys((r["dataset"], r["arch"]) for r in done))
  plt, fig, axes = _figure(len(panels))
  colors = _colors(r["strategy"] for r in rows)
  for ax, (ds, arch) in zip(axes, panels):
    for r in done:  # many strategies share a parameter count: a legend, not labels
      if (r["dataset"], r["arch"]) != (ds, arch):
        continue
      ax.errorbar(r["trainable_params"], r["test_auc"], yerr=r["test_auc_sd"] or 0, fmt="o",
                  color=colors[r["strategy"]], capsize=3, label=r["strategy"], alpha=0.9)
    ax.margins(x=0.15, y=0.1)
    ax.legend(fontsize=7, loc="best")
    ax.set_xscale("log")
    ax.set_title(f"{ds} / {arch}")
    ax.set_xlabel("trainable parameters (last stage, log scale)")
    ax.set_ylabel("test AUC (mean ± sd over seeds)")
    ax.grid(alpha=0.3, which="both")
  if not panels:
    axes[0].text(0.5, 0.5, "no finished runs", ha="center", va="center")
    axes[0].set_axis_off()
  save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------- #
# Entry points.
# --------------------------------------------------------------------------- #


SUMMARY_FIELDS = ("dataset", "arch", "strategy", "n_done", "n_runs", "trainable_params",
                  "total_params", "wall_time_s", "total_steps", "steps_to_best") + tuple(
                      f"{p}_{k}" for k in SPREAD_METRICS for p in ("m", "sd"))


def write_rows(rows: list[dict], stem: str) -> None:
  """``stem.json`` and ``stem.csv``: one row per (dataset, arch, strategy), mean (``m_``) and
  sd (``sd_``) over seeds of each metric in SPREAD_METRICS (machine-readable report source)."""
  import csv
  import io

  table = [{k: r.get(k) for k in SUMMARY_FIELDS} for r in rows]
  write_json_atomic(f"{stem}.json", table, sort_keys=False)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
  w.writeheader()
  w.writerows({k: "" if v is None else v for k, v in r.items()} for r in table)
  write_text_atomic(f"{stem}.csv", buf.getvalue())


def write_report(paths: Sequence[str], out: str | None = None,
                 title: str = "jaxbn fine-tuning report", command: str | None = None) -> dict:
  """Writes ``report.md`` and the PNGs into ``out``; returns what it found."""
  out = out or paths[0]
  os.makedirs(out, exist_ok=True)
  runs, plans, notes = collect(paths)
  rows = summarize(runs, plans)
  plot_curves(runs, rows, os.path.join(out, PNGS[0]), "step")
  plot_curves(runs, rows, os.path.join(out, PNGS[1]), "wall")
  plot_params_vs_auc(rows, os.path.join(out, PNGS[2]))
  text = render_markdown(runs, rows, plans, notes, paths, title, command)
  write_rows(rows, os.path.join(out, "summary"))
  md = os.path.join(out, "report.md")
  tmp = f"{md}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, md)
  return {"report": md, "pngs": [os.path.join(out, p) for p in PNGS], "runs": runs, "rows": rows,
          "notes": notes}


def main(argv: Sequence[str] | None = None) -> int:
  import shlex

  argv = list(sys.argv[1:] if argv is None else argv)
  args = cli.parse(FLAGS, argv, prog=PROG, doc=__doc__, positional="workdirs")
  res = write_report(args.workdirs, args.out, args.title,
                     command=" ".join([PROG] + [shlex.quote(a) for a in argv]))
  done = sum(r.status == "done" for r in res["runs"])
  print(f"wrote {res['report']} ({done} of {len(res['runs'])} runs finished) and "
        f"{', '.join(os.path.basename(p) for p in res['pngs'])}")
  for n in res["notes"]:
    print(f"note: {n}")
  return 0


if __name__ == "__main__":
  cli.run(main)
