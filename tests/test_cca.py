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


# ---- options and edge cases, each checked for its effect ---- #


def _one_neuron_pair(points=500, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(1, points)) + 3.0
  y = 0.6 * x + 0.8 * rng.normal(size=(1, points)) - 1.0
  return x, y, abs(np.corrcoef(x[0], y[0])[0, 1])


@pytest.mark.parametrize("epsilon", [0.5, 3.0])
def test_epsilon_is_the_ridge_of_the_scaled_covariances(epsilon):
  # One neuron per set: the scaled covariance is 1, so (1 + ε)^(-1/2) whitens each
  # side and ρ = |corr| / (1 + ε) in closed form. Every entry point passes ε on.
  x, y, corr = _one_neuron_pair()
  want = corr / (1 + epsilon)
  assert cca.cca(x, y, epsilon).rho[0] == pytest.approx(want, rel=1e-9)
  assert cca.cca_similarity(x, y, epsilon) == pytest.approx(want, rel=1e-9)
  assert cca.svcca(x, y, epsilon=epsilon) == pytest.approx(want, rel=1e-9)
  assert cca.svcca(x, y, keep=1, epsilon=epsilon) == pytest.approx(want, rel=1e-9)
  assert cca.pwcca(x, y, epsilon) == pytest.approx(want, rel=1e-9)
  assert cca.cca(x, y, 0.0).rho[0] == pytest.approx(corr, rel=1e-9)


def test_without_epsilon_directions_below_1e13_of_the_largest_are_dropped():
  # x = [a; t·c] with a ⟂ c (both centred, unit norm); y = c. With ε = 0 the
  # direction c of x is kept when t is above 1e-13 of a's singular value: ρ = 1.
  n = 64
  grid = np.arange(n) * 2 * np.pi / n
  a, c = np.cos(grid), np.sin(2 * grid)
  a, c = a / np.linalg.norm(a), c / np.linalg.norm(c)
  for t, want in [(1e-15, 0.0), (1e-14, 0.0), (1e-12, 1.0), (1e-6, 1.0)]:
    rho = cca.cca(np.stack([a, t * c]), c[None, :], epsilon=0.0).rho
    assert rho[0] == pytest.approx(want, abs=1e-6), t
  # A dead neuron with ε = 0: dropped too, no NaN.
  x = _data(n=4, points=200)
  got = cca.cca(np.vstack([x, np.zeros((1, 200))]), x, epsilon=0.0)
  assert np.all(np.isfinite(got.rho)) and np.all(np.isfinite(got.x_weights))
  np.testing.assert_allclose(got.rho, [1, 1, 1, 1], atol=1e-9)


def _ref_ridge_cca(x, y, epsilon):
  """google/svcca's definition with covariances: each scaled by its largest diagonal
  entry (Σxy by the geometric mean), ε·I added, ρ the singular values of
  (Σxx + εI)^(-1/2) Σxy (Σyy + εI)^(-1/2)."""
  n1 = x.shape[0]
  cov = np.cov(np.vstack([x, y]))
  sxx, syy, sxy = cov[:n1, :n1], cov[n1:, n1:], cov[:n1, n1:]
  mx, my = np.max(np.diag(sxx)), np.max(np.diag(syy))

  def inv_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v / np.sqrt(w)) @ v.T

  m = inv_sqrt(sxx / mx + epsilon * np.eye(n1)) @ (sxy / np.sqrt(mx * my)) @ inv_sqrt(
      syy / my + epsilon * np.eye(len(syy)))
  return np.linalg.svd(m, compute_uv=False)[:min(x.shape[0], y.shape[0])]


def test_ridge_matches_the_covariance_definition_on_unequal_variances():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(3, 300)) * np.array([[3.0], [0.5], [1.0]]) + 2.0
  y = np.vstack([x[0] + 2 * x[1], x[2] * 0.1]) + rng.normal(size=(2, 300)) * np.array([[4.0], [0.2]])
  for epsilon in (0.3, 1e-10):
    got = cca.cca(x, y, epsilon)
    np.testing.assert_allclose(got.rho, _ref_ridge_cca(x, y, epsilon), rtol=1e-9)
    np.testing.assert_allclose(cca.cca(y, x, epsilon).rho, got.rho, rtol=1e-9)
    assert got.x_weights.shape == (2, 3) and got.y_weights.shape == (2, 2)


