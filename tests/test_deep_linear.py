"""Tests of dlt.deep_linear (book chapter 3): closed forms against each other, against chi^2
moments, and against Monte Carlo ensembles of real linear networks (dlt.networks.ensemble).

Monte Carlo tolerances are 4 standard errors (stats.mean_se / stats.jackknife over networks);
deterministic tolerances state the size of the neglected term they cover.
"""
from math import factorial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.special import gammaln

from dlt import deep_linear as dl
from dlt.networks import MLP, ensemble
from dlt.stats import jackknife, mean_se, neuron_moments

NSIG = 4.0


def assert_within(measured, predicted, se, what):
    dev = np.abs(np.asarray(measured) - predicted)
    se = np.asarray(se)
    assert np.all(dev <= NSIG * se), f"{what}: max |dev|/se = {np.max(dev / se):.2f} > {NSIG}"


# ----------------------------------------------------------------------------- c_{2m}
NS = np.array([1.0, 2.0, 3.0, 5.0, 10.0, 64.0, 1000.0])


@pytest.mark.parametrize("m", range(1, 8))
def test_c2m_product_gamma_chi2(m):
    got = dl.c2m(NS, m)
    prod = np.array([np.prod(1 + 2 * np.arange(1, m) / n) for n in NS])
    gamma = np.exp(gammaln(NS / 2 + m) - gammaln(NS / 2) + m * np.log(2 / NS))
    chi2 = np.array([sps.chi2(n).moment(m) / n**m for n in NS])
    np.testing.assert_allclose(got, prod, rtol=1e-13)
    np.testing.assert_allclose(got, gamma, rtol=1e-11)   # lgamma differences of O(10^3)
    np.testing.assert_allclose(got, chi2, rtol=1e-8)     # scipy's moment(): ~1e-9 quadrature
    np.testing.assert_allclose(dl.log_c2m(NS, m), np.log(prod), rtol=1e-13, atol=1e-15)
    assert dl.c2m(2, m) == pytest.approx(factorial(m), rel=1e-14)
    assert dl.c2m(7, m).shape == ()


def test_c2m_small_m_and_large_n():
    n = np.array([3.0, 10.0])
    np.testing.assert_allclose(dl.c2m(n, 1), 1.0)
    np.testing.assert_allclose(dl.c2m(n, 2), 1 + 2 / n, rtol=1e-15)
    np.testing.assert_allclose(dl.c2m(n, 3), 1 + 6 / n + 8 / n**2, rtol=1e-15)      # (3.42)
    np.testing.assert_allclose(dl.c2m(n, 4), 1 + 12 / n + 44 / n**2 + 48 / n**3, rtol=1e-15)
    for m in range(2, 6):
        e2 = (m * (m - 1)) ** 2 / 2 - m * (m - 1) * (2 * m - 1) / 3  # sum_{j<k} 4jk
        n = 1e8                                                   # n(c-1) - m(m-1) = e2/n + ...
        assert n * (dl.c2m(n, m) - 1) == pytest.approx(m * (m - 1), abs=2 * e2 / n + 1e-6)
        assert dl.c2m_first_order(n, m) == pytest.approx(1 + m * (m - 1) / n, rel=1e-15)
        n = 1e4                                                   # next order: O(m^3/n) relative
        assert n**2 * (dl.c2m(n, m) - dl.c2m_first_order(n, m)) == pytest.approx(e2, rel=1e-2)


# ----------------------------------------------------------------------------- closed forms
WIDTHS = [3, 6, 5, 8, 6]


@pytest.mark.parametrize("C_W", [1.0, 1.3, (0.9, 1.2, 1.0, 0.8)])
def test_G2m_against_four_point_and_two_point(C_W):
    G2, G4 = dl.four_point(1.7, C_W, WIDTHS)                     # recursion, N_D = 1
    np.testing.assert_allclose(dl.G2m(1.7, C_W, WIDTHS, 1), G2, rtol=1e-14)
    np.testing.assert_allclose(dl.G2m(1.7, C_W, WIDTHS, 2), G4, rtol=1e-13)  # closed form (3.47)
    np.testing.assert_allclose(dl.two_point(1.7, C_W, WIDTHS), G2, rtol=1e-15)
    np.testing.assert_allclose(dl.two_point(1.7, C_W, len(WIDTHS) - 1), G2, rtol=1e-15)
    # var_O product form (3.33) vs (1 + 2/n_l) G_4 - G_2^2 from the recursion
    n = np.array(WIDTHS, float)
    np.testing.assert_allclose(dl.var_O(1.7, C_W, WIDTHS)[1:], ((1 + 2 / n) * G4 - G2**2)[1:],
                               rtol=1e-13)
    assert dl.var_O(1.7, C_W, WIDTHS)[0] == 0.0


