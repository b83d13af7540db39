"""Paired comparison of lever runs against a baseline, run by run (same seed and fold).

  PYTHONPATH=. python docs/accuracy/paired.py --baseline=recipe docs/accuracy/round11.json

Reads the files ``levers_extract.py`` writes (validation figures only) and prints a markdown
table: per lever, the final model's validation AUC per (seed, fold) (the best checkpoint's, or
the soup's with ``soup_size``), mean ± sd, and the gains over the
baseline run with the same seed and fold, with their mean, standard error (sd / √n) and the
number of pairs that gained (``jaxbn.report.paired_difference``, as the report pages give it
against their best row). On a cross-validation the folds differ in difficulty far more than
the levers do, so the pairing is what makes a small gain visible.
"""

from __future__ import annotations

import json
import statistics
import sys

from jaxbn.report import paired_difference


def _key(run: dict) -> tuple:
  return run["dataset"], run["seed"], run.get("fold")


def final_val_auc(run: dict) -> float | None:
  """The validation AUC of a run's final model: its soup's (``soup_size``), else its best
  checkpoint's (files written before ``final_val_auc`` existed have only the latter)."""
  return run.get("final_val_auc", run.get("best_val_auc"))


def compare(runs: list[dict], baseline: str) -> list[dict]:
  """One row per lever (baseline first): values, mean, sd, paired gains, their mean and SE."""
  by_lever: dict[str, dict[tuple, float]] = {}
  for r in runs:
    value = final_val_auc(r)
    if r.get("status") == "done" and value is not None:
      by_lever.setdefault(r["lever"], {})[_key(r)] = value
  if baseline not in by_lever:
    raise ValueError(f"No finished runs of the baseline {baseline!r}; levers: "
                     f"{', '.join(by_lever) or 'none'}.")
  base = by_lever[baseline]
  rows = []
  for lever in [baseline] + [l for l in by_lever if l != baseline]:
    values = by_lever[lever]
    keys = sorted(values, key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2]))
    gains = [values[k] - base[k] for k in keys if k in base] if lever != baseline else []
    paired = paired_difference(values, base) if lever != baseline else None
    rows.append({
        "lever": lever, "keys": keys, "values": [values[k] for k in keys],
        "mean": statistics.mean(values[k] for k in keys),
        "sd": statistics.stdev([values[k] for k in keys]) if len(keys) > 1 else None,
        "gains": gains,
        "mean_gain": paired[0] if paired else (gains[0] if gains else None),
        "se_gain": paired[1] if paired else None,
        "n_gained": sum(g > 0 for g in gains),
    })
  return rows


def markdown(rows: list[dict]) -> list[str]:
  lines = ["| lever | best val AUC per run | mean ± sd | paired gains | mean gain ± SE | "
           "runs that gained |", "|---|---|---|---|---|---|"]
  for r in rows:
    sd = "" if r["sd"] is None else f" ± {r['sd']:.4f}"
    if r["gains"]:
      gains = ", ".join(f"{g:+.4f}" for g in r["gains"])
      mean_gain = f"{r['mean_gain']:+.4f}" + ("" if r["se_gain"] is None
                                               else f" ± {r['se_gain']:.4f}")
      gained = f"{r['n_gained']} of {len(r['gains'])}"
    else:
      gains = mean_gain = gained = "—"
    lines.append(f"| {r['lever']} | {', '.join(f'{v:.4f}' for v in r['values'])} | "
                 f"{r['mean']:.4f}{sd} | {gains} | {mean_gain} | {gained} |")
  return lines


def main(args: list[str]) -> list[str]:
  baseline = next((a.split("=", 1)[1] for a in args if a.startswith("--baseline=")), None)
  paths = [a for a in args if not a.startswith("--")]
  if baseline is None or not paths:
    raise SystemExit("usage: paired.py --baseline=LEVER LEVERS.json [LEVERS.json ...]")
  runs = []
  for path in paths:
    with open(path) as f:
      runs += json.load(f)
  try:
    return markdown(compare(runs, baseline))
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  print("\n".join(main(sys.argv[1:])))
