"""Deep linear networks at initialization: exact finite-width results (book chapter 3).

A deep linear network has sigma(z) = z.  With the book's initialization (Var W = C_W / n_{l-1},
Var b = C_b) every correlator of the preactivations is known exactly at any width and depth.

Conventions (see DESIGN.md): ``widths = [n_0, n_1, ..., n_L]``, depth ``L = len(widths) - 1 >= 1``;
``C_W`` and ``C_b`` are scalars or length-L sequences (layer l uses entry l-1); every per-layer
array has L+1 entries indexed by the book's layer index l, entry 0 holding the (deterministic)
input value.  Multi-input tensors carry one axis per sample index in the book's order:
``G4[l, a1, a2, a3, a4]`` is the coefficient of delta_{i1 i2} delta_{i3 i4}, i.e.
G^{(l)}_{4,(a1 a2)(a3 a4)}.  Single-input results are the N_D = 1 case (pass a scalar G0).
The Monte Carlo counterpart is ``dlt.networks.ensemble(MLP(widths, "linear", C_b, C_W), ...)``.
"""
from __future__ import annotations

import numbers

import numpy as np
from scipy.special import polygamma, psi

from .networks import check_widths, per_layer

__all__ = [
    "input_gram", "two_point", "c2m", "log_c2m", "G2m", "four_point", "vertex",
    "connected_four", "connected_six", "var_O", "c2m_first_order", "double_scaling_ratio",
    "connected_four_ds", "connected_six_ds", "sample_norms_exact", "log_norm_stats",
]


# ----------------------------------------------------------------------------- validation
def _widths(widths):
    return np.array(check_widths(widths), dtype=np.int64)


def _depth(widths_or_L):
    if isinstance(widths_or_L, numbers.Integral) and not isinstance(widths_or_L, (bool, np.bool_)):
        if widths_or_L < 1:
            raise ValueError(f"depth L must be an integer >= 1, got {widths_or_L}")
        return int(widths_or_L)
    return len(_widths(widths_or_L)) - 1


def _per_layer(c, L, name, positive):
    return per_layer(c, L, name, positive=positive)


def _gram(G0):
    """Return (G0 as (N_D, N_D) float64, was_scalar); checks symmetric PSD."""
    g = np.asarray(G0, dtype=np.float64)
    scalar = g.ndim == 0
    g = g.reshape(1, 1) if scalar else g
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"G0 must be a scalar or a square (N_D, N_D) matrix, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("G0 must be finite")
    scale = max(np.abs(g).max(), 1e-300)
    if np.abs(g - g.T).max() > 1e-12 * scale:
        raise ValueError("G0 must be symmetric")
    if np.linalg.eigvalsh(g).min() < -1e-12 * scale:
        raise ValueError("G0 must be positive semi-definite (a Gram matrix)")
    return g, scalar


def _m(m):
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, numbers.Integral) or m < 1:
        raise ValueError(f"m must be an integer >= 1 (the correlator has 2m points), got {m!r}")
    return int(m)


def _n(n):
    a = np.asarray(n, dtype=np.float64)
    if not np.all(np.isfinite(a) & (a > 0)):
        raise ValueError(f"n must be finite and > 0, got {n!r}")
    return a


def _r(r):
    a = np.asarray(r, dtype=np.float64)
    if not np.all(np.isfinite(a) & (a >= 0)):
        raise ValueError(f"r = L/n must be finite and >= 0, got {r!r}")
    return a


def _G2_0(G2_0):
    g = np.asarray(G2_0, dtype=np.float64)
    if g.ndim != 0 or not np.isfinite(g) or g < 0:
        raise ValueError(f"G2_0 must be a finite scalar >= 0, got {G2_0!r}")
    return float(g)


