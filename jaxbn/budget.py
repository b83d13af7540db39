"""A stage's step budget sized to the data set, not only counted in epochs.

An epoch-counted budget gives a data set of a few hundred images a few dozen
optimizer steps (validation AUC still climbing when training stops) and one of
100,000 images thousands. A stage therefore runs

    clip(round(epochs * steps_per_epoch), min_steps, max_stage_steps)

steps (``min_steps`` / ``max_stage_steps`` of 0 = no bound), and early stopping
on validation AUC (``early_stopping_patience`` evaluations without a new best,
``early_stopping_metric='val_auc'``) ends it once it has converged. Evaluations
happen every ``steps_per_epoch`` steps, but at least ``min_evals`` times in the
last stage, so the best-by-validation checkpoint (and the stopping rule) sees the
curve on a large data set too.
"""

from __future__ import annotations

import math


def stage_steps(epochs: float, steps_per_epoch: int, *, min_steps: int = 0,
                max_stage_steps: int = 0) -> int:
  """Optimizer steps of one stage (≥ 1 when ``epochs > 0``)."""
  if epochs <= 0:
    return 0
  n = max(1, round(epochs * steps_per_epoch))
  if min_steps:
    n = max(n, int(min_steps))
  if max_stage_steps:
    n = min(n, int(max_stage_steps))
  return n


def eval_interval(steps_per_epoch: int, total_steps: int, *, eval_every_steps: int = 0,
                  min_evals: int = 0) -> int:
  """Steps between validation passes: ``eval_every_steps`` if set (it wins), else once
  per epoch, shortened so a stage of ``total_steps`` evaluates at least ``min_evals`` times."""
  if eval_every_steps:
    return int(eval_every_steps)
  every = steps_per_epoch
  if min_evals and total_steps:
    every = min(every, max(1, math.floor(total_steps / min_evals)))
  return max(1, every)
