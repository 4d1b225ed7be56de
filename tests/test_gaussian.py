"""Tests of dlt.gaussian (chapter 1). Tolerances: round-off bounds, exact quadrature on
polynomials, truncation bounds from the exact perturbative series, Monte Carlo standard errors."""
from itertools import combinations
from math import factorial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from dlt.gaussian import (
    connected_from_moments,
    double_factorial,
    even_action,
    first_order_expectation,
    gaussian_expectation,
    gaussian_mgf,
    gaussian_moment_1d,
    gaussian_normalization,
    moments_from_connected,
    pairing_cycle_counts,
    pairings,
    quartic_exact_1d,
    quartic_first_order,
    reweighted_expectation,
    sample_quartic,
    set_partitions,
    symmetrize,
    wick,
    wick_tensor,
)

EPS = np.finfo(float).eps


def rand_cov(N, seed, rank=None):
    A = np.random.default_rng(seed).standard_normal((N, rank or N))
    return A @ A.T


def quartic_form(V):
    return lambda z: even_action(z, None, {4: V})


def monomials(idx):
    """f(z) = prod_i z[..., idx_i] for every row of the integer array idx (n, M) -> (..., P, n)."""
    idx = np.atleast_2d(idx)
    if idx.shape[1] == 0:
        return lambda z: np.ones(z.shape[:-1] + (len(idx),))
    return lambda z: np.prod(z[..., idx], axis=-1)


def series(O, dS, K, order, deg):
    """Exact Taylor coefficients in eps of E[O] under S = S_K + eps dS (and of Z/Z_K):
    E[O] = sum_k (-eps)^k <O dS^k>_K / k!  divided by  Z/Z_K = sum_k (-eps)^k <dS^k>_K / k!."""
    def ev(g):
        return gaussian_expectation(g, K, deg=deg)
    b = np.array([(-1) ** k / factorial(k) * ev(lambda z: dS(z) ** k) for k in range(order + 1)])
    a = []
    for k in range(order + 1):
        def g(z, k=k):
            o, w = O(z), dS(z) ** k
            return o * w.reshape(w.shape + (1,) * (o.ndim - w.ndim))
        a.append((-1) ** k / factorial(k) * ev(g))
    c = []  # power-series division a / b
    for k in range(order + 1):
        c.append((a[k] - sum(b[j] * c[k - j] for j in range(1, k + 1))) / b[0])
    return np.array(c), b


def pair_sum(A, B):
    pairs = (("ab", "cd"), ("ac", "bd"), ("ad", "bc"))
    return sum(np.einsum(f"{p},{q}->abcd", A, B) for p, q in pairs)


def c4_series(g2, g4):
    """Series of the connected 4-point function from series of G2 (k, N, N) and G4 (k, N^4)."""
    return np.array([g4[k] - sum(pair_sum(g2[i], g2[k - i]) for i in range(k + 1))
                     for k in range(len(g2))])


# ----------------------------------------------------------------------------- closed forms
def test_double_factorial_and_1d_moments():
    assert [double_factorial(k) for k in (-1, 0, 1, 5, 7, 8)] == [1, 1, 1, 15, 105, 384]
    for m in range(7):
        assert double_factorial(2 * m - 1) == factorial(2 * m) // (2 ** m * factorial(m))  # (1.16)
    K = 1.7
    z_pow = gaussian_expectation(lambda z: z ** np.arange(13), K * np.eye(1), deg=20)
    exact = [gaussian_moment_1d(K, M) for M in range(13)]
    np.testing.assert_allclose(z_pow, exact, rtol=1e-12, atol=1e-12 * K ** 6 * 10395)
    np.testing.assert_allclose(gaussian_moment_1d(np.array([1.0, 2.0]), 4), [3.0, 12.0])


