"""Stochastic depth (``model.drop_path_rate``): what it drops, where, and when."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbn import config as config_lib, setup as setup_lib
from jaxbn.models import create_model, init_shapes, layers
from jaxbn.weights import init


class _Branch(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x, train):
    return layers.drop_path(x, self.rate, train=train)


def test_drop_path_zeroes_whole_examples_and_rescales_the_others():
  x = jnp.ones((4000, 3, 3, 2))
  out = np.asarray(_Branch(0.25).apply({}, x, True, rngs={"dropout": jax.random.key(0)}))
  per_example = out.reshape(len(out), -1)
  dropped = (per_example == 0).all(axis=1)
  kept = np.isclose(per_example, 1 / 0.75).all(axis=1)
  assert (dropped | kept).all()  # one draw per example, broadcast over its whole branch
  assert abs(dropped.mean() - 0.25) < 0.03  # 4,000 fixed draws: 0.03 is over 4 sd
  np.testing.assert_array_equal(_Branch(0.25).apply({}, x, False), x)  # evaluation: identity
  np.testing.assert_array_equal(  # rate 0: identity, no key needed
      _Branch(0.0).apply({}, x, True), x)


def test_block_drop_rates_grow_linearly_from_zero():
  assert layers.block_drop_rates(0.2, 16)[0] == 0.0
  np.testing.assert_allclose(layers.block_drop_rates(0.2, 16), 0.2 * np.arange(16) / 16)
  assert layers.block_drop_rates(0.0, 3) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("arch,cut", [("efficientnet_lite0", "stage-1"), ("resnet18", None)])
def test_drop_path_changes_training_outputs_only(arch, cut):
  x = jnp.tile(jax.random.normal(jax.random.key(1), (1, 32, 32, 3)), (16, 1, 1, 1))
  plain = create_model(arch, 3, truncate_at=cut)
  dropping = create_model(arch, 3, truncate_at=cut, drop_path_rate=0.5)
  variables = init.initial_variables(plain, jax.random.key(0), arch=arch, init="random")
  # The same variables: stochastic depth has no weights of its own.
  assert jax.tree.structure(init_shapes(plain, 32)) == jax.tree.structure(
      init_shapes(dropping, 32))
  np.testing.assert_allclose(dropping.apply(variables, x), plain.apply(variables, x),
                             rtol=1e-6, atol=1e-6)

  def train(model, key):
    return np.asarray(model.apply(variables, x, train=True, use_running_average=True,
                                  rngs={"dropout": jax.random.key(key)}))

  reference = train(plain, 0)
  np.testing.assert_allclose(reference, reference[:1].repeat(16, 0), rtol=1e-5, atol=1e-5)
  out = train(dropping, 0)
  # One copy of the image, 16 different sets of dropped blocks: the logits differ by example.
  assert len({tuple(np.round(row, 4)) for row in out}) > 1
  np.testing.assert_array_equal(out, train(dropping, 0))  # the key decides the draws
  assert not np.allclose(out, train(dropping, 1))


def test_drop_path_needs_residual_blocks_and_reaches_the_trainers_model():
  with pytest.raises(ValueError, match="densenet121 has none"):
    create_model("densenet121", 2, drop_path_rate=0.1)
  config = config_lib.base_config()
  config.model.arch, config.model.drop_path_rate = "efficientnet_lite0", 0.2
  assert setup_lib.build_model(config, 2).drop_path_rate == 0.2
  config.model.drop_path_rate = 0.0
  assert setup_lib.build_model(config, 2).drop_path_rate == 0.0
