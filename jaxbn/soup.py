"""Weight averaging of checkpoints from one run: a uniform "model soup".

Wortsman et al. 2022 ("Model soups", arXiv 2203.05482) average the weights of models
fine-tuned from one pretrained network; SWA (Izmailov et al. 2018) averages points of one
trajectory. The trainer (``config.soup_size = k``) keeps the variables of the k best
validation passes and evaluates their average as the run's final model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def uniform(members: Sequence[Any]) -> Any:
  """The element-wise mean of pytrees of one structure (host arrays).

  Floating leaves are averaged in float64 and cast back to their dtype; any other leaf
  (an integer counter, a flag) is taken from the first member.
  """
  if not members:
    raise ValueError("A soup needs at least one member.")

  def mean(*leaves):
    first = np.asarray(leaves[0])
    if not jnp.issubdtype(first.dtype, jnp.floating):  # bfloat16 too (numpy's says no)
      return first
    return np.mean(np.stack([np.asarray(x, np.float64) for x in leaves]), axis=0).astype(
        first.dtype)

  return jax.tree.map(mean, *members)