def test_normalization_and_mgf():
    K = rand_cov(3, 0)
    assert np.isclose(gaussian_normalization(K), np.sqrt(np.linalg.det(2 * np.pi * K)), rtol=1e-13)
    assert np.isclose(gaussian_normalization(2.0), np.sqrt(4 * np.pi), rtol=1e-15)
    assert gaussian_normalization(np.ones((2, 2))) == 0.0  # singular
    assert gaussian_normalization(np.stack([K, 2 * K])).shape == (2,)
    J, s = np.array([0.3, -0.2, 0.5]), np.array([0.1, 0.0, -0.4])
    quad_ = gaussian_expectation(lambda z: np.exp(z @ J), K, mean=s, deg=30)
    assert np.isclose(gaussian_mgf(J, K, mean=s), quad_, rtol=1e-12)
    assert gaussian_mgf(np.zeros((4, 3)), K).shape == (4,)


def test_pairing_counts_and_cycles():
    assert [len(pairings(range(2 * m))) for m in range(6)] == [1, 1, 3, 15, 105, 945]
    six = pairings("abcdef")
    assert len({frozenset(map(frozenset, p)) for p in six}) == 15  # all distinct (book's list)
    assert pairing_cycle_counts(3) == {3: 1, 2: 6, 1: 8}  # c_6 = 1 + 6/n + 8/n^2 (3.42)
    assert list(pairing_cycle_counts(4).values()) == [1, 12, 44, 48]
    assert pairing_cycle_counts(0) == {0: 1}
    # bookkeeping behind (1.74)-(1.75): mu-rho contractions in <mu1 mu2 rho1..4> and the 8-point
    n_mr = lambda p, mus: sum((a in mus) != (b in mus) for a, b in p)
    assert sorted(n_mr(p, {0, 1}) for p in pairings(range(6))).count(0) == 3
    c8 = [n_mr(p, {0, 1, 2, 3}) for p in pairings(range(8))]
    assert [c8.count(k) for k in (0, 2, 4)] == [9, 72, 24]


@pytest.mark.parametrize("M", [4, 6, 8])
def test_wick_vs_quadrature(M):
    K = rand_cov(3, M)
    T = wick_tensor(K, M)
    idx = np.indices((3,) * M).reshape(M, -1).T
    # deg = M//2 + 1 makes quadrature exact for degree M; error is round-off only
    q = gaussian_expectation(monomials(idx), K, deg=M // 2 + 1).reshape(T.shape)
    np.testing.assert_allclose(q, T, rtol=1e-10, atol=1e-12 * np.abs(T).max())
    rng = np.random.default_rng(M)
    for ix in rng.integers(0, 3, (5, M)):
        assert np.isclose(wick(K, ix), T[tuple(ix)], rtol=1e-12)
    for perm in (rng.permutation(M) for _ in range(3)):  # fully symmetric tensor
        np.testing.assert_allclose(np.transpose(T, perm), T, atol=1e-14 * np.abs(T).max())
    assert wick(K, (0, 1, 2)) == 0.0 and np.all(wick_tensor(K, 3) == 0)
    assert wick(K, ()) == 1.0


def test_wick_small_cases():
    K = rand_cov(4, 1)
    three = K[0, 1] * K[2, 3] + K[0, 2] * K[1, 3] + K[0, 3] * K[1, 2]  # (1.44)
    assert np.isclose(wick(K, (0, 1, 2, 3)), three)
    assert np.isclose(wick(K, (2, 2, 2, 2, 2, 2)), 15 * K[2, 2] ** 3)


# ----------------------------------------------------------------------------- quadrature
def test_quadrature_batched_matches_loop():
    Ks = np.stack([rand_cov(2, s) for s in range(12)]).reshape(3, 4, 2, 2)
    mean = np.random.default_rng(0).standard_normal((3, 4, 2))
    f = lambda z: np.stack([np.tanh(z[..., 0]) * np.sin(z[..., 1]), np.exp(-z[..., 0] ** 2)], -1)
    out = gaussian_expectation(f, Ks, mean=mean, deg=30)
    assert out.shape == (3, 4, 2)
    loop = np.array([[gaussian_expectation(f, Ks[i, j], mean=mean[i, j], deg=30) for j in range(4)]
                     for i in range(3)])
    np.testing.assert_allclose(out, loop, rtol=1e-13, atol=1e-15)
    assert gaussian_expectation(lambda z: 1.0, Ks).shape == (3, 4)


def test_singular_kernel():
    K = np.ones((2, 2))  # two identical inputs
    two = gaussian_expectation(lambda z: np.tanh(z[..., 0]) * np.tanh(z[..., 1]), K, deg=50)
    one = gaussian_expectation(lambda z: np.tanh(z[..., 0]) ** 2, np.eye(1), deg=50)
    assert np.isclose(two, one, rtol=1e-13)
    Kneg = np.array([[1.0, 1.0], [1.0, 1.0 - 1e-14]])  # eigenvalue -5e-15: round-off, clipped to 0
    near = gaussian_expectation(lambda z: np.tanh(z[..., 0]) * np.tanh(z[..., 1]), Kneg, deg=50)
    assert np.isclose(near, one, rtol=1e-12)
    K4 = rand_cov(4, 3, rank=2)
    idx = np.array([[0, 1, 2, 3], [0, 0, 3, 3]])
    np.testing.assert_allclose(gaussian_expectation(monomials(idx), K4, deg=3),
                               [wick(K4, i) for i in idx], rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 3), seed=st.integers(0, 10 ** 6), data=st.data())
