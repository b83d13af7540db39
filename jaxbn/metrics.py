"""Classification metrics on host numpy arrays: ROC AUC and accuracy.

Conventions (MedMNIST / the partial-transfusion paper):
* binary (2 classes, softmax outputs): AUC of the positive-class probability;
* multi-class: macro one-vs-rest AUC over classes;
* multi-label (sigmoid outputs, labels (N, L) in {0,1}): mean of per-label AUCs
  over labels that have both classes present;
* accuracy: argmax for single-label, per-label threshold 0.5 averaged for multi-label.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def roc_auc(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
  """ROC AUC for binary, multi-class (macro OvR) and multi-label problems.

  Returns NaN when it is undefined (a single class present in ``labels``).
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if multi_label:
    aucs = [
        skm.roc_auc_score(labels[:, j], probs[:, j])
        for j in range(labels.shape[1])
        if 0 < labels[:, j].sum() < len(labels)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")
  present = np.unique(labels)
  if len(present) < 2:
    return float("nan")
  if probs.shape[1] == 2:
    return float(skm.roc_auc_score(labels, probs[:, 1]))
  # Macro one-vs-rest over the classes present in this split.
  aucs = [skm.roc_auc_score(labels == c, probs[:, c]) for c in present]
  return float(np.mean(aucs))


def accuracy(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
  probs = np.asarray(probs)
  labels = np.asarray(labels)
  if multi_label:
    return float(np.mean((probs >= 0.5) == (labels > 0.5)))
  return float(np.mean(np.argmax(probs, axis=-1) == labels))
