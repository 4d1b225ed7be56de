"""Bayesian learning with neural networks (book chapter 6): model fitting, evidence, posteriors.

The initialization distribution of an :class:`~dlt.networks.MLP` is read as a Bayesian prior
(6.6). Its output distribution on a data set D = A u B (observed inputs A, inferred inputs B) is
known from chapter 4: at infinite width a Gaussian with the kernel K = K^(L); at large but finite
width a nearly-Gaussian distribution with metric G = K + G^{1}/n_{L-1} and four-point vertex V.
Conditioning it on the observed targets y_A gives the posterior directly in function space (6.25).

Conventions (library-wide): targets ``y`` have shape (N, n_L), samples first; kernels (N, N);
``V[d1, d2, d3, d4] = V_(d1 d2)(d3 d4)``; index sets ``idx_A``, ``idx_B`` are integer positions
into the rows of a kernel on D. The inverse "K~^{a1 a2}" of the book is always the inverse of the
A-block of K, **never** the A-block of the inverse of K (6.35); everything is done with Cholesky
factors of that block, in float64, and a kernel that is not positive definite on A is an error
(no silent jitter: pass ``noise_var > 0`` for the noisy hypothesis (6.10) instead).

Contents
--------
* fitting (§6.2.1): :func:`gaussian_nll` (6.16)-(6.17), :func:`log_prior` (6.6),
  :func:`map_objective` (6.22).
* evidence and model comparison (§6.2.2, §6.3.1): :func:`log_evidence` (6.34),
  :func:`log_evidence_single` (6.36), :func:`log_evidence_two_input` (6.45)/(6.48),
  :func:`bayes_factor` (6.30)-(6.31), :func:`profiled_log_evidence`, :func:`network_log_evidence`,
  :func:`log_evidence_scan`, :func:`evidence_optimal_cw` (closed-form optimum, scale-invariant sigma).
* infinite-width posterior (§6.3.2): :func:`gp_posterior` (6.57), (6.64), (6.66),
  :func:`posterior_infinite_width`, :func:`inverse_blocks` (6.53)-(6.58).
* finite width (§6.4): :func:`action_couplings_single` (6.74)-(6.75),
  :func:`quartic_conditional_variance` (6.77), :func:`hebbian_conditional_variance` (6.78),
  :func:`finite_width_posterior_mean` (6.80)-(6.88), :func:`posterior_mean_finite_width`,
  :func:`observable_update` (6.99), :func:`representation_update` (6.104),
  :func:`penultimate_update`.
* exact reference: :func:`posterior_importance_sampling`, the exact posterior of a real finite-width
  network by importance sampling of its penultimate layer (any depth, any width).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import cho_solve, solve_triangular

from .criticality import gamma_project
from .kernels import kernel_fn, preactivation_flow, quadratic_coupling_nlo, raise_vertex, running_coupling
from .networks import MLP, ensemble, forward
from .stats import jackknife

__all__ = ["gaussian_nll", "log_prior", "map_objective", "log_evidence", "log_evidence_single",
           "log_evidence_two_input", "bayes_factor", "profiled_log_evidence", "network_log_evidence",
           "log_evidence_scan", "evidence_optimal_cw", "gp_posterior", "posterior_infinite_width",
           "inverse_blocks", "action_couplings_single", "quartic_conditional_variance",
           "hebbian_conditional_variance", "FiniteWidthPosterior", "finite_width_posterior_mean",
           "posterior_mean_finite_width", "observable_update", "representation_update",
           "penultimate_update", "posterior_importance_sampling"]

_LOG2PI = float(np.log(2 * np.pi))


# ----------------------------------------------------------------------------- validation
def _noise(noise_var):
    try:
        s = float(noise_var)
    except (TypeError, ValueError):
        raise TypeError(f"noise_var must be a real number, got {noise_var!r}") from None
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"noise_var (the variance sigma_eps^2 of (6.10)) must be finite and >= 0, got {s}")
    return s


def _sym(K, name="K"):
    try:
        K = np.asarray(K, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real (N, N) array") from None
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0 or not np.all(np.isfinite(K)):
        raise ValueError(f"{name} must be a finite square array of shape (N, N), got shape {K.shape}")
    scale = max(np.abs(K).max(), 1e-300)
    if np.abs(K - K.T).max() > 1e-10 * scale:
        raise ValueError(f"{name} must be symmetric")
    return 0.5 * (K + K.T)


def _targets(y, N, name="y_A"):
    """y (N, n_L) or (N,) -> (array (N, n_L), was_1d)."""
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real array of shape (N_A, n_L)") from None
    one = y.ndim == 1
    if one:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != N or y.shape[1] == 0 or not np.all(np.isfinite(y)):
        raise ValueError(f"{name} must be finite with shape (N_A={N}, n_L) (samples first) or (N_A,), "
                         f"got shape {np.shape(y)}")
    return y, one


def _index(idx, N, name):
    try:
        idx = np.asarray(idx)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of integer sample positions") from None
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-d sequence of integers, got {idx!r}")
    if idx.min() < 0 or idx.max() >= N or len(np.unique(idx)) != idx.size:
        raise ValueError(f"{name} must hold distinct positions in 0..{N - 1}, got {idx.tolist()}")
    return idx.astype(int)


def _partition(N, idx_A, idx_B, *, disjoint=True):
    A, B = _index(idx_A, N, "idx_A"), _index(idx_B, N, "idx_B")
    if disjoint and np.intersect1d(A, B).size:
        raise ValueError(f"idx_A and idx_B must be disjoint (D = A u B), share {np.intersect1d(A, B)}")
    return A, B


def _chol(KA, what="the kernel on the observed set A"):
    """Lower Cholesky factor of a symmetric matrix, or a ValueError that explains the failure."""
    try:
        return np.linalg.cholesky(KA)
    except np.linalg.LinAlgError:
        ev = np.linalg.eigvalsh(KA).min()
        raise ValueError(f"{what} is not positive definite (smallest eigenvalue {ev:.3e}): duplicate or "
                         "degenerate inputs, or a kernel that has collapsed with depth; use noise_var > 0 "
                         "for the noisy hypothesis (6.10)") from None


def _net(net):
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a dlt.networks.MLP, got {type(net).__name__}")
    return net


def _inputs(net, X, name):
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != net.widths[0] or not np.all(np.isfinite(X)):
        raise ValueError(f"{name} must be finite with shape (N, n_0={net.widths[0]}), got shape {X.shape}")
    return X


# ----------------------------------------------------------------------------- §6.2.1 fitting
def gaussian_nll(f, y, noise_var):
    """Negative log-likelihood (loss) of the uncertain hypothesis, book eqs. (6.10), (6.16)-(6.17):

        L_A = sum_{alpha in A} sum_i [ (f_{i;alpha} - y_{i;alpha})^2 / (2 sigma^2) + log(2 pi sigma^2)/2 ]

    (the printed (6.17) leaves the sum over output components i implicit). ``f``, ``y``: network
    outputs and targets of equal shape, (N_A, n_L) or (N_A,); ``noise_var`` = sigma_eps^2 > 0.
    Returns a float, or a JAX scalar when ``f`` or ``y`` is a JAX array (differentiable).
    Raises ValueError for shapes that differ or noise_var <= 0."""
    s = _noise(noise_var)
    if s == 0:
        raise ValueError("gaussian_nll needs noise_var > 0 (the deterministic hypothesis (6.9) has no "
                         "finite loss)")
    xp = jnp if isinstance(f, jax.Array) or isinstance(y, jax.Array) else np
    f, y = xp.asarray(f, dtype=float), xp.asarray(y, dtype=float)
    if f.shape != y.shape or f.ndim == 0:
        raise ValueError(f"outputs f and targets y must have the same shape (N_A, n_L), got {f.shape}, "
                         f"{y.shape}")
    val = xp.sum((f - y) ** 2) / (2 * s) + 0.5 * f.size * (_LOG2PI + np.log(s))
    return val if xp is jnp else float(val)


def log_prior(net, params):
    """log p(theta | H) of the Gaussian prior (6.6) = the initialization distribution (2.19)-(2.22):
    b^(l)_i ~ N(0, C_b^(l)), W^(l)_ij ~ N(0, C_W^(l)/n_{l-1}).

    ``params``: ``{l: {"W": (n_l, n_{l-1}), "b": (n_l,)}}`` as from :func:`dlt.networks.init_params`.
    A parameter group with zero variance (e.g. the biases at C_b = 0) is a point mass at 0 and is
    left out (it carries no density). Returns a JAX scalar (differentiable). Raises TypeError /
    ValueError for a bad net or parameter shapes."""
    net = _net(net)
    tot = 0.0
    for l in range(1, net.L + 1):
        if l not in params:
            raise ValueError(f"params lacks layer {l} (need layers 1..{net.L})")
        n_in, n_out = net.widths[l - 1], net.widths[l]
        W, b = jnp.asarray(params[l]["W"]), jnp.asarray(params[l]["b"])
        if W.shape != (n_out, n_in) or b.shape != (n_out,):
            raise ValueError(f"layer {l}: W must be {(n_out, n_in)} and b {(n_out,)}, "
                             f"got {W.shape}, {b.shape}")
        for theta, var in ((W, net.C_W[l - 1] / n_in), (b, net.C_b[l - 1])):
            if var > 0:
                tot = tot - jnp.sum(theta ** 2) / (2 * var) - 0.5 * theta.size * (_LOG2PI + np.log(var))
    return tot


def map_objective(net, params, X_A, y_A, noise_var):
    """MAP objective (6.22): L_A(theta) - log p(theta|H), with the loss (6.17) of the network's
    outputs on X_A (N_A, n_0) against y_A (N_A, n_L) and the prior (6.6) of :func:`log_prior`.
    Its minimizer is theta*_MAP (6.19); the loss alone (:func:`gaussian_nll`) gives the MLE (6.21).
    Returns a JAX scalar, differentiable in ``params``. Raises ValueError for bad shapes."""
    net = _net(net)
    X_A = _inputs(net, X_A, "X_A")
    y, _ = _targets(y_A, X_A.shape[0])
    if y.shape[1] != net.widths[-1]:
        raise ValueError(f"y_A has {y.shape[1]} output components, the net has n_L={net.widths[-1]}")
    f = forward(net, params, jnp.asarray(X_A))[net.L]
    return gaussian_nll(f, jnp.asarray(y), noise_var) - log_prior(net, params)


# ----------------------------------------------------------------------------- §6.2.2, §6.3.1 evidence
def log_evidence(K_AA, y_A, noise_var=0.0):
    """Log-evidence of the infinite-width prior, book eq. (6.34):

        log p(y_A | H) = -n_L/2 log|2 pi K~| - 1/2 sum_i sum K~^{a1 a2} y_{i;a1} y_{i;a2},

    with K~ = K_AA + noise_var * I (noise_var > 0: the uncertain hypothesis (6.10), independent noise
    per sample; the determinant by Cholesky, log|2 pi K~| = N_A log 2pi + 2 sum log diag L).
    ``K_AA`` (N_A, N_A) the output kernel on the observed inputs; ``y_A`` (N_A, n_L) or (N_A,).
    Returns a float (a log-density in y: compare models only on the same targets).
    Raises ValueError if K~ is not positive definite or the shapes do not match."""
    K = _sym(K_AA, "K_AA")
    y, _ = _targets(y_A, K.shape[0])
    Kt = K + _noise(noise_var) * np.eye(K.shape[0])
    Lc = _chol(Kt)
    u = solve_triangular(Lc, y, lower=True)
    nA, nL = y.shape
    return float(-0.5 * nL * (nA * _LOG2PI + 2 * np.log(np.diag(Lc)).sum()) - 0.5 * np.sum(u ** 2))


def log_evidence_single(K, y):
    """Single-input evidence (6.36): log p(y|H) = -n_L/2 log(2 pi K) - sum_i y_i^2/(2 K).

    ``K`` > 0 the output kernel (scalar or array, broadcast), ``y`` (n_L,) one target vector.
    Maximal at K = sum_i y_i^2 / n_L with value -n_L/2 [log(2 pi sum y^2/n_L) + 1]; vanishes like
    K^{-n_L/2} as K -> inf (6.37) and like exp(-sum y^2/(2K)) as K -> 0 (6.38). Returns a float or
    an array like K. Raises ValueError for K <= 0 or a bad y."""
    K = np.asarray(K, dtype=float)
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if y.ndim != 1 or not np.all(np.isfinite(y)):
        raise ValueError(f"y must be one target vector (n_L,), got shape {y.shape}")
    if not np.all(np.isfinite(K)) or np.any(K <= 0):
        raise ValueError("the single-input kernel K must be finite and > 0")
    out = -0.5 * y.size * (_LOG2PI + np.log(K)) - np.sum(y ** 2) / (2 * K)
    return float(out) if out.ndim == 0 else out


def log_evidence_two_input(K, y):
    """Two-input evidence in the gamma basis, book eqs. (6.41)-(6.48):

        log p(y+, y-|H) = -n_L/2 log[4 pi^2 (4 K_[0] K_[2] - K_[1]^2)]
                          - (4 K_[0] Y_[2] + 4 K_[2] Y_[0] - 2 K_[1] Y_[1]) / (2 (4 K_[0] K_[2] - K_[1]^2)),

    with K_[a] = gamma components (5.17)-(5.20) of the 2x2 kernel and Y_[a] those of
    Y_{a1 a2} = sum_i y_{i;a1} y_{i;a2} (6.44), (6.47), both by
    :func:`dlt.criticality.gamma_project`. For equal-norm inputs K_[1] = 0 and this is (6.45).
    ``K`` (..., 2, 2) (batched kernels allowed), ``y`` (2, n_L) (rows: inputs +, -).
    Returns a float or an array (...). Raises ValueError for bad shapes or a kernel that is not
    positive definite (4 K_[0] K_[2] - K_[1]^2 = det K must be > 0, with K_[0] > 0)."""
    k = gamma_project(np.asarray(K, dtype=float))
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != 2 or not np.all(np.isfinite(y)):
        raise ValueError(f"y must have shape (2, n_L) (inputs +, - first), got {np.shape(y)}")
    Y = gamma_project(y @ y.T)
    det4 = 4 * k[..., 0] * k[..., 2] - k[..., 1] ** 2          # = 4 det K
    if np.any(~np.isfinite(det4)) or np.any(det4 <= 0) or np.any(k[..., 0] <= 0):
        raise ValueError("the 2x2 kernel is not positive definite "
                         "(need 4 K_[0] K_[2] - K_[1]^2 > 0, K_[0] > 0)")
    quad = (4 * k[..., 0] * Y[2] + 4 * k[..., 2] * Y[0] - 2 * k[..., 1] * Y[1]) / det4
    out = -0.5 * y.shape[1] * np.log(4 * np.pi ** 2 * det4) - 0.5 * quad
    return float(out) if np.ndim(out) == 0 else out


def bayes_factor(log_evidence_1, log_evidence_2, *, log=False):
    """Bayes factor p(y_A|H1)/p(y_A|H2) (6.30)-(6.31) from two log-evidences on the same targets.
    ``log=True`` returns its logarithm (the difference), which does not overflow. Arrays broadcast."""
    d = np.asarray(log_evidence_1, dtype=float) - np.asarray(log_evidence_2, dtype=float)
    out = d if log else np.exp(d)
    return float(out) if np.ndim(out) == 0 else out


def profiled_log_evidence(K_AA, y_A):
    """Evidence maximized over an overall output scale s (K -> s K, noise-free):

        s* = tr(K~^{-1} Y) / (n_L N_A),   Y = sum_i y_i y_i^T,
        max_s log p = -n_L/2 log|2 pi s* K~| - n_L N_A / 2.

    Separates the *shape* of the kernel (correlations, which criticality controls through chi_perp)
    from its overall size (set by C_W and chi_par). ``K_AA`` (N_A, N_A) positive definite, ``y_A``
    (N_A, n_L). Returns (value, s*). Raises ValueError like :func:`log_evidence`."""
    K = _sym(K_AA, "K_AA")
    y, _ = _targets(y_A, K.shape[0])
    Lc = _chol(K)
    u = solve_triangular(Lc, y, lower=True)
    nA, nL = y.shape
    s = float(np.sum(u ** 2) / (nL * nA))
    if s <= 0:
        raise ValueError("all targets are zero: the evidence has no maximum over the scale")
    logdet = nA * (_LOG2PI + np.log(s)) + 2 * np.log(np.diag(Lc)).sum()
    return float(-0.5 * nL * logdet - 0.5 * nL * nA), s


def network_log_evidence(net, X_A, y_A, noise_var=0.0):
    """Infinite-width log-evidence (6.34) of the hypothesis ``net`` (an MLP: activation, depth,
    C_b, C_W) for targets y_A (N_A, n_L) on inputs X_A (N_A, n_0); the kernel is
    :func:`dlt.kernels.kernel_fn`. Returns a float. Raises as :func:`log_evidence`."""
    net = _net(net)
    return log_evidence(kernel_fn(net, _inputs(net, X_A, "X_A")), y_A, noise_var)


def log_evidence_scan(net, X_A, y_A, param, values, *, layers=None, noise_var=0.0,
                      profile_scale=False):
    """Bayesian model comparison over one hyperparameter (§6.3.1): the log-evidence (6.34) of
    ``net.replace(param=v)`` for each v in ``values`` (e.g. ``param="C_W"`` at every layer).

    ``layers``: None for the output layer of ``net``; an iterable of depths l in 1..L to get the
    evidence of the depth-l network with the same per-layer hyperparameters (one kernel recursion
    serves all depths); the output-layer targets y_A are compared with K^(l). ``profile_scale``:
    maximize over the overall output scale (:func:`profiled_log_evidence`, noise-free only).
    Returns an array (len(values),), or a dict {l: array} when ``layers`` is given.
    Raises ValueError for an unknown parameter or a kernel that is not positive definite."""
    net = _net(net)
    X_A = _inputs(net, X_A, "X_A")
    if param not in ("C_b", "C_W"):
        raise ValueError(f"param must be 'C_b' or 'C_W', got {param!r}")
    s = _noise(noise_var)
    if profile_scale and s > 0:
        raise ValueError("profile_scale=True needs noise_var = 0")
    want = [net.L] if layers is None else sorted({int(l) for l in layers})
    vals = np.atleast_1d(np.asarray(values, dtype=float))
    out = {l: np.empty(vals.size) for l in want}
    for k, v in enumerate(vals):
        Ks = kernel_fn(net.replace(**{param: v}), X_A, layers=want)
        for l in want:
            out[l][k] = (profiled_log_evidence(Ks[l], y_A)[0] if profile_scale
                         else log_evidence(Ks[l], y_A, s))
    return out[net.L] if layers is None else out


def evidence_optimal_cw(net, X_A, y_A):
    """Closed-form evidence-maximizing C_W for a scale-invariant activation (ReLU, leaky ReLU,
    linear), C_b = 0 and the same C_W at every layer (derived in the project spec, not printed):

    the kernel is homogeneous, K^(L)(C_W) = (C_W/C_crit)^L K^(L)(C_crit) with C_crit = 1/A_2,
    A_2 = (a_+^2 + a_-^2)/2 (= 2 for ReLU), so the evidence (6.34) depends on C_W only through
    c = (C_W/C_crit)^L, and is maximal at c* = tr(K^^{-1} Y)/(n_L N_A) with K^ = K^(L)(C_crit):

        C_W* = C_crit * c*^{1/L}  ->  C_crit  as L -> infinity.

    ``net``: the hypothesis (its C_W is ignored); X_A (N_A, n_0); y_A (N_A, n_L). Returns C_W*.
    Raises ValueError for a non-scale-invariant activation, C_b != 0 or per-layer C_W, or a
    singular K^ (deep ReLU kernels become nearly rank one; use fewer or less similar inputs)."""
    net = _net(net)
    act = net.activation
    if not act.scale_invariant:
        raise ValueError(f"evidence_optimal_cw needs a scale-invariant activation (relu, leaky_relu, "
                         f"linear, scale_invariant), got {act.name!r}")
    if any(c != 0 for c in net.C_b):
        raise ValueError("evidence_optimal_cw needs C_b = 0 at every layer (the kernel is then homogeneous)")
    if len(set(net.C_W)) != 1:
        raise ValueError("evidence_optimal_cw needs the same C_W at every layer")
    c_crit = 2.0 / (act.a_plus ** 2 + act.a_minus ** 2)
    K = kernel_fn(net.replace(C_W=c_crit), _inputs(net, X_A, "X_A"))
    _, c_star = profiled_log_evidence(K, y_A)
    return float(c_crit * c_star ** (1.0 / net.L))


# ----------------------------------------------------------------------------- §6.3.2 GP posterior
def gp_posterior(K, idx_A, idx_B, y_A, noise_var=0.0):
    """Infinite-width posterior of the outputs on B given y_A on A, book eqs. (6.57), (6.64), (6.66):

        m_{i;b}  = sum K_{b a1} K~^{a1 a2} y_{i;a2}                              (6.64)
        KK_{b1 b2} = K_{b1 b2} - sum K_{b1 a3} K~^{a3 a4} K_{a4 b2}              (6.57)

    with K~^{..} the inverse of the A-block K~ = K_AA + noise_var I (Cholesky solves; never a block of
    the full inverse). The posterior is Gaussian with this mean and covariance, the same covariance
    for every output component, and component i of the mean uses only y_{i;A} (6.67).
    ``noise_var`` > 0: the uncertain hypothesis (6.10); the result is the posterior of the noise-free
    outputs f(x_B) (add noise_var I to the covariance for noisy observations at B).

    ``K`` (N, N) kernel on the data set; ``idx_A``, ``idx_B`` integer positions (B may overlap A);
    ``y_A`` (N_A, n_L) or (N_A,). Returns (mean (N_B, n_L) or (N_B,), cov (N_B, N_B)).
    Raises ValueError for a non-symmetric K, K~ not positive definite, bad indices or shapes,
    negative noise_var."""
    K = _sym(K)
    A, B = _partition(K.shape[0], idx_A, idx_B, disjoint=False)
    y, one = _targets(y_A, A.size)
    Lc = _chol(K[np.ix_(A, A)] + _noise(noise_var) * np.eye(A.size))
    W = solve_triangular(Lc, K[np.ix_(A, B)], lower=True)        # L^{-1} K_AB
    mean = W.T @ solve_triangular(Lc, y, lower=True)
    cov = K[np.ix_(B, B)] - W.T @ W
    cov = 0.5 * (cov + cov.T)
    return (mean[:, 0] if one else mean), cov


def posterior_infinite_width(net, X_A, y_A, X_B, noise_var=0.0):
    """:func:`gp_posterior` for the hypothesis ``net`` (kernel K^(L) by :func:`dlt.kernels.kernel_fn`)
    on observed inputs X_A (N_A, n_0) with targets y_A (N_A, n_L) and inferred inputs X_B (N_B, n_0).
    Returns (mean (N_B, n_L), cov (N_B, N_B)). Raises as gp_posterior."""
    net = _net(net)
    X_A, X_B = _inputs(net, X_A, "X_A"), _inputs(net, X_B, "X_B")
    K = kernel_fn(net, np.concatenate([X_A, X_B]))
    NA = X_A.shape[0]
    return gp_posterior(K, np.arange(NA), NA + np.arange(X_B.shape[0]), y_A, noise_var)


def inverse_blocks(K, idx_A, idx_B):
    """Blocks of the inverse of the kernel on D = A u B from the A-block inverse and the posterior
    covariance, book eqs. (6.53)-(6.58) (a teaching helper: the posterior never needs them):

        AA: K~^{-1} + K~^{-1} K_AB KK^{-1} K_BA K~^{-1}     (6.53)
        AB: -K~^{-1} K_AB KK^{-1}    BA: its transpose       (6.54), (6.55)
        BB: KK^{-1}                                           (6.56), (6.58)

    with KK the posterior covariance (6.57). ``idx_A``, ``idx_B``: a partition of the rows of K
    (disjoint, together all of them). Returns dict(AA, AB, BA, BB, KA_inv = K~^{-1}, post_cov = KK).
    Raises ValueError for a K that is not positive definite or indices that are not a partition."""
    K = _sym(K)
    A, B = _partition(K.shape[0], idx_A, idx_B)
    if A.size + B.size != K.shape[0]:
        raise ValueError("idx_A and idx_B must together cover every row of K (D = A u B)")
    Lc = _chol(K[np.ix_(A, A)])
    KAi = cho_solve((Lc, True), np.eye(A.size))
    P = K[np.ix_(B, B)] - K[np.ix_(B, A)] @ KAi @ K[np.ix_(A, B)]
    P = 0.5 * (P + P.T)
    Pi = cho_solve((_chol(P, "the posterior covariance on B"), True), np.eye(B.size))
    AB = -KAi @ K[np.ix_(A, B)] @ Pi
    AA = KAi + KAi @ K[np.ix_(A, B)] @ Pi @ K[np.ix_(B, A)] @ KAi
    return dict(AA=0.5 * (AA + AA.T), AB=AB, BA=AB.T, BB=Pi, KA_inv=KAi, post_cov=P)


# ----------------------------------------------------------------------------- §6.4.1 Hebbian
def action_couplings_single(G, V, n_prev, m):
    """Couplings of the single-input action of m neurons (6.73), book eqs. (6.74)-(6.75):

        1/g_m = G - (m + 2)/(2 n_{l-1}) V/G,      v = V / (n_{l-1} G^4),

    to order 1/n (g_m by :func:`dlt.kernels.running_coupling`). G > 0 the metric, V the
    single-input vertex, n_prev = n_{l-1}, m >= 1 the number of neurons kept. Returns (g_m, v).
    Raises ValueError for bad input."""
    g = running_coupling(G, V, n_prev, m)
    return g, float(V) / (int(n_prev) * float(G) ** 4)


def quartic_conditional_variance(z1, g2, v):
    """E[z_2^2 | z_1] in the two-neuron quartic action (6.76), first order in v, book eq. (6.77):

        g_2^{-1} + (v/2) g_2^{-2} (3 g_2^{-1} + z1^2)

    (the action is -g_2/2 z^2 + v/8 (sum z^2)^2; v < 0 keeps it normalizable). ``z1`` scalar or
    array. Returns an array like z1. Raises ValueError for g2 <= 0."""
    g2, v = float(g2), float(v)
    if not np.isfinite(g2) or g2 <= 0 or not np.isfinite(v):
        raise ValueError(f"need a finite g2 > 0 and a finite v, got g2={g2}, v={v}")
    z1 = np.asarray(z1, dtype=float)
    return 1 / g2 + 0.5 * v / g2 ** 2 * (3 / g2 + z1 ** 2)


def hebbian_conditional_variance(z1, G, V, n_prev):
    """Hebbian "fire together": E[z_2^2 | z_1 = z1] for two distinct neurons of one layer on one
    input, book eq. (6.78), strictly to order 1/n:

        G + 1/2 (z1^2 - G) V / (n_{l-1} G^2).

    A neuron observed larger (smaller) than typical, z1^2 > G, makes its neighbours' variance larger
    (smaller). ``z1`` scalar or array; G > 0; V the single-input vertex; n_prev = n_{l-1}.
    Returns an array like z1. Raises ValueError for G <= 0 or a non-positive width."""
    G, V = float(G), float(V)
    if not np.isfinite(G) or G <= 0 or not np.isfinite(V):
        raise ValueError(f"need a finite G > 0 and a finite V, got G={G}, V={V}")
    if isinstance(n_prev, bool) or not isinstance(n_prev, (int, np.integer)) or n_prev < 1:
        raise ValueError(f"n_prev must be a positive integer, got {n_prev!r}")
    z1 = np.asarray(z1, dtype=float)
    return G + 0.5 * (z1 ** 2 - G) * V / (n_prev * G ** 2)


# ----------------------------------------------------------------------------- §6.4.2 posterior mean
@dataclass(frozen=True)
class FiniteWidthPosterior:
    """Result of :func:`finite_width_posterior_mean` (shapes (N_B, n_L) unless noted).

    mean:       m_inf + coef / n_prev, the posterior mean strictly to first order in 1/n.
    m_inf:      the infinite-width posterior mean (6.64).
    coef:       the 1/n coefficient c (mean = m_inf + c/n_prev), d/d(1/n) of (6.88) at 1/n = 0.
    naive_mean: (6.81) with the finite-width quadratic coupling, without the quartic terms.
    naive_cov:  (6.82) at finite width, (N_B, N_B).
    unexpanded: (6.88) evaluated at finite n without expanding (carries spurious O(1/n^2) terms).
    n_prev:     the width n_{L-1} used.
    """
    mean: np.ndarray
    m_inf: np.ndarray
    coef: np.ndarray
    naive_mean: np.ndarray
    naive_cov: np.ndarray
    unexpanded: np.ndarray
    n_prev: int


def _quartic_terms(Vup, Phi, Gc, NA, nL):
    """The two v-dependent terms of (6.88) with v -> Vup (upper indices), Phi (N, n_L), G (N_B, N_B)."""
    vB = Vup[NA:]
    t1 = 0.5 * Gc @ np.einsum("pabc,ai,bk,ck->pi", vB, Phi, Phi, Phi, optimize=True)
    u = np.einsum("pqrd,di->pqri", vB[:, NA:, NA:], Phi)
    t2 = 0.5 * (nL * np.einsum("pq,sr,pqri->si", Gc, Gc, u, optimize=True)
                + 2 * np.einsum("sp,qr,pqri->si", Gc, Gc, u, optimize=True))
    return t1 + t2


def _naive(g, y, NA):
    """(6.81), (6.82) from g_{d1 d2} (lower indices) on D = A then B."""
    gA, gBA, gBB = g[:NA, :NA], g[NA:, :NA], g[NA:, NA:]
    Lc = _chol(gA, "the quadratic coupling's inverse on A")
    W = solve_triangular(Lc, gBA.T, lower=True)
    m = W.T @ solve_triangular(Lc, y, lower=True)
    Gc = gBB - W.T @ W
    return m, 0.5 * (Gc + Gc.T)


def finite_width_posterior_mean(K, V, n_prev, idx_A, idx_B, y_A, G1=None, noise_var=0.0):
    """Posterior mean of the outputs on B at finite width, book eqs. (6.79)-(6.88), to order 1/n.

    The prior of the outputs is the nearly-Gaussian action (6.79) with the quadratic coupling
    g^{d1 d2} of (4.109) (:func:`dlt.kernels.quadratic_coupling_nlo`, with the n_L output neurons)
    and the quartic coupling v = V^{(..)(..)}/n_{L-1} (4.82) (:func:`dlt.kernels.quartic_coupling`).
    With Phi = (y_A, m_B) (6.83), the naive mean m (6.81) and covariance G (6.82),

        <z_{i;b}> = m_{i;b} + 1/2 sum G_{b b1} sum_k v^{(b1 d1)(d2 d3)} Phi_{i;d1} Phi_{k;d2} Phi_{k;d3}
                  + 1/2 sum (n_L G_{b1 b2} G_{b b3} + 2 G_{b b1} G_{b2 b3})
                            v^{(b1 b2)(b3 d1)} Phi_{i;d1}                                     (6.88)

    (the printed (6.86) has a stray index delta for delta_1 in the cubic term). The sum over k mixes
    the output components: at finite width the outputs "wire together" (6.89). The naive part
    carries O(1/n) pieces of its own that the quartic terms largely cancel, and plugging a finite n
    into the matrix inverses adds spurious O(1/n^2) terms; so the result is *linearized*:
    ``mean = m_inf + coef/n_prev`` with coef = d/d(1/n) of (6.88) at 1/n = 0, in closed form:
    with g_{..} = K - K C K/n + O(1/n^2) (C the 1/n part of (4.109)), the naive mean contributes
    dm = dg_BA K~^{-1} y - K_BA K~^{-1} dg_AA K~^{-1} y, and the quartic terms are evaluated with the
    leading objects Phi = (y_A, m_inf), G = the GP posterior covariance (6.57).

    Parameters: ``K`` (N, N) leading kernel K^(L) on the data set; ``V`` (N,)*4 the vertex
    V^(L)_(..)(..) (lower indices, normalized by n_{L-1}); ``n_prev`` = n_{L-1}; ``idx_A``,
    ``idx_B`` disjoint positions; ``y_A`` (N_A, n_L) (n_L enters (6.88)); ``G1`` (N, N) the NLO metric
    G^{1}(L) (so G = K + G1/n_prev; zero for L = 2, needed for L >= 3); ``noise_var``: independent
    output noise on A (adds noise_var to the A-diagonal of the two-point function only).
    Returns a :class:`FiniteWidthPosterior`. Raises ValueError for bad shapes or indices, a kernel
    that is not positive definite on A u B, or a non-positive width."""
    K = _sym(K)
    N = K.shape[0]
    A, B = _partition(N, idx_A, idx_B)
    y, one = _targets(y_A, A.size)
    if isinstance(n_prev, bool) or not isinstance(n_prev, (int, np.integer)) or n_prev < 1:
        raise ValueError(f"n_prev must be a positive integer (the width n_(L-1)), got {n_prev!r}")
    V = np.asarray(V, dtype=float)
    if V.shape != (N,) * 4 or not np.all(np.isfinite(V)):
        raise ValueError(f"V must be a finite array of shape {(N,) * 4}, got {V.shape}")
    G1 = np.zeros((N, N)) if G1 is None else np.asarray(G1, dtype=float)
    if G1.shape != (N, N) or not np.all(np.isfinite(G1)):
        raise ValueError(f"G1 must be a finite array of shape {(N, N)}, got {G1.shape}")
    D = np.concatenate([A, B])
    Kn = K.copy()
    Kn[A, A] += _noise(noise_var)
    Kd, Vd, G1d = Kn[np.ix_(D, D)], V[np.ix_(D, D, D, D)], G1[np.ix_(D, D)]
    _chol(Kd, "the kernel on D = A u B")
    nL, NA = y.shape[1], A.size
    Ki = np.linalg.inv(Kd)
    C = quadratic_coupling_nlo(Kd, G1d, Vd, nL, 1) - Ki            # g^{..} = Ki + C/n (4.109)
    Vup = raise_vertex(Kd, Vd)                                     # v = Vup/n (4.82)
    # leading order: g_{..} = K, so (6.81), (6.82) are the GP mean (6.64) and covariance (6.57)
    m0, P = _naive(Kd, y, NA)
    # d/d(1/n): g_{..} = (Ki + C/n)^{-1} = K - K C K / n + ..., and v = Vup/n enters linearly
    dg = -Kd @ C @ Kd
    KAi_y = cho_solve((_chol(Kd[:NA, :NA]), True), y)
    dm = dg[NA:, :NA] @ KAi_y - Kd[NA:, :NA] @ cho_solve((_chol(Kd[:NA, :NA]), True),
                                                          dg[:NA, :NA] @ KAi_y)
    c = dm + _quartic_terms(Vup, np.concatenate([y, m0]), P, NA, nL)
    # unexpanded: (6.81), (6.82), (6.88) with the finite-n couplings
    g = np.linalg.inv(Ki + C / n_prev)
    naive, Gc = _naive(0.5 * (g + g.T), y, NA)
    full = naive + _quartic_terms(Vup / n_prev, np.concatenate([y, naive]), Gc, NA, nL)
    out = [m0 + c / n_prev, m0, c, naive, full]
    if one:
        out = [x[:, 0] for x in out]
    return FiniteWidthPosterior(out[0], out[1], out[2], out[3], Gc, out[4], int(n_prev))


def posterior_mean_finite_width(net, X_A, y_A, X_B, noise_var=0.0):
    """:func:`finite_width_posterior_mean` for the network ``net`` (L >= 2): K^(L), V^(L) and
    G^{1}(L) from :func:`dlt.kernels.preactivation_flow` on D = X_A then X_B, n_prev = n_{L-1}.
    X_A (N_A, n_0), y_A (N_A, n_L), X_B (N_B, n_0). Returns a :class:`FiniteWidthPosterior`."""
    net = _net(net)
    if net.L < 2:
        raise ValueError("a finite-width posterior needs a hidden layer (L >= 2)")
    X_A, X_B = _inputs(net, X_A, "X_A"), _inputs(net, X_B, "X_B")
    fl = preactivation_flow(net, np.concatenate([X_A, X_B]), nlo=True)
    NA, L = X_A.shape[0], net.L
    return finite_width_posterior_mean(fl.K[L], fl.V[L], net.widths[L - 1], np.arange(NA),
                                       NA + np.arange(X_B.shape[0]), y_A, G1=fl.G1[L],
                                       noise_var=noise_var)


# ----------------------------------------------------------------------------- §6.4.3 representations
def _update_core(K_AA, y):
    Lc = _chol(K_AA)
    KAi = cho_solve((Lc, True), np.eye(K_AA.shape[0]))
    return KAi @ (y @ y.T - y.shape[1] * K_AA) @ KAi        # K~^{a1a3}(Y - n_L K~)_{a3a4}K~^{a4a2}


def observable_update(cov_dG_O, K_AA, y_A):
    """Leading finite-width update of a penultimate-layer observable, book eq. (6.99):

        dO = 1/2 sum E[dG^_{a1 a2} O] K~^{a1 a3} K~^{a2 a4} sum_i (y_{i;a3} y_{i;a4} - K~_{a3 a4})

    ``cov_dG_O`` (N_A, N_A, ...) the prior covariance E[dG^(L)_{a1 a2} O] (6.100) (any trailing
    shape of the observable); ``K_AA`` (N_A, N_A); ``y_A`` (N_A, n_L). Returns an array of the
    observable's shape. Raises ValueError for bad shapes or a singular K_AA."""
    K = _sym(K_AA, "K_AA")
    y, _ = _targets(y_A, K.shape[0])
    c = np.asarray(cov_dG_O, dtype=float)
    if c.ndim < 2 or c.shape[:2] != K.shape:
        raise ValueError(f"cov_dG_O must have shape (N_A, N_A, ...) = {K.shape + ('...',)}, got {c.shape}")
    return 0.5 * np.tensordot(_update_core(K, y), c, axes=([0, 1], [0, 1]))


