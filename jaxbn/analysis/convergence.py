r"""Convergence of training runs per initialiser: steps / wall time to a target validation AUC.

  python -m jaxbn.analysis.convergence /tmp/tf_random /tmp/tf_mean_var /tmp/tf_transfer \
      --target 0.95 --out docs/transfusion

Each argument is a finished training workdir (its ``results.json``, written by
``jaxbn.train``). Steps and wall time to the target are recomputed from the run's
validation ``history`` (the first evaluation with AUC ≥ ``--target``), so any
target can be asked after the fact; "—" means never reached. Prints and writes
``OUT/convergence.md`` (markdown table: label, init, steps and wall time to target,
best validation AUC and its step, test AUC / ACC of the best-validation
checkpoint, steps, wall time) and ``OUT/val_auc_vs_step.png`` (validation AUC per
evaluation with the target as a dashed line). Labels: ``--labels a,b,c``, default
the workdirs' base names.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import flags

from jaxbn import cli
from jaxbn.plotting import pyplot, save_figure

PROG = "python -m jaxbn.analysis.convergence"
FLAGS = flags.FlagValues()
flags.DEFINE_string("labels", None, "comma-separated, one per workdir", flag_values=FLAGS)
flags.DEFINE_float("target", 0.95, "validation AUC target", flag_values=FLAGS)
flags.DEFINE_string("out", None, "directory for convergence.md and the plot", flag_values=FLAGS)


def read_run(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    raise ValueError(f"{workdir}: no results.json (run not finished?).")
  with open(path) as f:
    return json.load(f)


def to_target(history: list[dict], target: float) -> tuple[int | None, float | None]:
  """(step, wall seconds) of the first evaluation with val AUC ≥ target, or (None, None)."""
  for h in history:
    if h.get("val_auc") is not None and h["val_auc"] >= target:
      return int(h["step"]), float(h["wall"])
  return None, None


def summarize(workdirs: Sequence[str], labels: Sequence[str], target: float) -> list[dict]:
  rows = []
  for wd, label in zip(workdirs, labels):
    r = read_run(wd)
    step, wall = to_target(r.get("history", []), target)
    rows.append({
        "label": label, "init": r.get("init"), "arch": r.get("arch"),
        "steps_to_target": step, "wall_to_target_s": wall,
        "best_val_auc": r.get("best_val_auc"), "best_step": r.get("best_step"),
        "test_auc": r.get("test_auc"), "test_acc": r.get("test_acc"),
        "total_steps": r.get("total_steps"), "wall_time_s": r.get("wall_time_s"),
        "history": r.get("history", []),
    })
  return rows


def _f(x, fmt):
  return "—" if x is None else fmt.format(x)


def table_markdown(rows: list[dict], target: float) -> str:
  lines = [
      f"| run | init | steps to val AUC ≥ {target:g} | wall to target | best val AUC (step) "
      "| test AUC | test ACC | steps | wall |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
        f"| {r['label']} | {r['init']} | {_f(r['steps_to_target'], '{:d}')} | "
        f"{_f(r['wall_to_target_s'], '{:.0f} s')} | "
        f"{_f(r['best_val_auc'], '{:.4f}')} ({_f(r['best_step'], '{:d}')}) | "
        f"{_f(r['test_auc'], '{:.4f}')} | {_f(r['test_acc'], '{:.4f}')} | "
        f"{_f(r['total_steps'], '{:d}')} | {_f(r['wall_time_s'], '{:.0f} s')} |")
  return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], target: float, path: str) -> None:
  plt = pyplot()

  fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
  for r in rows:
    h = r["history"]
    ax.plot([e["step"] for e in h], [e["val_auc"] for e in h], marker=".", label=r["label"])
  ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:g}")
  ax.set_xlabel("training step")
  ax.set_ylabel("validation AUC")
  lo = min([e["val_auc"] for r in rows for e in r["history"]] + [target])
  ax.set_ylim(max(0.0, lo - 0.02), 1.0)
  ax.grid(alpha=0.3)
  ax.legend()
  arch = ", ".join(sorted({str(r["arch"]) for r in rows}))
  ax.set_title(f"{arch}: validation AUC per initialisation", fontsize=9)
  save_figure(fig, path, bbox_inches=None)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse(FLAGS, argv, prog=PROG, doc=__doc__, positional="workdirs")
  labels = (args.labels.split(",") if args.labels
            else [os.path.basename(os.path.normpath(w)) for w in args.workdirs])
  if len(labels) != len(args.workdirs):
    print("error: --labels needs one label per workdir", file=sys.stderr)
    return 2
  try:
    rows = summarize(args.workdirs, labels, args.target)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  table = table_markdown(rows, args.target)
  print(table, end="")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "convergence.md"), "w") as f:
      f.write(table)
    plot_curves(rows, args.target, os.path.join(args.out, "val_auc_vs_step.png"))
    print(f"wrote {args.out}/convergence.md, val_auc_vs_step.png")
  return 0


if __name__ == "__main__":
  cli.run(main)
