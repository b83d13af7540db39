"""jaxbn.metrics against scikit-learn and the official MedMNIST evaluator's definitions.

The reference below restates the official evaluator (``medmnist.evaluator.getAUC`` /
``getACC``; Yang et al., MedMNIST v2, arXiv:2110.14795) in plain numpy, with the AUC
as the Mann-Whitney statistic (ties count one half), so it shares no code with
jaxbn or scikit-learn:

* ``binary-class``: AUC / accuracy (threshold 0.5) of the last score column;
* ``multi-class`` and ``ordinal-regression``: mean over classes of the one-vs-rest
  AUC of column ``c``; accuracy of the argmax;
* ``multi-label, binary-class``: mean over labels of the per-label AUC, and of the
  per-label accuracy at threshold 0.5.
"""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxbn import metrics

# --------------------------------------------------------------------------- #
# Reference: the MedMNIST v2 evaluator (arXiv:2110.14795), in numpy.
# --------------------------------------------------------------------------- #

BINARY, MULTI_CLASS, ORDINAL, MULTI_LABEL = (
    "binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class"
)


def mann_whitney_auc(positive: np.ndarray, score: np.ndarray) -> float:
  """P(score of a positive > score of a negative) + ½ P(tie); NaN without both classes."""
  positive = np.asarray(positive, bool)
  pos, neg = score[positive], score[~positive]
  if not len(pos) or not len(neg):
    return float("nan")
  diff = pos[:, None] - neg[None, :]
  return float((np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size)


def medmnist_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
  """``getAUC`` of the MedMNIST v2 evaluator."""
  y_true, y_score = np.squeeze(y_true), np.squeeze(y_score)
  if task == MULTI_LABEL:
    return float(np.mean([mann_whitney_auc(y_true[:, i], y_score[:, i])
                          for i in range(y_score.shape[1])]))
  if task == BINARY:
    if y_score.ndim == 2:
      y_score = y_score[:, -1]
    return mann_whitney_auc(y_true == 1, y_score)
  return float(np.mean([mann_whitney_auc(y_true == i, y_score[:, i])
                        for i in range(y_score.shape[1])]))


def medmnist_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold=0.5) -> float:
  """``getACC`` of the MedMNIST v2 evaluator."""
  y_true, y_score = np.squeeze(y_true), np.squeeze(y_score)
  if task == MULTI_LABEL:
    return float(np.mean([np.mean(y_true[:, i] == (y_score[:, i] > threshold))
                          for i in range(y_true.shape[1])]))
  if task == BINARY:
    if y_score.ndim == 2:
      y_score = y_score[:, -1]
    return float(np.mean(y_true == (y_score > threshold)))
  return float(np.mean(y_true == np.argmax(y_score, axis=-1)))


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _binary_shapes(p):
  """The three accepted binary score layouts of one positive-class probability."""
  return {"(N,)": p, "(N,1)": p[:, None], "(N,2)": np.stack([1 - p, p], axis=-1)}


def _random_case(seed, task, n=60, k=4):
  rng = np.random.default_rng(seed)
  if task == MULTI_LABEL:
    labels = (rng.random((n, k)) < 0.4).astype(np.int64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 1.5 * labels)))
    return probs, labels
  k = 2 if task == BINARY else k
  labels = np.arange(n) % k  # every class present
  rng.shuffle(labels)
  logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels]
  logits = np.round(logits, 1)  # ties on purpose
  return _softmax(logits), labels


# --------------------------------------------------------------------------- #
# Hand-made cases whose answer is known.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("layout", ["(N,)", "(N,1)", "(N,2)"])
def test_binary_ranking_known_answers(layout):
  labels = np.array([0, 0, 0, 1, 1])
  perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
  assert metrics.roc_auc(_binary_shapes(perfect)[layout], labels) == 1.0
  assert metrics.roc_auc(_binary_shapes(1 - perfect)[layout], labels) == 0.0
  assert metrics.roc_auc(_binary_shapes(np.full(5, 0.5))[layout], labels) == 0.5
  # One swapped pair out of 3 x 2: AUC 5/6.
  one_swap = np.array([0.1, 0.2, 0.8, 0.7, 0.9])
  assert metrics.roc_auc(_binary_shapes(one_swap)[layout], labels) == pytest.approx(5 / 6)
  # Accuracy at 0.5: 0.8 is a false positive; exactly 0.5 counts as negative.
  assert metrics.accuracy(_binary_shapes(one_swap)[layout], labels) == pytest.approx(4 / 5)
  assert metrics.accuracy(_binary_shapes(np.full(5, 0.5))[layout], labels) == pytest.approx(3 / 5)