def test_inputs_are_float64_two_d_finite_with_two_datapoints():
  x = _data(n=4, points=300)
  y = np.tanh(_data(n=3, points=300, seed=2)) + 0.3 * x[:3]
  x32, y32 = x.astype(np.float32), y.astype(np.float32)
  for f in (cca.cca_similarity, cca.svcca, cca.pwcca):
    want = f(x32.astype(np.float64), y32.astype(np.float64))
    assert f(x32, y32.astype(np.float64)) == want  # computed in float64 whatever the input
    assert f(x32.astype(np.float64), y32) == want
  # Two datapoints are enough; a variance of exactly 1 is no constant set.
  assert cca.cca([[0.0, 1.0]], [[0.0, 2.0]]).rho == pytest.approx([1.0])
  assert cca.cca([[-1.0, 0.5, 1.0]], [[-1.0, 0.0, 1.0]]).rho[0] == pytest.approx(
      abs(np.corrcoef([-1.0, 0.5, 1.0], [-1.0, 0.0, 1.0])[0, 1]), rel=1e-9)
  bad = x.copy()
  bad[1, 7] = np.nan
  cases = [
      (x[None], y, r"^Activations must be 2-D \(neurons, datapoints\); got \(1, 4, 300\) and "
       r"\(3, 300\)\. For conv layers use conv_neurons\(acts\) first\.$"),
      (x, y[None], r"^Activations must be 2-D .* got \(4, 300\) and \(1, 3, 300\)\. For conv "),
      (x[:, :1], y[:, :1], r"^Need at least 2 datapoints\.$"),
      (bad, y, r"^Activations contain NaN or inf\.$"),
      (x, np.where(y > 1, np.inf, y), r"^Activations contain NaN or inf\.$"),
  ]
  for a, b, message in cases:
    with pytest.raises(ValueError, match=message):
      cca.cca(a, b)


def test_constant_set_result_fields():
  x = _data(n=4, points=50)
  for a, b in ((np.full((2, 50), 3.0), x), (x, np.full((2, 50), 3.0))):
    got = cca.cca(a, b)
    np.testing.assert_array_equal(got.rho, np.zeros(2))
    np.testing.assert_array_equal(got.x_weights, np.zeros((2, len(a))))
    np.testing.assert_array_equal(got.y_weights, np.zeros((2, len(b))))
    np.testing.assert_allclose(got.x_mean, a.mean(1))
    np.testing.assert_allclose(got.y_mean, b.mean(1))


def test_correlations_never_exceed_one():
  # Identical sets without a ridge: the singular values come out as 1 + a few ulp
  # (1.000000000000001 for this x); they are clipped to [0, 1].
  rng = np.random.default_rng(0)
  x = rng.normal(size=(17, 200)) * rng.uniform(0.1, 10, size=(17, 1))
  rho = cca.cca(x, x, epsilon=0.0).rho
  assert rho.max() <= 1.0 and rho.min() >= 1.0 - 1e-12


def test_dead_neurons_get_exactly_zero_weight():
  x = np.random.default_rng(0).normal(size=(5, 100))
  dead = np.vstack([x, np.zeros((2, 100))])  # exactly zero singular values
  for epsilon in (0.0, 1e-10):
    got = cca.cca(dead, x, epsilon)
    assert got.x_weights.shape == (5, 7) and np.all(np.isfinite(got.x_weights))
    np.testing.assert_array_equal(got.x_weights[:, 5:], 0.0)


def test_top_directions_keep_variance_and_their_bounds():
  x = _data(n=6, points=300)
  assert np.array_equal(cca.top_directions(x), cca.top_directions(x, 0.99))
  assert cca.top_directions(x.astype(np.float32)).dtype == np.float64
  np.testing.assert_allclose(cca.top_directions(x.astype(np.float32)),
                             cca.top_directions(x.astype(np.float32).astype(np.float64)))
  assert cca.top_directions(x, keep=1).shape == (1, 300)
  assert cca.top_directions(x, keep=6).shape == (6, 300)
  assert cca.top_directions(x, variance=1.0).shape == (6, 300)
  for keep in (0, 7):
    with pytest.raises(ValueError, match=rf"^keep={keep} must be in 1\.\.6 \(min\(neurons, "):
      cca.top_directions(x, keep=keep)
  for variance in (0.0, 1.5):
    with pytest.raises(ValueError, match=rf"^variance must be in \(0, 1\], got {variance}\.$"):
      cca.top_directions(x, variance)
  # Two orthogonal directions of equal variance: half the variance is one direction.
  two = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
  assert cca.top_directions(two, 0.5).shape == (1, 4)
  assert cca.top_directions(two, 0.5000001).shape == (2, 4)