def test_equal_width_closed_forms():
    n, L = 10, 6
    w = [4] + [n] * L
    G2, G4 = dl.four_point(1.0, 1.0, w)
    ell = np.arange(L + 1)
    np.testing.assert_allclose(dl.connected_four(G2, G4)[1:], ((1 + 2 / n) ** (ell - 1) - 1)[1:],
                               rtol=1e-13)                                          # (3.28)
    np.testing.assert_allclose(dl.var_O(1.0, 1.0, w), (1 + 2 / n) ** ell - 1, rtol=1e-13)
    G6 = dl.G2m(1.0, 1.0, w, 3)
    np.testing.assert_allclose(G6[1:], dl.c2m(n, 3) ** (ell[1:] - 1), rtol=1e-13)  # (3.50)
    assert dl.connected_six(G2, G4, G6)[1] == pytest.approx(0.0, abs=1e-15)


def test_four_point_bias_single_input_recursion():
    w, cw, cb, g = [3, 4, 7, 5], (1.1, 0.9, 1.2), (0.3, 0.0, 0.5), 0.8
    G2, G4 = dl.four_point(g, cw, w, C_b=cb)
    ref2, ref4 = [g], [g * g]                       # spec's scalar recursion, written out
    for l in range(3):
        f = 0.0 if l == 0 else 2.0 / w[l]
        ref4.append(cb[l] ** 2 + 2 * cb[l] * cw[l] * ref2[-1] + cw[l] ** 2 * (1 + f) * ref4[-1])
        ref2.append(cb[l] + cw[l] * ref2[-1])
    np.testing.assert_allclose(G2, ref2, rtol=1e-15)
    np.testing.assert_allclose(G4, ref4, rtol=1e-14)


def _psd(draw, N):
    A = np.array(draw(st.lists(st.floats(-2, 2), min_size=N * 4, max_size=N * 4))).reshape(N, 4)
    return A @ A.T / 4


@settings(max_examples=25, deadline=None, database=None)
@given(st.data())
def test_four_point_properties(data):
    N = data.draw(st.integers(1, 3))
    G0 = _psd(data.draw, N)
    w = data.draw(st.lists(st.integers(1, 9), min_size=2, max_size=5))
    cw, cb = data.draw(st.floats(0.5, 1.5)), data.draw(st.floats(0.0, 0.5))
    G, T = dl.four_point(G0, cw, w, C_b=cb)
    np.testing.assert_allclose(G, dl.two_point(G0, cw, w, C_b=cb), rtol=1e-14, atol=1e-15)
    for perm in ("bacd", "abdc", "cdab"):                       # symmetries of G4_(12)(34)
        np.testing.assert_allclose(np.einsum(f"labcd->l{perm}", T), T, rtol=1e-13, atol=1e-15)
    sub = [0] if N == 1 else [N - 1, 0]                          # marginal over a subset of inputs
    Gs, Ts = dl.four_point(G0[np.ix_(sub, sub)], cw, w, C_b=cb)
    np.testing.assert_allclose(Ts, T[np.ix_(range(len(w)), sub, sub, sub, sub)], rtol=1e-13,
                               atol=1e-15)
    # chapter-4 form of the vertex recursion (spec item 6), bias entering through G only
    V = dl.vertex(G0, cw, w, C_b=cb)
    np.testing.assert_allclose(V[:2], 0.0, atol=1e-14 * (1 + np.abs(G).max()) ** 2)
    for l in range(1, len(w) - 1):
        Vl, Gl, n, n0 = V[l], G[l], w[l], w[l - 1]
        s = lambda X: np.einsum("acbd->abcd", X) + np.einsum("adbc->abcd", X)  # noqa: E731
        ref = cw**2 * (n / n0 * Vl + s(np.einsum("ab,cd->abcd", Gl, Gl)) + s(Vl) / n0)
        np.testing.assert_allclose(V[l + 1], ref, rtol=1e-12, atol=1e-13)


def test_input_gram():
    X = np.arange(12.0).reshape(3, 4) - 5
    G = dl.input_gram(X)
    ref = np.array([[sum(X[a, i] * X[b, i] for i in range(4)) / 4 for b in range(3)]
                    for a in range(3)])
    np.testing.assert_allclose(G, ref, rtol=1e-15)


