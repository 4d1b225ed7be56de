"""Estimators of ensemble statistics with standard errors.

Every notebook compares theory with an ensemble of real networks, and the comparison is only as
honest as the error bar. The rules used throughout:

* The independent draws are the **networks** (axis 0 of every ensemble array). Neurons of one
  network are correlated with each other, so neuron averages are taken inside each network first
  and the standard error is taken across networks.
* Means of per-network quantities get the ordinary standard error ``std / sqrt(N)``.
* Nonlinear statistics (cumulants, ratios, connected correlators) get a delete-one-batch
  jackknife standard error: one implementation, :func:`jackknife`, serves them all.
"""
from __future__ import annotations

import itertools

import numpy as np

from .gaussian import connected_from_moments

__all__ = ["mean_se", "jackknife", "cumulant", "neuron_moments", "ntk_moments"]


def _ensemble_array(x, name="x", min_len=2):
    x = np.asarray(x, dtype=float)
    if x.ndim == 0 or x.shape[0] < min_len:
        raise ValueError(f"{name} must have an ensemble axis of length >= {min_len}, got shape {x.shape}")
    return x


def mean_se(x, axis: int = 0):
    """Mean over independent draws and its standard error ``std(ddof=1)/sqrt(N)``.

    ``x``: array with the independent draws (networks) on ``axis``. Returns ``(mean, se)`` with
    that axis removed. Raises ``ValueError`` for fewer than two draws.
    """
    x = np.moveaxis(np.asarray(x, dtype=float), axis, 0)
    x = _ensemble_array(x)
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(x.shape[0])


def jackknife(fn, *arrays, n_batches: int = 50):
    """Estimate ``fn(*arrays)`` and its delete-one-batch jackknife standard error.

    ``arrays`` share a leading ensemble axis of length S (the independent draws); they are cut
    into ``n_batches`` contiguous batches, ``fn`` is re-evaluated with each batch left out, and

        se^2 = (B - 1)/B * sum_b (theta_(b) - mean_b theta_(b))^2 .

    ``fn`` may return any array shape. Returns ``(value, se)`` where value is ``fn`` on all data.
    Raises ``ValueError`` if there are no arrays, their lengths differ, or S < n_batches >= 2 fails.
    """
    if not arrays:
        raise ValueError("jackknife needs at least one array")
    arrays = [np.asarray(a) for a in arrays]
    S = arrays[0].shape[0] if arrays[0].ndim else 0
    if any(a.ndim == 0 or a.shape[0] != S for a in arrays):
        raise ValueError(f"all arrays need the same leading length; got {[a.shape for a in arrays]}")
    if not (2 <= n_batches <= S):
        raise ValueError(f"need 2 <= n_batches <= number of draws ({S}), got {n_batches}")
    full = np.asarray(fn(*arrays), dtype=float)
    edges = np.linspace(0, S, n_batches + 1).astype(int)
    loo = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        keep = np.r_[0:lo, hi:S]
        loo.append(np.asarray(fn(*(a[keep] for a in arrays)), dtype=float))
    loo = np.stack(loo)
    se = np.sqrt((n_batches - 1) / n_batches * ((loo - loo.mean(0)) ** 2).sum(0))
    return full, se


def cumulant(samples, idx, n_batches: int = 50):
    """Connected correlators (joint cumulants) from samples, with jackknife standard errors.

    ``samples``: (S, N) independent draws of an N-vector (a 1-d array is taken as N = 1).
    ``idx``: the components of one correlator, e.g. ``(0, 0, 0, 0)`` for the fourth cumulant of
    z_0 or ``(0, 1, 0, 1)``; or a list of such tuples, to get several at once (then the results
    are arrays in that order). Uses the general moment-cumulant (Moebius) inversion of book
    eq. (1.56), so nonzero means are handled.

    The needed monomials are summed once per batch of draws; the delete-one-batch jackknife of
    :func:`jackknife` then works on those sums, so the cost is one pass over the data.
    Returns ``(value, se)``. Raises ``ValueError`` for indices out of range or too few samples.
    """
    x = _ensemble_array(samples, "samples")
    if x.ndim == 1:
        x = x[:, None]
    many = len(idx) > 0 and not np.isscalar(idx[0])
    idx_list = [tuple(int(i) for i in ix) for ix in (idx if many else [idx])]
    for ix in idx_list:
        if not ix or min(ix) < 0 or max(ix) >= x.shape[1]:
            raise ValueError(f"indices {ix} out of range for {x.shape[1]} components")
    S = x.shape[0]
    if not 2 <= n_batches <= S:
        raise ValueError(f"need 2 <= n_batches <= number of draws ({S}), got {n_batches}")
    edges = np.linspace(0, S, n_batches + 1).astype(int)
    keys = sorted({tuple(sorted(c)) for ix in idx_list for r in range(1, len(ix) + 1)
                   for c in itertools.combinations(ix, r)}, key=lambda k: (len(k), k))
    prods, cols = {}, [np.diff(edges).astype(float)]
    for k in keys:  # every prefix of a sorted key is itself a key, computed earlier
        prods[k] = x[:, k[0]] if len(k) == 1 else prods[k[:-1]] * x[:, k[-1]]
        cols.append(np.add.reduceat(prods[k], edges[:-1]))

    def est(batch_sums):
        tot = batch_sums.sum(0)
        mom = dict(zip(keys, tot[1:] / tot[0]))
        return np.array([connected_from_moments(mom.__getitem__, ix) for ix in idx_list])

    value, se = jackknife(est, np.stack(cols, 1), n_batches=n_batches)
    return (value, se) if many else (value[0], se[0])