def test_top_directions_of_a_constant_set_is_one_zero_direction():
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no 0/0 on the way
    out = cca.top_directions(np.full((3, 10), 2.0))
  np.testing.assert_array_equal(out, np.zeros((1, 10)))


def test_svcca_keep_reduces_each_set_to_that_many_directions():
  x = _data(n=10, points=2000)
  y = np.tanh(0.3 * _data(n=8, points=2000, seed=3)) + 0.3 * x[:8]
  for keep in (2, 5):
    want = cca.cca_similarity(cca.top_directions(x, keep=keep), cca.top_directions(y, keep=keep))
    assert cca.svcca(x, y, keep=keep) == pytest.approx(want, abs=1e-12)
    assert cca.svcca(y, x, keep=keep) == pytest.approx(want, abs=1e-12)
  assert len({round(cca.svcca(x, y, keep=k), 9) for k in (2, 5, 8)}) == 3
  # keep beyond a set's size keeps all of it
  assert cca.svcca(x, y, keep=50) == pytest.approx(
      cca.cca_similarity(cca.top_directions(x, keep=10), cca.top_directions(y, keep=8)),
      abs=1e-12)


def test_pwcca_weights_the_smaller_set_and_is_scale_invariant():
  x = _data()
  y = np.tanh(0.3 * _data(n=20, seed=7)) + 0.2 * np.vstack([x, x[:4]])
  # the smaller set (first or second argument) gives the weights
  assert cca.pwcca(y, x) == pytest.approx(_ref_pwcca(x, y), abs=1e-6)
  # equal sizes: x's
  y16 = y[:16]
  assert cca.pwcca(x, y16) == pytest.approx(_ref_pwcca(x, y16), abs=1e-6)
  assert cca.pwcca(y16, x) == pytest.approx(_ref_pwcca(y16, x), abs=1e-6)
  assert abs(_ref_pwcca(x, y16) - _ref_pwcca(y16, x)) > 1e-3  # so the side matters
  # activations a million times smaller: the same similarity
  assert cca.pwcca(1e-6 * x, y) == pytest.approx(cca.pwcca(x, y), abs=1e-6)
  assert cca.pwcca(1e-6 * y, x) == pytest.approx(cca.pwcca(y, x), abs=1e-6)


def test_pwcca_of_a_constant_set_is_zero_with_uniform_weights():
  x = _data(n=4, points=100)
  value, weights, rho = cca.pwcca(np.ones((3, 100)), x, return_weights=True)
  assert value == 0.0
  np.testing.assert_array_equal(rho, np.zeros(3))
  np.testing.assert_allclose(weights, np.full(3, 1 / 3))


def test_sampled_positions_are_distinct_and_fixed_by_the_seed():
  positions = cca.sample_positions(100, 90)
  assert len(set(positions.tolist())) == 90 and list(positions) == sorted(positions)
  np.testing.assert_array_equal(positions, cca.sample_positions(100, 90, 0))
  assert not np.array_equal(positions, cca.sample_positions(100, 90, 1))
  np.testing.assert_array_equal(cca.sample_positions(50, 50), np.arange(50))
  np.testing.assert_array_equal(cca.sample_positions(50, None), np.arange(50))


def test_conv_neurons_seed_ratio_and_bad_shape():
  a = np.random.default_rng(0).normal(size=(20, 6, 6, 8)).astype(np.float32)
  flat = a.reshape(-1, 8)
  np.testing.assert_array_equal(cca.conv_neurons(a),
                                flat[cca.sample_positions(720, 80, 0)].T)
  np.testing.assert_array_equal(cca.conv_neurons(a, seed=5),
                                flat[cca.sample_positions(720, 80, 5)].T)
  assert cca.conv_neurons(a, points_per_neuron=3).shape == (8, 24)
  with pytest.raises(ValueError, match=r"^Expected \(N, C\) or \(N, H, W, C\) activations, "
                     r"got shape \(20, 6, 8\)\.$"):
    cca.conv_neurons(a[:, 0])


