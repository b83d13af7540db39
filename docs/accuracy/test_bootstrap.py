"""How finely a test split resolves AUC: a bootstrap over its images, for a final table's runs.

  PYTHONPATH=. python docs/accuracy/test_bootstrap.py SWEEP_DIR [--threshold=0.76] [--draws=2000]

Every finished run of SWEEP_DIR must still have its final model (a sweep run without
``--prune_checkpoints``; else one ``error:`` line). The script classifies the test split with
that model, as the trainer's test pass did, and checks that the AUC equals the run's
``test_auc``. Then it draws the test
images with replacement (``--draws`` times, one set of draws shared by all runs, so the
runs stay paired) and prints, in markdown:

- each run's test AUC and the sd of its AUC over the draws (the split's sampling error);
- the mean over runs, its sd over the draws, and the share of draws in which it reaches
  ``--threshold``.

Read it only for a recipe whose test figures are already published (a final table): it
reads the test split.
"""

from __future__ import annotations

import argparse

import jax
import ml_collections
import numpy as np

from jaxbn import metrics, predict, report
from jaxbn.data import pipeline
from jaxbn.models import get_spec


def test_probabilities(run_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """(probabilities [N, K], labels, results.json) of a run's final model on its test split."""
  try:
    model, variables, results, _, _ = predict.load_final_model(run_dir)
  except ValueError as e:
    raise SystemExit(f"error: {e} Rerun its sweep without --prune_checkpoints.") from None
  spec = get_spec(results["arch"])
  data = ml_collections.ConfigDict(results["config"]["data"])
  apply = jax.jit(model.apply)
  probs, labels = [], []
  for batch in pipeline.eval_iterator(data, "test", batch_size=256,
                                      image_size=int(results["image_size"]),
                                      mean=spec.mean, std=spec.std):
    keep = batch["mask"] > 0
    logits = np.asarray(apply(variables, batch["image"]))[keep]
    probs.append(np.asarray(jax.nn.softmax(logits, axis=-1)))
    labels.append(batch["label"][keep])
  return np.concatenate(probs), np.concatenate(labels), results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("sweep_dir")
  parser.add_argument("--threshold", type=float, default=0.76)
  parser.add_argument("--draws", type=int, default=2000)
  args = parser.parse_args()
  runs = sorted((r for r in report.collect([args.sweep_dir])[0] if r.status == "done"),
                key=lambda r: r.name)
  if not runs:
    raise SystemExit(f"error: no finished run in {args.sweep_dir}.")
  rng = np.random.default_rng(0)
  rows, boot, test_aucs = [], [], []
  draws = None
  for r in runs:
    probs, labels, results = test_probabilities(r.dir)
    if results.get("multi_label"):
      raise SystemExit("error: multi-label runs are not supported here.")
    auc = metrics.roc_auc(probs, labels, False)
    if not np.isclose(auc, results["test_auc"], atol=1e-6):
      raise SystemExit(f"error: {r.name}: test AUC {auc:.6f} here, {results['test_auc']:.6f} "
                       "in results.json.")
    if draws is None:
      draws = rng.integers(0, len(labels), size=(args.draws, len(labels)))
    aucs = np.array([metrics.roc_auc(probs[d], labels[d], False) for d in draws])
    boot.append(aucs)
    test_aucs.append(auc)
    rows.append(f"| {r.name} | {auc:.4f} | {aucs.std(ddof=1):.4f} |")
  mean = np.mean(boot, axis=0)
  print(f"{len(labels)} test images, {args.draws} bootstrap draws of them, shared by the runs.\n")
  print("| run | test AUC | sd over the draws |")
  print("|---|---|---|")
  print("\n".join(rows))
  print(f"| mean of the {len(rows)} runs | {np.mean(test_aucs):.4f} | "
        f"{mean.std(ddof=1):.4f} |\n")
  print(f"Share of draws whose mean reaches {args.threshold}: "
        f"{np.mean(mean >= args.threshold):.3f}")


if __name__ == "__main__":
  main()
