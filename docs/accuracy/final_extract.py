"""Writes OUT/runs.json: the per-seed figures of a final table's sweep, test split included.

  PYTHONPATH=. python docs/accuracy/final_extract.py SWEEP_DIR OUT_DIR

Run only for a final table, after its rule was met on validation (the lever rounds use
levers_extract.py, which never reads a test field). One record per finished run, in
run-name order, keys sorted (steps in training order).
"""

import json
import os
import sys

from jaxbn import report

KEYS = ("arch", "best_step", "best_val_auc", "dataset", "image_size", "strategy",
        "test_acc", "test_auc", "total_params", "total_steps", "trainable_params", "tta",
        "tta_test_acc", "tta_test_auc", "tta_val_acc", "tta_val_auc", "wall_time_s")


def records(sweep_dir: str) -> list[dict]:
  runs, _, _ = report.collect([sweep_dir])
  out = []
  for r in sorted((r for r in runs if r.status == "done"), key=lambda r: r.name):
    res = r.results
    record = {
        **{k: res.get(k) for k in KEYS},
        "run": r.name, "seed": r.seed,
        "truncate_at": (res.get("model") or {}).get("truncate_at"),
        "val_auc_by_step": {str(h["step"]): round(h["val_auc"], 4) for h in r.history},
    }
    out.append(dict(sorted(record.items())))  # steps stay in training order
  return out


def main(sweep_dir: str, out_dir: str) -> list[dict]:
  out = records(sweep_dir)
  with open(os.path.join(out_dir, "runs.json"), "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
  return out


if __name__ == "__main__":
  for o in main(*sys.argv[1:]):
    print(o["run"], o["best_val_auc"], o["best_step"], o["total_steps"])