# ---- the similarity / filters / convergence helpers (no data pipeline, tiny model) ---- #


def test_capture_and_layer_selection_identical_models_give_one():
  import jax

  from jaxbn.analysis import similarity
  from jaxbn.models import create_model

  from jaxbn.models import init_shapes

  model = create_model("cbr_small", num_classes=0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 16, 16, 3)).astype(np.float32)
  variables = jax.tree.map(  # no init compile: values drawn for the abstract tree
      lambda s: rng.uniform(0.5, 1.0, s.shape).astype(np.float32), init_shapes(model, 16))
  out = similarity.make_capture(model)(variables, x)
  assert list(out) == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4"]  # call order
  assert out["conv2"].shape == (12, 8, 8, 64)
  assert similarity.select_layers("cbr_small", list(out), "stage") == [
      ("bn1", 1), ("bn2", 2), ("bn3", 3), ("bn4", 4)]
  assert len(similarity.select_layers("cbr_small", list(out), "module")) == 8
  acts = {"layers": [("bn1", 1, (16, 16, 32))],
          "a": {"bn1": cca.conv_neurons(np.asarray(out["bn1"]))},
          "b": {"bn1": cca.conv_neurons(np.asarray(out["bn1"]) * 3.0)}}
  (row,) = similarity.compare(acts, progress=False)
  assert row["neurons"] == 32 and row["datapoints"] == 320 and row["points_per_neuron"] == 10
  for m in ("cca", "svcca", "pwcca"):
    assert row[m] == pytest.approx(1.0, abs=1e-4)


def test_filter_grid_and_first_conv():
  from jaxbn.analysis import filters

  rng = np.random.default_rng(0)
  params = {"bn1": {"scale": np.ones(4)}, "conv2": {"kernel": rng.normal(size=(3, 3, 4, 8))},
            "conv1": {"kernel": rng.normal(size=(5, 5, 3, 4))}, "fc": {"kernel": np.ones((8, 2))}}
  name, kernel = filters.first_conv("cbr_small", params)
  assert name == "conv1" and kernel.shape == (5, 5, 3, 4)
  grid = filters.filter_grid(kernel)  # 2 x 2 tiles of 5 x 5, 1-pixel borders
  assert grid.shape == (13, 13, 3) and grid.min() == 0.0 and grid.max() == 1.0
  layer = filters.filter_grid(np.zeros((5, 5, 3, 4)), scale="layer")
  assert np.all(layer[1:6, 1:6] == 0.5)


def test_convergence_table(tmp_path):
  import json

  from jaxbn.analysis import convergence

  history = [{"step": 10, "wall": 5.0, "val_auc": 0.9}, {"step": 20, "wall": 9.0, "val_auc": 0.96}]
  run = tmp_path / "transfer"
  run.mkdir()
  (run / "results.json").write_text(json.dumps({
      "init": "imagenet", "arch": "efficientnet_lite0", "history": history, "best_val_auc": 0.96,
      "best_step": 20, "test_auc": 0.93, "test_acc": 0.88, "total_steps": 20, "wall_time_s": 12.0}))
  assert convergence.to_target(history, 0.95) == (20, 9.0)
  assert convergence.to_target(history, 0.99) == (None, None)
  assert convergence.main([str(run), "--target", "0.95", "--out", str(tmp_path / "o")]) == 0
  table = (tmp_path / "o" / "convergence.md").read_text()
  assert "| transfer | imagenet | 20 | 9 s | 0.9600 (20) | 0.9300 | 0.8800 | 20 | 12 s |" in table
  assert (tmp_path / "o" / "val_auc_vs_step.png").stat().st_size > 0


def test_plots_write_complete_pngs(tmp_path):
  from jaxbn.analysis import filters, similarity

  rows = [{"stage": i, "module": f"bn{i}", "points_per_neuron": 10, "cca": 0.5, "svcca": 0.6,
           "pwcca": 0.7} for i in (1, 2)]
  similarity.plot_similarity(rows, str(tmp_path / "s.png"), "title")
  similarity.plot_cross(["bn1", "bn2"], np.eye(2), str(tmp_path / "c.png"), "t", "a", "b")
  kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 4))
  filters.plot_filters([("a", kernel), ("Δ", kernel)], str(tmp_path / "f.png"), "t")
  for name in ("s", "c", "f"):
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "f.png", "s.png"]  # no temp left