def test_binary_labels_may_be_a_column():
  labels = np.array([[0], [1], [1], [0]])  # MedMNIST's (N, 1)
  probs = np.array([0.2, 0.6, 0.9, 0.4])
  assert metrics.roc_auc(probs, labels) == 1.0
  assert metrics.accuracy(probs[:, None], labels) == 1.0


def test_multi_class_macro_known_answer():
  # Class 0 perfectly separated, class 1 reversed, class 2 at chance: macro = (1 + 0 + .5) / 3.
  labels = np.array([0, 0, 1, 1, 2, 2])
  probs = np.array([
      [0.9, 0.05, 0.05],
      [0.8, 0.10, 0.10],
      [0.1, 0.00, 0.90],
      [0.2, 0.00, 0.80],
      [0.3, 0.50, 0.20],
      [0.4, 0.40, 0.20],
  ])
  # Class 2: positives (.2, .2) vs negatives (.05, .1, .9, .8): 4 wins, 4 losses of 8.
  expected = [1.0, 0.0, 0.5]
  np.testing.assert_allclose(metrics.per_class_auc(probs, labels), expected)
  assert metrics.roc_auc(probs, labels) == pytest.approx(np.mean(expected))
  # Micro averaging (pooling all one-vs-rest pairs) gives another number.
  micro = roc_auc_score(np.eye(3)[labels].ravel(), probs.ravel())
  assert abs(np.mean(expected) - micro) > 0.04
  assert metrics.accuracy(probs, labels) == pytest.approx(2 / 6)


def test_multi_label_known_answer():
  labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
  probs = np.array([[0.9, 0.8], [0.8, 0.3], [0.1, 0.7], [0.2, 0.9]])
  # Label 0 perfect (1.0); label 1: positives .3, .7 vs negatives .8, .9: 0.0.
  np.testing.assert_allclose(metrics.per_class_auc(probs, labels, True), [1.0, 0.0])
  assert metrics.roc_auc(probs, labels, multi_label=True) == 0.5
  # Thresholded at 0.5: label 0 right in all 4 rows, label 1 only in row 2 (0.7).
  assert metrics.accuracy(probs, labels, multi_label=True) == pytest.approx((4 + 1) / 8)
  # Exactly 0.5 is a negative prediction, as in the official evaluator.
  half, mostly_one = np.full((4, 2), 0.5), np.array([[1, 0], [1, 1], [1, 1], [0, 0]])
  assert metrics.accuracy(half, mostly_one, True) == medmnist_acc(mostly_one, half, MULTI_LABEL)
  assert metrics.accuracy(half, mostly_one, multi_label=True) == pytest.approx(3 / 8)


@pytest.mark.parametrize("task", [BINARY, MULTI_CLASS, MULTI_LABEL])
def test_bfloat16_scores(task):
  ml_dtypes = pytest.importorskip("ml_dtypes")  # a JAX dependency: jax.numpy.bfloat16 on host
  probs, labels = _random_case(11, task)
  low = probs.astype(ml_dtypes.bfloat16)
  as_f32 = low.astype(np.float32)
  multi_label = task == MULTI_LABEL
  assert metrics.roc_auc(low, labels, multi_label) == metrics.roc_auc(as_f32, labels, multi_label)
  assert metrics.accuracy(low, labels, multi_label) == metrics.accuracy(as_f32, labels, multi_label)
  np.testing.assert_array_equal(metrics.per_class_auc(low, labels, multi_label),
                                metrics.per_class_auc(as_f32, labels, multi_label))


# --------------------------------------------------------------------------- #
# Random cases against both references.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("task", [BINARY, MULTI_CLASS, ORDINAL, MULTI_LABEL])
def test_random_cases_match_medmnist_and_sklearn(task, seed):
  probs, labels = _random_case(seed, task, k=5 if task == ORDINAL else 4)
  multi_label = task == MULTI_LABEL
  auc = metrics.roc_auc(probs, labels, multi_label)
  assert auc == pytest.approx(medmnist_auc(labels, probs, task), abs=1e-12)
  assert metrics.accuracy(probs, labels, multi_label) == pytest.approx(
      medmnist_acc(labels, probs, task), abs=1e-12)
  if task == BINARY:
    sk = roc_auc_score(labels, probs[:, 1])
    for layout, scores in _binary_shapes(probs[:, 1]).items():
      assert metrics.roc_auc(scores, labels) == pytest.approx(sk, abs=1e-12), layout
      assert metrics.accuracy(scores, labels) == pytest.approx(
          medmnist_acc(labels, scores, task), abs=1e-12), layout
  elif multi_label:
    sk = roc_auc_score(labels, probs, average="macro")
  else:
    sk = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
  assert auc == pytest.approx(sk, abs=1e-12)
  assert 0.5 < auc < 1.0  # a non-trivial case (the scores are informative, not perfect)