def test_quadrature_exact_on_polynomials(N, seed, data):
    rank = data.draw(st.integers(1, N))
    M = data.draw(st.integers(0, 8))
    idx = data.draw(st.lists(st.integers(0, N - 1), min_size=M, max_size=M))
    deg = data.draw(st.integers(M // 2 + 1, 12))  # exact for degree <= 2 deg - 1
    K = rand_cov(N, seed, rank)
    q = gaussian_expectation(monomials([idx]), K, deg=deg)[0]
    # round-off: each node's value is accurate to ~ (M + log P) eps ||z||^M
    scale = gaussian_expectation(lambda z: np.linalg.norm(z, axis=-1) ** M, K, deg=deg)
    assert abs(q - wick(K, idx)) <= 1e3 * EPS * scale


# ----------------------------------------------------------------------------- cumulants
def test_connected_of_gaussian_vanish():
    K = rand_cov(3, 5)
    for idx in [(0, 1, 2), (0, 1, 2, 0), (0, 0, 1, 1, 2, 2), (2, 2, 2, 2, 2, 2)]:
        assert abs(connected_from_moments(lambda k: wick(K, k), idx)) < 1e-12 * np.abs(K).max() ** 3
    s = np.array([0.5, -1.0, 0.3])  # non-zero mean: exact moments by quadrature on polynomials
    mom = lambda k: gaussian_expectation(monomials([list(k)]), K, mean=s, deg=5)[0]
    assert np.isclose(connected_from_moments(mom, (1,)), s[1])
    assert np.isclose(connected_from_moments(mom, (0, 2)), K[0, 2], rtol=1e-12)
    for idx in [(0, 1, 2), (0, 0, 1, 2), (0, 1, 2, 0, 1)]:
        assert abs(connected_from_moments(mom, idx)) < 1e-11


def test_moebius_reproduces_1_61_and_round_trips():
    assert [len(set_partitions(range(n))) for n in range(9)] == [1, 1, 2, 5, 15, 52, 203, 877, 4140]
    X = np.random.default_rng(0).standard_normal((500, 3)) ** 3 @ rand_cov(3, 1)
    raw = lambda k: np.mean(np.prod(X[:, list(k)], axis=1))
    even = lambda k: raw(k) if len(k) % 2 == 0 else 0.0  # parity-symmetric moments
    idx = (0, 1, 2, 0, 1, 2)
    E = lambda pos: even(tuple(idx[i] for i in pos))
    formula = (E(range(6))
               - sum(E(set(range(6)) - set(pr)) * E(pr) for pr in combinations(range(6), 2))
               + 2 * sum(E(a) * E(b) * E(c) for a, b, c in pairings(range(6))))
    assert np.isclose(connected_from_moments(even, idx), formula, rtol=1e-12)
    m = lambda k: gaussian_moment_1d(1.0, len(k)) * 1.3 ** len(k)  # k6 = m6 - 15m4m2 + 30m2^3
    k6 = m((0,) * 6) - 15 * m((0,) * 4) * m((0, 0)) + 30 * m((0, 0)) ** 3
    assert np.isclose(connected_from_moments(m, (0,) * 6), k6, atol=1e-12)
    for idx in [(0,), (0, 1), (0, 1, 1), (2, 0, 1, 1, 2)]:  # general (skewed, non-zero mean)
        back = moments_from_connected(lambda k: connected_from_moments(raw, k), idx)
        assert np.isclose(back, raw(idx), rtol=1e-12)


# ----------------------------------------------------------------------------- perturbation theory
def test_even_action_and_generic_first_order():
    K, z = rand_cov(2, 2), np.random.default_rng(1).standard_normal((5, 2))
    V = symmetrize(np.random.default_rng(2).standard_normal((2,) * 4))
    S = even_action(z, K, {4: V})
    ref = (0.5 * np.einsum("na,ab,nb->n", z, np.linalg.inv(K), z)
           + np.einsum("abcd,na,nb,nc,nd->n", V, z, z, z, z) / 24)
    np.testing.assert_allclose(S, ref, rtol=1e-12)
    s2 = 0.01 * symmetrize(rand_cov(2, 4))  # quadratic coupling: E[zz] = K - K s K to first order
    G = [[first_order_expectation((a, b), K, {2: s2}) for b in range(2)] for a in range(2)]
    np.testing.assert_allclose(G, K - K @ s2 @ K, rtol=1e-12)
    s, d = 0.3, {6: 0.3 * np.ones((1,) * 6)}  # N = 1 sextic, K = 1: k6 = -s, k4 = -s/2 (spec 3.5)
    g2, g4, g6 = (first_order_expectation((0,) * r, np.eye(1), d) for r in (2, 4, 6))
    dg2, dg4, dg6 = g2 - 1, g4 - 3, g6 - 15
    assert np.isclose(dg4 - 6 * dg2, -s / 2, rtol=1e-12)
    assert np.isclose(dg6 - 15 * dg4 + 45 * dg2, -s, rtol=1e-12)  # linearized k6


def test_quartic_first_order_matches_book_formulas():
    K, N = rand_cov(3, 7), 3
    V, eps = symmetrize(np.random.default_rng(3).standard_normal((N,) * 4)), 0.1
    r = quartic_first_order(K, V, eps)
    Z = 1 - eps / 8 * np.einsum("abcd,ab,cd", V, K, K)  # (1.73)
    assert np.isclose(r["Z_ratio"], Z, rtol=1e-13)
    np.testing.assert_allclose(r["G2"], K - eps / 2 * np.einsum("abcd,ia,jb,cd->ij", V, K, K, K),
                               rtol=1e-12, atol=1e-13)  # (1.74)
    C4 = -eps * np.einsum("abcd,ia,jb,kc,ld->ijkl", V, K, K, K, K)  # (1.78)
    np.testing.assert_allclose(r["C4"], C4, atol=1e-12 * np.abs(C4).max())
    G2 = r["G2"]  # (1.77): G4 = sum G2 G2 - eps V KKKK + O(eps^2)
    assert np.abs(r["G4"] - pair_sum(G2, G2) - C4).max() < 3 * np.abs(G2 - K).max() ** 2 + 1e-12


def test_quartic_exact_1d():
    for x in (0.5, 0.02):  # vs scipy quad, K = 1.3
        K = 1.3
        w = lambda z, p: z ** p * np.exp(-z * z / (2 * K) - x * z ** 4 / 24)
        I = [quad(w, -np.inf, np.inf, args=(p,), epsabs=0, epsrel=1e-13)[0] for p in (0, 2, 4)]
        r = quartic_exact_1d(K, 1.0, x)
        np.testing.assert_allclose([r["Z_ratio"], r["G2"], r["G4"]],
                                   [I[0] / np.sqrt(2 * np.pi * K), I[1] / I[0], I[2] / I[0]],
                                   rtol=1e-11)
    r = quartic_exact_1d(1.0, 1.0, 0.02)  # spec values at x = 0.02
    np.testing.assert_allclose([r["Z_ratio"], r["G2"], r["kappa4"]],
                               [0.9975354944, 0.9902562329, -0.0186920960], atol=1e-10)
    # exact perturbative series (K = 1, x = eps V): Z, G2, kappa4 to O(x^3)
    one = np.eye(1)
    g2, zs = series(lambda z: z ** 2, lambda z: z[..., 0] ** 4 / 24, one, 3, 12)
    g4, _ = series(lambda z: z ** 4, lambda z: z[..., 0] ** 4 / 24, one, 3, 12)
    g2, g4 = g2[:, 0], g4[:, 0]
    k4 = np.array([g4[k] - 3 * sum(g2[i] * g2[k - i] for i in range(k + 1)) for k in range(4)])
    np.testing.assert_allclose(zs[:3], [1, -1 / 8, 35 / 384], rtol=1e-13)  # spec 3.4
    np.testing.assert_allclose(g2[:3], [1, -1 / 2, 2 / 3], rtol=1e-13)
    np.testing.assert_allclose(k4[:3], [0, -1, 7 / 2], atol=1e-13)
    res = {}
    for x in (0.0125, 0.00625):
        ex, fo = quartic_exact_1d(1.0, 1.0, x), quartic_first_order(one, np.ones((1,) * 4), x)
        got = np.array([ex["Z_ratio"], ex["G2"], ex["kappa4"]])
        first = np.array([fo["Z_ratio"], fo["G2"][0, 0], fo["C4"].item()])
        c = np.array([zs, g2, k4])  # rows: Z, G2, k4; columns: orders 0..3
        np.testing.assert_allclose(first, c[:, 0] + c[:, 1] * x, rtol=1e-13, atol=1e-15)
        # truncation after x^2 is c3 x^3 (1 + O(x)); allow 2x for the O(x) part
        assert np.all(np.abs(got - first - c[:, 2] * x ** 2) <= 2 * np.abs(c[:, 3]) * x ** 3)
        res[x] = got - first
    ratio = res[0.0125] / res[0.00625]
    # ratio = 4 (c2 + c3 x)/(c2 + c3 x/2) = 4 (1 + c3 x / 2c2 + ...): allow 6x that O(x) term
    assert np.all(np.abs(ratio - 4) <= 12 * np.abs(c[:, 3] / c[:, 2]) * 0.0125)


def test_quartic_N2_first_order_vs_exact():
    K = rand_cov(2, 11)
    V = symmetrize(np.random.default_rng(4).standard_normal((2,) * 4))
    V /= np.einsum("abcd,ab,cd", V, K, K)  # normalized: sum V K K = 1
    dS = quartic_form(V)
    outer2 = lambda z: z[..., :, None] * z[..., None, :]
    outer4 = lambda z: np.einsum("...a,...b,...c,...d->...abcd", z, z, z, z)
    ser2, zs = series(outer2, dS, K, 3, 12)
    ser4, _ = series(outer4, dS, K, 3, 12)
    c4 = c4_series(ser2, ser4)
    res = {}
    for eps in (0.02, 0.01):
        fo = quartic_first_order(K, V, eps)
        np.testing.assert_allclose(fo["G2"], ser2[0] + eps * ser2[1], atol=1e-13)  # O(eps) term
        np.testing.assert_allclose(fo["C4"], c4[0] + eps * c4[1], atol=1e-12)
        d = lambda z: eps * dS(z)
        ex = {"Z": gaussian_expectation(lambda z: np.exp(-d(z)), K, deg=60),
              "G2": reweighted_expectation(outer2, K, d, deg=60),
              "G4": reweighted_expectation(outer4, K, d, deg=60)}
        exC4 = ex["G4"] - pair_sum(ex["G2"], ex["G2"])
        for name, got, first, c in [("Z", ex["Z"], fo["Z_ratio"], zs),
                                    ("G2", ex["G2"], fo["G2"], ser2), ("C4", exC4, fo["C4"], c4)]:
            r = got - first
            assert np.abs(r - c[2] * eps ** 2).max() <= 2 * np.abs(c[3]).max() * eps ** 3, name
            res[name, eps] = np.abs(r).max()
    for name, c in [("Z", zs), ("G2", ser2), ("C4", c4)]:
        ratio = res[name, 0.02] / res[name, 0.01]
        assert abs(ratio - 4) <= 12 * np.abs(c[3]).max() / np.abs(c[2]).max() * 0.02, (name, ratio)


@pytest.mark.parametrize("N", [2, 10])
def test_O_N_example(N):
    """K = 1, V = dd + dd + dd: S = |z|^2/2 + eps |z|^4 / 8 (spec 4.4)."""
    eps, I = 0.01, np.eye(N)
    V = pair_sum(I, I)
    g2 = first_order_expectation((0, 0), I, {4: eps * V})
    g4 = first_order_expectation((0, 0, 0, 0), I, {4: eps * V})
    assert np.isclose(g2, 1 - eps * (N + 2) / 2, rtol=1e-13)
    assert np.isclose(g4 - 3 - 6 * (g2 - 1), -3 * eps, rtol=1e-10)  # linearized C4_1111
    if N <= 3:
        assert np.isclose(quartic_first_order(I, V, eps)["C4"][0, 0, 0, 0], -3 * eps, rtol=1e-10)
    # exact via the radial integral; series from chi-square moments <r^2j> = prod_{i<j} (N + 2i)
    mom = lambda e, p: quad(lambda r: r ** (N - 1 + p) * np.exp(-r * r / 2 - e * r ** 4 / 8),
                            0, np.inf, epsabs=0, epsrel=1e-13)[0]
    r2 = lambda j: np.prod([N + 2.0 * i for i in range(j)])
    b = np.array([(-1 / 8) ** k / factorial(k) * r2(2 * k) for k in range(4)])
    a2 = np.array([(-1 / 8) ** k / factorial(k) * r2(2 * k + 1) for k in range(4)]) / N
    c = []
    for k in range(4):
        c.append((a2[k] - sum(b[j] * c[k - j] for j in range(1, k + 1))) / b[0])
    exact = mom(eps, 2) / mom(eps, 0) / N
    assert abs(exact - g2 - c[2] * eps ** 2) <= 2 * abs(c[3]) * eps ** 3


def test_sampler_acceptance_and_moments():
    x = 1.0  # N = 1, K = 1: acceptance rate = Z / sqrt(2 pi K)
    z, n_prop = sample_quartic(np.eye(1), np.ones((1,) * 4), x, 1_000_000, 0, return_proposals=True)
    ex = quartic_exact_1d(1.0, 1.0, x)
    p, S = ex["Z_ratio"], len(z)
    assert z.shape == (S, 1)
    assert abs(S / n_prop - p) <= 4 * p * np.sqrt((1 - p) / S)  # negative-binomial standard error
    z2 = z[:, 0] ** 2
    assert abs(z2.mean() - ex["G2"]) <= 4 * z2.std() / np.sqrt(S)
    K = rand_cov(2, 8)  # N = 2 with a non-negative quartic form V z^4 = sum_i (a_i.z)^4
    a = np.random.default_rng(5).standard_normal((3, 2))
    V = symmetrize(np.einsum("ia,ib,ic,id->abcd", a, a, a, a))
    z, n_prop = sample_quartic(K, V, 0.05, 100_000, np.random.default_rng(1), return_proposals=True)
    d = lambda y: 0.05 * quartic_form(V)(y)
    p = gaussian_expectation(lambda y: np.exp(-d(y)), K, deg=60)
    assert abs(len(z) / n_prop - p) <= 4 * p * np.sqrt((1 - p) / len(z))
    G2 = reweighted_expectation(lambda y: y[..., :, None] * y[..., None, :], K, d, deg=60)
    zz = z[:, :, None] * z[:, None, :]
    assert np.all(np.abs(zz.mean(0) - G2) <= 4 * zz.std(0) / np.sqrt(len(z)))
    assert sample_quartic(K, V, 0.0, 10, 0).shape == (10, 2)


# ----------------------------------------------------------------------------- bad input
I2, f0 = np.eye(2), (lambda z: z[..., 0])
BAD = [
    (ValueError, lambda: double_factorial(-2)), (TypeError, lambda: double_factorial(2.0)),
    (ValueError, lambda: gaussian_moment_1d(-1.0, 2)),
    (ValueError, lambda: gaussian_moment_1d(1.0, -1)),
    (ValueError, lambda: gaussian_normalization(np.ones((2, 3)))),
    (ValueError, lambda: gaussian_normalization([[1.0, 2.0], [0.0, 1.0]])),  # not symmetric
    (ValueError, lambda: gaussian_normalization([[1.0, 2.0], [2.0, 1.0]])),  # not PSD
    (ValueError, lambda: gaussian_normalization(-1.0)),
    (ValueError, lambda: gaussian_mgf(np.ones(3), I2)),
    (ValueError, lambda: pairings([1, 2, 3])), (ValueError, lambda: pairing_cycle_counts(-1)),
    (ValueError, lambda: wick(I2, (0, 2))), (TypeError, lambda: wick(I2, (0.5, 1))),
    (ValueError, lambda: wick(np.eye(3)[:2], (0, 1))), (ValueError, lambda: wick_tensor(I2, -1)),
    (TypeError, lambda: wick(I2, "ab")), (TypeError, lambda: gaussian_normalization("K")),
    (ValueError, lambda: gaussian_expectation(f0, np.eye(5))),
    (ValueError, lambda: gaussian_expectation(f0, I2, deg=0)),
    (TypeError, lambda: gaussian_expectation(f0, I2, deg=2.5)),
    (TypeError, lambda: gaussian_expectation("f", I2)),
    (ValueError, lambda: gaussian_expectation(lambda z: z[..., :1, 0], I2)),  # wrong output shape
    (ValueError, lambda: gaussian_expectation(f0, [[np.nan, 0.0], [0.0, 1.0]])),
    (ValueError, lambda: gaussian_expectation(f0, -I2)),
    (ValueError, lambda: gaussian_expectation(f0, [[1.0, 1.0], [1.0, 1.0 - 1e-8]])),  # eig -5e-9
    (ValueError, lambda: gaussian_expectation(f0, I2, mean=np.zeros(3))),
    (ValueError, lambda: connected_from_moments(lambda k: 1.0, ())),
    (ValueError, lambda: symmetrize(np.ones((2, 3)))),
    (ValueError, lambda: even_action(np.ones(2), np.ones((2, 2)), {})),  # singular K
    (ValueError, lambda: even_action(np.ones(2), I2, {3: np.ones((2,) * 3)})),
    (ValueError, lambda: even_action(np.ones(2), I2, {4: np.ones((2,) * 3)})),
    (TypeError, lambda: even_action(np.ones(2), I2, [np.ones((2,) * 4)])),
    (ValueError, lambda: first_order_expectation((0, 1), I2, {4: np.ones((3,) * 4)})),
    (ValueError, lambda: quartic_first_order(I2, np.ones((2, 2, 2)), 0.1)),
    (ValueError, lambda: quartic_exact_1d(-1.0, 1.0, 0.1)),
    (ValueError, lambda: quartic_exact_1d(1.0, -1.0, 0.1)),
    (ValueError, lambda: sample_quartic(I2, -symmetrize(np.ones((2,) * 4)), 0.1, 10, 0)),
    (ValueError, lambda: sample_quartic(np.eye(1), np.ones((1,) * 4), -0.1, 10, 0)),
    (ValueError, lambda: sample_quartic(np.eye(1), np.ones((1,) * 4), 0.1, -1, 0)),
]


@pytest.mark.parametrize("exc,call", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises(exc, call):
    with pytest.raises(exc):
        call()


def test_trapezoid_rule_matches_hermite_for_smooth_and_polynomial_integrands():
    K = np.array([[1.3, 0.4], [0.4, 0.8]])
    f = lambda z: np.tanh(z[..., 0]) * np.tanh(z[..., 1])
    ref = gaussian_expectation(f, K, deg=200)          # converged Gauss-Hermite reference
    assert abs(gaussian_expectation(f, K, deg=80, rule="trapezoid") - ref) < 1e-12
    poly = lambda z: z[..., 0] ** 2 * z[..., 1] ** 2
    exact = K[0, 0] * K[1, 1] + 2 * K[0, 1] ** 2       # Wick
    assert abs(gaussian_expectation(poly, K, deg=80, rule="trapezoid") - exact) < 1e-12
    with pytest.raises(ValueError, match="rule"):
        gaussian_expectation(poly, K, rule="simpson")
