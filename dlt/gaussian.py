"""Gaussian integrals, Wick contractions, cumulants and nearly-Gaussian perturbation theory.

Chapter 1 of *The Principles of Deep Learning Theory*.  Conventions: ``K`` is always the
covariance K_{mu nu} (lower indices); functions that need the inverse K^{mu nu} invert internally.
Couplings follow (1.81): ``couplings = {2m: s}`` means S contains s^{mu1..mu2m} z..z / (2m)!,
so the quartic action (1.71) is ``{4: eps * V}``.
"""
from functools import lru_cache
from itertools import permutations
from math import factorial, prod
from numbers import Integral

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import kve

_TOL = 1e-12  # relative tolerance for symmetry / positive semi-definiteness of K


# ----------------------------------------------------------------------------- validation
def _int(x, name, lo):
    if isinstance(x, bool) or not isinstance(x, Integral):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    if x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    return int(x)


def _cov(K, *, batch=False, pd=False):
    """Validate a covariance (N,N) (or (...,N,N) if batch); return (K_sym, eigvals, eigvecs)."""
    try:
        K = np.asarray(K, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"K must be a real array, got {type(K).__name__}") from e
    if K.ndim < 2 or K.shape[-1] != K.shape[-2] or K.shape[-1] == 0 or (K.ndim > 2 and not batch):
        want = "(..., N, N)" if batch else "(N, N)"
        raise ValueError(f"K must be a square matrix of shape {want}, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError("K contains non-finite entries")
    scale, Kt = np.abs(K).max(axis=(-2, -1), keepdims=True), np.swapaxes(K, -1, -2)
    if np.any(np.abs(K - Kt) > _TOL * scale):
        raise ValueError("K must be symmetric (|K - K^T| <= 1e-12 max|K|)")
    K = 0.5 * (K + Kt)
    lam, U = np.linalg.eigh(K)
    lo = lam.min(axis=-1, keepdims=True)
    if np.any(lo < -_TOL * scale[..., 0]):
        raise ValueError(f"K must be positive semi-definite; smallest eigenvalue {lo.min():.3g}")
    if pd and np.any(lo <= _TOL * scale[..., 0]):
        raise ValueError("K is singular; this function needs the inverse covariance K^{-1}")
    return K, np.clip(lam, 0.0, None), U


def _idx(idx, N):
    idx = tuple(_int(a, "index", 0) for a in idx)
    if any(a >= N for a in idx):
        raise ValueError(f"indices {idx} out of range for N = {N}")
    return idx


def _couplings(couplings, N):
    if not isinstance(couplings, dict):
        raise TypeError("couplings must be a dict {degree 2m: tensor of shape (N,)*2m}")
    out = {}
    for d, s in couplings.items():
        d = _int(d, "coupling degree", 2)
        if d % 2:
            raise ValueError(f"coupling degrees must be even (parity-symmetric (1.81)), got {d}")
        s = np.asarray(s, dtype=float)
        if s.shape != (N,) * d:
            raise ValueError(f"degree-{d} coupling must have shape {(N,) * d}, got {s.shape}")
        out[d] = s
    return out


# ----------------------------------------------------------------------------- single variable
def double_factorial(k):
    """k!! = k (k-2) (k-4) ... ; (-1)!! = 0!! = 1 (1.16). Raises TypeError/ValueError for k < -1."""
    k = _int(k, "k", -1)
    return prod(range(k, 0, -2))


def gaussian_moment_1d(K, M):
    """E[z^M] for z ~ N(0, K): K^{M/2} (M-1)!! for even M, 0 for odd M (1.15)-(1.16).

    K: variance >= 0 (scalar or array, elementwise); M: integer >= 0. Raises ValueError if K < 0.
    """
    M = _int(M, "M", 0)
    K = np.asarray(K, dtype=float)
    if np.any(K < 0) or not np.all(np.isfinite(K)):
        raise ValueError("the variance K must be finite and >= 0")
    out = K ** (M // 2) * double_factorial(M - 1) if M % 2 == 0 else np.zeros_like(K)
    return float(out) if out.ndim == 0 else out


def gaussian_normalization(K):
    """sqrt(det(2 pi K)) (1.7), (1.30). K: scalar variance >= 0, (N,N) or batched (...,N,N)."""
    if np.ndim(K) == 0:
        K = np.reshape(K, (1, 1))
    _, lam, _ = _cov(K, batch=True)
    return np.sqrt(np.prod(2 * np.pi * lam, axis=-1))


def gaussian_mgf(J, K, mean=None):
    """E[exp(J.z)] = exp(J.s + J^T K J / 2) for z ~ N(s, K) (1.41), (1.49).

    J: (..., N) -> (...); K: (N,N) PSD; mean: None or broadcastable to (..., N).
    Raises ValueError for a bad K or J of the wrong length.
    """
    K, _, _ = _cov(K)
    J = np.asarray(J, dtype=float)
    if J.ndim == 0 or J.shape[-1] != K.shape[0]:
        raise ValueError(f"J must have shape (..., {K.shape[0]}), got {J.shape}")
    out = 0.5 * np.einsum("...i,ij,...j->...", J, K, J)
    if mean is not None:
        out = out + np.sum(J * np.asarray(mean, dtype=float), axis=-1)
    return np.exp(out)


# ----------------------------------------------------------------------------- Wick's theorem
def pairings(items):
    """All perfect matchings of `items` (1.45): a list of (2m-1)!! lists of m pairs (tuples).

    Raises ValueError for an odd number of items.
    """
    items = list(items)
    if len(items) % 2:
        raise ValueError(f"cannot pair an odd number ({len(items)}) of items")
    if not items:
        return [[]]
    a, rest = items[0], items[1:]  # pair the first item with each other one
    return [[(a, b)] + p for j, b in enumerate(rest) for p in pairings(rest[:j] + rest[j + 1:])]


def pairing_cycle_counts(m):
    """{number of cycles: count} of p U p0 over all pairings p of 2m items, p0 = {(0,1),(2,3),...}.

    Gives the 1/n expansion of the deep-linear 2m-point coefficient c_{2m}(n) = n^-m sum_p
    n^{#cycles} (3.39)-(3.42): m=3 -> {3: 1, 2: 6, 1: 8}. Keys in decreasing order.
    Raises TypeError/ValueError unless m is an integer >= 0.
    """
    m = _int(m, "m", 0)
    counts = {}
    for p in pairings(range(2 * m)):
        partner = [0] * (2 * m)
        for a, b in p:
            partner[a], partner[b] = b, a
        seen, cycles = [False] * (2 * m), 0
        for s in range(2 * m):
            if not seen[s]:
                cycles, v = cycles + 1, s
                while not seen[v]:
                    seen[v] = seen[v ^ 1] = True
                    v = partner[v ^ 1]
        counts[cycles] = counts.get(cycles, 0) + 1
    return dict(sorted(counts.items(), reverse=True))


def _wick_core(K, idx, k, memo):
    """<z_idx z_r1 ... z_rk>_K as an (N,)*k array over the free indices r (idx sorted tuple)."""
    key = (idx, k)
    if key not in memo:
        N = K.shape[0]
        if (len(idx) + k) % 2:
            out = np.zeros((N,) * k)
        elif not idx and k == 0:
            out = np.array(1.0)
        elif idx:  # contract idx[0] with another fixed index, or with a free axis
            a, rest = idx[0], idx[1:]
            out = np.zeros((N,) * k)
            for j, b in enumerate(rest):
                if j == 0 or b != rest[j - 1]:  # equal indices give equal terms: count them
                    sub = _wick_core(K, rest[:j] + rest[j + 1:], k, memo)
                    out = out + rest.count(b) * K[a, b] * sub
            if k:
                sub = np.multiply.outer(K[a], _wick_core(K, rest, k - 1, memo))
                out = out + sum(np.moveaxis(sub, 0, i) for i in range(k))
        else:  # only free axes: contract axis 0 with axis j
            sub = np.multiply.outer(K, _wick_core(K, (), k - 2, memo))
            out = sum(np.moveaxis(sub, 1, j) for j in range(1, k))
        memo[key] = out
    return memo[key]


def wick(K, idx):
    """<z_{a1} ... z_{aM}>_K by Wick's theorem (1.45), (1.69): sum over the (M-1)!! pairings.

    Recursion E[z_a1 ...] = sum_j K_{a1 aj} E[... without a1, aj], memoized on the sorted index
    tuple. K: (N,N) PSD covariance; idx: M integers in [0, N). Odd M gives 0.
    Raises ValueError for a bad K or an index out of range, TypeError for a non-integer index.
    """
    K, _, _ = _cov(K)
    return float(_wick_core(K, tuple(sorted(_idx(idx, K.shape[0]))), 0, {}))


def wick_tensor(K, M):
    """All M-point Gaussian moments as an (N,)*M array, T[a1..aM] = <z_a1 ... z_aM>_K (1.45).

    Stores N^M numbers: keep N^M below ~1e7. Odd M gives zeros. Raises ValueError for a bad K
    or M < 0.
    """
    K, _, _ = _cov(K)
    return _wick_core(K, (), _int(M, "M", 0), {})


# ----------------------------------------------------------------------------- quadrature
@lru_cache(maxsize=64)
def quadrature_nodes(N, deg, rule="hermite"):
    """Tensor-product nodes u (deg^N, N) and weights (deg^N,) for the standard normal in N dimensions.

    rule="hermite": probabilists' Gauss-Hermite; rule="trapezoid": trapezoid on [-R, R], R = 2.1
    deg^(1/3) (see :func:`gaussian_expectation`). Cached and read-only; shared by the fast paths of
    dlt.kernels and dlt.criticality so that every module integrates on the same nodes."""
    if rule == "hermite":
        x, w = hermegauss(deg)
        w = w / np.sqrt(2 * np.pi)
    else:  # trapezoid on [-R, R]; R ~ n^{1/3} balances truncation against discretization error
        x = np.linspace(-1, 1, deg) * 2.1 * deg ** (1 / 3)
        w = (x[1] - x[0]) * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    grid = lambda v: np.stack([g.ravel() for g in np.meshgrid(*[v] * N, indexing="ij")], -1)
    u, W = grid(x), np.prod(grid(w), axis=-1)
    u.flags.writeable = W.flags.writeable = False
    return u, W


def gaussian_expectation(f, K, mean=None, deg=40, rule="hermite"):
    """<f(z)>_K (1.68) for z ~ N(mean, K), N = 1..4, by tensor-product quadrature.

    z = mean + U sqrt(Lambda) u with K = U Lambda U^T (eigh: K may be singular) and u on a grid of
    deg^N nodes: rule="hermite" (default), the probabilists' Gauss-Hermite rule, exact for
    polynomials of degree <= 2 deg - 1 and fast for entire f; rule="trapezoid", the trapezoidal
    rule on [-R, R]^N with R = 2.1 deg^(1/3), which converges geometrically in deg for f analytic
    only in a strip (tanh, sigmoid, softplus, swish), where Gauss-Hermite converges like
    exp(-c sqrt(deg)) (tanh, 2-D, deg 64: 5e-8 vs 2e-11).
    K: (..., N, N), batched; mean: None or broadcastable to (..., N).
    f: receives z of shape (..., P, N) (batch dims in front, P = deg^N nodes) and returns
    (..., P) or (..., P, extra...). Returns an array of shape (..., extra...).
    Raises ValueError for non-symmetric / non-PSD K, N > 4, deg < 1 (< 2 for the trapezoid), an
    unknown rule or a bad output shape of f.
    """
    if not callable(f):
        raise TypeError("f must be callable")
    if rule not in ("hermite", "trapezoid"):
        raise ValueError(f"rule must be 'hermite' or 'trapezoid', got {rule!r}")
    K, lam, U = _cov(K, batch=True)
    if not 1 <= (N := K.shape[-1]) <= 4:
        raise ValueError(f"gaussian_expectation supports N = 1..4 dimensions, got N = {N}")
    deg = _int(deg, "deg", 1 if rule == "hermite" else 2)
    u, w = quadrature_nodes(N, deg, rule)
    z = u @ np.swapaxes(U * np.sqrt(lam)[..., None, :], -1, -2)  # (..., P, N)
    if mean is not None:
        mean = np.asarray(mean, dtype=float)
        if mean.ndim == 0 or mean.shape[-1] != N:
            raise ValueError(f"mean must have shape (..., {N}), got {mean.shape}")
        z = z + mean[..., None, :]
    out = np.asarray(f(z), dtype=float)
    if out.ndim == 0:
        out = np.broadcast_to(out, z.shape[:-1])
    if out.shape[: (nb := z.ndim - 2) + 1] != z.shape[:-1]:
        raise ValueError(f"f(z) for z of shape {z.shape} must return shape {z.shape[:-1]}"
                         f" + (extra...), got {out.shape}")
    return np.tensordot(out, w, axes=([nb], [0]))


# ----------------------------------------------------------------------------- cumulants
def set_partitions(items):
    """All set partitions of `items` (a list of blocks, each a list): Bell(M) of them (1.56)."""
    items = list(items)
    if not items:
        return [[]]
    a, out = items[0], []
    for p in set_partitions(items[1:]):
        out.append([[a]] + p)
        out += [p[:i] + [[a] + p[i]] + p[i + 1:] for i in range(len(p))]
    return out


def _sum_partitions(fn, idx, weight):
    idx, cache = tuple(idx), {}
    if not idx:
        raise ValueError("idx must contain at least one index")

    def val(block):
        key = tuple(sorted(idx[i] for i in block))
        if key not in cache:
            cache[key] = fn(key)
        return cache[key]

    return sum(weight(len(p)) * prod(val(b) for b in p) for p in set_partitions(range(len(idx))))


def connected_from_moments(moment_fn, idx):
    """Connected correlator E[z_a1 ... z_aM]|_connected from moments, general mean (1.52)-(1.61).

    Moebius inversion of (1.56): sum over set partitions pi of
    (-1)^{|pi|-1} (|pi|-1)! prod_{B in pi} E[z_B].
    moment_fn(tuple_of_indices) -> moment (scalar or array); it is called with sorted tuples.
    Raises ValueError for an empty idx.
    """
    return _sum_partitions(moment_fn, idx, lambda b: (-1) ** (b - 1) * factorial(b - 1))


def moments_from_connected(connected_fn, idx):
    """Moment E[z_a1 ... z_aM] = sum over all set partitions of products of connected blocks (1.56).

    connected_fn(sorted tuple_of_indices) -> connected correlator. Raises ValueError for empty idx.
    """
    return _sum_partitions(connected_fn, idx, lambda b: 1)


# ----------------------------------------------------------------------------- actions
def symmetrize(T):
    """Average of T over all permutations of its axes: the fully symmetric V of (1.71), s of (1.81).

    Raises ValueError unless all axes have the same length.
    """
    T = np.asarray(T, dtype=float)
    if len(set(T.shape)) > 1:
        raise ValueError(f"all axes must have the same length to symmetrize, got {T.shape}")
    perms = list(permutations(range(T.ndim)))
    return sum(np.transpose(T, p) for p in perms) / len(perms)


def even_action(z, K, couplings):
    """S(z) = z K^{-1} z / 2 + sum_{2m} s^{(2m)} z^{2m} / (2m)!  (1.66), (1.71), (1.81).

    z: (..., N) -> (...). K: (N,N) positive-definite covariance (inverted internally), or None to
    return only the non-Gaussian part Delta S. couplings: {2m: (N,)*2m tensor}.
    Raises ValueError for a singular / non-PSD K, an odd degree or a coupling of the wrong shape;
    TypeError if couplings is not a dict.
    """
    z = np.asarray(z, dtype=float)
    if z.ndim == 0:
        raise ValueError("z must have shape (..., N)")
    N = z.shape[-1]
    S = np.zeros(z.shape[:-1])
    if K is not None:
        K, lam, U = _cov(K, pd=True)
        if K.shape[0] != N:
            raise ValueError(f"z has N = {N} components but K is {K.shape}")
        S = S + 0.5 * np.einsum("...i,ij,...j->...", z, (U / lam) @ U.T, z)
    for d, s in _couplings(couplings, N).items():
        S = S + np.einsum(s, list(range(d)), *[a for i in range(d) for a in (z, [..., i])],
                          [...], optimize=True) / factorial(d)
    return S


def _first_order(idx, K, couplings, memo):
    e0 = float(_wick_core(K, idx, 0, memo))
    shift = sum(np.sum(s * (_wick_core(K, idx, d, memo) - e0 * _wick_core(K, (), d, memo)))
                / factorial(d) for d, s in couplings.items())
    return e0 - shift


def first_order_expectation(idx, K, couplings):
    """E[z_a1 ... z_aM] to first order in the couplings, for S = S_K + Delta S (1.74)-(1.75):

        E[O] = <O>_K - (<O Delta S>_K - <O>_K <Delta S>_K) + O(Delta S^2),

    all Gaussian moments by `wick`. K: (N,N) covariance of the quadratic action;
    couplings: {2m: (N,)*2m} with the 1/(2m)! convention of (1.81). Returns a float.
    Raises as `wick` and `even_action` do for bad K, idx or couplings.
    """
    K, _, _ = _cov(K)
    N = K.shape[0]
    return _first_order(tuple(sorted(_idx(idx, N))), K, _couplings(couplings, N), {})


def _pair_sum(A, B):
    """sum over the 3 pairings of A_{..} B_{..}: A_ab B_cd + A_ac B_bd + A_ad B_bc."""
    pairs = (("ab", "cd"), ("ac", "bd"), ("ad", "bc"))
    return sum(np.einsum(f"{p},{q}->abcd", A, B) for p, q in pairs)


def quartic_first_order(K, V, eps):
    """First-order statistics of the quartic action (1.71) S = z K^{-1} z/2 + eps/4! V z^4.

    Returns dict(Z_ratio = Z / sqrt|2 pi K| (1.73), G2 = E[zz] (N,N) (1.74), G4 = E[zzzz] (N,)*4
    (1.75)/(1.77), C4 = connected 4-point (N,)*4 (1.78)), all by `first_order_expectation`.
    C4 = G4 - sum (G2 G2) linearized in eps. K: (N,N) PSD; V: (N,)*4 (symmetrized implicitly:
    only its fully symmetric part enters); eps: float. Raises ValueError for bad shapes or K.
    """
    K, _, _ = _cov(K)
    N, memo = K.shape[0], {}
    cpl = _couplings({4: float(eps) * np.asarray(V, dtype=float)}, N)
    G = {r: np.zeros((N,) * r) for r in (2, 4)}
    for r in (2, 4):
        for ix in np.ndindex(*(N,) * r):
            key = tuple(sorted(ix))
            G[r][ix] = G[r][key] if key != ix else _first_order(key, K, cpl, memo)
    dG2 = G[2] - K
    C4 = G[4] - _pair_sum(K, K) - _pair_sum(K, dG2) - _pair_sum(dG2, K)
    Z_ratio = 1.0 - np.sum(cpl[4] * _wick_core(K, (), 4, memo)) / 24
    return dict(Z_ratio=float(Z_ratio), G2=G[2], G4=G[4], C4=C4)


def quartic_exact_1d(K, V, eps):
    """Exact N = 1 quartic model S = z^2/(2K) + eps V z^4/24 (1.71) via Bessel functions.

    int dz z^{2j} e^{-a z^2 - b z^4} with a = 1/(2K), b = eps V / 24, y = a^2/(8b):
    I0 = sqrt(a/b)/2 e^y K_{1/4}(y), I1 = (a/8b) sqrt(a/b) e^y (K_{3/4} - K_{1/4})(y),
    I2 = (I0 - 2a I1)/(4b) (integration by parts). Returns dict(Z_ratio = I0/sqrt(2 pi K),
    G2 = E z^2, G4 = E z^4, kappa4 = G4 - 3 G2^2). Relative accuracy ~ 1e-16 / (eps V K^2)
    for kappa4. Raises ValueError for K <= 0 or eps V < 0 (not normalizable).
    """
    K, V, eps = (float(np.reshape(x, ())) for x in (K, V, eps))
    if not K > 0:
        raise ValueError(f"K must be > 0, got {K}")
    if eps * V < 0:
        raise ValueError("eps * V < 0: exp(-S) is not normalizable")
    if eps * V == 0:
        return dict(Z_ratio=1.0, G2=K, G4=3 * K * K, kappa4=0.0)
    a, b = 1 / (2 * K), eps * V / 24
    y, r = a * a / (8 * b), np.sqrt(a / b)
    k1, k3 = kve(0.25, y), kve(0.75, y)
    I0, I1 = 0.5 * r * k1, a / (8 * b) * r * (k3 - k1)
    I2 = (I0 - 2 * a * I1) / (4 * b)
    G2, G4 = I1 / I0, I2 / I0
    return dict(Z_ratio=float(I0 / np.sqrt(2 * np.pi * K)), G2=float(G2), G4=float(G4),
                kappa4=float(G4 - 3 * G2 * G2))


def reweighted_expectation(f, K, delta_S, deg=40):
    """Exact E[f] = <f e^{-dS}>_K / <e^{-dS}>_K for S = S_K + dS (1.72)-(1.75), by quadrature.

    f, delta_S: callables on z of shape (..., P, N) as in `gaussian_expectation` (delta_S returns
    (..., P)); K: (..., N, N), N <= 4. Returns shape (..., extra...). Quadrature converges
    spectrally only if dS is smooth and bounded below on the nodes. Raises as
    `gaussian_expectation` does.
    """
    def num(z):
        w, fz = np.exp(-np.asarray(delta_S(z))), np.asarray(f(z), dtype=float)
        return fz * w.reshape(w.shape + (1,) * (fz.ndim - w.ndim))

    den = gaussian_expectation(lambda z: np.exp(-np.asarray(delta_S(z))), K, deg=deg)
    n = gaussian_expectation(num, K, deg=deg)
    return n / den.reshape(den.shape + (1,) * (n.ndim - den.ndim))


def sample_quartic(K, V, eps, size, rng, *, return_proposals=False):
    """Exact samples of p(z) ~ exp(-S) for the quartic action (1.71), by rejection.

    Proposal z ~ N(0, K), accepted with probability exp(-eps/24 V z^4) <= 1, so the acceptance
    rate equals Z / sqrt|2 pi K| (1.72). K: (N,N); V: (N,)*4; size: int; rng: int or
    np.random.Generator. Returns (size, N) [, number of proposals up to the last accepted one].
    Raises ValueError if eps V z^4 < 0 for some direction (checked on 10^4 random directions and
    on every proposal): exp(-S) would not be normalizable / the rejection bound fails.
    """
    K, lam, U = _cov(K)
    N, size, rng = K.shape[0], _int(size, "size", 0), np.random.default_rng(rng)
    cpl = _couplings({4: float(eps) * np.asarray(V, dtype=float)}, N)
    dirs = np.random.default_rng(0).standard_normal((10_000, N))
    dS_dirs = even_action(dirs / np.linalg.norm(dirs, axis=1, keepdims=True), None, cpl)
    if dS_dirs.min() < -_TOL * np.abs(dS_dirs).max():
        raise ValueError("eps V z^4 < 0 in some direction: the quartic action is not normalizable")
    A, out, n_prop, n_acc = U * np.sqrt(lam), [], 0, 0
    while n_acc < size:
        rate = max(n_acc / n_prop if n_prop else 1.0, 0.01)
        batch = min(max(1000, int(1.2 * (size - n_acc) / rate)), 1 << 20)
        z = rng.standard_normal((batch, N)) @ A.T
        dS = even_action(z, None, cpl)
        if dS.min() < -_TOL * np.abs(dS).max():
            raise ValueError("eps V z^4 < 0 for a proposal: the quartic action is not normalizable")
        acc = np.flatnonzero(rng.random(batch) < np.exp(-dS))[: size - n_acc]
        out.append(z[acc])
        n_acc += len(acc)
        n_prop += int(acc[-1]) + 1 if n_acc == size and len(acc) else batch
    z = np.concatenate(out, axis=0) if out else np.zeros((0, N))
    return (z, n_prop) if return_proposals else z
