r"""Sweeps: a grid of training runs (strategy × architecture × dataset × seed), one after
another.

  python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py --workdir=/tmp/pt
  python -m jaxbn.report /tmp/pt --out=/tmp/pt/report

A sweep config (``configs/sweeps/*.py``, ``get_config(arg)``) holds:

* ``common``: ``key=value`` overrides (the syntax of ``--config=x.py:a=1,b=2``)
  applied to :func:`jaxbn.config.base_config` for every run;
* ``datasets.<name>.overrides`` and ``datasets.<name>.budget`` (a dict whose
  entries fill ``{placeholders}`` in the strategy strings, e.g. epoch counts);
* ``strategies.<name>``: the overrides that make one fine-tuning mode;
* ``grid.strategies``, ``grid.archs``, ``grid.datasets``, ``grid.seeds``:
  comma-separated names (the order is the run and report order);
* ``grid.folds`` (optional, 0 = off): K >= 2 runs every cell as a K-fold
  cross-validation of train+val (``data.folds=K,data.fold=k``), one run per seed and fold.

A run's config is ``base_config()`` (or, when the sweep config has ``base``, that
config file's ``get_config``, e.g. ``configs/bn_only.py:finetune.lr=3e-4``) + common +
dataset + ``model.arch=<arch>`` + strategy + ``seed=<seed>``.

Seeds of one config, with no sweep file (:func:`seeds_sweep`)::

  python -m jaxbn.sweep --train_config=configs/bn_only.py --seeds=3 --workdir=/tmp/s
  python -m jaxbn.sweep --train_config=configs/bn_only.py:finetune.strategy=full \
      --seeds=0,1,2 --datasets=pneumoniamnist,retinamnist --name=full --workdir=/tmp/s
  # choosing a recipe on 5-fold cross-validation of train+val (validation only):
  python -m jaxbn.sweep --train_config=configs/bn_only.py:eval_test=False --seeds=0, \
      --folds=5 --datasets=retinamnist --workdir=/tmp/cv

Each run trains in ``WORKDIR/runs/<run name>``
(``sweep_run.json`` there records what it is). Runs go seed-major, then fold,
architecture, strategy, dataset: every cell gets its first seed before any gets
a second, and the first strategies are done on every dataset first, so a sweep
cut short still gives whole comparisons.

Resuming: run the same command again. Finished runs (``results.json``) are
skipped; a run that crashed or was killed resumes from its last checkpoint
(the trainer's own resume). A failed run is reported and the sweep goes on; a
preempted one (SIGTERM/SIGINT: the trainer checkpoints, :mod:`jaxbn.preemption`) ends
the sweep with exit status 75, and the same command resumes it.
``WORKDIR/sweep.json`` holds the full grid (so the report can name runs that
never started) and one record per invocation. Compiled XLA programs go to a
persistent cache (``--compilation_cache_dir``, default ``WORKDIR/.jax_cache``):
seeds after the first, and stages shared between modes, skip compilation.
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  extras.require("train", "python -m jaxbn.sweep")

import dataclasses
import itertools
import json
import os
import platform
import shutil
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import ml_collections

from jaxbn import cli, config as config_lib, preemption
from jaxbn.config import load_config_file
from jaxbn.io import write_json_atomic

PLAN_FILE = "sweep.json"
RUN_META = "sweep_run.json"
RESULTS = "results.json"


# --------------------------------------------------------------------------- #
# The grid.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Run:
  """One cell of the grid: what to train, and the overrides that say how."""

  strategy: str
  arch: str
  dataset: str
  seed: int
  overrides: tuple[str, ...]  # applied in order over jaxbn.config.base_config()
  base: str = ""  # config file[:arg] to start from instead of base_config()
  fold: int | None = None  # cross-validation fold (data.fold), None without grid.folds

  @property
  def name(self) -> str:
    fold = "" if self.fold is None else f"__fold{self.fold}"
    return f"{self.dataset}__{self.arch}__{self.strategy}__seed{self.seed}{fold}"

  def to_json(self) -> dict:
    return {"name": self.name, "strategy": self.strategy, "arch": self.arch,
            "dataset": self.dataset, "seed": self.seed, "overrides": list(self.overrides),
            "dir": os.path.join("runs", self.name), **({"base": self.base} if self.base else {}),
            **({"fold": self.fold} if self.fold is not None else {})}


def _names(value: Any) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v).strip() for v in value]


def expand(sweep: ml_collections.ConfigDict) -> list[Run]:
  """The grid of ``sweep`` as runs, in run order: seed, fold, arch, strategy, dataset.

  ``grid.folds=K`` (optional; 0 = off) runs every cell as a K-fold cross-validation
  (``data.folds=K``, ``data.fold=0 .. K-1``; :mod:`jaxbn.data.pipeline`), so the
  report's mean ± sd is over seeds × folds.
  """
  strategies = _names(sweep.grid.strategies)
  archs, datasets = _names(sweep.grid.archs), _names(sweep.grid.datasets)
  seeds = [int(s) for s in _names(sweep.grid.seeds)]
  num_folds = int(sweep.grid.get("folds", 0) or 0)
  if num_folds == 1 or num_folds < 0:
    raise ValueError(f"grid.folds={num_folds}: use 0 (no cross-validation) or K >= 2 folds.")
  folds = list(range(num_folds)) or [None]
  for kind, chosen, known in (("strategies", strategies, sweep.strategies),
                              ("datasets", datasets, sweep.datasets)):
    unknown = [n for n in chosen if n not in known]
    if unknown:
      raise ValueError(f"grid.{kind} names {unknown} not defined in the sweep config; "
                       f"known: {', '.join(sorted(known.keys()))}.")
  if not (strategies and archs and datasets and seeds):
    raise ValueError("Empty grid: grid.strategies, archs, datasets and seeds need one entry each.")
  runs = []
  for seed, fold, arch, strategy, dataset in itertools.product(seeds, folds, archs, strategies,
                                                               datasets):
    ds = sweep.datasets[dataset]
    budget = dict(ds.get("budget", {}) or {})
    try:
      strat = sweep.strategies[strategy].format(**budget)
    except KeyError as e:
      raise ValueError(f"Strategy {strategy!r} uses placeholder {e} that dataset "
                       f"{dataset!r} has no budget entry for.") from None
    cv = "" if fold is None else f"data.folds={num_folds},data.fold={fold}"
    overrides = tuple(o for o in (sweep.get("common", ""), ds.get("overrides", ""),
                                  f"model.arch={arch}", strat, f"seed={seed}", cv) if o)
    runs.append(Run(strategy, arch, dataset, seed, overrides, sweep.get("base", "") or "", fold))
  return runs


def parse_seeds(text: str | Sequence[str]) -> list[int]:
  """``"3"`` → [0, 1, 2]; ``"0,5"`` or ``["0", "5"]`` → [0, 5]."""
  items = _names(text)
  try:
    seeds = [int(x) for x in items]
  except ValueError:
    raise ValueError(f"Seeds must be a count or comma-separated integers, got {text!r}.") from None
  if len(seeds) == 1 and not (isinstance(text, str) and "," in text):
    if seeds[0] < 1:
      raise ValueError(f"A seed count must be >= 1, got {seeds[0]}.")
    return list(range(seeds[0]))
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"Repeated seeds in {text!r}.")
  return seeds


def seeds_sweep(train_config: str, seeds: Sequence[int], datasets: Sequence[str] = (),
                name: str | None = None, folds: int = 0) -> ml_collections.ConfigDict:
  """A sweep running ``seeds`` of one config file (on ``datasets``, default its own),
  each as a ``folds``-fold cross-validation when ``folds`` >= 2."""
  config = load_config_file(train_config)
  label = name or os.path.splitext(os.path.basename(train_config.partition(":")[0]))[0]
  datasets = list(datasets) or [config.data.name]
  c = ml_collections.ConfigDict()
  c.name = f"{label}_seeds"
  c.base = train_config
  c.common = ""
  c.datasets = ml_collections.ConfigDict(
      {_key(d): {"overrides": f"data.name={d}", "budget": {}} for d in datasets})
  c.strategies = ml_collections.ConfigDict({label: ""})
  c.grid = ml_collections.ConfigDict(dict(
      strategies=label, archs=config.model.arch, datasets=",".join(_key(d) for d in datasets),
      seeds=",".join(str(s) for s in seeds), folds=folds))
  return c


def _key(dataset: str) -> str:
  """A data set name usable as a ConfigDict key and a directory name."""
  return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in dataset)


def run_config(run: Run) -> ml_collections.ConfigDict:
  """The training config of one run (unknown keys are an error, as on the command line)."""
  config = load_config_file(run.base) if run.base else config_lib.base_config()
  for overrides in run.overrides:
    try:
      config_lib.apply_overrides(config, overrides)
    except ValueError as e:
      raise ValueError(f"Run {run.name}: {e}") from None
  return config


def run_status(run_dir: str) -> str:
  """``done`` (results.json), ``partial`` (started, no results) or ``missing``."""
  if os.path.isfile(os.path.join(run_dir, RESULTS)):
    return "done"
  if os.path.isdir(run_dir):
    return "partial"
  return "missing"


# --------------------------------------------------------------------------- #
# Running.
# --------------------------------------------------------------------------- #


def _fmt_time(seconds: float | None) -> str:
  if seconds is None or seconds != seconds:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Eta:
  """Remaining time from this invocation's finished runs: for each run left, the mean
  time of finished runs of the same cell (dataset, arch, strategy), else of the same
  dataset and arch, else of all; unknown (``?``) until one run has finished."""

  def __init__(self):
    self.times: list[tuple[Run, float]] = []

  def add(self, run: Run, seconds: float) -> None:
    self.times.append((run, seconds))

  def _guess(self, run: Run) -> float | None:
    for match in (lambda r: ((r.dataset, r.arch, r.strategy)
                             == (run.dataset, run.arch, run.strategy)),
                  lambda r: (r.dataset, r.arch) == (run.dataset, run.arch),
                  lambda r: True):
      ts = [t for r, t in self.times if match(r)]
      if ts:
        return sum(ts) / len(ts)
    return None

  def remaining(self, runs: Sequence[Run]) -> float | None:
    guesses = [self._guess(r) for r in runs]
    return None if any(g is None for g in guesses) else sum(guesses)


def _default_train_fn(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from jaxbn import train

  if config.get("task", "train") != "train":
    raise ValueError(f"jaxbn.sweep runs config.task='train' only, got {config.task!r}.")
  return train.train_and_evaluate(config, workdir)


def _machine() -> dict:
  info = {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
          "python": platform.python_version()}
  try:
    import jax

    info.update(jax=jax.__version__, backend=jax.default_backend(), devices=jax.device_count(),
                device_kind=jax.devices()[0].device_kind)
  except Exception:  # pragma: no cover - best effort
    pass
  try:
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:  # pragma: no cover
    pass
  return info


def run_sweep(
    sweep: ml_collections.ConfigDict,
    workdir: str,
    *,
    train_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
    only: Sequence[str] | None = None,
    command: str | None = None,
    prune_checkpoints: bool = False,
    out: Callable[[str], None] = lambda s: print(s, flush=True),
) -> dict:
  """Runs every not-yet-finished run of ``sweep`` under ``workdir``; returns a summary.

  Args:
    sweep: a sweep config (see the module docstring).
    workdir: the sweep's directory (``runs/<name>`` per run, ``sweep.json``).
    train_fn: ``(config, run_workdir) -> results`` (default: jaxbn.train).
    only: run only runs whose strategy, dataset, arch or name is listed (the
      plan still records the whole grid).
    command: the command line to record (default: ``sys.argv``).
    prune_checkpoints: delete a finished run's checkpoints (results stay).
    out: where progress lines go.
  """
  train_fn = train_fn or _default_train_fn
  runs = expand(sweep)
  for r in runs:  # fail before hours of training, not in the middle
    run_config(r)
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  plan_path = os.path.join(workdir, PLAN_FILE)
  plan = {}
  if os.path.isfile(plan_path):
    with open(plan_path) as f:
      plan = json.load(f)
  invocation = {"command": command or " ".join([os.path.basename(sys.executable)] + sys.argv),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": _machine()}
  plan.update(name=sweep.get("name", "sweep"), sweep_config=sweep.to_dict(),
              runs=[r.to_json() for r in runs])
  plan.setdefault("invocations", []).append(invocation)
  write_json_atomic(plan_path, plan, sort_keys=False, default=str)

  selected = [r for r in runs
              if not only or {r.strategy, r.dataset, r.arch, r.name} & set(only)]
  n = len(selected)
  out(f"[sweep] {plan['name']}: {len(runs)} runs in the grid, {n} selected; workdir {workdir}")
  eta, records, t0 = _Eta(), [], time.time()
  for i, run in enumerate(selected, 1):
    run_dir = os.path.join(workdir, "runs", run.name)
    status = run_status(run_dir)
    head = f"[sweep] run {i} of {n}: {run.name}"
    if status == "done":
      out(f"{head}: finished before, skipped.")
      records.append(_record(run, "skipped", run_dir))
      continue
    remaining = eta.remaining(selected[i - 1:])
    out(f"{head}{' (resuming)' if status == 'partial' else ''}; elapsed "
        f"{_fmt_time(time.time() - t0)}, ETA {_fmt_time(remaining)}")
    os.makedirs(run_dir, exist_ok=True)
    config = run_config(run)
    write_json_atomic(os.path.join(run_dir, RUN_META),
                      {**run.to_json(), "sweep": plan["name"], "config": config.to_dict()},
                      sort_keys=False, default=str)
    start = time.time()
    try:
      results = train_fn(config, run_dir)
    except KeyboardInterrupt:
      out(f"[sweep] interrupted during run {i} of {n}; run the same command to resume.")
      raise
    except preemption.Preempted:  # the machine is going away: the sweep stops, not just the run
      out(f"[sweep] preempted during run {i} of {n}; run the same command to resume the sweep.")
      raise
    except Exception as e:  # a failed run must not end the sweep
      seconds = time.time() - start
      message = f"{type(e).__name__}: {e}"
      out(f"{head} FAILED after {_fmt_time(seconds)}: {message}")
      traceback.print_exc()
      records.append(_record(run, "failed", run_dir, seconds=seconds, error=message))
      _clear_jax_caches()
      continue
    seconds = time.time() - start
    eta.add(run, seconds)
    records.append(_record(run, "ran", run_dir, seconds=seconds, results=results))
    f4 = lambda k: "n/a" if results.get(k) is None else f"{results[k]:.4f}"  # eval_test=False
    soup = (f"; soup of {len(results['soup_steps'])} val AUC {f4('soup_val_auc')}"
            if results.get("soup_steps") else "")
    out(f"{head} done in {_fmt_time(seconds)}: test AUC {f4('test_auc')} ACC {f4('test_acc')} "
        f"(best val AUC {f4('best_val_auc')} at step {results.get('steps_to_best')}{soup})")
    if prune_checkpoints:
      for sub in ("checkpoints", "best", "soup"):
        shutil.rmtree(os.path.join(run_dir, sub), ignore_errors=True)
    _clear_jax_caches()

  summary = {"workdir": workdir, "selected": n, "total_in_grid": len(runs),
             "wall_s": round(time.time() - t0, 1), "runs": records}
  for key in ("ran", "skipped", "failed"):
    summary[key] = sum(r["status"] == key for r in records)
  invocation.update(finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                    **{k: summary[k] for k in ("wall_s", "ran", "skipped", "failed")})
  write_json_atomic(plan_path, plan, sort_keys=False, default=str)
  for line in format_summary(summary):
    out(line)
  return summary


def _record(run: Run, status: str, run_dir: str, *, seconds: float | None = None,
            results: dict | None = None, error: str | None = None) -> dict:
  rec = {"name": run.name, "status": status, "dir": run_dir}
  if seconds is not None:
    rec["seconds"] = round(seconds, 1)
  if results is None and status == "skipped":
    try:
      with open(os.path.join(run_dir, RESULTS)) as f:
        results = json.load(f)
    except (OSError, ValueError):
      results = None
  if results:
    rec.update({k: results.get(k) for k in ("test_auc", "test_acc", "best_val_auc",
                                            "wall_time_s")})
  if error:
    rec["error"] = error
  return rec


def format_summary(summary: dict) -> list[str]:
  lines = [f"[sweep] finished: {summary['ran']} ran, {summary['skipped']} skipped (done before), "
           f"{summary['failed']} failed, of {summary['selected']} selected "
           f"({summary['total_in_grid']} in the grid) in {_fmt_time(summary['wall_s'])}."]
  width = max([len(r["name"]) for r in summary["runs"]] + [3])
  lines.append(f"  {'run':<{width}}  {'status':<8} {'test AUC':>8} {'test ACC':>8} {'wall':>8}")
  for r in summary["runs"]:
    auc, acc = r.get("test_auc"), r.get("test_acc")
    lines.append(f"  {r['name']:<{width}}  {r['status']:<8} "
                 f"{'' if auc is None else f'{auc:.4f}':>8} "
                 f"{'' if acc is None else f'{acc:.4f}':>8} "
                 f"{_fmt_time(r.get('wall_time_s') or r.get('seconds')):>8}")
  for r in summary["runs"]:
    if r["status"] == "failed":
      lines.append(f"  FAILED {r['name']}: {r['error']} (run the command again to resume it)")
  lines.append(f"  report: python -m jaxbn.report {summary['workdir']}")
  return lines


def _clear_jax_caches() -> None:
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def main(argv: list[str]) -> None:
  from absl import flags, logging

  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments {argv[1:]}")
  from jaxbn.tf_setup import hide_gpus_from_tf

  hide_gpus_from_tf()
  import jax

  cache = FLAGS.compilation_cache_dir
  if cache is None:
    cache = os.path.join(FLAGS.workdir, ".jax_cache")
  if cache:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(cache))
  cli.quiet_library_logs()
  if (FLAGS.config is None) == (FLAGS.train_config is None):
    raise SystemExit("error: give either --config=SWEEP.py (a sweep config) or "
                     "--train_config=CONFIG.py --seeds=N (seeds of one training config).")
  if FLAGS.train_config is not None:
    try:
      sweep = seeds_sweep(FLAGS.train_config, parse_seeds(FLAGS.seeds), FLAGS.datasets or (),
                          FLAGS.name, FLAGS.folds)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
  else:
    sweep = FLAGS.config
  if FLAGS.dry_run:
    for i, run in enumerate(expand(sweep), 1):
      run_config(run)
      status = run_status(os.path.join(FLAGS.workdir, "runs", run.name))
      print(f"{i:3d} {run.name} [{status}]\n    " + (f"{run.base} + " if run.base else "")
            + ",".join(run.overrides))
    return
  preemption.catch_early()  # a signal between two runs stops the sweep with status 75 too
  try:
    summary = run_sweep(sweep, FLAGS.workdir, only=FLAGS.only,
                        command=" ".join(["python -m jaxbn.sweep"] + sys.argv[1:]),
                        prune_checkpoints=FLAGS.prune_checkpoints)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    sys.exit(preemption.EXIT_STATUS)
  if summary["failed"]:
    raise SystemExit(1)


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Sweep config file (configs/sweeps/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Sweep directory (runs/<name>/ per run).")
  flags.DEFINE_list("only", None, "Run only these strategies / datasets / archs / run names.")
  flags.DEFINE_bool("dry_run", False, "List the runs, their status and overrides; train nothing.")
  flags.DEFINE_bool("prune_checkpoints", False,
                    "Delete each finished run's checkpoints (results.json and events stay).")
  flags.DEFINE_string("compilation_cache_dir", None,
                      "Persistent XLA compilation cache (default WORKDIR/.jax_cache; '' = off).")
  flags.DEFINE_string("train_config", None,
                      "Instead of --config: one training config file[:overrides], run for --seeds.")
  flags.DEFINE_string("seeds", "3", "With --train_config: a count (3 = seeds 0,1,2) or a list.")
  flags.DEFINE_list("datasets", None, "With --train_config: data sets (default: the config's).")
  flags.DEFINE_string("name", None, "With --train_config: the row label (default: file name).")
  flags.DEFINE_integer("folds", 0, "With --train_config: run each seed as a K-fold "
                       "cross-validation of train+val (data.folds=K; 0 = off).")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
