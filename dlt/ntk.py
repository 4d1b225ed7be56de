"""The RG flow of the neural tangent kernel (book chapter 8), in the same pass as K and V.

With the learning-rate tensor (8.6) (lambda_b^(l) for biases, lambda_W^(l) / n_{l-1} for weights),
the NTK of layer l, H_hat^(l)_{i1 i2; a1 a2} = delta_{i1 i2} H^(l)_{a1 a2} + Delta H_hat, obeys to
leading order in 1/n (K = K^(l), expectations <.> Gaussian with kernel K, s_a = sigma(z_a),
s'_a = sigma'(z_a), C = C^(l+1), lambda = lambda^(l+1), r = n_l / n_{l-1}):

  (8.63)  H^(l+1)_ab = lambda_b + <Omega_ab>,   Omega_ab = lambda_W s_a s_b + C_W H_ab s'_a s'_b  (8.74)
  (8.77)  D^(l+1)_abcd = C_W Cov(s_a s_b, Omega_cd) + r C_W/4 [P(s_a s_b) V P(Omega_cd)]
                         + r C_W^2/2 [P(s_a s_b) D_..cd] <s'_c s'_d>
  (8.79)  F^(l+1)_acbd = C_W^2 <s_a s_b s'_c s'_d> H_cd + r C_W^2 sum p(s_a s'_c)_g p(s_b s'_d)_e F_gced
  (8.89)  B^(l+1)_acbd = C_W^2 [<s'_a s'_b s'_c s'_d> H_ab H_cd + r <s'_a s'_c> <s'_b s'_d> B_acbd]
  (8.97)  A^(l+1)_abcd = Cov(Omega_ab, Omega_cd) + r/4 [P(Omega_ab) V P(Omega_cd)]
                         + r C_W^2 <s'_a s'_b> <s'_c s'_d> A_abcd
                         + r C_W/2 ([P(Omega_ab) D_..cd] <s'_c s'_d> + (ab <-> cd))

Here P(O)_gd = sum_{b1 b2} <(z_b1 z_b2 - K_b1b2) O> K^{b1 g} K^{b2 d} = <d_g d_d O> and
p(O)_g = sum_b <z_b O> K^{bg} = <d_g O> are the raised-index projections of the book, computed in
the block-local z-form of dlt.kernels (no derivative of sigma beyond sigma', exact for kinked sigma
on the polar rule); [P V P'] = sum P_ab,gd V_(gd)(ef) P'_cd,ef. The coefficient r C_W/2 of the last
term of (8.97) is garbled in the PDF's text; C_W/2 is the value that reproduces (9.16) and
simulation (book/errata.md). The tensors are normalized by 1/n_{l-1} as in (8.67), (8.82), start
from zero at layer 1 (9.17), and are stored with their indices in the book's written order:

  D[a1,a2,a3,a4] = D_{a1 a2 a3 a4} (a1, a2: the z samples; a3, a4: the NTK samples)
  F[a1,a3,a2,a4] = F_{a1 a3 a2 a4} (a1, a3: the samples of neuron i1; a2, a4: of neuron i2)
  B[a1,a3,a2,a4] = B_{a1 a3 a2 a4},  A[a1,a2,a3,a4] = A_{(a1 a2)(a3 a4)}.

B and F are not symmetrized: beyond layer 2 they are not symmetric under a1 <-> a2 alone.
Single input is N = 1; the compact single-input forms (9.13)-(9.21) are tests of this engine.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations
from types import SimpleNamespace

import numpy as np

from .activations import get_activation
from .gaussian import quadrature_nodes
from .kernels import (
    _BASE,
    DEG,
    _chol,
    _conditioned,
    _deg,
    _diagonal_rule,
    _expect,
    _fac,
    _inherited,
    _inputs,
    _kernel,
    _kinked_moments,
    _kinks,
    _local,
    _nonneg,
    _pair_hq,
    _pair_tensors,
    _plan,
    _polar_nodes,
    _refined,
    _rule_name,
    _s2,
    _tensor,
    first_layer_metric,
)
from .networks import MLP

__all__ = ["NTKFlow", "ntk_flow", "ntk_mean_step", "first_layer_ntk"]


def _ntk_activation(act):
    act = get_activation(act)
    if not act.smooth and not act.scale_invariant:
        raise ValueError(f"the NTK needs sigma' as a function: the derivative of {act.name} is a "
                         "delta function (use a smooth or piecewise-linear activation)")
    return act


def first_layer_ntk(net: MLP, X):
    """H^(1)_{a1 a2} = lambda_b^(1) + lambda_W^(1) / n_0 sum_j x_{j;a1} x_{j;a2}, book eq. (8.23); exact
    (the first-layer NTK does not fluctuate). X (N, n_0) -> (N, N). Raises ValueError for bad X."""
    X = _inputs(net, X)
    return net.lambda_b[0] + net.lambda_W[0] * (X @ X.T) / net.widths[0]


def ntk_mean_step(act, K, H, C_W, lambda_b, lambda_W, *, deg: int = DEG):
    """H^(l+1) = lambda_b + lambda_W <s_a s_b>_K + C_W <s'_a s'_b>_K H_ab (elementwise), book eq. (8.63)
    = (9.5), from K = K^(l), H = H^(l) (N, N) and the hyperparameters of layer l+1. Returns (N, N).

    Raises ValueError for a bad K, H or hyperparameter, or an activation without a derivative."""
    act, K, deg = _ntk_activation(act), _kernel(K), _deg(deg)
    H = _tensor(H, K.shape[0], 2, "H")
    a, b = np.indices(K.shape)
    kd = np.diag(K)
    return (_nonneg(lambda_b, "lambda_b") + _nonneg(lambda_W, "lambda_W") * _s2(act, kd, a, b, K, deg)
            + _nonneg(C_W, "C_W") * _s2(act, kd, a, b, K, deg, d=1) * H)


# ----------------------------------------------------------------------------- Gaussian tensors
@lru_cache(maxsize=8)
def _mixed_plan(N):
    """Bookkeeping of the mixed four-point tables M4[a,b,c,d] = <s_a s_b s'_c s'_d> and
    P4[a,b,c,d] = <s'_a s'_b s'_c s'_d>: per block size m, the flat positions of the (N,)^4 tuples whose
    distinct samples form an m-block, their block (index into _plan(N).blocks[m]) and pattern (index
    into pats[m], factor codes per sample of the block, closed under permutations)."""
    blocks = _plan(N).blocks
    where = {m: {tuple(S): i for i, S in enumerate(Ss)} for m, Ss in blocks.items()}
    out = {}
    for name, counts in (("M4", (1, 1, _BASE, _BASE)), ("P4", (_BASE,) * 4)):
        rows = {m: [] for m in blocks}
        for flat, tup in enumerate(np.ndindex((N,) * 4)):
            S = tuple(sorted(set(tup)))
            code = tuple(sum(c for t, c in zip(tup, counts) if t == s) for s in S)
            rows[len(S)].append((flat, where[len(S)][S], code))
        out[name] = rows
    pats = {m: sorted({p for name in out for _, _, c in out[name][m] for p in permutations(c)})
            for m in blocks}
    maps = {name: {m: tuple(np.array(col, dtype=int) for col in zip(*[(f, b, pats[m].index(c))
                                                                       for f, b, c in rows[m]]))
                   for m in rows if rows[m]} for name, rows in out.items()}
    return SimpleNamespace(pats=pats, maps=maps)


def _block_moments(act, Kb, pats, deg):
    """<prod_i f_i(z_i)> on blocks Kb (B, m, m) for factor-code patterns pats -> (B, len(pats))."""
    m = Kb.shape[-1]
    if m == 1:
        x, W = _diagonal_rule(_kinks(act) is not None, deg)
        z = np.sqrt(Kb[:, 0, 0])[:, None] * x
        s, ds = act.f(z), lru_cache(1)(lambda: act.df(z))
        return np.stack([_fac(s, ds, p[0]) @ W[:, 0] for p in pats], -1)
    if _kinks(act) is None:
        return _conditioned(act, Kb, pats, deg)
    if m > 2:
        return _kinked_moments(act, Kb, pats)
    def f(z, sl):
        s0, s1 = act.f(z[..., 0]), act.f(z[..., 1])
        d0, d1 = lru_cache(1)(lambda: act.df(z[..., 0])), lru_cache(1)(lambda: act.df(z[..., 1]))
        return np.stack([_fac(s0, d0, p) * _fac(s1, d1, q) for p, q in pats], -1)

    return _expect(act, f, Kb, deg)


def _mixed_four(act, K, deg):
    """M4[a,b,c,d] = <s_a s_b s'_c s'_d>_K and P4[a,b,c,d] = <s'_a s'_b s'_c s'_d>_K, (N,)^4 each, every
    entry from the block of the distinct samples it names."""
    N = K.shape[0]
    plan, blocks = _mixed_plan(N), _plan(N).blocks
    tables = {m: _block_moments(act, K[S[:, :, None], S[:, None, :]], plan.pats[m], deg)
              for m, S in blocks.items()}
    out = []
    for name in ("M4", "P4"):
        T = np.empty(N ** 4)
        for m, (flat, blk, pat) in plan.maps[name].items():
            T[flat] = tables[m][blk, pat]
        out.append(T.reshape((N,) * 4))
    return out


def _pair_first(act, Kb, deg):
    """p(s s')_g on 2-sample blocks Kb (B, 2, 2) in z-form: (B, 2, 2) with [:, 0] = <s(z_0) s'(z_1) w>,
    [:, 1] = <s'(z_0) s(z_1) w>, w = Kb^-1 z (Cholesky-mapped grid or the polar rule)."""
    if _kinks(act) is None and len(Kb):
        return _refined(act, Kb, deg, lambda K, g: (_pair_first_grid(act, K, g),))[0]
    return _pair_first_grid(act, Kb, deg)


def _pair_first_grid(act, Kb, deg):
    A = _chol(Kb)
    if _kinks(act) is None:
        u, wq = quadrature_nodes(2, deg, _rule_name(act))
        z = np.einsum("bij,pj->bpi", A, u)
        u = np.broadcast_to(u, z.shape)
    else:
        z, wq = _polar_nodes(Kb)
        u = np.einsum("bij,bpj->bpi", np.linalg.inv(A), z)
    s, ds = act.f(z), act.df(z)
    M = np.swapaxes(np.linalg.inv(A), 1, 2)  # w = M u
    mom = np.stack([np.einsum("bp,bpi->bi", s[..., 0] * ds[..., 1] * wq, u),
                    np.einsum("bp,bpi->bi", ds[..., 0] * s[..., 1] * wq, u)], 1)
    return np.einsum("bgi,boi->bog", M, mom)


def _ntk_tensors(act, K, deg):
    """Everything the NTK step needs at K (N, N): the chapter-4 tensors t (S2, H = P(s s) per pair,
    s4), S2d = <s' s'> (N, N), Hd = P(s' s') per pair (P, 2, 2), p1[a, c, i] = p(s_a s'_c) on the local
    sample i of the ordered pair (a, c) (i = 1 unused for a = c), M4, P4."""
    N, plan, kd = K.shape[0], _plan(K.shape[0]), K.diagonal()
    t = _pair_tensors(act, K, deg, fourth=False)
    S2d, Hd, p1 = np.empty((N, N)), np.zeros_like(t["H"]), np.zeros((N, N, 2))
    x, W = _diagonal_rule(_kinks(act) is not None, deg)
    z = np.sqrt(kd)[:, None] * x
    ds, s = act.df(z), act.f(z)
    np.fill_diagonal(S2d, (ds * ds) @ W[:, 0])
    Hd[:N, 0, 0] = (ds * ds) @ W[:, 1] / kd
    p1[np.arange(N), np.arange(N), 0] = (s * ds * x) @ W[:, 0] / np.sqrt(kd)  # <s s' z> / K
    if N > 1:
        i, j = plan.I[N:, 0], plan.I[N:, 1]
        S2d[i, j] = S2d[j, i] = _s2(act, kd, i, j, K[i, j], deg, d=1)
        Kb = K[plan.ij[0][N:], plan.ij[1][N:]]
        Hd[N:] = _pair_hq(act, Kb, deg, False, fn=act.df)[0]
        pf = _pair_first(act, Kb, deg)
        p1[i, j], p1[j, i] = pf[:, 0], pf[:, 1, ::-1]
    M4, P4 = _mixed_four(act, K, deg)
    return t, S2d, Hd, p1, M4, P4


def _sandwich(L, T, R, plan):
    """sum_{g,d in {a,b}; e,f in {c,d}} L_ab,gd T[g,d,e,f] R_cd,ef  (N,)^4 for pair tensors L, R (P, 2, 2)."""
    W = np.einsum("pij,pijcd->pcd", L, T[plan.ij])
    return np.einsum("pqkl,qkl->pq", W[(slice(None),) + plan.ij], R)[plan.pp]


def _left(L, T, plan):
    """sum_{g,d in {a,b}} L_ab,gd T[g,d,c,d']  (N,)^4."""
    return np.einsum("pij,pijcd->pcd", L, T[plan.ij])[plan.pid]


def _ntk_step(act, K, V, H, D, F, B, A, cb, cw, lb, lw, r, deg):
    """One layer of (4.118), (4.119), (8.63), (8.77), (8.79), (8.89), (8.97): every right-hand side from
    layer l only (the compact forms (9.20), (9.21) mix l and l+1; these full forms do not)."""
    N, plan = K.shape[0], _plan(K.shape[0])
    t, S2d, Hd, p1, M4, P4 = _ntk_tensors(act, K, deg)
    S2, Hs = t["S2"], t["H"]
    Hp = H[plan.I[:, 0], plan.I[:, 1]][:, None, None]
    PO = lw * Hs + cw * Hp * Hd                                      # P(Omega_ab) per pair
    covSS = _local(act, K, t, 1.0, deg)                              # <s s s s> - <s s><s s>
    covSD = M4 - np.multiply.outer(S2, S2d)                          # <s_a s_b s'_c s'_d> - ..
    covDD = P4 - np.multiply.outer(S2d, S2d)
    Hab, Hcd = H[:, :, None, None], H[None, None]
    cov_sO = lw * covSS + cw * Hcd * covSD                           # Cov(s_a s_b, Omega_cd)
    cov_OO = (lw * lw * covSS + lw * cw * (Hcd * covSD + Hab * covSD.transpose(2, 3, 0, 1))
              + cw * cw * Hab * Hcd * covDD)
    Sd_cd = S2d[None, None]
    K1 = cb + cw * S2
    V1 = cw * cw * covSS + r * cw * cw / 4 * _inherited(t, V)
    H1 = lb + lw * S2 + cw * S2d * H
    D1 = cw * cov_sO + r * cw / 4 * _sandwich(Hs, V, PO, plan) + r * cw * cw / 2 * _left(Hs, D, plan) * Sd_cd
    # F: p(s_a s'_c) acts on F's first slot (sample a or c), p(s_b s'_d) on its third (b or d)
    a, c, b, d = np.indices((N,) * 4)
    inh = sum(p1[a, c, i] * p1[b, d, j] * F[(a, c)[i], c, (b, d)[j], d] for i in (0, 1) for j in (0, 1))
    F1 = cw * cw * M4.transpose(0, 2, 1, 3) * H[None, :, None, :] + r * cw * cw * inh
    B1 = cw * cw * (P4 * H[:, None, :, None] * H[None, :, None, :] + r * _outer_slots(S2d) * B)
    A1 = (cov_OO + r / 4 * _sandwich(PO, V, PO, plan) + r * cw * cw * np.multiply.outer(S2d, S2d) * A
          + r * cw / 2 * (_left(PO, D, plan) * Sd_cd + (_left(PO, D, plan) * Sd_cd).transpose(2, 3, 0, 1)))
    return K1, V1, H1, D1, F1, B1, A1


def _outer_slots(S):
    """T[a1,a3,a2,a4] = S[a1,a3] S[a2,a4] for the slot layout of B."""
    return S[:, :, None, None] * S[None, None]


# ----------------------------------------------------------------------------- the flow
@dataclass(frozen=True)
class NTKFlow:
    """Chapter 4 + 8 flow of a network on N inputs, indexed by the book's layer l = 0..L (entry 0:
    K[0] = X X^T / n_0, everything else 0).

    K (L+1, N, N) kernel; V (L+1,) + (N,)*4 four-point vertex V_(a1a2)(a3a4); H (L+1, N, N) NTK mean;
    D, F, B, A (L+1,) + (N,)*4 in the layouts of the module docstring (F and B: [a1, a3, a2, a4]).
    V, D, F, B, A are normalized by 1/n_{l-1} (8.67), (8.82) and vanish at l = 1."""
    net: MLP
    X: np.ndarray
    K: np.ndarray
    V: np.ndarray
    H: np.ndarray
    D: np.ndarray
    F: np.ndarray
    B: np.ndarray
    A: np.ndarray


def ntk_flow(net: MLP, X, *, deg: int = DEG) -> NTKFlow:
    """K, V, the NTK mean H and its finite-width statistics D, F, B, A at every layer of `net` on the
    inputs X (N, n_0), in one pass: eqs. (4.8), (8.23) (layer 1), then (4.118), (4.119), (8.63),
    (8.77), (8.79), (8.89), (8.97) with the per-layer C_b, C_W, lambda_b, lambda_W of `net` and
    r = n_l / n_{l-1} on every term that carries a layer-l V, D, F, B or A.

    Each layer is computed from the previous one only. Cost per layer: the chapter-4 step plus the
    mixed four-point tables <s s s' s'> and <s' s' s' s'> on every block of <= 4 distinct samples:
    meant for N <~ 6 (one input: ~0.3 ms per layer). Raises TypeError for a net that is not an
    MLP; ValueError for bad X or deg, an activation whose derivative is a delta function
    (perceptron), or a singular 2x2 kernel block (duplicate inputs). Warns and fills nan if the
    kernel explodes or vanishes (off criticality)."""
    X, deg = _inputs(net, X), _deg(deg)
    act, L, N, n = _ntk_activation(net.activation), net.L, X.shape[0], net.widths
    K, H = np.zeros((L + 1, N, N)), np.zeros((L + 1, N, N))
    V, D, F, B, A = (np.zeros((L + 1,) + (N,) * 4) for _ in range(5))
    K[0], K[1], H[1] = X @ X.T / n[0], first_layer_metric(X, net.C_b[0], net.C_W[0]), first_layer_ntk(net, X)
    for l in range(1, L):
        if not np.isfinite(K[l]).all() or (K[l].diagonal() < 1e-100).any() or not np.isfinite(H[l]).all():
            warnings.warn(f"the kernel or the NTK has exploded or vanished at layer {l} (off "
                          "criticality?); deeper layers are set to nan")
            for T in (K, V, H, D, F, B, A):
                T[l + 1:] = np.nan
            break
        out = _ntk_step(act, K[l], V[l], H[l], D[l], F[l], B[l], A[l], net.C_b[l], net.C_W[l],
                        net.lambda_b[l], net.lambda_W[l], n[l] / n[l - 1], deg)
        for T, new in zip((K, V, H, D, F, B, A), out):
            T[l + 1] = new
    return NTKFlow(net, X, K, V, H, D, F, B, A)