def representation_update(K, V, idx_A, y_A, C_W, n_prev):
    """Posterior shift of the penultimate-layer representation O_{d1 d2} = (1/n_{L-1}) sum_j
    sigma_{j;d1} sigma_{j;d2} (6.101), book eq. (6.104):

        dO_{d1 d2} = 1/(2 n_{L-1} C_W^(L)) sum V^(L)_{(d1 d2)(a1 a2)} K~^{a1 a3} K~^{a2 a4}
                     sum_i (y_{i;a3} y_{i;a4} - K~_{a3 a4}),

    for every pair d1, d2 of the data set (test inputs included). Zero at infinite width (6.71):
    no representation learning. Targets larger than the prior (Y > n_L K) raise the norm.
    ``K`` (N, N), ``V`` (N,)*4 of the output layer; ``idx_A`` observed positions; ``y_A``
    (N_A, n_L); ``C_W`` = C_W^(L) > 0; ``n_prev`` = n_{L-1}. Returns (N, N).
    Raises ValueError for bad shapes, a singular K~ or non-positive C_W / width."""
    K = _sym(K)
    N = K.shape[0]
    A = _index(idx_A, N, "idx_A")
    y, _ = _targets(y_A, A.size)
    V = np.asarray(V, dtype=float)
    if V.shape != (N,) * 4 or not np.all(np.isfinite(V)):
        raise ValueError(f"V must be a finite array of shape {(N,) * 4}, got {V.shape}")
    C_W = float(C_W)
    if not np.isfinite(C_W) or C_W <= 0:
        raise ValueError(f"C_W must be finite and > 0, got {C_W}")
    if isinstance(n_prev, bool) or not isinstance(n_prev, (int, np.integer)) or n_prev < 1:
        raise ValueError(f"n_prev must be a positive integer, got {n_prev!r}")
    M = _update_core(K[np.ix_(A, A)], y)
    return np.einsum("cdab,ab->cd", V[:, :, A][:, :, :, A], M) / (2 * n_prev * C_W)


