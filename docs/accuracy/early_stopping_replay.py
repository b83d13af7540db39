"""Replays early-stopping rules on recorded validation curves (validation figures only).

  PYTHONPATH=. python docs/accuracy/early_stopping_replay.py SWEEP_DIR...

For every finished run under the sweep directories, and for patience 2, 3, 4 on validation
AUC and on validation loss in the fine-tuning stage (the rule of ``jaxbn.train``: a stage
stops once ``patience`` passes in a row bring no better value than the stage's best so
far), prints whether the run would have stopped before its best-validation-AUC checkpoint
and the share of its steps it would have skipped. Training up to the stop is the same as
in the recorded run, so when the best checkpoint is kept every test figure is too.
"""

import math
import sys

from jaxbn import report


def replay(history: list[dict], patience: int, metric: str) -> tuple[int, int]:
  """(best-validation-AUC step, last step) of the run under the rule."""
  best_auc, best_step, stage, stage_best, bad = -math.inf, None, None, math.inf, 0
  for h in history:
    if h["stage"] != stage:
      stage, stage_best, bad = h["stage"], math.inf, 0
    if h["val_auc"] > best_auc:
      best_auc, best_step = h["val_auc"], h["step"]
    value = h["val_loss"] if metric == "val_loss" else -h["val_auc"]
    if value < stage_best:
      stage_best, bad = value, 0
    else:
      bad += 1
    if stage == "finetune" and bad >= patience:
      return best_step, h["step"]
  return best_step, history[-1]["step"]


def main(paths: list[str]) -> None:
  runs = [r for r in report.collect(paths)[0] if r.status == "done" and r.history]
  print(f"{len(runs)} finished runs")
  for metric in ("val_auc", "val_loss"):
    for patience in (2, 3, 4):
      lost, skipped = [], {}
      for r in runs:
        best, last = replay(r.history, patience, metric)
        if best != r.results["best_step"]:
          lost.append(f"{r.name} (best step {r.results['best_step']}, kept {best})")
        skipped.setdefault(r.dataset, []).append(1 - last / r.results["total_steps"])
      shares = ", ".join(f"{d} {sum(v) / len(v):.0%}" for d, v in sorted(skipped.items()))
      print(f"{metric} patience {patience}: best checkpoint lost in {len(lost)} runs; "
            f"steps skipped: {shares}" + "".join(f"\n  lost: {l}" for l in lost))


if __name__ == "__main__":
  main(sys.argv[1:])