def neuron_moments(z):
    """Per-network neuron-averaged estimators of G_2, G_4, G_6 for a single input (book ch. 3).

    ``z``: (n_ens, n) preactivations of one layer on one input, n >= 2. Returns a dict of arrays of
    shape (n_ens,) whose ensemble means are

    * ``G2``: mean_j z_j^2                                   (E[z_j^2] = G_2, eq. 3.17)
    * ``G4``: [(sum_j z_j^2)^2 - sum_j z_j^4] / (n(n-1))     (E[z_j^2 z_k^2] = G_4, j != k, eq. 3.21)
    * ``G6``: mean_j z_j^6 / 15                               (E[z_j^6] = 15 G_6, eq. 3.37)
    * ``O``:  mean_j z_j^2 (alias of G2, the per-network observable O of eq. 3.31)
    """
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"z must be (n_ens, n) with n >= 2 neurons, got shape {z.shape}")
    n = z.shape[1]
    z2 = z**2
    s2 = z2.sum(1)
    return {"G2": s2 / n, "O": s2 / n, "G4": (s2**2 - (z2**2).sum(1)) / (n * (n - 1)),
            "G6": (z2**3).mean(1) / 15.0}


def _pair_mean(Pa, Pb):
    """mean over ordered pairs i != j of Pa[:, i, p] Pb[:, j, q]: (M, n, P), (M, n, Q) -> (M, P, Q)."""
    n = Pa.shape[1]
    full = Pa.sum(1)[:, :, None] * Pb.sum(1)[:, None, :]
    return (full - np.swapaxes(Pa, 1, 2) @ Pb) / (n * (n - 1))


