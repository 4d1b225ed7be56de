"""The RG flow of preactivations (book chapter 4): kernel K, four-point vertex V, NLO metric G^{1}.

For any activation, N inputs, per-layer widths / C_b / C_W, to leading order in 1/n (K = K^(l),
C = C^(l+1), r = n_l / n_{l-1}, s_a = sigma(z_a)):

  (4.118)  K^(l+1)_ab = C_b + C_W <s_a s_b>_K
  (4.119)  V^(l+1)_(ab)(cd) = C_W^2 [<s_a s_b s_c s_d>_K - <s_a s_b>_K <s_c s_d>_K]
               + r C_W^2/4 sum V^(gd)(ef) <s_a s_b (z_g z_d - K_gd)>_K <s_c s_d (z_e z_f - K_ef)>_K
  (4.115)  G^{1}(l+1)_ab = C_W r [1/2 sum G^{1}_gd H_ab,gd + 1/8 sum V_(gd)(ef) Q_ab,gdef]

V^(l) and G^{1}(l) are normalized by n_{l-1}: G^(l) = K^(l) + G^{1}(l)/n_{l-1} + O(1/n^2) (4.104) and
the connected four-point function is V/n_{l-1} times three pairings (4.117).

Block-local form. H_ab,gd = <d_g d_d (s_a s_b)>_K and Q_ab,gdef = <d_g d_d d_e d_f (s_a s_b)>_K vanish
unless g, d, e, f lie in {a, b}; Gaussian integration by parts turns the raised-index sums of (4.119)
into sum H_ab,gd V_(gd)(ef) H_cd,ef with the vertex lowered, and the three terms of (4.115) into the
compact form above (the Edgeworth correction of <s s> from a metric shift G^{1}/n plus the fourth
cumulant). H and Q are computed in "z-form" on the 1x1 or 2x2 block B of K with the inverse of that
block, w = B^{-1} z: H = <s s (w_g w_d - B^gd)>, Q = <s s He4(w; B^{-1})>, which needs no derivative of
sigma and works for kinked sigma. Entries of V involve at most four samples, of G^{1} at most two.

Gaussian integrals, vectorized over blocks; deg = DEG = 96 by default. Rules: Gauss-Hermite for
sin, polynomials and user-defined sigma; the trapezoid rule of dlt.gaussian for tanh, sigmoid,
softplus, swish (poles near the real axis: Gauss-Hermite converges only like exp(-c sqrt(deg))) and
for gelu, erf (entire, but growing like exp(y^2) off the axis: Gauss-Hermite degrades once
K >~ 2). On sigma(a u) the trapezoid rule of spacing h errs by ~exp(-2 pi delta / (|a| h)), delta
the half-width of sigma's strip of analyticity (pi/2 for tanh), so every scheme below keeps the
coefficients |a| of the grid variables small or the spacing fine.
* 1-sample blocks (S2_aa, <s_a^4>, H_aa,aa, Q_aa,aaaa): one evaluation of sigma on a 1-D rule, the
  trapezoid rule on [-12, 12] (481 nodes, the Mehler rule) for smooth sigma, even-degree
  Gauss-Hermite (exact for the piecewise polynomials) for kinked sigma.
* <s_a s_b> (and <s'_a s'_b> for the NTK): closed forms (linear, ReLU family, erf, sin) of
  dlt.activations; other smooth sigma by a Mehler (Hermite) series in the correlation with a per-pair
  error bound (order 128, then 640 for nearly parallel inputs, where the series converges only as fast
  as the Hermite coefficients decay); the pairs still above the bound (nearly parallel inputs at
  variances >~ 5) by a conditional (u, y) trapezoid grid with few y nodes (sigma with poles) or 2-D
  quadrature.
* H and Q of 2-sample blocks: z = A u (Cholesky); the Hermite tensors transform covariantly,
  He_k(w; B^-1) = (A^-T)^(x k) He_k(u), so k + 1 scalar moments <s s He_i(u_1) He_j(u_2)> on a
  deg x deg grid (smooth sigma) or the polar rule (kinked sigma) give all of H (k = 2), Q (k = 4).
* <prod s_i^p_i> of smooth sigma on blocks of m = 2, 3, 4 samples (the entries of S4): condition on
  all samples but one. With z = C v (Cholesky, v standard normal) the last sample is
  z_m = t + sig y, t = c.v, y independent, so E[s_m^p | v] = Phi_p(t) = E_y[s(t + sig y)^p]. The
  orthogonal change of variables v = Q u (QR of [c, C_{m-1}, ..., C_2]) puts t along u_1 and
  z_{m-1} in the (u_1, u_2) plane: Phi_p is needed at the nodes of u_1 only (a 1-D rule in y for
  each; no interpolation, the identity is exact), and on the remaining (m-1)-D tensor grid sigma is
  evaluated for two samples (m = 4: 2 (deg/2)^3 evaluations per block, was 4 (deg/3)^4). Which
  sample is conditioned out is chosen per block to minimize the largest grid coefficient |a|
  (Phi_p counts as sigma of coefficient r / (1 + 2 sig^2 / (h r)): smoothing by sig damps its
  Fourier transform by exp(-sig^2 w^2 / 2) at w = 2 pi / h; the y rule counts with coefficient
  sig). Grids: m = 2: 1.5 deg nodes (u and y), m = 3: deg^2 (y: deg), m = 4: (deg/2)^3 (y: deg).
  For sigma with poles (tanh, sigmoid, softplus, swish) a block whose smallest achievable cost |a| h
  still exceeds 0.36 (large variances: 4-sample blocks beyond K ~ 1.3) gets a grid refined up to 3x
  per axis, and so do the 2-sample grids of H and Q (was: 5e-7 relative error in V for tanh at
  variances 6.8; now 2e-12). Error control: only these quadrature errors; measured against plain
  tensor grids at high degree (tests: tanh, gelu ~4e-15 at K ~ 1) and at 1.5-2.5x the degree: tanh
  flows 1e-11 (variances 3.7) to 2e-10 (8 inputs in 4 dimensions, a singular first-layer kernel
  with variances 2.4) relative in V, gelu 1e-12 (variances 3.9).
* kinked sigma (scale-invariant family s(z) = c+ z (z > 0), c- (-z) (z < 0); perceptron): on a
  2-sample block the kinks are rays of the whitened plane, so a polar rule split at the rays
  (Gauss-Legendre in angle, Gauss-Laguerre in r^2/2) is exact to rounding. 3-, 4-sample blocks
  condition on two samples and integrate the others in closed form (partial moments; Owen's T, once
  per node: leaky ReLU as c z^+ + a z); the conditional means add near-kinks, so the polar rule is
  also split at their zero lines and graded towards r = 0: ~1e-12 (flows, against a 4x finer
  rule), ~1e-9 on nearly singular 4x4 blocks.

The index bookkeeping for N inputs (pairs, blocks, scatter / gather maps) is built once per N
(_plan) and shared by every layer, so one input costs a few vector operations per layer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from types import SimpleNamespace

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy.special import ndtr, owens_t, roots_laguerre

from .activations import closed_form_expectation, closed_form_pair, get_activation
from .gaussian import gaussian_expectation, quadrature_nodes
from .networks import MLP

__all__ = ["Flow", "first_layer_metric", "gaussian_tensors", "kernel_step", "vertex_step",
           "nlo_metric_step", "preactivation_flow", "kernel_fn", "raise_vertex", "quartic_coupling",
           "quadratic_coupling_nlo", "quartic_two_point", "quartic_connected_four_point",
           "running_coupling"]

DEG = 96                     # quadrature nodes per axis (3-D grids of the 4-sample blocks: DEG/2)
_NODES = 1 << 18             # blocks x nodes per batched grid evaluation (bounds memory and cache)
_MEHLER = (481, 128, 1e-12)  # 1-D trapezoid nodes, series length, per-pair error bound
_MEHLER_LONG = (961, 640)    # nodes and length of the second-stage series (nearly parallel inputs)
_PAIRS = (("gd", "ef"), ("ge", "df"), ("gf", "de"))
_STRIP = ("tanh", "sigmoid", "softplus", "swish", "gelu", "erf")  # trapezoid rule (docstring)
_POLES = _STRIP[:4]  # poles near the real axis: trapezoid grids refined at large variances
_PATTERNS = {1: ((4,),), 2: ((1, 3), (2, 2), (3, 1)), 3: ((2, 1, 1), (1, 2, 1), (1, 1, 2)),
             4: ((1, 1, 1, 1),)}  # powers of the distinct samples of a block in S4's entries


# ----------------------------------------------------------------------------- validation
def _kernel(K, name="K"):
    try:
        K = np.asarray(K, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real (N, N) array") from e
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0 or not np.all(np.isfinite(K)):
        raise ValueError(f"{name} must be a finite array of shape (N, N), got shape {K.shape}")
    scale = max(np.abs(K).max(), 1e-300)
    if np.abs(K - K.T).max() > 1e-12 * scale or np.linalg.eigvalsh(K).min() < -1e-12 * scale:
        raise ValueError(f"{name} must be symmetric positive semi-definite")
    return 0.5 * (K + K.T)


def _tensor(T, N, rank, name):
    T = np.asarray(T, dtype=float)
    if T.shape != (N,) * rank or not np.all(np.isfinite(T)):
        raise ValueError(f"{name} must be a finite array of shape {(N,) * rank}, got {T.shape}")
    return T


def _nonneg(x, name):
    x = float(x)
    if not np.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {x}")
    return x


def _inputs(net, X, name="X"):
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a dlt.networks.MLP, got {type(net).__name__}")
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != net.widths[0] or not np.all(np.isfinite(X)):
        raise ValueError(f"{name} must be finite with shape (N_D >= 1, n_0={net.widths[0]}), "
                         f"got shape {X.shape}")
    return X


def _deg(deg):
    if isinstance(deg, bool) or not isinstance(deg, (int, np.integer)) or deg < 8 or deg % 2:
        raise ValueError(f"deg must be an even integer >= 8, got {deg!r}")
    return int(deg)


# ----------------------------------------------------------------------------- quadrature
def _kinks(act):
    """(k, c+, c-) with s(z) = c+ z^k (z > 0), c- (-z)^k (z < 0) for kinked sigma, else None."""
    if act.scale_invariant and act.a_plus != act.a_minus:
        return 1, act.a_plus, -act.a_minus
    return (0, 1.0, 0.0) if act.name == "perceptron" else None


def _rule_name(act):
    return "trapezoid" if act.name in _STRIP else "hermite"


@lru_cache(maxsize=16)
def _rule(n, rule):
    """1-D nodes and weights (n,) for N(0, 1): the grid rule of dlt.gaussian.gaussian_expectation."""
    u, w = quadrature_nodes(1, n, rule)
    return u[:, 0], w


def _grid_expect(f, Kb, deg, rule="hermite"):
    """<f(z, s)>_{Kb}, Kb (B, m, m), m <= 2, on a tensor grid, chunked over blocks (s: the slice)."""
    step = max(1, _NODES // deg ** Kb.shape[-1])
    return np.concatenate([gaussian_expectation(lambda z, s=s: f(z, s), Kb[s], deg=deg, rule=rule)
                           for s in (slice(i, i + step) for i in range(0, len(Kb), step))])


@lru_cache(maxsize=4)
def _polar_rule(radial):
    """Gauss-Legendre arc nodes on [-1, 1]; radial nodes, weights for the measure r e^{-r^2/2} dr."""
    if radial == "laguerre":  # exact for even polynomials in r up to degree 14
        t, wr = roots_laguerre(4)
        return (*leggauss(16), np.sqrt(2 * t), wr)
    # composite Gauss-Legendre on [0, 11], panels graded towards 0, for smooth radial integrands
    # with boundary layers (conditional moments of nearly degenerate blocks)
    x, wx = leggauss(10)
    edges = np.array([0, 0.1, 0.4, 1.2, 2.6, 4.5, 7.0, 11.0])
    lo, hi = edges[:-1, None], edges[1:, None]
    r, wr = (lo + (hi - lo) * (1 + x) / 2).ravel(), ((hi - lo) / 2 * wx).ravel()
    return (*leggauss(24), r, wr * r * np.exp(-r * r / 2))


def _polar_nodes(Kb, radial="laguerre", lines=None):
    """Nodes z (B, P, 2) and weights (B, P) for N(0, Kb), Kb (B, 2, 2), split at the kinks.

    z = A xi with A A^T = Kb; in the xi plane the kinks z_i = 0 are lines through 0 that cut the
    angle into arcs, on each of which a piecewise-homogeneous integrand is smooth. lines (B, k, 2):
    further linear forms of z whose zero lines also cut (near-kinks of conditional moments)."""
    A = np.zeros_like(Kb)  # Cholesky, exact for singular blocks (a repeated input)
    A[:, 0, 0] = np.sqrt(np.maximum(Kb[:, 0, 0], 1e-300))
    A[:, 1, 0] = Kb[:, 0, 1] / A[:, 0, 0]
    A[:, 1, 1] = np.sqrt(np.maximum(Kb[:, 0, 0] * Kb[:, 1, 1] - Kb[:, 0, 1] ** 2, 0)) / A[:, 0, 0]
    rows = A if lines is None else np.concatenate([A, lines @ A], axis=1)
    th = np.arctan2(-rows[:, :, 0], rows[:, :, 1]) % np.pi
    cuts = np.sort(np.concatenate([th, th + np.pi], axis=1), axis=1)
    lo, hi = cuts, np.concatenate([cuts[:, 1:], cuts[:, :1] + 2 * np.pi], axis=1)
    u, wu, r, wr = _polar_rule(radial)
    ang = ((lo + hi) / 2)[..., None] + ((hi - lo) / 2)[..., None] * u             # (B, arcs, n)
    xi = np.stack([np.cos(ang), np.sin(ang)], -1)[..., None, :] * r[:, None]       # (B, arcs, n, R, 2)
    z = (A[:, None, None, None] @ xi[..., None])[..., 0].reshape(len(Kb), -1, 2)  # A xi
    w = (((hi - lo) / (4 * np.pi))[..., None] * wu)[..., None] * wr
    return z, w.reshape(len(Kb), -1)


def _expect(act, f, Kb, deg):
    """<f(z, s)>_{Kb} for 2-sample blocks Kb (B, 2, 2): polar rule (kinked sigma) or a grid."""
    if _kinks(act) is None:
        return _grid_expect(f, Kb, deg, _rule_name(act))
    z, w = _polar_nodes(Kb)
    return np.einsum("bp...,bp->b...", f(z, slice(None)), w)


def _chol(Kb):
    """Lower-triangular C with C C^T = Kb for PSD blocks Kb (B, m, m); a zero pivot (a singular
    block) gives a zero column."""
    C = np.zeros_like(Kb)
    for j in range(Kb.shape[-1]):
        C[:, j, j] = np.sqrt(np.maximum(Kb[:, j, j] - np.sum(C[:, j, :j] ** 2, -1), 0))
        piv = np.where(C[:, j, j] > 0, C[:, j, j], np.inf)[:, None]
        C[:, j + 1:, j] = (Kb[:, j + 1:, j] - np.einsum("bik,bk->bi", C[:, j + 1:, :j], C[:, j, :j])) / piv
    return C


def _pow(a, q):
    """a ** q for a small integer q >= 1 by multiplication (np.power is slow for q = 3)."""
    return a if q == 1 else a * _pow(a, q - 1)


_BASE = 8  # factor code e = p + _BASE q stands for sigma^p sigma'^q at one sample (p, q < _BASE)


def _fac(s, ds, e):
    """sigma^p sigma'^q for the factor code e = p + _BASE q (e >= 1), given s = sigma, ds = sigma'."""
    p, q = e % _BASE, e // _BASE
    out = _pow(s, p) if p else None
    return out if not q else _pow(ds(), q) if out is None else out * _pow(ds(), q)


def _frame(Kb):
    """The rotated frame of blocks Kb (B, m, m) whose last sample is conditioned out: z_j = A_j . u
    (j < m - 1; A (B, d, d), d = m - 1, A_j zero beyond its first min(d + 1 - j, d) entries), and
    z_m = r u_1 + sig y (r, sig (B,)); u, y independent standard normal."""
    d = Kb.shape[-1] - 1
    C = _chol(Kb)
    c, sig = C[:, d, :d], C[:, d, d]
    Q = np.linalg.qr(np.stack([c] + [C[:, j, :d] for j in range(d - 1, 0, -1)], -1),
                     mode="complete")[0]
    return C[:, :d, :d] @ Q, np.einsum("bi,bi->b", c, Q[:, :, 0]), sig


def _conditioning_order(Kb, h, hy):
    """Per block (B, m, m), the order of its samples (B, m) with the best sample to condition out
    last, and the cost (B,) of that choice, in units of the grid spacing h. The trapezoid rule of
    spacing h errs on sigma(a u) by ~exp(-2 pi delta / (|a| h)), delta the half-width of sigma's
    strip of analyticity, so the cost of a choice is the largest effective coefficient: the grid
    coefficients |A_jk|; for Phi(r u_1), sigma smoothed by sig (Fourier transform damped by
    exp(-sig^2 w^2 / 2) at w = 2 pi / h), the effective r / (1 + 2 sig^2 / (h r)); and sig hy / h for
    the rule of spacing hy in y that computes Phi."""
    m = Kb.shape[-1]
    orders = np.array([[j for j in range(m) if j != k] + [k] for k in range(m)])
    cost = []
    for o in orders:
        A, r, sig = _frame(Kb[:, o][:, :, o])
        r = np.abs(r)
        cost.append(np.maximum.reduce([np.abs(A).max(axis=(1, 2)), r / (1 + 2 * sig ** 2 / (h * r + 1e-300)),
                                       sig * hy / h]))
    return orders[np.argmin(cost, axis=0)], np.min(cost, axis=0)


_AH = 0.36  # largest |a| h (grid coefficient x trapezoid spacing) allowed: error ~exp(-2 pi delta/(|a| h))


def _refinement(ah):
    """Per block, the factor (1, 1.5, ..., 3) by which a trapezoid grid must be refined so that its
    largest coefficient times its spacing, ah on the base grid, stays <= _AH (tanh: error ~1e-12)."""
    return np.clip(np.ceil(2 * ah / _AH) / 2, 1, 3)


def _conditioned(act, Kb, pats, deg):
    """<prod_i f_i(z_i)>_{Kb} for each pattern p in pats (tuples of length m of factor codes, f_i =
    sigma^p sigma'^q for the code p_i = p + _BASE q; a set closed under permutations), blocks Kb
    (B, m, m), m = 2..4, smooth sigma, by conditioning on all samples but one (module docstring).
    Returns (B, len(pats)).

    Trapezoid rule, sigma with poles (_POLES): blocks whose largest coefficient times the spacing
    exceeds _AH (large variances)
    get a grid refined by _refinement (at most 3x per axis), so that the error
    exp(-2 pi delta / (|a| h)) stays below ~1e-12."""
    d, rule = Kb.shape[-1] - 1, _rule_name(act)
    n = {1: min(3 * deg // 2, 256), 2: deg, 3: deg // 2}[d]  # nodes per axis of the (m-1)-D grid
    x, y = _rule(n, rule)[0], _rule(n if d == 1 else deg, rule)[0]
    h = x[n // 2] - x[n // 2 - 1]
    order, cost = _conditioning_order(Kb, h, y[1] - y[0] if rule == "trapezoid" else 0.0)
    Kb = np.take_along_axis(np.take_along_axis(Kb, order[:, :, None], 1), order[:, None, :], 2)
    scale = _refinement(cost * h) if act.name in _POLES else np.ones(len(Kb))
    out = np.empty((len(Kb), len(pats)))
    for f in np.unique(scale):
        sel = scale == f
        nf = 2 * int(round(n * f / 2))
        ny = nf if d == 1 else 2 * int(round(deg * f / 2))
        out[sel] = _conditioned_grid(act, Kb[sel], pats, d, nf, ny, rule)
    P, code = np.array(pats), (_BASE * _BASE) ** np.arange(d + 1)  # find each pattern after reordering
    pos = np.searchsorted(np.sort(P @ code), P[:, order] @ code)  # (len(pats), B)
    return np.take_along_axis(out[:, np.argsort(P @ code)], pos.T, 1)


def _conditioned_grid(act, Kb, pats, d, n, ny, rule):
    """The body of _conditioned on reordered blocks: an n-node rule per axis of the d-D grid and an
    ny-node rule in y (for Phi_p(t) at the n nodes of u_1). Returns (B, len(pats)), pattern order."""
    x, w = _rule(n, rule)
    y, wy = _rule(ny, rule)

    def on_grid(a):  # a (B, k) -> a_1 x + ... + a_k x on the k-D grid, shape (B,) + (n,) * k
        z = a[:, :1] * x
        for k in range(1, a.shape[1]):
            z = z[..., None] + a[:, k].reshape((-1,) + (1,) * (k + 1)) * x
        return z

    def integrate(factors):  # sum of the product over the grid; factor i is (B,) + (n,) * k_i
        acc = None
        for D in range(d, 0, -1):
            for f in (f for f in factors if f.ndim == D + 1):
                acc = f if acc is None else acc * f
            acc = acc @ w
        return acc

    def chunk(Kb):
        A, r, sig = _frame(Kb)
        zs = [on_grid(A[:, j, :min(d + 1 - j, d)]) for j in range(d)]
        s, ds = [act.f(z) for z in zs], [lru_cache(1)(lambda z=z: act.df(z)) for z in zs]
        zy = (r[:, None] * x)[..., None] + sig[:, None, None] * y
        sy, dsy = act.f(zy), lru_cache(1)(lambda: act.df(zy))
        phi = {e: _fac(sy, dsy, e) @ wy for e in {p[-1] for p in pats}}
        return np.stack([integrate([_fac(s[j], ds[j], e) for j, e in enumerate(p[:-1])] + [phi[p[-1]]])
                         for p in pats], -1)

    step = max(1, _NODES // n ** d)
    return np.concatenate([chunk(Kb[i:i + step]) for i in range(0, len(Kb), step)])


def _partial(e, mu, s):
    """E[(x^+)^e] for x ~ N(mu, s^2), e in {0, 1, 2}."""
    t = mu / s
    if e == 0:
        return ndtr(t)
    P, p = ndtr(t), np.exp(-t * t / 2) / np.sqrt(2 * np.pi)
    return mu * P + s * p if e == 1 else (mu * mu + s * s) * P + mu * s * p


def _orthant(kk, mx, my, sx, sy, rho):
    """E[(x^+)^kk (y^+)^kk], kk in {0, 1}, (x, y) Gaussian: means mx, my, sds sx, sy, corr rho."""
    h, k = np.where(mx == 0, 1e-150, mx / sx), np.where(my == 0, 1e-150, my / sy)
    q = np.sqrt(1 - rho * rho)
    P = (0.5 * (ndtr(h) + ndtr(k)) - owens_t(h, (k - rho * h) / (h * q))  # bivariate CDF (Owen)
         - owens_t(k, (h - rho * k) / (k * q)) - 0.5 * (h * k < 0))
    if kk == 0:
        return P
    ph, pk = np.exp(-h * h / 2) / np.sqrt(2 * np.pi), np.exp(-k * k / 2) / np.sqrt(2 * np.pi)
    A, B = ph * ndtr((k - rho * h) / q), pk * ndtr((h - rho * k) / q)
    phi2 = np.exp(-(h * h - 2 * rho * h * k + k * k) / (2 * q * q)) / (2 * np.pi * q)
    Euv = rho * P - rho * h * A - rho * k * B + q * q * phi2
    return mx * my * P + mx * sy * (B + rho * A) + my * sx * (A + rho * B) + sx * sy * Euv


def _kinked_pair(kk, cp, cm, mx, my, sx, sy, rho):
    """E[s(x) s(y)] for s(z) = cp (z^+)^kk + cm ((-z)^+)^kk, (x, y) Gaussian (means, sds, corr).

    For kk = 1, s(z) = c z^+ + a z (c = cp + cm, a = -cm): one orthant moment (Owen's T), the
    half-linear E[x^+ y] = my E[x^+] + rho sx sy P(x > 0) and E[x y]."""
    if kk == 0:
        return sum(c1 * c2 * _orthant(0, s1 * mx, s2 * my, sx, sy, s1 * s2 * rho)
                   for s1, c1 in ((1, cp), (-1, cm)) for s2, c2 in ((1, cp), (-1, cm)) if c1 * c2)
    c, a = cp + cm, -cm
    out = c * c * _orthant(1, mx, my, sx, sy, rho)
    if a:
        def half(mx, my, sx, sy):
            return my * _partial(1, mx, sx) + rho * sx * sy * _partial(0, mx, sx)
        out = out + c * a * (half(mx, my, sx, sy) + half(my, mx, sy, sx)) + a * a * (
            mx * my + rho * sx * sy)
    return out


def _kinked_mixed(cp, cm, mx, my, sx, sy, rho):
    """E[s(x) s'(y)] for s(z) = cp z^+ + cm (-z)^+ = c z^+ + a z (c = cp + cm, a = -cm), so
    s'(y) = c theta(y) + a; (x, y) Gaussian (means, sds, corr). E[x^+ theta(y)] is the first
    truncated moment of the bivariate normal over the positive quadrant."""
    c, a = cp + cm, -cm
    h, k = mx / sx, my / sy
    q = np.sqrt(1 - rho * rho)
    ph, pk = np.exp(-h * h / 2) / np.sqrt(2 * np.pi), np.exp(-k * k / 2) / np.sqrt(2 * np.pi)
    xt = mx * _orthant(0, mx, my, sx, sy, rho) + sx * (ph * ndtr((k - rho * h) / q)
                                                        + rho * pk * ndtr((h - rho * k) / q))
    return (c * c * xt + c * a * _partial(1, mx, sx) + a * c * (mx * ndtr(k) + rho * sx * pk)
            + a * a * mx)


def _kinked_moments(act, Kb, pats):
    """<prod_i f_i(z_i)> for kinked sigma (k = 1 in _kinks: the scale-invariant family; or a step
    function with sigma'-free codes) and each pattern p in pats (tuples of length m of factor codes,
    f_i = sigma^p sigma'^q for p_i = p + _BASE q), blocks Kb (B, m, m), m = 3, 4. Returns
    (B, len(pats)).

    Polar rule over (z_0, z_1), split at the kinks and at the zero lines of the conditional means;
    the rest, Gaussian given (z_0, z_1), is integrated in closed form (m = 4: each remaining sample
    carries one factor sigma or sigma')."""
    kk, cp, cm = _kinks(act)
    M = Kb[:, 2:, :2] @ np.linalg.pinv(Kb[:, :2, :2])  # conditional means M z
    z, w = _polar_nodes(Kb[:, :2, :2], radial="gl", lines=M)
    C = Kb[:, 2:, 2:] - M @ np.swapaxes(Kb[:, 2:, :2], 1, 2)
    mu = M[:, None, :, 0] * z[..., :1] + M[:, None, :, 1] * z[..., 1:]  # (B, P, m - 2)
    sd = np.sqrt(np.maximum(np.diagonal(C, axis1=1, axis2=2), 1e-30 * np.abs(Kb).max()))[:, None]
    s, ds = act.f(z), lru_cache(1)(lambda: act.df(z))
    if Kb.shape[-1] == 3:  # s^p s'^q = cp^(p+q) (x^+)^p on x > 0, cm^p (-cm)^q ((-x)^+)^p on x < 0
        m0, s0 = mu[..., 0], sd[..., 0]
        rest = {e: cp ** (e % _BASE + e // _BASE) * _partial(kk * (e % _BASE), m0, s0)
                + cm ** (e % _BASE) * (-cm) ** (e // _BASE) * _partial(kk * (e % _BASE), -m0, s0)
                for e in {p[2] for p in pats}}
    else:
        rho = np.clip(C[:, 0, 1] / np.prod(sd[:, 0], -1), -1 + 1e-15, 1 - 1e-15)[:, None]
        mx, my, sx, sy = mu[..., 0], mu[..., 1], sd[..., 0], sd[..., 1]
        rest = {}
        for e3, e4 in {p[2:] for p in pats}:
            if e3 == e4 == 1:
                rest[e3, e4] = _kinked_pair(kk, cp, cm, mx, my, sx, sy, rho)
            elif e3 == e4 == _BASE:  # sigma' = cp theta(z) + (-cm) theta(-z): a step function
                rest[e3, e4] = _kinked_pair(0, cp, -cm, mx, my, sx, sy, rho)
            elif (e3, e4) == (1, _BASE):
                rest[e3, e4] = _kinked_mixed(cp, cm, mx, my, sx, sy, rho)
            else:
                rest[e3, e4] = _kinked_mixed(cp, cm, my, mx, sy, sx, rho)
    return np.stack([np.sum(_fac(s[..., 0], lambda: ds()[..., 0], p[0])
                            * _fac(s[..., 1], lambda: ds()[..., 1], p[1])
                            * rest[p[2] if len(p) == 3 else p[2:]] * w, -1) for p in pats], -1)


# ----------------------------------------------------------------------------- Gaussian tensors
def _s2(act, kd, ia, ib, k12, deg=DEG, d=0):
    """<s_a s_b> (d = 0) or <s'_a s'_b> (d = 1) for pairs with K_aa = kd[ia], K_bb = kd[ib],
    K_ab = k12 (ia, ib broadcast to k12's shape); ia == ib must mean the same input. Closed form,
    else polar rule (kinked sigma), else the Mehler series."""
    fn = act.df if d else act.f
    if closed_form_expectation(act, np.eye(2)[None], (d, d)) is None and _kinks(act) is None:
        return _mehler(act, kd, ia, ib, k12, deg, fn)
    out = closed_form_pair(act, kd[ia], k12, kd[ib], (d, d))
    if out is None:
        Kb = np.empty(k12.shape + (2, 2))
        Kb[..., 0, 0], Kb[..., 0, 1], Kb[..., 1, 0], Kb[..., 1, 1] = kd[ia], k12, k12, kd[ib]
        out = _expect(act, lambda z, s: fn(z[..., 0]) * fn(z[..., 1]), Kb.reshape(-1, 2, 2),
                      deg).reshape(k12.shape)
    return np.asarray(out, dtype=float)


@lru_cache(maxsize=2)
def _hermite(D, n):
    """Trapezoid nodes on [-12, 12] (D of them), weights for N(0, 1), and the orthonormal Hermite
    polynomials He_j / sqrt(j!) there, j <= n (the trapezoid rule also suits sigma with poles)."""
    x = np.linspace(-12, 12, D)
    He = np.zeros((D, n + 1))
    He[:, 0], He[:, 1] = 1.0, x
    for j in range(1, n):
        He[:, j + 1] = (x * He[:, j] - np.sqrt(j) * He[:, j - 1]) / np.sqrt(j + 1)
    return x, (x[1] - x[0]) * np.exp(-x * x / 2) / np.sqrt(2 * np.pi), He


def _horner(c, ia, ib, rho, n):
    """sum_{j <= n} rho^j c[ia, j] c[ib, j] as two Horner chains in rho^2 (one is 0 for odd/even s)."""
    out, r2 = np.zeros_like(rho), rho * rho
    for parity in (0, 1):
        js = np.arange(parity, n + 1, 2)
        if np.abs(c[:, js]).max() > 1e-15 * np.abs(c).max():
            acc = np.zeros_like(rho)
            for j in js[::-1]:
                acc *= r2
                acc += c[ia, j] * c[ib, j]
            out += acc * rho if parity else acc
    return out


def _mehler(act, kd, ia, ib, k12, deg, fn=None):
    """Mehler series <s_a s_b> = sum_j rho^j c_j(K_aa) c_j(K_bb), c_j(k) = <s(sqrt(k) x) He_j(x)>/sqrt(j!)
    (s = fn, default sigma; fn = sigma' gives <s'_a s'_b>).

    The error after term n is <= |rho|^{n+1} t_n(K_aa) t_n(K_bb) (Cauchy-Schwarz; tails t_n by
    Parseval). The series stops at the smallest n (step 8) leaving <= 0.5% of the pairs above the
    bound _MEHLER[2]; those get the full series and, if still above it (nearly parallel inputs at
    large variance, where the series converges only as fast as the Hermite coefficients decay), the
    series to order 640 on a 961-node grid (_MEHLER_LONG), then 2-D quadrature."""
    D, nmax, tol = _MEHLER
    x, w, He = _hermite(D, nmax)
    fn = fn or act.f
    sv = fn(np.sqrt(kd)[:, None] * x)
    c, s2 = (sv * w) @ He, (sv * sv) @ w
    tail = np.sqrt(np.maximum(s2[:, None] - np.cumsum(c * c, axis=1), 0))
    den = np.sqrt(kd[ia] * kd[ib])
    rho = np.clip(np.divide(k12, den, out=np.zeros_like(den), where=den > 0), -1, 1)
    same = (rho >= 1 - 1e-14) & (ia == ib)
    r = np.sort(np.abs(rho[~same])[:: max(1, rho.size // 20000)])  # a sample of pairs picks n

    def n_above(n):
        return len(r) - np.searchsorted(r, (tol / max(tail[:, n].max() ** 2, 1e-300)) ** (1 / (n + 1)))

    n = next((n for n in range(7, nmax, 8) if n_above(n) <= 0.005 * len(r)), nmax)
    out = _horner(c, ia, ib, rho, n)  # broadcast index arrays: outer products, no gathers
    ia, ib = np.broadcast_to(ia, rho.shape), np.broadcast_to(ib, rho.shape)
    out[same] = s2[ia[same]]
    bad = (np.abs(rho) ** (n + 1) * tail[ia, n] * tail[ib, n] > tol) & ~same
    if np.any(bad) and n < nmax:
        out[bad] = _horner(c, ia[bad], ib[bad], rho[bad], nmax)
        bad[bad] = np.abs(rho[bad]) ** (nmax + 1) * tail[ia[bad], nmax] * tail[ib[bad], nmax] > tol
    if np.any(bad):  # nearly parallel inputs at large variance: the long series on a finer grid
        D2, n2 = _MEHLER_LONG
        x, w, He = _hermite(D2, n2)
        used, inv = np.unique(np.concatenate([ia[bad], ib[bad]]), return_inverse=True)
        sv = fn(np.sqrt(kd[used])[:, None] * x)
        c, s2 = (sv * w) @ He, (sv * sv) @ w
        tail = np.sqrt(np.maximum(s2[:, None] - np.cumsum(c * c, axis=1), 0))
        ja, jb = inv[:bad.sum()], inv[bad.sum():]
        out[bad] = _horner(c, ja, jb, rho[bad], n2)
        bad[bad] = np.abs(rho[bad]) ** (n2 + 1) * tail[ja, n2] * tail[jb, n2] > tol
    if np.any(bad):
        Kb = np.empty((bad.sum(), 2, 2))
        Kb[:, 0, 0], Kb[:, 0, 1], Kb[:, 1, 0], Kb[:, 1, 1] = kd[ia[bad]], k12[bad], k12[bad], kd[ib[bad]]
        if act.name in _POLES:
            out[bad] = _pair_conditional(fn, Kb)
        else:
            out[bad] = _expect(act, lambda z, s: fn(z[..., 0]) * fn(z[..., 1]), Kb, deg)
    return out


_LEVELS = np.array([24, 32, 48, 64, 96, 128, 192, 256, 384, 512])  # trapezoid sizes of _pair_conditional


def _pair_conditional(fn, Kb):
    """<s(z_a) s(z_b)> for 2-sample blocks Kb (B, 2, 2) of sigma with poles, written as
    z_a = sqrt(k_a) u, z_b = m u + sd y (u, y independent standard normal; a the sample of larger
    variance): a trapezoid grid in (u, y) whose spacings keep |a| h <= _AH for the coefficients of each
    axis. Nearly parallel pairs (sd small, where the Mehler series is slowest) need few y nodes, so
    this costs a fraction of an isotropic 2-D grid."""
    k0, kab, k1 = Kb[:, 0, 0], Kb[:, 0, 1], Kb[:, 1, 1]
    ka, kb = np.maximum(k0, k1), np.minimum(k0, k1)  # u: the larger variance (symmetric in a <-> b)
    m = kab / np.sqrt(ka)
    sd = np.sqrt(np.maximum(kb - kab * m / np.sqrt(ka), 0))

    def size(a):  # smallest level whose spacing 4.2 n^(1/3) / (n - 1) is <= _AH / a
        h = 4.2 * _LEVELS ** (1 / 3) / (_LEVELS - 1)
        return np.minimum(np.searchsorted(-h, -_AH / np.maximum(a, 1e-300)), len(_LEVELS) - 1)

    iu, iy = size(np.maximum(np.sqrt(ka), np.abs(m))), size(sd)
    out = np.empty(len(Kb))
    for i, j in set(zip(iu.tolist(), iy.tolist())):
        sel = np.flatnonzero((iu == i) & (iy == j))
        (u, wu), (y, wy) = _rule(int(_LEVELS[i]), "trapezoid"), _rule(int(_LEVELS[j]), "trapezoid")
        step = max(1, _NODES // (len(u) * len(y)))
        for c in range(0, len(sel), step):
            b = sel[c:c + step]
            phi = fn(m[b, None, None] * u[:, None] + sd[b, None, None] * y) @ wy       # (b, n_u)
            out[b] = (fn(np.sqrt(ka[b])[:, None] * u) * phi) @ wu
    return out


@lru_cache(maxsize=8)
def _plan(N):
    """Index bookkeeping for N inputs, built once and shared by every layer (arrays read-only).

    I (P, 2): the unordered pairs, (a, a) first; pid (N, N) their index; ij / ijkl: gathers of the
    local indices of each pair from (N, N) / (N,)*4 tensors; blocks[m]: the m-sample subsets;
    codes / gather: where the block moments of S4 go in the flattened (N,)*4 table and back."""
    I = np.array([(a, a) for a in range(N)] + list(combinations(range(N), 2))).reshape(-1, 2)
    pid = np.empty((N, N), dtype=int)
    pid[I[:, 0], I[:, 1]] = pid[I[:, 1], I[:, 0]] = np.arange(len(I))
    blocks = {m: np.array(list(combinations(range(N), m))) for m in range(1, min(N, 4) + 1)}
    place = N ** np.arange(3, -1, -1)
    codes = np.concatenate([S[:, np.repeat(np.arange(m), p)] @ place
                            for m, S in blocks.items() for p in _PATTERNS[m]])
    gather = np.sort(np.indices((N,) * 4).reshape(4, -1).T, axis=1) @ place
    for v in [I, pid, codes, gather, *blocks.values()]:
        v.flags.writeable = False  # (views taken below inherit this)
    ijkl = tuple(I[(slice(None),) + (None,) * k + (slice(None),) + (None,) * (3 - k)] for k in range(4))
    return SimpleNamespace(I=I, pid=pid, ij=(I[:, :, None], I[:, None, :]), ijkl=ijkl,
                           pp=(pid[:, :, None, None], pid[None, None]), blocks=blocks,
                           codes=codes, gather=gather)


@lru_cache(maxsize=8)
def _diagonal_rule(kinked, deg):
    """1-D rule for 1-sample blocks: nodes x (n,) and weights (n, 3) for <.>, <.(x^2 - 1)>,
    <. He4(x)>: even-degree Gauss-Hermite (kinked sigma: exact), else the Mehler trapezoid rule."""
    x, w = _rule(deg, "hermite") if kinked else _hermite(*_MEHLER[:2])[:2]
    W = np.stack([w, w * (x * x - 1), w * (x ** 4 - 6 * x * x + 3)], -1)
    W.flags.writeable = False
    return x, W


def _diagonal(act, kd, deg):
    """1-sample blocks (variances kd (N,)): <s^2>, <s^4>, H_aa,aa = <s^2 (z^2/k - 1)>/k and
    Q_aa,aaaa = <s^2 He4(z/sqrt k)>/k^2 (z-form of the module docstring), each (N,)."""
    x, W = _diagonal_rule(_kinks(act) is not None, deg)
    ss = act.f(np.sqrt(kd)[:, None] * x) ** 2
    m = ss @ W
    return m[:, 0], (ss * ss) @ W[:, 0], m[:, 1] / kd, m[:, 2] / kd ** 2


_HE = (lambda x: 1.0 + 0 * x, lambda x: x, lambda x: x * x - 1, lambda x: x ** 3 - 3 * x,
       lambda x: x ** 4 - 6 * x * x + 3)  # probabilists' Hermite polynomials He_0..He_4


def _refined(act, Kb, deg, evaluate):
    """evaluate(Kb_subset, deg_subset) -> tuple of arrays with leading block axis, on the
    Cholesky-mapped 2-D grid: for sigma with poles (trapezoid rule), blocks whose largest Cholesky
    coefficient times the spacing exceeds _AH get a grid refined by _refinement (<= 3 deg per axis)."""
    if act.name not in _POLES:
        return evaluate(Kb, deg)
    x = _rule(deg, "trapezoid")[0]
    scale = _refinement(np.abs(_chol(Kb)).max(axis=(1, 2)) * (x[1] - x[0]))
    if np.all(scale == 1):
        return evaluate(Kb, deg)
    outs = None
    for f in np.unique(scale):
        sel = scale == f
        part = evaluate(Kb[sel], 2 * int(round(deg * f / 2)))
        if outs is None:
            outs = tuple(None if p is None else np.empty((len(Kb),) + p.shape[1:]) for p in part)
        for o, p in zip(outs, part):
            if o is not None:
                o[sel] = p
    return outs


def _pair_hq(act, Kb, deg, fourth, fn=None):
    """H (B, 2, 2) and Q (B, 2, 2, 2, 2) (None unless fourth) of 2-sample blocks Kb (B, 2, 2) in
    z-form: H = <s s He2(w; B^-1)>, Q = <s s He4(w; B^-1)>, w = B^-1 z.

    With z = A u (Cholesky, u standard normal), w = A^-T u and the Hermite tensors transform
    covariantly, He_k(w; B^-1) = (A^-T)^(x k) He_k(u; 1), whose entries are products
    He_i(u_1) He_j(u_2) (i + j = k, j = number of indices equal to 2): k + 1 scalar moments each.
    Nodes: the polar rule (kinked sigma) or the Cholesky-mapped tensor grid. fn: s (default sigma;
    sigma' gives the same tensors of s' s')."""
    if _kinks(act) is None and len(Kb):
        return _refined(act, Kb, deg, lambda K, g: _pair_hq_grid(act, K, g, fourth, fn))
    return _pair_hq_grid(act, Kb, deg, fourth, fn)


def _pair_hq_grid(act, Kb, deg, fourth, fn):
    A = _chol(Kb)
    if _kinks(act) is None:
        u, w = quadrature_nodes(2, deg, _rule_name(act))
        z = np.einsum("bij,pj->bpi", A, u)
    else:
        z, w = _polar_nodes(Kb)
        u = np.einsum("bij,bpj->bpi", np.linalg.inv(A), z)
    s = (fn or act.f)(z)
    ssw = s[..., 0] * s[..., 1] * w
    M = np.swapaxes(np.linalg.inv(A), 1, 2)  # w = M u

    def tensor(k):  # <s s He_k(w; B^-1)> (B,) + (2,) * k
        he = np.stack([_HE[k - j](u[..., 0]) * _HE[j](u[..., 1]) for j in range(k + 1)], -1)
        T = (ssw[:, None] @ he)[:, 0][:, np.indices((2,) * k).sum(0)]
        for ax in range(1, k + 1):  # apply M to every index
            T = np.moveaxis(np.einsum("bgi,b...i->b...g", M, np.moveaxis(T, ax, -1)), -1, ax)
        return T

    return tensor(2), tensor(4) if fourth else None


def _pair_tensors(act, K, deg, fourth=True):
    """Per unordered pair p = (a <= b) (in the order of _plan(N).I): H (P, 2, 2) and, if fourth,
    Q (P, 2, 2, 2, 2) on the local indices (a, b), a pair (a, a) being a 1x1 block at local index 0;
    S2 (N, N) = <s_a s_b>; s4 (N,) = <s_a^4>. Raises ValueError for a singular diagonal entry or
    2x2 block of K."""
    N, plan, kd = K.shape[0], _plan(K.shape[0]), K.diagonal()
    a, b = plan.I[N:, 0], plan.I[N:, 1]
    if (kd <= 1e-14 * np.abs(K).max()).any() or N > 1 and (
            kd[a] * kd[b] - K[a, b] ** 2 <= 1e-12 * kd[a] * kd[b]).any():
        raise ValueError("every input needs K_aa > 0 and every pair of inputs a non-singular 2x2 "
                         "kernel block (duplicate or parallel inputs?): H and Q need its inverse")
    S2, H = np.empty((N, N)), np.zeros((len(plan.I), 2, 2))
    Q = np.zeros((len(plan.I),) + (2,) * 4) if fourth else None
    s2, s4, H[:N, 0, 0], q = _diagonal(act, kd, deg)
    np.fill_diagonal(S2, s2)
    if fourth:
        Q[:N, 0, 0, 0, 0] = q
    if N > 1:
        S2[a, b] = S2[b, a] = _s2(act, kd, a, b, K[a, b], deg)
        H[N:], q = _pair_hq(act, K[plan.ij[0][N:], plan.ij[1][N:]], deg, fourth)
        if fourth:
            Q[N:] = q
    return dict(S2=S2, H=H, Q=Q, s4=s4)


def _four_point(act, K, deg, s4):
    """S4[a, b, c, d] = <s_a s_b s_c s_d>_K, each entry from the block of the distinct samples it
    names (given s4 = <s_a^4> of the 1-sample blocks); patterns of one block share its grid."""
    N, plan = K.shape[0], _plan(K.shape[0])
    vals = [s4]
    for m, S in list(plan.blocks.items())[1:]:
        Kb, pats = K[S[:, :, None], S[:, None, :]], _PATTERNS[m]
        if _kinks(act) is None:
            v = _conditioned(act, Kb, pats, deg)
        elif m > 2:
            v = _kinked_moments(act, Kb, pats)
        else:
            v = _expect(act, lambda z, s: np.stack([_pow(act.f(z[..., 0]), p) * _pow(act.f(z[..., 1]), q)
                                                    for p, q in pats], -1), Kb, deg)
        vals.append(v.T.ravel())
    table = np.zeros(N ** 4)
    table[plan.codes] = np.concatenate(vals)
    return table[plan.gather].reshape((N,) * 4)


def gaussian_tensors(act, K, deg: int = DEG) -> dict:
    """The Gaussian expectations of sigma that drive the flow, at a kernel K (N, N) (§4.3, §4.5).

    Returns dict S2 = <s_a s_b> (N, N), S4 = <s_a s_b s_c s_d> (N,)*4, H[a,b,g,d] =
    <d_g d_d (s_a s_b)> (N,)*4 and Q[a,b,g,d,e,f] = <d_g d_d d_e d_f (s_a s_b)> (N,)*6 (dense: N <~ 12),
    H and Q in the block-local z-form of the module docstring. Raises ValueError for a bad K or deg,
    or a singular diagonal entry / 2x2 block of K."""
    act, K, deg = get_activation(act), _kernel(K), _deg(deg)
    t, N = _pair_tensors(act, K, deg), K.shape[0]
    I, H, Q = _plan(N).I, np.zeros((N,) * 4), np.zeros((N,) * 6)
    for sl, m in ((slice(0, N), 1), (slice(N, None), 2)):  # scatter; H_ab = H_ba (s_a s_b = s_b s_a)
        a, b = I[sl, 0], I[sl, 1]
        for loc in np.ndindex((m,) * 4):
            g, d, e, f = (I[sl, i] for i in loc)
            Q[a, b, g, d, e, f] = Q[b, a, g, d, e, f] = t["Q"][sl][(slice(None),) + loc]
            H[a, b, g, d] = H[b, a, g, d] = t["H"][sl][:, loc[0], loc[1]]
    return dict(S2=t["S2"], S4=_four_point(act, K, deg, t["s4"]), H=H, Q=Q)


# ----------------------------------------------------------------------------- recursion steps
def _local(act, K, t, C_W, deg):
    """C_W^2 (<s_a s_b s_c s_d> - <s_a s_b> <s_c s_d>)  (N,)*4."""
    return C_W ** 2 * (_four_point(act, K, deg, t["s4"]) - np.multiply.outer(t["S2"], t["S2"]))


def _inherited(t, V):
    """sum_{g,d in {a,b}; e,f in {c,d}} H_ab,gd V_(gd)(ef) H_cd,ef  (N,)*4."""
    plan, H = _plan(V.shape[0]), t["H"]
    W = np.einsum("pij,pijcd->pcd", H, V[plan.ij])
    return np.einsum("pqkl,qkl->pq", W[(slice(None),) + plan.ij], H)[plan.pp]


def _nlo(t, V, G1):
    """1/2 sum G1_gd H_ab,gd + 1/8 sum V_(gd)(ef) Q_ab,gdef  (N, N)."""
    plan = _plan(V.shape[0])
    g1 = np.einsum("pij,pij->p", t["H"], G1[plan.ij])
    vq = np.einsum("pijkl,pijkl->p", t["Q"], V[plan.ijkl])
    return (0.5 * g1 + 0.125 * vq)[plan.pid]


def first_layer_metric(X, C_b=0.0, C_W=1.0):
    """G^(1) = C_b + C_W/n_0 X X^T, book eq. (4.8) (exact). X (N_D, n_0) -> (N_D, N_D).

    Raises ValueError for a non-2-D / empty / non-finite X or negative C_b, C_W."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or 0 in X.shape or not np.all(np.isfinite(X)):
        raise ValueError(f"X must be a finite (N_D, n_0) array, got shape {X.shape}")
    return _nonneg(C_b, "C_b") + _nonneg(C_W, "C_W") * (X @ X.T) / X.shape[1]


def kernel_step(act, K, C_b, C_W, *, deg: int = DEG):
    """K^(l+1) = C_b + C_W <s_a s_b>_{K^(l)}, book eq. (4.118) = (4.114), with C_b, C_W of layer l+1.

    act: anything get_activation accepts; K (N, N) PSD -> (N, N). Raises ValueError for a bad K,
    C_b, C_W or deg."""
    act, K = get_activation(act), _kernel(K)
    a, b = np.indices(K.shape)
    return _nonneg(C_b, "C_b") + _nonneg(C_W, "C_W") * _s2(act, np.diag(K), a, b, K, _deg(deg))


def vertex_step(act, K, V, C_W, r=1.0, *, deg: int = DEG):
    """V^(l+1) from K = K^(l), V = V^(l), C_W = C_W^(l+1), r = n_l/n_{l-1}: book eq. (4.119), (4.90).

    V[a,b,c,d] = V_(ab)(cd), shape (N,)*4. The inherited term is r C_W^2/4 sum H_ab,gd V_(gd)(ef)
    H_cd,ef (integration by parts of the raised-index form). Returns (N,)*4. Raises ValueError for
    bad shapes or values, or a singular diagonal entry / 2x2 block of K."""
    act, K, deg = get_activation(act), _kernel(K), _deg(deg)
    V, C_W, r = _tensor(V, K.shape[0], 4, "V"), _nonneg(C_W, "C_W"), _nonneg(r, "r")
    t = _pair_tensors(act, K, deg, fourth=False)
    return _local(act, K, t, C_W, deg) + r * C_W ** 2 / 4 * _inherited(t, V)


def nlo_metric_step(act, K, V, G1, C_W, r=1.0, *, deg: int = DEG):
    """G^{1}(l+1) from K^(l), V^(l), G^{1}(l), C_W^(l+1) and r = n_l/n_{l-1}: book eq. (4.115),
    in the equivalent compact form C_W r [1/2 G1.H + 1/8 V.Q] (module docstring).

    K, G1 (N, N); V (N,)*4. Returns (N, N). Raises ValueError as vertex_step."""
    act, K, deg = get_activation(act), _kernel(K), _deg(deg)
    V, G1 = _tensor(V, K.shape[0], 4, "V"), _tensor(G1, K.shape[0], 2, "G1")
    return _nonneg(C_W, "C_W") * _nonneg(r, "r") * _nlo(_pair_tensors(act, K, deg), V, G1)


# ----------------------------------------------------------------------------- flows
@dataclass(frozen=True)
class Flow:
    """Chapter-4 flow of a network on N inputs, indexed by the book's layer index l = 0..L.

    K (L+1, N, N): K[l] = K^(l); K[1] = G^(1) (4.8); K[0] = X X^T/n_0 (the input Gram matrix).
    V (L+1, N, N, N, N): V[l][a,b,c,d] = V^(l)_(ab)(cd); V[0] = V[1] = 0.
    G1 (L+1, N, N), or None for nlo=False: the NLO metric G^{1}(l); G1[0] = G1[1] = G1[2] = 0.
    """
    net: MLP
    X: np.ndarray
    K: np.ndarray
    V: np.ndarray
    G1: np.ndarray | None

    def metric(self, l: int):
        """Mean metric G^(l) = K^(l) + G^{1}(l)/n_{l-1} + O(1/n^2), eq. (4.104); l in 1..L."""
        if not 1 <= l <= self.net.L or self.G1 is None:
            raise ValueError(f"need 1 <= l <= L={self.net.L} and a flow computed with nlo=True")
        return self.K[l] + self.G1[l] / self.net.widths[l - 1]


def preactivation_flow(net: MLP, X, *, nlo: bool = True, deg: int = DEG) -> Flow:
    """K, V (and G^{1}) at every layer of `net` on the inputs X (N_D, n_0): eqs. (4.8), (4.115),
    (4.118), (4.119), per-layer C_b, C_W, widths (r = n_l/n_{l-1} in the step l -> l+1).

    Each layer's K, V, G^{1} are computed from the previous layer's, never from partly updated ones.
    Cost per layer is dominated by the C(N_D, 4) four-sample blocks of V (at deg 96 ~1 ms per block
    for tanh, ~2 ms for gelu, ~3 ms for ReLU: N_D = 8 to depth 20 in 2-7 s on 2 cores) and N_D^4
    memory: meant for N_D <~ 10 (use kernel_fn for K alone); one input costs ~40 us per layer.
    Raises TypeError for a net that is not an MLP; ValueError for bad X or deg, or a singular 2x2
    kernel block (duplicate inputs, a zero input with C_b = 0). Warns if the kernel becomes
    non-finite (deeper layers are then nan)."""
    X, deg = _inputs(net, X), _deg(deg)
    act, L, N, n = net.activation, net.L, X.shape[0], net.widths
    K, V = np.zeros((L + 1, N, N)), np.zeros((L + 1,) + (N,) * 4)
    G1 = np.zeros((L + 1, N, N)) if nlo else None
    K[0], K[1] = X @ X.T / n[0], first_layer_metric(X, net.C_b[0], net.C_W[0])
    for l in range(1, L):
        if not np.isfinite(K[l]).all() or (K[l].diagonal() < 1e-280).any():
            warnings.warn(f"the kernel has exploded or vanished at layer {l} (off criticality?); "
                          "deeper layers are set to nan")
            for T in (K, V) + ((G1,) if nlo else ()):
                T[l + 1:] = np.nan
            break
        cb, cw, r = net.C_b[l], net.C_W[l], n[l] / n[l - 1]
        t = _pair_tensors(act, K[l], deg, fourth=nlo)
        K[l + 1] = cb + cw * t["S2"]
        V[l + 1] = _local(act, K[l], t, cw, deg) + r * cw ** 2 / 4 * _inherited(t, V[l])
        if nlo:
            G1[l + 1] = cw * r * _nlo(t, V[l], G1[l])
    return Flow(net, X, K, V, G1)


def kernel_fn(net: MLP, X1, X2=None, layers=None, *, get="nngp", deg: int = DEG):
    """Infinite-width kernels between two sets of inputs: the kernel K^(l)(x1, x2) (get="nngp"; eqs.
    (4.8), (4.118)) and/or the NTK mean H^(l)(x1, x2) (get="ntk"; eqs. (8.23), (8.63) with the net's
    lambda_b, lambda_W / n_{l-1}), like neural-tangents' kernel_fn(get=('nngp', 'ntk')).

    Every entry needs only its own 2x2 kernel, so the recursions run elementwise over all pairs at
    once: closed forms for <s s>, <s' s'> (linear, ReLU family, erf, sin), else Mehler series with
    error bound 1e-12 per layer (module docstring: nearly parallel inputs, e.g. points on a line, cost
    more). X1 (N1, n_0); X2 (N2, n_0) or None (X2 = X1,
    symmetric). layers: None (output layer L) or an int -> array (N1, N2); an iterable of layers in
    1..L -> dict {l: (N1, N2)}. get: "nngp", "ntk", or a tuple of them -> a tuple of such results in
    that order. Raises TypeError / ValueError for a bad net, inputs, layers or get, and ValueError for
    the NTK of an activation whose derivative is a delta function (perceptron)."""
    X1, deg = _inputs(net, X1, "X1"), _deg(deg)
    X2, sym = (X1, True) if X2 is None else (_inputs(net, X2, "X2"), False)
    single = layers is None or isinstance(layers, (int, np.integer))
    want = {net.L if layers is None else int(layers)} if single else {int(l) for l in layers}
    if not want or min(want) < 1 or max(want) > net.L:
        raise ValueError(f"layers must lie in 1..L={net.L}, got {layers!r}")
    gets = (get,) if isinstance(get, str) else tuple(get)
    if not gets or any(g not in ("nngp", "ntk") for g in gets):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    ntk = "ntk" in gets
    act, N1 = net.activation, len(X1)
    if ntk and not act.smooth and not act.scale_invariant:
        raise ValueError(f"the NTK needs sigma' as a function; that of {act.name} is a delta function")
    Xs = X1 if sym else np.concatenate([X1, X2])
    xd, x12 = np.einsum("ai,ai->a", Xs, Xs) / net.widths[0], (X1 @ X2.T) / net.widths[0]
    kd, K12 = net.C_b[0] + net.C_W[0] * xd, net.C_b[0] + net.C_W[0] * x12
    hd, H12 = net.lambda_b[0] + net.lambda_W[0] * xd, net.lambda_b[0] + net.lambda_W[0] * x12
    ia, ib, dg = np.arange(N1)[:, None], (0 if sym else N1) + np.arange(len(X2)), np.arange(len(kd))
    out = {}
    for l in range(1, max(want) + 1):
        if sym:  # the same numbers for a repeated input (near rho = 1 errors grow like sqrt)
            K12[dg, dg], H12[dg, dg] = kd, hd
        if l in want:
            out[l] = tuple({"nngp": K12, "ntk": H12}[g] for g in gets)
        if l < max(want):
            cb, cw, lb, lw = net.C_b[l], net.C_W[l], net.lambda_b[l], net.lambda_W[l]
            S12, sd = _s2(act, kd, ia, ib, K12, deg), _s2(act, kd, dg, dg, kd, deg)
            if ntk:
                H12 = lb + lw * S12 + cw * _s2(act, kd, ia, ib, K12, deg, d=1) * H12
                hd = lb + lw * sd + cw * _s2(act, kd, dg, dg, kd, deg, d=1) * hd
            K12, kd = cb + cw * S12, cb + cw * sd
    out = {l: v if len(gets) > 1 or not isinstance(get, str) else v[0] for l, v in out.items()}
    return out[max(want)] if single else out


# ----------------------------------------------------------------------------- effective action (§4.2-4.5)
def _positive_width(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer (a number of neurons), got {n!r}")
    return int(n)


def raise_vertex(K, V):
    """V^(a1 a2)(a3 a4) = sum_b K^{a1 b1} K^{a2 b2} K^{a3 b3} K^{a4 b4} V_(b1 b2)(b3 b4), eq. (4.83),
    (4.120), with K^{ab} the inverse of the kernel (leading order). K (N, N) positive definite,
    V (N,)*4 -> (N,)*4. Raises ValueError for a singular K or bad shapes."""
    K = _kernel(K)
    V = _tensor(V, K.shape[0], 4, "V")
    if np.linalg.eigvalsh(K).min() <= 1e-12 * np.abs(K).max():
        raise ValueError("K must be positive definite to raise indices")
    Ki = np.linalg.inv(K)
    return np.einsum("ae,bf,cg,dh,efgh->abcd", Ki, Ki, Ki, Ki, V)


def quartic_coupling(K, V, n_prev):
    """The quartic coupling of the layer-l action, v = V^(..)(..) / n_{l-1} + O(1/n^2), eq. (4.82):
    the action is S = 1/2 sum_i g^{ab} z_ia z_ib - 1/8 sum_{ij} v^{(ab)(cd)} z_ia z_ib z_jc z_jd
    (4.80). K (N, N), V (N,)*4 (lower indices), n_prev = n_{l-1} -> (N,)*4 (upper indices)."""
    return raise_vertex(K, V) / _positive_width(n_prev, "n_prev")


def quadratic_coupling_nlo(K, G1, V, n_l, n_prev):
    """The quadratic coupling g^{ab} of the layer-l action to order 1/n, eq. (4.109):

        g^{b1 b2} = K^{b1 b2} + 1/n_{l-1} sum_{b3 b4} [ -K^{b1 b3} K^{b2 b4} G^{1}_{b3 b4}
                    + K_{b3 b4} (n_l/2 V^{(b1 b2)(b3 b4)} + V^{(b1 b3)(b2 b4)}) ]

    (V raised with K^{-1}; n_l neurons in the action). Returns (N, N). Raises ValueError for bad
    shapes, a singular K or non-positive widths."""
    K = _kernel(K)
    N = K.shape[0]
    G1, Vu = _tensor(G1, N, 2, "G1"), raise_vertex(K, V)
    n_l, n_prev = _positive_width(n_l, "n_l"), _positive_width(n_prev, "n_prev")
    Ki = np.linalg.inv(K)
    corr = (-Ki @ G1 @ Ki + n_l / 2 * np.einsum("abcd,cd->ab", Vu, K)
            + np.einsum("acbd,cd->ab", Vu, K))
    return Ki + corr / n_prev


def quartic_two_point(g, v, n):
    """Two-point function of the quartic action (4.80) with n neurons, to first order in v, eq. (4.47):

        E[z_{i a1} z_{j a2}] = delta_ij G_{a1 a2},  G = g + 1/2 sum v^{(b1 b2)(b3 b4)}
                               (n g_{a1 b1} g_{a2 b2} g_{b3 b4} + 2 g_{a1 b1} g_{a2 b3} g_{b2 b4})

    g (N, N): the covariance of the quadratic part (lower indices, the inverse of g^{ab});
    v (N,)*4: quartic coupling (upper indices); n: number of neurons in the action. Returns (N, N)."""
    g = _kernel(g, "g")
    v, n = _tensor(v, g.shape[0], 4, "v"), _positive_width(n, "n")
    return g + 0.5 * (n * np.einsum("bcde,ab,fc,de->af", v, g, g, g)
                      + 2 * np.einsum("bcde,ab,fd,ce->af", v, g, g, g))


def quartic_connected_four_point(g, v):
    """Coefficient of delta_{i1 i2} delta_{i3 i4} in the connected four-point function of the quartic
    action (4.80), first order in v, eq. (4.48): sum v^{(b1 b2)(b3 b4)} g_{a1 b1} g_{a2 b2} g_{a3 b3}
    g_{a4 b4}. The other two neuron pairings follow by permuting the sample indices. Returns (N,)*4."""
    g = _kernel(g, "g")
    v = _tensor(v, g.shape[0], 4, "v")
    return np.einsum("efgh,ae,bf,cg,dh->abcd", v, g, g, g, g)


def running_coupling(G, V, n_prev, m):
    """Single input: the quadratic coupling of the action that keeps only m of the n_l neurons,
    1/g_m = G - (m + 2)/2 * V / (n_{l-1} G), eqs. (4.100)-(4.103) (marginalization rule: the
    two-point function G does not depend on m; the coupling does). G > 0, V (single-input vertex),
    n_prev = n_{l-1}, m >= 1 neurons. Returns g_m = 1/(that). Raises ValueError for bad input."""
    G, V = float(G), float(V)
    if not np.isfinite(G) or G <= 0 or not np.isfinite(V):
        raise ValueError(f"need a finite G > 0 and a finite V, got G={G}, V={V}")
    m, n_prev = _positive_width(m, "m"), _positive_width(n_prev, "n_prev")
    return 1.0 / (G - (m + 2) / 2 * V / (n_prev * G))
