"""Replays early-stopping rules on recorded validation curves (validation figures only).

  PYTHONPATH=. python docs/accuracy/early_stopping_replay.py SWEEP_DIR...

For every finished run under the sweep directories, and for patience 2, 3, 4 on validation
AUC and on validation loss in the fine-tuning stage (the rule of ``jaxbn.train``: a stage
stops once ``patience`` passes in a row bring no better value than the stage's best so
far), prints whether the run would have stopped before its best-validation-AUC checkpoint
and the share of its steps it would have skipped. Training up to the stop is the same as
in the recorded run, so when the best checkpoint is kept every test figure is too.
"""

import sys

from jaxbn import config as config_lib, report, train


def replay(history: list[dict], patience: int, metric: str) -> tuple[int, int]:
  """(best-validation-AUC step, last step) of the run under the rule.

  The recorded evaluations go through the trainer's own bookkeeping
  (:func:`jaxbn.train.record_evaluation`), with ``patience`` in the fine-tuning stage only.
  """
  config = config_lib.base_config()
  config.early_stopping_metric = metric
  stages = {name: config_lib.stage("bn+head", 1, 1e-3) for name in ("warmup", "finetune")}
  stages["finetune"].early_stopping_patience = patience
  loop, current = train.LoopState(), None
  for h in history:
    if h["stage"] != current:
      current = h["stage"]
      loop.start_stage(0)
    _, stop = train.record_evaluation(loop, {"auc": h["val_auc"], "loss": h["val_loss"]},
                                      stages[current], config, h["step"], h["wall"])
    if stop:
      return loop.best_step, h["step"]
  return loop.best_step, history[-1]["step"]


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