def penultimate_update(net, X_A, y_A, X_B=None):
    """:func:`representation_update` for the network ``net`` (L >= 2) on D = X_A (then X_B, if
    given): K^(L), V^(L) from :func:`dlt.kernels.preactivation_flow`. Returns (N_D, N_D)."""
    net = _net(net)
    if net.L < 2:
        raise ValueError("a penultimate layer needs L >= 2")
    X_A = _inputs(net, X_A, "X_A")
    X = X_A if X_B is None else np.concatenate([X_A, _inputs(net, X_B, "X_B")])
    fl = preactivation_flow(net, X, nlo=False)
    L = net.L
    return representation_update(fl.K[L], fl.V[L], np.arange(X_A.shape[0]), y_A, net.C_W[L - 1],
                                 net.widths[L - 1])


# ----------------------------------------------------------------------------- exact reference
def posterior_importance_sampling(net, X_A, y_A, X_B, n_samples, seed, *, noise_var=0.0,
                                  n_batches=50):
    """Exact posterior of a real finite-width network by importance sampling its penultimate layer.

    Given the penultimate preactivations z^(L-1), the outputs are *exactly* Gaussian, independent
    across components, with the stochastic metric G^_{d1 d2} = C_b^(L) + C_W^(L)/n_{L-1} sum_j
    sigma_{j;d1} sigma_{j;d2} (4.69), (6.103). So with z^(L-1) drawn from real networks
    (:func:`dlt.networks.ensemble`, prior), the posterior (6.91) is the prior reweighted by
    w = prod_i N(y_{i;A}; 0, G^_AA + noise_var I) (6.94), and (Rao-Blackwellized)

        E[z_B | y_A]   = sum w G^_BA (G^_AA + noise_var I)^{-1} y_A / sum w
        dO_{d1 d2}     = sum w O / sum w - mean O,   O = (G^ - C_b)/C_W  (6.90), (6.101)

    No 1/n expansion is made: this is the reference the finite-width formulas are checked against.
    Error bars: delete-one-batch jackknife over ``n_batches`` batches (:func:`dlt.stats.jackknife`).

    X_A (N_A, n_0); y_A (N_A, n_L), or a stack (T, N_A, n_L) of T target sets that share the same
    sampled networks (common random numbers: differences between target sets are then precise);
    X_B (N_B, n_0) or None; D = X_A then X_B. ``n_samples`` networks; ``seed`` int or numpy Generator.
    Returns a dict: ``mean``, ``mean_se`` (N_B, n_L) (absent without X_B); ``dO``, ``dO_se``
    (N_D, N_D); ``prior_O`` (N_D, N_D) the prior mean of O; ``log_evidence``, ``log_evidence_se``
    (the finite-width log p(y_A)); ``ess`` (effective sample size (sum w)^2 / sum w^2); ``n_samples``.
    With a stack of targets every entry but ``prior_O`` and ``n_samples`` gets a leading axis T, and
    ``mean_diff_se``, ``dO_diff_se`` give the standard errors of ``mean[t] - mean[0]`` and
    ``dO[t] - dO[0]`` (jackknife on the shared samples, so far smaller than the separate errors).
    Raises ValueError for L < 2, bad shapes, too few samples."""
    net = _net(net)
    if net.L < 2:
        raise ValueError("importance sampling over the penultimate layer needs L >= 2")
    X_A = _inputs(net, X_A, "X_A")
    NA = X_A.shape[0]
    yy = np.asarray(y_A, dtype=float)
    stacked = yy.ndim == 3
    ys = [_targets(t, NA)[0] for t in (yy if stacked else [yy])]
    if len(ys) == 0 or ys[0].shape[1] != net.widths[-1]:
        raise ValueError(f"y_A must have shape (N_A={NA}, n_L={net.widths[-1]}) or (T, N_A, n_L), "
                         f"got {yy.shape}")
    X = X_A if X_B is None else np.concatenate([X_A, _inputs(net, X_B, "X_B")])
    s2 = _noise(noise_var)
    if (isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer))
            or n_samples < 2 * n_batches or n_batches < 2):
        raise ValueError(f"need n_batches >= 2 and an integer n_samples >= 2 n_batches, got "
                         f"n_samples={n_samples!r}, n_batches={n_batches!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    L, ND, nL, T = net.L, X.shape[0], ys[0].shape[1], len(ys)
    NB, k = ND - NA, ND * ND
    n, cb, cw = net.widths[L - 1], net.C_b[L - 1], net.C_W[L - 1]
    f = net.activation.f
    width = 2 + k + NB * nL                   # per target set: sum w, sum w^2, sum w O, sum w m
    edges = np.linspace(0, n_samples, n_batches + 1).astype(int)
    shared, per, mxs = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        z = ensemble(net, X, int(hi - lo), rng, layers=[L - 1], progress=False)[L - 1]
        s = f(z)
        O = s @ np.swapaxes(s, 1, 2) / n                                   # (S, N_D, N_D)
        GA = cb + cw * O[:, :NA, :NA] + s2 * np.eye(NA)
        sign, logdet = np.linalg.slogdet(GA)
        ok = (sign > 0) & np.isfinite(logdet)
        GA[~ok] = np.eye(NA)
        shared.append(np.concatenate([[hi - lo], O.sum(0).ravel()]))
        rows, mx_t = [], []
        for y in ys:
            sol = np.linalg.solve(GA, np.broadcast_to(y, (len(GA),) + y.shape))   # G^_AA^{-1} y
            logw = -0.5 * nL * (NA * _LOG2PI + logdet) - 0.5 * np.einsum("sai,ai->s", sol, y)
            logw = np.where(ok, logw, -np.inf)
            mx = logw.max()
            w = np.exp(logw - mx) if np.isfinite(mx) else np.zeros_like(logw)
            row = [[w.sum(), (w ** 2).sum()], np.einsum("s,sab->ab", w, O).ravel()]
            if NB:
                m = np.einsum("sba,sai->sbi", cb + cw * O[:, NA:, :NA], sol)
                row.append(np.einsum("s,sbi->bi", w, m).ravel())
            rows.append(np.concatenate(row))
            mx_t.append(mx)
        per.append(rows)
        mxs.append(mx_t)
    mxs = np.array(mxs)                                                  # (batches, T)
    ref = mxs.max(0)
    if not np.all(np.isfinite(ref)):
        raise ValueError("every sample has zero likelihood (singular stochastic metrics)")
    scale = np.exp(mxs - ref)                                            # (batches, T)
    per = np.array(per) * scale[:, :, None]                              # (batches, T, width)
    per[:, :, 1] *= scale                                                # w^2 scales twice
    table = np.concatenate([np.array(shared), per.reshape(n_batches, T * width)], axis=1)

    def est(b):
        t = b.sum(0)
        cnt, prior = t[0], t[1:1 + k] / t[0]
        out, dO, mean = [prior], [], []
        for j in range(T):
            r = t[1 + k + j * width:1 + k + (j + 1) * width]
            dO.append(r[2:2 + k] / r[0] - prior)
            mean.append(r[2 + k:] / r[0])
            out += [dO[-1], [np.log(r[0] / cnt) + ref[j]], mean[-1]]
        out += [d - dO[0] for d in dO] + [m - mean[0] for m in mean]       # contrasts with set 0
        return np.concatenate([np.ravel(p) for p in out])

    val, se = jackknife(est, table, n_batches=n_batches)
    res = {"prior_O": val[:k].reshape(ND, ND), "n_samples": int(n_samples)}
    keys = {"dO": [], "dO_se": [], "log_evidence": [], "log_evidence_se": [], "ess": [], "mean": [],
            "mean_se": []}
    tot = per.sum(0)                                                     # (T, width)
    pos = k
    for j in range(T):
        keys["dO"].append(val[pos:pos + k].reshape(ND, ND))
        keys["dO_se"].append(se[pos:pos + k].reshape(ND, ND))
        keys["log_evidence"].append(float(val[pos + k]))
        keys["log_evidence_se"].append(float(se[pos + k]))
        keys["mean"].append(val[pos + k + 1:pos + k + 1 + NB * nL].reshape(NB, nL))
        keys["mean_se"].append(se[pos + k + 1:pos + k + 1 + NB * nL].reshape(NB, nL))
        keys["ess"].append(float(tot[j, 0] ** 2 / tot[j, 1]))
        pos += k + 1 + NB * nL
    keys["dO_diff_se"] = [se[pos + j * k:pos + (j + 1) * k].reshape(ND, ND) for j in range(T)]
    pos += T * k
    keys["mean_diff_se"] = [se[pos + j * NB * nL:pos + (j + 1) * NB * nL].reshape(NB, nL) for j in range(T)]
    if not NB:
        del keys["mean"], keys["mean_se"], keys["mean_diff_se"]
    for key, v in keys.items():
        res[key] = (np.array(v) if stacked else v[0])
    return res
