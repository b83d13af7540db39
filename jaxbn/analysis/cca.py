r"""CCA, SVCCA and PWCCA between two sets of activations.

Conventions follow the reference implementation, google/svcca (``cca_core.py``,
``pwcca.py``; SVCCA: Raghu et al. 2017, arXiv:1706.05806; PWCCA: Morcos et al.
2018, arXiv:1806.05759):

* Activations are ``neurons × datapoints`` arrays: ``x`` of shape
  ``(n1, N)`` and ``y`` of shape ``(n2, N)``, the same ``N`` datapoints (the same
  images, and for conv layers the same spatial positions) in the same order.
* Each neuron is centred over the datapoints; covariances ``Σxx, Σyy, Σxy`` are
  divided as in google/svcca by the largest absolute entry of ``Σxx`` / ``Σyy``
  (``Σxy`` by the geometric mean of the two), which makes the result invariant to
  the scale of either set, and then **regularised with ε·I** (``epsilon``,
  relative to that scale; default 1e-10). Neurons that never vary (dead ReLU
  channels) carry no information; ε keeps their covariance invertible and their
  canonical correlations at ~0.
* Canonical correlations ``ρ_1 ≥ … ≥ ρ_k`` (``k = min(n1, n2)``) are the singular
  values of ``Σxx^{-1/2} Σxy Σyy^{-1/2}``, computed from the SVD of each centred
  data matrix (the same numbers without squaring condition numbers). Float64 numpy.

Similarities (all in [0, 1]; 1 for a representation and any invertible linear
transform of itself under :func:`cca_similarity` and :func:`pwcca`):

* :func:`cca_similarity`: mean of the canonical correlations.
* :func:`svcca`: each set is first reduced to its top singular directions — the
  fewest explaining ``variance`` (default 99 %) of its (centred) variance, or
  exactly ``keep`` directions — then the mean CCA correlation of the reduced sets.
  (A general invertible transform changes which directions make up 99 % of the
  variance, so SVCCA below 100 % variance is 1 only for rotations/scalings.)
* :func:`pwcca`: projection-weighted CCA. ``ρ_i`` are weighted by
  ``α_i ∝ Σ_j |⟨h_i, x_j⟩|``: ``h_i`` the canonical variates (orthonormalised over
  the datapoints) of the set with fewer neurons, ``x_j`` its centred neurons —
  how much of the layer's activations each canonical direction accounts for.
  google/svcca adds the neuron means back before this projection; centred
  activations are used here (the mean is no direction of the representation).

Conv layers (:func:`conv_neurons`): channels are neurons; datapoints are either
``batch × H × W`` positions, **subsampled** (the default) to ``points`` random
positions — the same ones for every tensor of the same shape and seed, so two
networks' activations stay paired — with ``points`` at least 10× the channels
when the layer has that many positions (:func:`points_needed`); or the spatial
**average pool** (``mode="pool"``), one datapoint per image. With too few
datapoints, CCA finds spurious correlations (for independent Gaussian data the
mean ρ grows like √(neurons / datapoints)); callers should report the ratio.

Example::

    x = np.random.randn(64, 5000); y = np.random.randn(64, 64) @ x
    cca_similarity(x, y)   # 1.0
    svcca(x, y)            # SVCCA, 99 % variance
    pwcca(x, y)            # 1.0
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_EPSILON = 1e-10
POINTS_PER_NEURON = 10  # google/svcca's rule of thumb: datapoints ≥ 10 × neurons


@dataclasses.dataclass(frozen=True)
class CCAResult:
  """Canonical correlations and the directions behind them.

  Attributes:
    rho: canonical correlations, descending, length ``min(n1, n2)``.
    x_weights: ``(k, n1)``, row i maps centred ``x`` to its i-th canonical
      variate (unit variance): ``h_i = x_weights[i] @ (x - mean)``.
    y_weights: ``(k, n2)``, the same for ``y``.
    x_mean, y_mean: the neuron means that were removed.
  """

  rho: np.ndarray
  x_weights: np.ndarray
  y_weights: np.ndarray
  x_mean: np.ndarray
  y_mean: np.ndarray

  @property
  def mean(self) -> float:
    """Mean canonical correlation (the CCA similarity)."""
    return float(np.mean(self.rho)) if self.rho.size else float("nan")


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2:
    raise ValueError(
        f"Activations must be 2-D (neurons, datapoints); got {x.shape} and {y.shape}. "
        "For conv layers use conv_neurons(acts) first.")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must share the datapoints: {x.shape[1]} vs {y.shape[1]}.")
  if x.shape[1] < 2:
    raise ValueError("Need at least 2 datapoints.")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError("Activations contain NaN or inf.")
  return x, y


def _whiten(xc: np.ndarray, scale: float, epsilon: float):
  """SVD of the scaled centred data: ``(U, D, Vᵀ, S)`` with ``D = S / sqrt(S² + ε)``.

  ``(Σ + εI)^{-1/2} X̃ = U D Vᵀ`` for ``X̃ = xc / sqrt((N-1)·scale)``, ``Σ = X̃ X̃ᵀ``:
  the ε·I-regularised whitening without squaring the data's condition number.
  """
  u, s, vt = np.linalg.svd(xc / np.sqrt((xc.shape[1] - 1) * scale), full_matrices=False)
  d = s / np.sqrt(s**2 + epsilon) if epsilon > 0 else (s > s[0] * 1e-13).astype(np.float64)
  return u, d, vt, s


def cca(x: np.ndarray, y: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> CCAResult:
  """Canonical correlation analysis of ``x`` (n1, N) and ``y`` (n2, N).

  Computed from the SVDs of the (scale-normalised, centred) data, which is the
  same as whitening with ``(Σ + εI)^{-1/2}`` but numerically stable.

  Args:
    x, y: activations, neurons × datapoints (same datapoints, same order).
    epsilon: ridge added to the scale-normalised covariances (ε·I); 0 = none
      (directions below 1e-13 of the largest singular value are then dropped).

  Returns:
    A :class:`CCAResult` (``.rho`` descending, ``.mean`` the CCA similarity).
  """
  x, y = _check(x, y)
  n = x.shape[1]
  k = min(x.shape[0], y.shape[0])
  x_mean, y_mean = x.mean(axis=1), y.mean(axis=1)
  xc, yc = x - x_mean[:, None], y - y_mean[:, None]
  # google/svcca's scaling: by the largest absolute entry of each covariance
  # (for a covariance matrix: its largest diagonal entry, the largest variance).
  xmax = np.max(np.sum(xc**2, axis=1)) / (n - 1)
  ymax = np.max(np.sum(yc**2, axis=1)) / (n - 1)
  if xmax == 0 or ymax == 0:  # a set that never varies correlates with nothing
    return CCAResult(np.zeros(k), np.zeros((k, x.shape[0])), np.zeros((k, y.shape[0])),
                     x_mean, y_mean)
  ux, dx, vxt, sx = _whiten(xc, xmax, epsilon)
  uy, dy, vyt, sy = _whiten(yc, ymax, epsilon)
  p, rho, qt = np.linalg.svd((dx[:, None] * (vxt @ vyt.T)) * dy[None, :], full_matrices=False)
  m = min(k, len(rho))
  rho = np.concatenate([np.clip(rho[:m], 0.0, 1.0), np.zeros(k - m)])

  def weights(u, d, s, vecs, scale, width):
    inv = np.divide(d, s, out=np.zeros_like(d), where=s > 0)  # 1 / sqrt(S² + ε)
    w = np.zeros((k, width))
    w[:m] = ((vecs[:, :m].T * inv[None, :]) @ u.T) / np.sqrt(scale)
    return w

  x_weights = weights(ux, dx, sx, p, xmax, x.shape[0])
  y_weights = weights(uy, dy, sy, qt.T, ymax, y.shape[0])
  return CCAResult(rho, x_weights, y_weights, x_mean, y_mean)


def cca_similarity(x: np.ndarray, y: np.ndarray, epsilon: float = DEFAULT_EPSILON) -> float:
  """Mean canonical correlation of ``x`` (n1, N) and ``y`` (n2, N)."""
  return cca(x, y, epsilon).mean


def top_directions(
    x: np.ndarray, variance: float = 0.99, keep: int | None = None
) -> np.ndarray:
  """``x`` (n, N) reduced to its top singular directions, ``(k, N)``.

  Centres each neuron, takes the SVD ``x = U S Vᵀ`` and returns ``S_k V_kᵀ``
  (the data in the basis of its top ``k`` left singular vectors). ``k`` is
  ``keep`` if given, else the fewest directions whose squared singular values
  reach ``variance`` of the total (1.0 keeps every direction with nonzero
  variance).
  """
  x = np.asarray(x, np.float64)
  xc = x - x.mean(axis=1, keepdims=True)
  _, s, vt = np.linalg.svd(xc, full_matrices=False)
  if keep is not None:
    if not 1 <= keep <= len(s):
      raise ValueError(f"keep={keep} must be in 1..{len(s)} (min(neurons, datapoints)).")
    k = keep
  else:
    if not 0.0 < variance <= 1.0:
      raise ValueError(f"variance must be in (0, 1], got {variance}.")
    energy = s**2
    total = energy.sum()
    if total == 0:
      k = 1
    else:
      frac = np.cumsum(energy) / total
      k = int(np.searchsorted(frac, variance - 1e-12) + 1)
      k = min(k, int(np.sum(energy > total * 1e-15)) or 1)
  return s[:k, None] * vt[:k]


def svcca(
    x: np.ndarray,
    y: np.ndarray,
    *,
    variance: float = 0.99,
    keep: int | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> float:
  """SVCCA: mean CCA correlation after reducing each set to its top singular directions.

  Args:
    x, y: activations, neurons × datapoints.
    variance: fraction of each set's variance the kept directions explain (99 %).
    keep: keep exactly this many directions of each set instead (google/svcca's
      notebooks use e.g. 20–50); overrides ``variance``.
    epsilon: CCA ridge, see :func:`cca`.
  """
  x, y = _check(x, y)
  kx = min(keep, *x.shape) if keep is not None else None
  ky = min(keep, *y.shape) if keep is not None else None
  return cca(top_directions(x, variance, kx), top_directions(y, variance, ky), epsilon).mean


def pwcca(
    x: np.ndarray, y: np.ndarray, epsilon: float = DEFAULT_EPSILON, *, return_weights: bool = False
):
  """Projection-weighted CCA (Morcos et al., 2018) of ``x`` (n1, N) and ``y`` (n2, N).

  Weights each canonical correlation by how much of the smaller set's (centred)
  activations its canonical variate accounts for (module docstring). With
  ``return_weights`` also returns ``(weights, rho)``.
  """
  x, y = _check(x, y)
  res = cca(x, y, epsilon)
  if x.shape[0] <= y.shape[0]:
    acts, w = x - res.x_mean[:, None], res.x_weights
  else:
    acts, w = y - res.y_mean[:, None], res.y_weights
  variates = w @ acts  # (k, N) canonical variates
  q, _ = np.linalg.qr(variates.T)  # (N, k) orthonormal over the datapoints
  weights = np.sum(np.abs(q.T @ acts.T), axis=1)
  total = weights.sum()
  weights = weights / total if total > 0 else np.full_like(weights, 1.0 / len(weights))
  value = float(np.sum(weights * res.rho))
  return (value, weights, res.rho) if return_weights else value


# --------------------------------------------------------------------------- #
# Conv activations → neurons × datapoints.
# --------------------------------------------------------------------------- #


def points_needed(num_neurons: int, points_per_neuron: int = POINTS_PER_NEURON) -> int:
  """Datapoints to keep for a layer with ``num_neurons`` (``points_per_neuron`` × neurons)."""
  return int(points_per_neuron) * int(num_neurons)


def sample_positions(num_positions: int, points: int | None, seed: int = 0) -> np.ndarray:
  """Sorted indices of ``points`` of ``num_positions`` positions (all if None or more).

  Deterministic in ``(num_positions, points, seed)``: the same positions are
  chosen for two networks' activations of the same shape.
  """
  if points is None or points >= num_positions:
    return np.arange(num_positions)
  rng = np.random.default_rng([seed, num_positions, points])
  return np.sort(rng.choice(num_positions, size=points, replace=False))


def conv_neurons(
    acts: np.ndarray,
    *,
    mode: str = "subsample",
    points: int | None = None,
    points_per_neuron: int = POINTS_PER_NEURON,
    seed: int = 0,
) -> np.ndarray:
  """Activations ``(N, [H, W,] C)`` → ``(C, datapoints)`` (channels are neurons).

  Args:
    acts: NHWC conv activations, or ``(N, C)`` dense ones (returned transposed).
    mode: ``"subsample"``: the ``N·H·W`` positions are datapoints, of which
      ``points`` random ones are kept (default: ``points_per_neuron × C``, or
      every position when there are fewer; see :func:`sample_positions`);
      ``"pool"``: average over H, W, one datapoint per image.
    points: number of positions to keep in ``subsample`` mode (None: the default).
    points_per_neuron: the default ratio of datapoints to channels.
    seed: which positions; the same seed and shape give the same positions.
  """
  acts = np.asarray(acts)
  if acts.ndim == 2:
    return acts.T
  if acts.ndim != 4:
    raise ValueError(f"Expected (N, C) or (N, H, W, C) activations, got shape {acts.shape}.")
  c = acts.shape[-1]
  if mode == "pool":
    return acts.mean(axis=(1, 2)).T
  if mode != "subsample":
    raise ValueError(f"mode must be 'subsample' or 'pool', got {mode!r}.")
  flat = acts.reshape(-1, c)
  want = points if points is not None else points_needed(c, points_per_neuron)
  return flat[sample_positions(len(flat), want, seed)].T