# ----------------------------------------------------------------------------- double scaling
def test_double_scaling_series_and_limits():
    r = 1e-3                                      # u^2(u+3) = 12r^2 + 32r^3 + 52r^4 + ...
    assert (dl.connected_four_ds(r) - 2 * r) / r**2 == pytest.approx(2, abs=2 * r)
    assert (dl.connected_six_ds(r) - 12 * r**2) / r**3 == pytest.approx(32, abs=60 * r)
    assert dl.connected_six_ds(1e-9) / 1e-18 == pytest.approx(12, rel=1e-7)  # no cancellation
    assert dl.connected_four_ds(0.0) == 0 and dl.connected_six_ds(0.0) == 0
    rr = np.array([0.1, 0.5, 2.0])
    np.testing.assert_allclose(dl.double_scaling_ratio(1, rr), 1.0)
    np.testing.assert_allclose(dl.double_scaling_ratio(3, 0.0), 1.0)
    d2, d3 = dl.double_scaling_ratio(2, rr), dl.double_scaling_ratio(3, rr)
    np.testing.assert_allclose(dl.connected_four_ds(rr), d2 - 1, rtol=1e-13)            # (3.56)
    np.testing.assert_allclose(dl.connected_six_ds(rr), dl.connected_six(1.0, d2, d3), rtol=1e-12)


@pytest.mark.parametrize("m,r", [(2, 0.5), (3, 0.25), (4, 0.1)])
def test_exact_to_double_scaling(m, r):
    # exact c_2m^(L-1), L = rn, vs (3.55): n * relative error -> pred = -m(m-1)[1 + (2m-1)r/3];
    # the next order adds c1/n with c1 = pred^2/2 + (8r/3) sum k^3 + m(m-1)(2m-1)/3 (k < m)
    pred = -m * (m - 1) * (1 + (2 * m - 1) * r / 3)
    c1 = pred**2 / 2 + 8 * r / 3 * sum(k**3 for k in range(1, m)) + m * (m - 1) * (2 * m - 1) / 3
    for n in (10**4, 10**5):
        L = int(round(r * n))
        rel = np.expm1((L - 1) * dl.log_c2m(n, m) - np.log(dl.double_scaling_ratio(m, r)))
        assert n * rel == pytest.approx(pred, abs=2 * c1 / n)
    n, L = 10**4, int(round(r * 10**4))                 # same limit for G_4 - G_2^2 (3.56)
    G2, G4 = dl.four_point(1.0, 1.0, [3] + [n] * L)
    first = dl.connected_four_ds(r) - 2 * (1 + r) * np.exp(2 * r) / n
    assert dl.connected_four(G2, G4)[-1] == pytest.approx(first, abs=50 / n**2)


# ----------------------------------------------------------------------------- Monte Carlo
def _G4_estimator(z):
    """Per-network unbiased estimator of G4_(ab)(cd) from distinct neurons; z (S, N_D, n)."""
    n = z.shape[2]
    S = np.einsum("saj,sbj->sab", z, z)
    Q = np.einsum("saj,sbj,scj,sdj->sabcd", z, z, z, z)
    return (S[:, :, :, None, None] * S[:, None, None] - Q) / (n * (n - 1)), S / n


@pytest.mark.parametrize("C_b,C_W", [(0.0, 1.0), (0.3, (1.2, 0.8, 1.0))])
def test_four_point_vs_real_networks(C_b, C_W):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3, 4))
    X[2] = 0.7 * X[0] + 0.3 * X[1] + 0.1 * X[2]            # a nearly dependent input
    w = [4, 5, 7, 6]
    zs = ensemble(MLP(w, "linear", C_b=C_b, C_W=C_W), X, 20000, seed=11)
    G, T = dl.four_point(dl.input_gram(X), C_W, w, C_b=C_b)
    resolved = 0.0
    for l in range(1, len(w)):
        est4, est2 = _G4_estimator(zs[l])
        m4, se4 = mean_se(est4)
        m2, se2 = mean_se(est2)
        assert_within(m2, G[l], se2, f"G^({l})")
        assert_within(m4, T[l], se4, f"G4^({l})")
        resolved = max(resolved, np.max(np.abs(dl.connected_four(G[l], T[l])) / se4))
    assert resolved > 10, "the finite-width four-point effect was not resolved by the ensemble"


@pytest.fixture(scope="module")
def single_input():
    w, g = [3, 8, 6, 8, 8], 1.0
    x = np.sqrt(g) * np.ones((1, 3))
    zs = ensemble(MLP(w, "linear", C_W=1.0), x, 20000, seed=3)
    return w, g, {l: z[:, 0, :] for l, z in zs.items()}


def test_var_O_and_G6_vs_real_networks(single_input):
    w, g, zs = single_input
    vO, G6 = dl.var_O(g, 1.0, w), dl.G2m(g, 1.0, w, 3)
    r = np.concatenate([[0.0, 0.0], np.cumsum(1.0 / np.array(w[1:-1]))])  # sum_{k<l} 1/n_k
    for l, z in zs.items():
        mom = neuron_moments(z)
        v, se = jackknife(lambda o: o.var(ddof=1), mom["O"])
        assert_within(v, vO[l], se, f"Var O^({l})")
        if r[l] <= 0.4:          # beyond, z^6 is too heavy-tailed for a trustworthy SE (spec §5)
            m6, se6 = mean_se(mom["G6"])
            assert_within(m6, G6[l], se6, f"G6^({l})")
    assert (m6 - g**3) / se6 > 10                      # the non-Gaussian G6 is resolved


