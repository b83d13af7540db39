"""CCA / SVCCA / PWCCA (jaxbn.analysis.cca) against their defining properties and an
independent numpy implementation (QR of the centred data, no covariances)."""

import numpy as np
import pytest

from jaxbn.analysis import cca


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
  # Small matrices: OpenBLAS threads only add contention on a shared machine.
  from threadpoolctl import threadpool_limits

  with threadpool_limits(1):
    yield


def _data(n=16, points=4000, seed=0):
  """Correlated activations: a random mixing of independent, unequal-variance sources."""
  rng = np.random.default_rng(seed)
  sources = rng.normal(size=(n, points)) * np.linspace(0.5, 2.0, n)[:, None]
  return rng.normal(size=(n, n)) @ sources + rng.normal(size=(n, 1))


# ---- independent reference (google/svcca definitions, computed differently) ---- #


def _ref_cca(x, y):
  """Canonical correlations as cosines of the principal angles between the column
  spaces of the centred data (QR), plus x's canonical variates (orthonormal)."""
  xc = (x - x.mean(1, keepdims=True)).T
  yc = (y - y.mean(1, keepdims=True)).T
  qx, _ = np.linalg.qr(xc)
  qy, _ = np.linalg.qr(yc)
  u, s, _ = np.linalg.svd(qx.T @ qy)
  k = min(x.shape[0], y.shape[0])
  return s[:k], qx @ u[:, :k]


def _ref_svcca(x, y, variance=0.99):
  def reduce(a):
    ac = a - a.mean(1, keepdims=True)
    w, v = np.linalg.eigh(ac @ ac.T)  # ascending eigenvalues = squared singular values
    w, v = w[::-1], v[:, ::-1]
    k = int(np.argmax(np.cumsum(w) / w.sum() >= variance)) + 1
    return v[:, :k].T @ ac
  return float(np.mean(_ref_cca(reduce(x), reduce(y))[0]))


def _ref_pwcca(x, y):
  assert x.shape[0] <= y.shape[0]
  rho, variates = _ref_cca(x, y)
  xc = x - x.mean(1, keepdims=True)
  alpha = np.abs(variates.T @ xc.T).sum(axis=1)
  return float(np.sum(alpha / alpha.sum() * rho))


# ------------------------------------------------------------------------------- #


def test_identical_inputs_give_one():
  x = _data()
  assert cca.cca_similarity(x, x) == pytest.approx(1.0, abs=1e-6)
  assert cca.svcca(x, x) == pytest.approx(1.0, abs=1e-6)
  assert cca.svcca(x, x, keep=5) == pytest.approx(1.0, abs=1e-6)
  assert cca.pwcca(x, x) == pytest.approx(1.0, abs=1e-6)


def test_invertible_linear_transform_gives_one():
  x = _data()
  a = np.random.default_rng(1).normal(size=(16, 16))
  assert np.linalg.cond(a) < 1e4
  y = a @ x + 5.0  # invertible linear map (and a shift)
  assert cca.cca_similarity(x, y) == pytest.approx(1.0, abs=1e-4)
  assert cca.pwcca(x, y) == pytest.approx(1.0, abs=1e-4)
  assert cca.pwcca(y, x) == pytest.approx(1.0, abs=1e-4)
  # SVCCA keeping every direction; at 99 % variance only rotations/scalings keep
  # the same top directions: check with an orthogonal map times a scale.
  assert cca.svcca(x, y, variance=1.0) == pytest.approx(1.0, abs=1e-4)
  q, _ = np.linalg.qr(a)
  assert cca.svcca(x, 3.0 * q @ x) == pytest.approx(1.0, abs=1e-4)
  # a wider layer: an injective map into 24 neurons
  b = np.random.default_rng(2).normal(size=(24, 16))
  assert cca.cca_similarity(x, b @ x) == pytest.approx(1.0, abs=1e-4)
  assert cca.pwcca(x, b @ x) == pytest.approx(1.0, abs=1e-4)


def test_independent_activations_near_zero():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(8, 40_000)), rng.normal(size=(8, 40_000))
  assert cca.cca_similarity(x, y) < 0.03
  assert cca.svcca(x, y) < 0.03
  assert cca.pwcca(x, y) < 0.03
  # few datapoints: the bias the 10x rule guards against is visible
  assert cca.cca_similarity(x[:, :40], y[:, :40]) > 0.2


def test_invariant_to_neuron_order():
  x = _data()
  y = _data(n=12, seed=5)[:, :4000] + 0.5 * x[:12]
  px = np.random.default_rng(4).permutation(16)
  py = np.random.default_rng(5).permutation(12)
  for f in (cca.cca_similarity, cca.svcca, cca.pwcca):
    assert f(x[px], y[py]) == pytest.approx(f(x, y), abs=1e-9)


def test_agrees_with_independent_numpy_implementation():
  x = _data()
  y = np.tanh(0.3 * _data(n=20, seed=7)) + 0.2 * np.vstack([x, x[:4]])  # partly related
  rho, _ = _ref_cca(x, y)
  got = cca.cca(x, y)
  np.testing.assert_allclose(got.rho, rho, atol=1e-6)
  assert got.mean == pytest.approx(float(np.mean(rho)), abs=1e-6)
  assert 0.1 < got.mean < 0.99
  assert cca.svcca(x, y) == pytest.approx(_ref_svcca(x, y), abs=1e-6)
  assert cca.pwcca(x, y) == pytest.approx(_ref_pwcca(x, y), abs=1e-6)
  # the canonical variates are unit-variance and pairwise correlated by rho
  hx = got.x_weights @ (x - got.x_mean[:, None])
  hy = got.y_weights @ (y - got.y_mean[:, None])
  np.testing.assert_allclose(np.cov(hx), np.eye(16), atol=1e-6)
  np.testing.assert_allclose(np.sum(hx * hy, 1) / (x.shape[1] - 1), got.rho, atol=1e-6)


def test_dead_neurons_and_constant_inputs():
  x = _data()
  x_dead = np.vstack([x, np.zeros((3, x.shape[1]))])  # dead ReLU channels
  assert np.isfinite(cca.cca_similarity(x_dead, x))
  assert cca.pwcca(x_dead, x) == pytest.approx(1.0, abs=1e-4)
  assert cca.cca_similarity(np.zeros_like(x), x) == 0.0


def test_conv_neurons_subsample_and_pool():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(20, 6, 6, 8)).astype(np.float32)
  b = 2.0 * a + 1.0
  pooled = cca.conv_neurons(a, mode="pool")
  assert pooled.shape == (8, 20)
  np.testing.assert_allclose(pooled[:, 0], a[0].mean(axis=(0, 1)), rtol=1e-5)
  sa, sb = cca.conv_neurons(a), cca.conv_neurons(b)
  assert sa.shape == (8, 80)  # 10 x channels of the 720 positions
  np.testing.assert_allclose(sb, 2.0 * sa + 1.0, rtol=1e-5)  # same positions for both
  assert cca.conv_neurons(a, points=10_000).shape == (8, 720)  # capped: every position
  assert cca.conv_neurons(a[:, 0, 0, :]).shape == (8, 20)  # dense (N, C)
  with pytest.raises(ValueError, match="subsample"):
    cca.conv_neurons(a, mode="max")
  with pytest.raises(ValueError, match="datapoints"):
    cca.cca(a.reshape(20, -1), a.reshape(20, -1)[:, :5])