def ntk_moments(Z, H, n_prev, n_batches: int = 50) -> dict:
    """NTK-preactivation statistics of the output layer estimated from an ensemble of real networks.

    ``Z`` (M, N, n_L) output preactivations and ``H`` (M, n_L, n_L, N, N) output NTKs
    H[m, i1, i2, a1, a2], as returned by :func:`dlt.networks.ntk_ensemble`; ``n_prev`` = n_{L-1},
    the width that normalizes the 1/n tensors of (8.67) and (8.82). With n = n_prev and neurons
    i != j (book ch. 8, spec item 13):

    * ``K[a1,a2]``        = E z_{i;a1} z_{i;a2}                                  (kernel, with its 1/n part)
    * ``H[a1,a2]``        = E H_{ii;a1a2}                                        (NTK mean (8.58))
    * ``V[a1,a2,a3,a4]``  = n Cov(z_{i;a1} z_{i;a2}, z_{j;a3} z_{j;a4})          (four-point vertex (4.40))
    * ``D[a1,a2,a3,a4]``  = n Cov(z_{i;a1} z_{i;a2}, H_{jj;a3a4})                (8.67)
    * ``F[a1,a3,a2,a4]``  = n E[z_{i;a1} z_{j;a2} H_{ij;a3a4}]                   (8.67), stored [a1,a3,a2,a4]
    * ``A[a1,a2,a3,a4]``  = n Cov(H_{ii;a1a2}, H_{jj;a3a4})                      (8.82)
    * ``B[a1,a3,a2,a4]``  = n E[H_{ij;a1a2} H_{ij;a3a4}]                         (8.82), stored [a1,a3,a2,a4]

    The layouts are those of :class:`dlt.ntk.NTKFlow`. Expectations over neuron pairs are averaged
    over all ordered pairs i != j inside each network (all-pairs sums minus the diagonal, no loop
    over neurons), and the standard errors are taken across networks, the independent draws: the
    plain standard error for the means K, H, F, B and a delete-one-batch jackknife (``n_batches``
    batches, see :func:`jackknife`) for the covariances V, D, A. Single-input checks of the diagonal:
    n Var(H_ii) = A + 2B and n Cov(z_i^2, H_ii) = D + 2F.

    Returns ``{key: (value, se)}`` for the keys K, H (arrays (N, N)) and V, D, F, B, A (arrays
    (N, N, N, N)). Raises ``ValueError`` for n_L < 2 (the estimators need two distinct neurons),
    fewer than two networks, shapes that do not match, a non-positive ``n_prev`` or a bad
    ``n_batches``.
    """
    Z = np.asarray(Z, dtype=float)
    H = np.asarray(H, dtype=float)
    if Z.ndim != 3:
        raise ValueError(f"Z must have shape (n_ens, N_D, n_L), got {Z.shape}")
    M, N, nL = Z.shape
    if H.shape != (M, nL, nL, N, N):
        raise ValueError(f"H must have shape (n_ens, n_L, n_L, N_D, N_D) = {(M, nL, nL, N, N)} to match "
                         f"Z {Z.shape}, got {H.shape}")
    if nL < 2:
        raise ValueError(f"ntk_moments needs n_L >= 2 output neurons (pairs i != j), got n_L = {nL}")
    if M < 2:
        raise ValueError(f"need at least 2 networks for standard errors, got {M}")
    if isinstance(n_prev, bool) or not isinstance(n_prev, (int, np.integer, float)) or not n_prev > 0:
        raise ValueError(f"n_prev must be a positive width n_(L-1), got {n_prev!r}")
    if isinstance(n_batches, bool) or not isinstance(n_batches, (int, np.integer)) or not 2 <= n_batches <= M:
        raise ValueError(f"need 2 <= n_batches <= number of networks ({M}), got {n_batches!r}")
    n, N2 = float(n_prev), N * N
    P = (Z[:, :, None, :] * Z[:, None, :, :]).reshape(M, N2, nL).transpose(0, 2, 1)  # z_{i;a1} z_{i;a2}
    Q = np.diagonal(H, axis1=1, axis2=2).reshape(M, N2, nL).transpose(0, 2, 1)        # H_{ii;a1a2}
    Hf = H.reshape(M, nL * nL, N2)
    out = {"K": mean_se(P.mean(1).reshape(M, N, N)), "H": mean_se(Q.mean(1).reshape(M, N, N))}

    # B: n E[H_ij;12 H_ij;34] over i != j, per network: all pairs minus the diagonal i = j
    Bm = (np.swapaxes(Hf, 1, 2) @ Hf - np.swapaxes(Q, 1, 2) @ Q) / (nL * (nL - 1))
    # F: n E[z_i;1 z_j;2 H_ij;34]: sum_ij Z_1i Z_2j H_ij;34 minus the i = j terms
    Zt = np.swapaxes(Z, 1, 2)                                                            # (M, n_L, N)
    ZZ = (Zt[:, :, None, :, None] * Zt[:, None, :, None, :]).reshape(M, nL * nL, N2)   # z_i;1 z_j;2
    Fm = (np.swapaxes(ZZ, 1, 2) @ Hf - np.swapaxes(P, 1, 2) @ Q) / (nL * (nL - 1))
    for key, m in (("B", Bm), ("F", Fm)):
        val, se = mean_se(n * m.reshape(M, N, N, N, N))
        out[key] = (val.transpose(0, 2, 1, 3), se.transpose(0, 2, 1, 3))             # -> [a1,a3,a2,a4]

    # V, D, A: n [E(X_i Y_j) - E X E Y]; jackknife over batch sums of the per-network estimators
    edges = np.linspace(0, M, n_batches + 1).astype(int)[:-1]
    sums = {name: np.add.reduceat(arr.reshape(M, -1), edges, axis=0) for name, arr in
            (("PP", _pair_mean(P, P)), ("PQ", _pair_mean(P, Q)), ("QQ", _pair_mean(Q, Q)),
             ("P", P.mean(1)), ("Q", Q.mean(1)))}
    counts = np.diff(np.r_[edges, M]).astype(float)[:, None]

    def cov(pair, a, b):
        def est(c, s_pair, s_a, s_b):
            tot = c.sum()
            return n * (s_pair.sum(0) / tot - np.outer(s_a.sum(0) / tot, s_b.sum(0) / tot).ravel())
        val, se = jackknife(est, counts, sums[pair], sums[a], sums[b], n_batches=n_batches)
        return val.reshape((N,) * 4), se.reshape((N,) * 4)

    out["V"], out["D"], out["A"] = cov("PP", "P", "P"), cov("PQ", "P", "Q"), cov("QQ", "Q", "Q")
    return {k: out[k] for k in ("K", "H", "V", "D", "F", "B", "A")}