def test_sample_norms_exact(single_input):
    w, g, zs = single_input
    O = dl.sample_norms_exact(np.random.default_rng(5), g, 1.0, w, 200000)
    assert O.shape == (200000, len(w)) and np.all(O[:, 0] == g)
    for l, z in zs.items():                            # same law as real networks
        p = sps.ks_2samp(O[:, l], (z**2).mean(1)).pvalue
        assert p > 1e-3, f"KS p-value {p:.2e} at layer {l}"
    mean, se = mean_se(O[:, 1:])
    assert_within(mean, g, se, "E O")
    v, se = jackknife(lambda o: o.var(0, ddof=1), O)
    assert_within(v[1:], dl.var_O(g, 1.0, w)[1:], se[1:], "Var O (chi^2 sampler)")
    lm, lv = dl.log_norm_stats(w)
    logO = np.log(O / g)
    m, se = mean_se(logO[:, 1:])
    assert_within(m, lm[1:], se, "E log O")
    v, se = jackknife(lambda x: x.var(0, ddof=1), logO[:, 1:])
    assert_within(v, lv[1:], se, "Var log O")
    for mm in (2, 3):                                  # C_W^m E[(O^(l-1))^m] = G_2m^(l)
        m, se = mean_se(O[:, :-1] ** mm)
        assert_within(m[1:], dl.G2m(g, 1.0, w, mm)[2:], se[1:], f"G_{2 * mm} via chi^2")


# ----------------------------------------------------------------------------- bad input
G_OK, W_OK = np.eye(2), [3, 4, 5]
BAD = {
    "widths too short": lambda: dl.two_point(G_OK, 1.0, [3]),
    "zero width": lambda: dl.four_point(G_OK, 1.0, [3, 0, 2]),
    "float width": lambda: dl.G2m(1.0, 1.0, [3, 2.5], 2),
    "bool width": lambda: dl.var_O(1.0, 1.0, [3, True]),
    "string widths": lambda: dl.log_norm_stats("34"),
    "depth zero": lambda: dl.two_point(G_OK, 1.0, 0),
    "C_W zero": lambda: dl.two_point(G_OK, 0.0, W_OK),
    "C_W negative": lambda: dl.four_point(G_OK, -1.0, W_OK),
    "C_W wrong length": lambda: dl.four_point(G_OK, (1.0, 1.0, 1.0), W_OK),
    "C_W nan": lambda: dl.G2m(1.0, np.nan, W_OK, 2),
    "C_b negative": lambda: dl.two_point(G_OK, 1.0, W_OK, C_b=-0.1),
    "G0 asymmetric": lambda: dl.two_point(np.array([[1, 0.5], [0, 1]]), 1.0, W_OK),
    "G0 not PSD": lambda: dl.four_point(np.array([[1, 2], [2, 1]]), 1.0, W_OK),
    "G0 not square": lambda: dl.vertex(np.ones((2, 3)), 1.0, W_OK),
    "G0 negative scalar": lambda: dl.two_point(-1.0, 1.0, W_OK),
    "G0 inf": lambda: dl.two_point(np.array([[np.inf]]), 1.0, W_OK),
    "G2_0 negative": lambda: dl.G2m(-1.0, 1.0, W_OK, 2),
    "G2_0 matrix": lambda: dl.var_O(np.eye(2), 1.0, W_OK),
    "m zero": lambda: dl.G2m(1.0, 1.0, W_OK, 0),
    "m float": lambda: dl.c2m(5, 1.5),
    "m bool": lambda: dl.log_c2m(5, True),
    "n zero": lambda: dl.c2m(0, 2),
    "n negative": lambda: dl.log_c2m(np.array([3.0, -1.0]), 2),
    "n first order": lambda: dl.c2m_first_order(-2, 2),
    "r negative": lambda: dl.double_scaling_ratio(2, -0.1),
    "r nan 4": lambda: dl.connected_four_ds(np.nan),
    "r negative 6": lambda: dl.connected_six_ds(-1.0),
    "n_ens zero": lambda: dl.sample_norms_exact(0, 1.0, 1.0, W_OK, 0),
    "X 1-d": lambda: dl.input_gram(np.ones(3)),
    "X empty": lambda: dl.input_gram(np.ones((2, 0))),
    "connected shapes": lambda: dl.connected_four(np.ones((2, 2)), np.ones((2, 2, 2))),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises(name):
    with pytest.raises(ValueError):
        BAD[name]()