# ----------------------------------------------------------------------------- two-point
def input_gram(X):
    """Normalized input Gram matrix G^(0) = X X^T / n_0, book eq. (3.9).

    X: (N_D, n_0) array (one input per row); returns (N_D, N_D).
    Raises ValueError if X is not a finite non-empty 2-D array.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.size == 0 or not np.all(np.isfinite(X)):
        raise ValueError(f"X must be a finite, non-empty (N_D, n_0) array, got shape {X.shape}")
    return X @ X.T / X.shape[1]


def two_point(G0, C_W, widths_or_L, C_b=0.0):
    """Two-point correlator G^(l)_{a1 a2} of every layer, eqs. (3.10), (3.14), (3.15).

    G^(l+1) = C_b + C_W G^(l) (bias extension, not in the chapter; for C_b = 0 it is
    G^(l) = C_W^l G^(0)).  G0: (N_D, N_D) Gram matrix or scalar G_2^(0); widths_or_L: the
    widths [n_0..n_L] or the depth L (the two-point function does not depend on widths).
    Returns (L+1, N_D, N_D), or (L+1,) for a scalar G0; entry 0 is G0.
    Raises ValueError for a non-PSD G0, C_W <= 0, C_b < 0, or a bad depth/widths.
    """
    g, scalar = _gram(G0)
    L = _depth(widths_or_L)
    cw, cb = _per_layer(C_W, L, "C_W", True), _per_layer(C_b, L, "C_b", False)
    out = [g]
    for l in range(L):
        out.append(cb[l] + cw[l] * out[-1])
    out = np.stack(out)
    return out[:, 0, 0] if scalar else out


# ------------------------------------------------------------------------ 2m-point, single input
def log_c2m(n, m):
    """log c_{2m}(n) = sum_{k=1}^{m-1} log1p(2k/n), eq. (3.46), vectorized over n.

    Equals log[Gamma(n/2+m)/Gamma(n/2) (2/n)^m] = log E[(chi^2_n/n)^m] for any real n > 0
    (odd n included); the log1p sum keeps c_{2m}-1 accurate at large n.
    Raises ValueError for n <= 0 or m not an integer >= 1.
    """
    a, m = _n(n), _m(m)
    k = np.arange(1, m, dtype=np.float64).reshape((-1,) + (1,) * a.ndim)
    return np.log1p(2.0 * k / a).sum(axis=0)


def c2m(n, m):
    """Per-layer combinatorial factor c_{2m}(n) = prod_{k=1}^{m-1} (1 + 2k/n), eq. (3.46).

    c_2 = 1, c_4 = 1 + 2/n, c_6 = 1 + 6/n + 8/n^2 (3.42), c_{2m}(2) = m!.  Vectorized over n.
    Raises ValueError for n <= 0 or m not an integer >= 1.
    """
    return np.exp(log_c2m(n, m))


def G2m(G2_0, C_W, widths, m):
    """Single-input 2m-point coefficient G_{2m}^(l), closed form (3.47) of recursion (3.45).

    G_{2m}^(l) = [prod_{l'=1}^{l-1} c_{2m}(n_{l'})] (G_2^(l))^m  with  G_2^(l) = C_W^l G_2^(0)
    (a product over layers for per-layer C_W); only the hidden widths n_1..n_{l-1} enter.
    No biases.  Returns (L+1,), entry 0 = (G_2^(0))^m.
    E[z_{i1}...z_{i2m}] = (sum over pairings of deltas) G_{2m}, eq. (3.44).
    Raises ValueError for bad widths, C_W <= 0, G2_0 < 0, or m not an integer >= 1.
    """
    g, w, m = _G2_0(G2_0), _widths(widths), _m(m)
    L = len(w) - 1
    G2 = g * np.concatenate([[1.0], np.cumprod(_per_layer(C_W, L, "C_W", True))])
    logc = np.concatenate([[0.0, 0.0], np.cumsum(log_c2m(w[1:L], m))])
    return np.exp(logc) * G2**m


# ------------------------------------------------------------------------ four-point, multi input
def four_point(G0, C_W, widths, C_b=0.0):
    """Exact two- and four-point coefficients of a deep linear network, any N_D inputs.

    E[z_{i1;a1} z_{i2;a2} z_{i3;a3} z_{i4;a4}] = d_{i1i2} d_{i3i4} G4_(a1a2)(a3a4) + 2 pairings.
    Recursion (derived from the Wick contraction behind (3.20)-(3.24), bias included):
      G4'_(12)(34) = C_b^2 + C_b C_W (G_12 + G_34)
                     + C_W^2 [G4_(12)(34) + (G4_(13)(24) + G4_(14)(23)) / n_l],
    started from G4^(0) = G0 (x) G0 with the 1/n_0 term absent (the input is deterministic), so
    G4^(1) = G^(1) (x) G^(1) (Gaussian first layer).  The single input case (scalar G0) gives
    G_4' = C_b^2 + 2 C_b C_W G_2 + C_W^2 (1 + 2/n_l) G_4, i.e. (3.24)-(3.25) for C_b = 0.
    Returns (G, G4): G (L+1, N_D, N_D), G4 (L+1, N_D, N_D, N_D, N_D); (L+1,) each for a scalar G0.
    Raises ValueError for a non-PSD G0, bad widths, C_W <= 0 or C_b < 0.
    """
    g, scalar = _gram(G0)
    w = _widths(widths)
    L = len(w) - 1
    cw, cb = _per_layer(C_W, L, "C_W", True), _per_layer(C_b, L, "C_b", False)
    G, T = [g], [np.einsum("ab,cd->abcd", g, g)]
    for l in range(L):
        Gl, Tl = G[-1], T[-1]
        swap = (np.einsum("acbd->abcd", Tl) + np.einsum("adbc->abcd", Tl)) / w[l] if l > 0 else 0.0
        T.append(cb[l] ** 2 + cb[l] * cw[l] * (Gl[:, :, None, None] + Gl[None, None])
                 + cw[l] ** 2 * (Tl + swap))
        G.append(cb[l] + cw[l] * Gl)
    G, T = np.stack(G), np.stack(T)
    return (G[:, 0, 0], T[:, 0, 0, 0, 0]) if scalar else (G, T)


def vertex(G0, C_W, widths, C_b=0.0):
    """Four-point vertex in chapter 4's convention, V^(l) = n_{l-1} (G4^(l) - G^(l) (x) G^(l)).

    The connected four-point function is (1/n_{l-1}) [d d V_(12)(34) + 2 more pairings], eq. (4.77);
    here it is exact for deep linear networks (see four_point).  Entry 0 is 0 (the input is
    deterministic); V^(1) = 0 (the first layer is Gaussian).  Shapes and raises as four_point.
    """
    G, T = four_point(G0, C_W, widths, C_b)
    n_prev = np.concatenate([[0], _widths(widths)[:-1]]).astype(np.float64)
    return n_prev.reshape((-1,) + (1,) * (T.ndim - 1)) * connected_four(G, T)


def connected_four(G2, G4):
    """Connected four-point coefficient G4 - G2 (x) G2, eqs. (3.28)-(3.30).

    Single input (arrays of equal shape): G_4 - G_2^2; the single-neuron cumulant is 3x this,
    and (3.30) E[(z_j^2 - G_2)(z_k^2 - G_2)] = G_4 - G_2^2 for j != k.  Multi input:
    G2 (..., N, N), G4 (..., N, N, N, N) -> G4_(12)(34) - G_12 G_34.
    """
    G2, G4 = np.asarray(G2, dtype=np.float64), np.asarray(G4, dtype=np.float64)
    if G4.ndim == G2.ndim:
        return G4 - G2**2
    if G4.ndim != G2.ndim + 2:
        raise ValueError(f"shapes do not match: G2 {G2.shape}, G4 {G4.shape}")
    return G4 - G2[..., :, :, None, None] * G2[..., None, None, :, :]


def connected_six(G2, G4, G6):
    """Single-input connected six-point coefficient G_6 - 3 G_2 G_4 + 2 G_2^3, eq. (3.57).

    It multiplies the 15 pairings; the single-neuron sixth cumulant is 15x this.
    """
    G2, G4, G6 = (np.asarray(x, dtype=np.float64) for x in (G2, G4, G6))
    return G6 - 3.0 * G2 * G4 + 2.0 * G2**3


def var_O(G2_0, C_W, widths):
    """Variance of O^(l) = (1/n_l) sum_j (z_j^(l))^2 over networks, eqs. (3.31)-(3.33), exact.

    Var O^(l) = (1 + 2/n_l) G_4^(l) - (G_2^(l))^2 = [prod_{l'=1}^{l} (1 + 2/n_{l'}) - 1] (G_2^(l))^2
    (the product includes the layer's own width; equal widths: 2l/n G_2^2 + O(1/n^2)).  No biases.
    Returns (L+1,), entry 0 = 0.  Raises ValueError as G2m.
    """
    g, w = _G2_0(G2_0), _widths(widths)
    L = len(w) - 1
    G2 = g * np.concatenate([[1.0], np.cumprod(_per_layer(C_W, L, "C_W", True))])
    return np.expm1(np.concatenate([[0.0], np.cumsum(np.log1p(2.0 / w[1:]))])) * G2**2


# ----------------------------------------------------------------------------- limits
def c2m_first_order(n, m):
    """Leading large-n expansion c_{2m}(n) = 1 + m(m-1)/n + O(1/n^2), eq. (3.53)."""
    a, m = _n(n), _m(m)
    return 1.0 + m * (m - 1) / a


def double_scaling_ratio(m, r):
    """G_{2m}^(L) / (G_2^(L))^m -> exp(m(m-1) r) for n, L -> inf at fixed r = L/n, eq. (3.55).

    The exact finite counterpart is c2m(n, m)**(L-1) (3.50); the relative error of the limit is
    about -(m(m-1)/n)[1 + (2m-1) r/3].  Raises ValueError for r < 0 or bad m.
    """
    m, a = _m(m), _r(r)
    return np.exp(m * (m - 1) * a)


def connected_four_ds(r):
    """Double-scaling (G_4 - G_2^2)/G_2^2 = e^{2r} - 1 = 2r + O(r^2), eq. (3.56)."""
    return np.expm1(2.0 * _r(r))


def connected_six_ds(r):
    """Double-scaling (G_6 - 3 G_2 G_4 + 2 G_2^3)/G_2^3 = e^{6r} - 3e^{2r} + 2, eq. (3.57).

    Evaluated as (e^{2r}-1)^2 (e^{2r}+2), free of cancellation: 12 r^2 + 32 r^3 + O(r^4).
    """
    u = np.expm1(2.0 * _r(r))
    return u * u * (u + 3.0)


# ----------------------------------------------------------------------------- exact norm sampler
def sample_norms_exact(rng, G2_0, C_W, widths, n_ens):
    """Exact samples of O^(l) = |z^(l)|^2 / n_l, one input, all layers (derived, not in the book).

    By rotational invariance z^(l+1) | z^(l) ~ N(0, C_W O^(l) I), so
    O^(l) = G_2^(0) prod_{k=1}^{l} C_W^(k) chi^2_{n_k} / n_k with independent chi^2 factors;
    E[(O^(l-1))^m] C_W^m reproduces G_{2m}^(l) of (3.47).  No biases.
    rng: numpy Generator or int seed.  Returns (n_ens, L+1), column 0 = G2_0.
    Raises ValueError as G2m, or for n_ens not a positive integer.
    """
    g, w = _G2_0(G2_0), _widths(widths)
    L = len(w) - 1
    cw = _per_layer(C_W, L, "C_W", True)
    if isinstance(n_ens, (bool, np.bool_)) or not isinstance(n_ens, numbers.Integral) or n_ens < 1:
        raise ValueError(f"n_ens must be a positive integer, got {n_ens!r}")
    rng = np.random.default_rng(rng)
    steps = cw * rng.chisquare(w[1:].astype(np.float64), size=(n_ens, L)) / w[1:]
    return g * np.concatenate([np.ones((n_ens, 1)), np.cumprod(steps, axis=1)], axis=1)


def log_norm_stats(widths):
    """Mean and variance of log(O^(l) / G_2^(l)) for a deep linear net (derived, exact).

    mean_l = sum_{k=1}^{l} [psi(n_k/2) + log(2/n_k)] (about -l/n), var_l = sum_{k=1}^{l} psi'(n_k/2)
    (about 2l/n): O^(l) is a product of independent chi^2_{n_k}/n_k (see sample_norms_exact).
    Returns (mean (L+1,), var (L+1,)), entry 0 = 0.  Raises ValueError for bad widths.
    """
    h = _widths(widths)[1:] / 2.0
    mean = np.concatenate([[0.0], np.cumsum(psi(h) - np.log(h))])
    var = np.concatenate([[0.0], np.cumsum(polygamma(1, h))])
    return mean, var
