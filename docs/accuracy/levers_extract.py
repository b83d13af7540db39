"""Writes levers.json / levers.csv: VALIDATION figures only of the lever runs.

  PYTHONPATH=. python docs/accuracy/levers_extract.py [--name=STEM] [LABEL=]RUN_OR_SWEEP_DIR...

``--name`` sets the output files' stem (default ``levers``: levers.json, levers.csv).

``LABEL=DIR`` names a single run that is not part of a sweep (e.g. ``base=/tmp/base``).
Runs that never started are left out.

Finished and unfinished runs (history from the last checkpoint) alike; test
fields are never read.
"""

import csv
import json
import os
import sys

from jaxbn import report

VAL_KEYS = ("best_val_auc", "tta_val_auc", "tta_val_acc", "best_step", "total_steps",
            "wall_time_s", "soup_steps")


def main(args):
  stem = next((a.split("=", 1)[1] for a in args if a.startswith("--name=")), "levers")
  args = [a for a in args if not a.startswith("--name=")]
  labels = dict(a.split("=", 1)[::-1] for a in args if "=" in a)  # dir -> label
  paths = [a.split("=", 1)[-1] for a in args]
  runs, _, _ = report.collect(paths)
  out = []
  for r in runs:
    if r.status == "missing":
      continue
    if r.dir in labels:
      r.strategy = labels[r.dir]
    res = r.results or {}
    best = max(r.history, key=lambda h: h["val_auc"]) if r.history else {}
    out.append({
        "run": r.name, "lever": r.strategy, "arch": r.arch, "dataset": r.dataset, "seed": r.seed,
        **({"fold": r.fold} if r.fold is not None else {}),
        "status": r.status, "note": r.note,
        "best_val_auc": res.get("best_val_auc", best.get("val_auc")),
        # The final model's: the soup's (soup_size) or else the best checkpoint's.
        "final_val_auc": res.get("soup_val_auc", res.get("best_val_auc", best.get("val_auc"))),
        "best_step": res.get("best_step", best.get("step")),
        **{k: res.get(k) for k in VAL_KEYS if k not in ("best_val_auc", "best_step")},
        "val_auc_by_step": {h["step"]: round(h["val_auc"], 4) for h in r.history},
    })
  here = os.path.dirname(os.path.abspath(__file__))
  with open(os.path.join(here, f"{stem}.json"), "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
  steps = sorted({s for o in out for s in o["val_auc_by_step"]})
  folds = any("fold" in o for o in out)  # a cross-validation: a fold column after the seed
  with open(os.path.join(here, f"{stem}.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["lever", "arch", "dataset", "seed"] + ["fold"] * folds
               + ["status", "best_val_auc", "tta_val_auc"] + [f"val_auc@{s}" for s in steps])
    for o in out:
      w.writerow([o["lever"], o["arch"], o["dataset"], o["seed"]] + [o.get("fold")] * folds
                 + [o["status"], o["best_val_auc"],
                    o["tta_val_auc"] if o["tta_val_auc"] is not None else ""]
                 + [o["val_auc_by_step"].get(s, "") for s in steps])
  return out


if __name__ == "__main__":
  for o in main(sys.argv[1:]):
    print(o["lever"], o["status"], o["best_val_auc"], o["tta_val_auc"], o["val_auc_by_step"])
