"""Classification metrics on host numpy arrays: ROC AUC and accuracy.

The definitions are those of the official MedMNIST evaluator (``getAUC`` /
``getACC``; Yang et al., MedMNIST v2, arXiv:2110.14795):

* binary: AUC of the positive-class score. Scores may be ``(N,)``, ``(N, 1)``
  (the positive class) or ``(N, 2)`` (softmax; column 1 is used);
* multi-class and ordinal: macro one-vs-rest AUC, class ``c`` scored by
  column ``c`` (equal to scikit-learn's ``roc_auc_score(multi_class="ovr",
  average="macro")`` when every class occurs);
* multi-label (sigmoid outputs, labels ``(N, L)`` in {0, 1}): mean of the
  per-label AUCs;
* accuracy: argmax for multi-class; positive score ``> 0.5`` for binary (for
  ``(N, 2)`` softmax probabilities that is the argmax) and, averaged over labels,
  for multi-label.

**A class absent from a split.** Its one-vs-rest AUC is undefined (no
positive, or for a multi-label column also no negative example). The official
evaluator then returns NaN (scikit-learn's ``UndefinedMetricWarning``). Here
:func:`per_class_auc` gives NaN for that class, :func:`absent_classes` names it,
and :func:`roc_auc` by default averages over the classes that have an AUC and
emits an :class:`AbsentClassWarning` naming the absent ones; with
``absent="nan"`` it returns NaN as the official evaluator does. A split with
no defined AUC at all (a single class) gives NaN either way.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm


class AbsentClassWarning(UserWarning):
  """A class (or label) has no AUC in this split: it is absent, or the only one present."""


def _single_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Scores as ``(N,)`` (binary, positive class) or ``(N, K)``; labels as ``(N,)`` ints."""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
    labels = labels[:, 0]
  if labels.ndim != 1:
    raise ValueError(
        f"labels must be (N,) or (N, 1) class indices, got shape {labels.shape}; "
        "pass multi_label=True for (N, L) multi-label targets."
    )
  if probs.ndim == 2 and probs.shape[1] in (1, 2):
    probs = probs[:, -1]  # (N, 1): the positive score; (N, 2): the positive column
  if probs.ndim not in (1, 2) or len(probs) != len(labels):
    raise ValueError(
        f"scores must be (N,), (N, 1), (N, 2) or (N, K) with N = len(labels) = {len(labels)}, "
        f"got shape {probs.shape}."
    )
  num_classes = 2 if probs.ndim == 1 else probs.shape[1]
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"labels must lie in [0, {num_classes}) for scores of shape {probs.shape}, got "
        f"values in [{labels.min()}, {labels.max()}]."
    )
  return probs, labels.astype(np.int64)


def _multi_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2 or probs.shape != labels.shape:
    raise ValueError(
        f"multi-label scores and labels must both be (N, L), got {probs.shape} and {labels.shape}."
    )
  return probs, labels > 0.5


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
  """One binary AUC; NaN when ``positive`` is all True or all False."""
  n_pos = int(positive.sum())
  if n_pos == 0 or n_pos == len(positive):
    return float("nan")
  return float(skm.roc_auc_score(positive, score))


def per_class_auc(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> np.ndarray:
  """One-vs-rest AUC per class (or per label), NaN where undefined in this split.

  Binary scores give one entry, the positive class's AUC (the negative class's
  is the same number).

  >>> import numpy as np
  >>> per_class_auc(np.eye(3)[[0, 1, 1]], np.array([0, 1, 1]))  # class 2 absent
  array([ 1.,  1., nan])
  """
  if multi_label:
    probs, targets = _multi_label(probs, labels)
    return np.array([_auc(targets[:, j], probs[:, j]) for j in range(probs.shape[1])])
  probs, labels = _single_label(probs, labels)
  if probs.ndim == 1:
    return np.array([_auc(labels == 1, probs)])
  return np.array([_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])])


def absent_classes(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> list[int]:
  """Classes with no example in ``labels`` (multi-label: labels with one value only).

  >>> import numpy as np
  >>> absent_classes(np.full((3, 4), 0.25), np.array([0, 3, 3]))
  [1, 2]
  """
  if multi_label:
    return [int(j) for j in np.flatnonzero(np.isnan(per_class_auc(probs, labels, True)))]
  probs, labels = _single_label(probs, labels)
  num_classes = 2 if probs.ndim == 1 else probs.shape[1]
  return [c for c in range(num_classes) if not np.any(labels == c)]


def roc_auc(
    probs: np.ndarray, labels: np.ndarray, multi_label: bool = False, *, absent: str = "skip"
) -> float:
  """ROC AUC for binary, multi-class / ordinal (macro OvR) and multi-label problems.

  Args:
    probs: scores, ``(N,)``/``(N, 1)``/``(N, 2)`` binary, ``(N, K)`` multi-class,
      ``(N, L)`` multi-label.
    labels: ``(N,)`` or ``(N, 1)`` class indices; ``(N, L)`` in {0, 1} multi-label.
    multi_label: sigmoid multi-label task.
    absent: what a class absent from ``labels`` does: ``"skip"`` (the mean over
      the classes that have an AUC, with an :class:`AbsentClassWarning` naming
      the others) or ``"nan"`` (NaN, as the official MedMNIST evaluator).

  Returns:
    The AUC; NaN when no class has one (a single class present).

  >>> import numpy as np
  >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
  0.75
  """
  if absent not in ("skip", "nan"):
    raise ValueError(f"absent must be 'skip' or 'nan', got {absent!r}.")
  aucs = per_class_auc(probs, labels, multi_label)
  undefined = np.isnan(aucs)
  if undefined.all():
    return float("nan")
  if undefined.any():
    if absent == "nan":
      return float("nan")
    kind = "label(s)" if multi_label else "class(es)"
    missing = absent_classes(probs, labels, multi_label)
    warnings.warn(
        f"ROC AUC: {kind} {missing} absent from this split (no AUC); the AUC is the mean "
        f"over the other {int((~undefined).sum())} of {len(aucs)}.",
        AbsentClassWarning,
        stacklevel=2,
    )
  return float(np.mean(aucs[~undefined]))


def accuracy(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
  """Accuracy: argmax (multi-class), score ``> 0.5`` (binary, multi-label: mean over labels).

  >>> import numpy as np
  >>> accuracy(np.array([[0.2], [0.7], [0.5]]), np.array([0, 1, 1]))  # 0.5 is negative
  0.6666666666666666
  """
  if multi_label:
    probs, targets = _multi_label(probs, labels)
    return float(np.mean((probs > 0.5) == targets))
  probs, labels = _single_label(probs, labels)
  if probs.ndim == 1:
    return float(np.mean((probs > 0.5) == (labels == 1)))
  return float(np.mean(np.argmax(probs, axis=-1) == labels))
