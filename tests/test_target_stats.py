"""AdaBN's statistics (jaxbn.target_stats): each BN layer's batch mean and variance, averaged."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbn import target_stats
from jaxbn.models import create_model, init_variables


class Net(nn.Module):
  """BN on the input (its statistics are the images'), conv, BN, dropout, and a fixed leaf."""

  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train,  # noqa: E731
                                   momentum=self.momentum, name=name)
    x = bn("bn_in")(x)
    x = nn.relu(bn("bn_conv")(nn.Conv(4, (3, 3))(x)))
    fixed = self.variable("batch_stats", "fixed", lambda: jnp.full((4,), 7.0))  # never updated
    x = nn.Dropout(0.5, deterministic=not train)(x + fixed.value)
    return nn.Dense(2)(x.mean((1, 2)))


def _images(seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (shift + scale * rng.normal(size=(6, 8, 8, 3))).astype(np.float32)


@pytest.fixture(scope="module")
def variables():
  return jax.tree.map(np.asarray, Net().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))


def _exact(variables, images):
  """The batch statistics themselves: a momentum-0 update of the same network."""
  _, new = Net(momentum=0.0).apply(variables, images, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.key(0)})
  return new["batch_stats"]


@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.5])
@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (100.0, 50.0)])
def test_batch_moments_are_each_layers_batch_statistics(variables, momentum, scale, shift):
  images = _images(1, scale, shift)
  got = target_stats.batch_moments(Net(momentum=momentum), variables, images)
  # The input BN's are the images' per-channel mean and (biased) variance.
  np.testing.assert_allclose(got["bn_in"]["mean"], images.mean((0, 1, 2)), rtol=1e-4)
  np.testing.assert_allclose(got["bn_in"]["var"], images.var((0, 1, 2)), rtol=1e-4)
  expected = _exact(variables, images)
  for layer in ("bn_in", "bn_conv"):
    for leaf in ("mean", "var"):
      np.testing.assert_allclose(got[layer][leaf], expected[layer][leaf], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got["fixed"], 7.0)  # not a running average: kept


def test_estimate_averages_the_batches_and_stops_at_num_batches(variables):
  batches = [{"image": _images(seed)} for seed in (1, 2, 3)]
  out = target_stats.estimate(Net(), variables, iter(batches), num_batches=2)
  first, second = (_exact(variables, b["image"]) for b in batches[:2])
  for layer in ("bn_in", "bn_conv"):
    for leaf in ("mean", "var"):
      np.testing.assert_allclose(out["batch_stats"][layer][leaf],
                                 (first[layer][leaf] + second[layer][leaf]) / 2,
                                 rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["batch_stats"]["fixed"], 7.0)
  assert out["params"] is variables["params"]  # only the statistics change


def test_estimate_sums_through_reduce(variables):
  # Two processes: reduce adds the other's (sum, count), here one batch of other images.
  mine, theirs = _images(1), _images(2)
  other = jax.tree.map(np.asarray, _exact(variables, theirs))
  reduce = lambda tree: jax.tree.map(np.add, tree, (other, np.asarray(1)))  # noqa: E731
  out = target_stats.estimate(Net(), variables, iter([{"image": mine}]), 1, reduce=reduce)
  expected = jax.tree.map(lambda a, b: (a + b) / 2, _exact(variables, mine), other)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               out["batch_stats"], expected)


def test_a_jaxbn_model_gets_its_target_statistics():
  # Any jaxbn backbone, with its own BN momentum (CBR: torch's 0.1, Flax's 0.9).
  model, exact = (create_model("cbr_small", num_classes=2, bn_momentum=m) for m in (0.9, 0.0))
  variables = jax.tree.map(np.asarray, init_variables(model, jax.random.key(0), 16))
  images = _images(4)[:, :, :, :3].repeat(2, axis=1).repeat(2, axis=2)  # 16 x 16
  out = target_stats.estimate(model, variables, iter([{"image": images}]), 1)
  _, new = exact.apply(variables, images, train=True, mutable=["batch_stats"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               out["batch_stats"], new["batch_stats"])
  assert not np.allclose(out["batch_stats"]["bn1"]["var"], variables["batch_stats"]["bn1"]["var"])


def test_estimate_errors(variables):
  with pytest.raises(ValueError, match="num_batches must be > 0"):
    target_stats.estimate(Net(), variables, iter([]), 0)
  with pytest.raises(ValueError, match="No batch"):
    target_stats.estimate(Net(), variables, iter([]), 2)
  no_bn = nn.Dense(2)
  with pytest.raises(ValueError, match="no batch_stats"):
    target_stats.estimate(no_bn, no_bn.init(jax.random.key(0), jnp.zeros((1, 3))), iter([]), 1)