# --------------------------------------------------------------------------- #
# A class absent from a split.
# --------------------------------------------------------------------------- #


def test_absent_class_is_reported_not_averaged_away():
  probs, labels = _random_case(7, MULTI_CLASS, n=40, k=4)
  keep = labels != 2
  probs, labels = probs[keep], labels[keep]
  per_class = metrics.per_class_auc(probs, labels)
  assert np.isnan(per_class[2]) and not np.isnan(per_class[[0, 1, 3]]).any()
  assert metrics.absent_classes(probs, labels) == [2]
  with pytest.warns(metrics.AbsentClassWarning, match=r"class\(es\) \[2\] absent.*other 3 of 4") as rec:
    auc = metrics.roc_auc(probs, labels)
  assert rec[0].filename != metrics.__file__  # it points at the caller, not at metrics.py
  expected = np.mean([mann_whitney_auc(labels == c, probs[:, c]) for c in (0, 1, 3)])
  assert auc == pytest.approx(expected, abs=1e-12)
  # The official evaluator's answer: undefined.
  assert np.isnan(medmnist_auc(labels, probs, MULTI_CLASS))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no warning: NaN itself reports it
    assert np.isnan(metrics.roc_auc(probs, labels, absent="nan"))
  # Accuracy is defined regardless.
  assert metrics.accuracy(probs, labels) == pytest.approx(medmnist_acc(labels, probs, MULTI_CLASS))


def test_absent_label_in_multi_label_split():
  probs, labels = _random_case(3, MULTI_LABEL, n=30, k=3)
  labels[:, 1] = 1  # label 1 positive everywhere: no AUC
  assert metrics.absent_classes(probs, labels, multi_label=True) == [1]
  with pytest.warns(metrics.AbsentClassWarning, match=r"label\(s\) \[1\]"):
    auc = metrics.roc_auc(probs, labels, multi_label=True)
  assert auc == pytest.approx(
      np.mean([mann_whitney_auc(labels[:, j], probs[:, j]) for j in (0, 2)]), abs=1e-12)
  assert np.isnan(metrics.roc_auc(probs, labels, multi_label=True, absent="nan"))


def test_single_class_split_is_nan():
  for layout, scores in _binary_shapes(np.array([0.2, 0.7, 0.4])).items():
    assert metrics.absent_classes(scores, np.array([1, 1, 1])) == [0], layout
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      assert np.isnan(metrics.roc_auc(scores, np.array([1, 1, 1]))), layout
  assert np.isnan(metrics.roc_auc(np.full((3, 3), 1 / 3), np.array([2, 2, 2])))
  assert np.isnan(metrics.roc_auc(np.full((2, 2), 0.5), np.ones((2, 2)), multi_label=True))


def test_bad_input_is_an_error():
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    metrics.roc_auc(np.full((2, 3), 1 / 3), np.array([0, 3]))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    metrics.accuracy(np.array([0.2, 0.9]), np.array([-1, 1]))
  with pytest.raises(ValueError, match=r"N = len\(labels\) = 3"):
    metrics.roc_auc(np.array([0.2, 0.9]), np.array([0, 1, 1]))
  with pytest.raises(ValueError, match=r"^labels must be .*pass multi_label=True for .* targets\.$"):
    metrics.roc_auc(np.full((2, 3), 0.5), np.ones((2, 3), int))
  with pytest.raises(ValueError, match=r"both be \(N, L\)"):
    metrics.roc_auc(np.full((2, 3), 0.5), np.ones((2, 2), int), multi_label=True)
  with pytest.raises(ValueError, match=r"absent must be 'skip' or 'nan'"):
    metrics.roc_auc(np.array([0.2, 0.9]), np.array([0, 1]), absent="drop")


def test_docstring_examples_run():
  result = doctest.testmod(metrics)
  assert result.attempted >= 6 and result.failed == 0
