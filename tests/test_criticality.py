"""Tests of dlt.criticality (book chapter 5): criticality, universality classes, deep asymptotics,
the delta expansion and the finite-angle analysis.

Independent references: the constants printed in the book (§5.3), closed forms (scale-invariant,
sin, erf) against adaptive quadrature, exact polynomial Gaussian moments, finite differences for the
derivative identities (5.53), the exact two-input kernel recursion (2-D quadrature), the arc-cosine
kernel of dlt.activations, long iterations of the recursions (asymptotic tolerances from the size of
the next term), and the chapter-4 multi-input flow of dlt.kernels."""
import math
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

import dlt  # noqa: F401
from dlt import criticality as cr
from dlt.activations import gauss_expect, get_activation
from dlt.gaussian import gaussian_expectation

SWISH_CB_CW = (0.55514317, 1.98800468)    # (5.101)
GELU_CB_CW = (0.17292239, 1.98305826)     # (5.105)


# ----------------------------------------------------------------------------- printed constants
def test_half_stable_constants_printed():
    """(5.101)-(5.105): K*, (C_b, C_W), a1~ of SWISH and GELU, plus their unstable K* = 0 points."""
    sw = cr.find_critical_points("swish")
    ge = cr.find_critical_points("gelu")
    for pts in (sw, ge):
        assert [p["K_star"] for p in pts][0] == 0.0 and len(pts) == 2
        assert pts[0]["C_W"] == 4.0 and pts[0]["stability"] == "unstable" and pts[0]["physical"]
    assert sw[0]["a1tilde"] == pytest.approx(0.75, rel=1e-14)            # a1 = 3/4 > 0
    assert ge[0]["a1tilde"] == pytest.approx(6 / np.pi, rel=1e-14)       # -a1 = -6/pi
    s, g = sw[1], ge[1]
    # printed to 10 and 8-9 significant digits: tolerance = half a unit of the last printed digit
    assert s["K_star"] == pytest.approx(14.32017362, abs=5e-9)
    assert (s["C_b"], s["C_W"]) == (pytest.approx(SWISH_CB_CW[0], abs=5e-9),
                                    pytest.approx(SWISH_CB_CW[1], abs=5e-9))
    assert s["a1tilde"] == pytest.approx(2.84979219e-6, abs=5e-15)     # (-a1~) = -2.84979219e-6
    assert s["stability"] == "attracts from below" and s["physical"]
    assert g["K_star"] == pytest.approx((3 + math.sqrt(17)) / 2, rel=1e-12)
    assert (g["C_b"], g["C_W"]) == (pytest.approx(GELU_CB_CW[0], abs=5e-9),
                                    pytest.approx(GELU_CB_CW[1], abs=5e-9))
    assert g["a1tilde"] == pytest.approx(-1.43626419e-4, abs=5e-13)    # (-a1~) = 1.43626419e-4
    assert g["stability"] == "attracts from above"


def test_half_stable_grid_method_accuracy():
    """The default fixed node set (trapezoid, 200 nodes) already gives the SWISH K* to ~1e-9."""
    s = cr.find_critical_points("swish", method="auto")[1]
    assert s["K_star"] == pytest.approx(14.3201736180, rel=1e-9)
    assert s["a1tilde"] == pytest.approx(2.84979219e-6, rel=1e-6)


def test_k0_coefficients_printed_and_exact():
    """(5.86)-(5.88): tanh (-2, 17/3, -2), sin (-1, 2/3, -1), GELU a1 = 6/pi, SWISH 3/4, softplus-ln2
    3/16; and for random sigma_1..sigma_5 against the exact Gaussian moments of the polynomial."""
    assert cr.k0_coefficients("tanh") == pytest.approx((-2, 17 / 3, -2), rel=1e-14)
    assert cr.k0_coefficients("sin") == pytest.approx((-1, 2 / 3, -1), rel=1e-14)
    assert cr.k0_coefficients("gelu")[0] == pytest.approx(6 / np.pi, rel=1e-14)
    assert cr.k0_coefficients("swish")[0] == pytest.approx(0.75, rel=1e-14)
    t = cr.taylor_coefficients("softplus").copy()
    t[0] = 0.0
    assert cr.k0_coefficients(t)[0] == pytest.approx(3 / 16, rel=1e-14)
    rng = np.random.default_rng(3)
    dfact = lambda k: math.prod(range(k, 0, -2))          # (k)!!, (-1)!! = 1
    for _ in range(5):
        s = np.concatenate([[0.0], rng.normal(size=5)])
        # exact polynomial Gaussian moments: <z^(p+q)> = (p+q-1)!! K^((p+q)/2)
        gK = np.zeros(4)      # coefficients of K^0..K^3 of g(K) = <sigma^2>
        dK = np.zeros(3)      # of <sigma'^2>
        for p in range(6):
            for q in range(6):
                if (p + q) % 2 == 0 and (p + q) // 2 < 4:
                    gK[(p + q) // 2] += s[p] * s[q] / math.factorial(p) / math.factorial(q) * dfact(p + q - 1)
        for p in range(5):
            for q in range(5):
                if (p + q) % 2 == 0 and (p + q) // 2 < 2:
                    dK[(p + q) // 2] += (s[p + 1] * s[q + 1] / math.factorial(p) / math.factorial(q)
                                         * dfact(p + q - 1))
        a1, a2, b1 = cr.k0_coefficients(s)
        assert gK[1] / s[1] ** 2 == pytest.approx(1, rel=1e-13)                 # (5.83)
        assert gK[2] / s[1] ** 2 == pytest.approx(a1, rel=1e-12, abs=1e-13)
        assert gK[3] / s[1] ** 2 == pytest.approx(a2, rel=1e-12, abs=1e-13)
        assert dK[1] / s[1] ** 2 == pytest.approx(b1, rel=1e-12, abs=1e-13)      # (5.85)


@pytest.mark.parametrize("name", ["tanh", "sin", "erf", "gelu", "swish", "softplus", "sigmoid"])
def test_taylor_table_matches_jax(name):
    act = get_activation(name)
    assert np.allclose(cr.taylor_coefficients(name), cr._jax_taylor(act.f, 5), rtol=1e-13, atol=1e-14)


def test_taylor_callable_and_kinked():
    import jax.numpy as jnp
    act = get_activation(lambda z: jnp.tanh(z) + 0.25 * jnp.tanh(z) ** 2)
    assert np.allclose(cr.taylor_coefficients(act), [0, 1, 0.5, -2, -4, 16], atol=1e-12)
    a1, a2, b1 = cr.k0_coefficients(act)
    assert b1 / a1 == pytest.approx(0.96552, abs=1e-5)      # spec: p_perp of tanh + tanh^2/4
    assert np.allclose(cr.taylor_coefficients("linear"), [0, 1, 0, 0, 0, 0])
    assert np.allclose(cr.taylor_coefficients(get_activation("monomial", p=3)), [0, 0, 0, 6, 0, 0])
    for bad in ("relu", "leaky_relu", "perceptron"):
        with pytest.raises(ValueError):
            cr.taylor_coefficients(bad)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_monomial_ratio(p):
    """(5.78): the ratio (5.73) of z^p is p/(2p-1) at every K."""
    act = get_activation("monomial", p=p)
    K = np.array([0.05, 0.7, 3.0])
    assert np.allclose(cr.criticality_ratio(act, K), p / (2 * p - 1), rtol=1e-10)
    assert np.allclose(cr.criticality_ratio(act, K, method="quad"), p / (2 * p - 1), rtol=1e-10)


def test_figure_5_1_and_5_2_points():
    """Fig. 5.1 (tanh) and Fig. 5.2 (sigmoid, softplus) sample points from the spec."""
    # chi_perp = 1 curve at K* = 1: (C_W, C_b) = (1/<s'^2>, K - g/<s'^2>)
    C_b, C_W = cr.hyperparams_at("tanh", 1.0)
    assert (C_W, C_b) == (pytest.approx(2.1533, abs=5e-5), pytest.approx(0.1510, abs=5e-5))
    # chi_par = 1 curve: (1/g', K - g/g'), with g' = chi_par at C_W = 1
    gp = cr.chi_par("tanh", 1.0, 1.0)
    assert (1 / gp, 1 - cr.g("tanh", 1.0) / gp) == (pytest.approx(5.5006, abs=5e-5),
                                                      pytest.approx(-1.1689, abs=5e-5))
    assert cr.criticality_ratio("tanh", [1e-3, 1.0]) == pytest.approx([1.0020, 2.5545], abs=5e-5)
    assert cr.criticality_ratio("tanh", 0.0) == 1.0
    C_b0, C_W0 = cr.hyperparams_at("tanh", 0.0)
    assert (C_b0, C_W0) == (pytest.approx(0.0, abs=1e-15), pytest.approx(1.0, rel=1e-14))
    sig = cr.find_critical_points("sigmoid")
    assert len(sig) == 1 and sig[0]["K_star"] == 0 and sig[0]["C_b"] == pytest.approx(-4.0)
    assert not sig[0]["physical"]
    assert cr.find_critical_points("softplus") == []
    r = cr.criticality_ratio("softplus", np.linspace(1e-3, 20, 200))
    assert r.min() > 0.59 and r.max() < 0.85


def test_tanh_noncritical_fixed_point_and_rate():
    """Spec §4.1: tanh at (0.1, 1.5); Delta K(l+1)/Delta K(l) -> chi_par(K*) (5.9)."""
    K_star = cr.fixed_point("tanh", 0.1, 1.5)
    assert K_star == pytest.approx(0.520216, abs=5e-7)
    assert cr.chi_par("tanh", K_star, 1.5) == pytest.approx(0.472971, abs=5e-7)
    assert cr.chi_perp("tanh", K_star, 1.5) == pytest.approx(0.877513, abs=5e-7)
    K = cr.single_input_flow("tanh", 0.1, 1.5, 1.0, 16)["K"]
    dK = K[1:] - K_star
    assert dK[15] / dK[14] == pytest.approx(cr.chi_par("tanh", K_star, 1.5), abs=1e-5)


# ----------------------------------------------------------------------------- helpers
HELPERS = ("g", "chi_par", "chi_perp", "h_helper", "j_helper", "vertex_source")


def _helpers(act, K, C_W, method):
    out = [cr.g(act, K, method)]
    out += [getattr(cr, n)(act, K, C_W, method) for n in HELPERS[1:]]
    return np.array(out)


@pytest.mark.parametrize("act", [get_activation("relu"), get_activation("leaky_relu", a=0.1),
                                 get_activation("linear", a=1.3),
                                 get_activation("scale_invariant", a_plus=1.0, a_minus=-0.5),
                                 get_activation("sin"), get_activation("erf")])
def test_closed_forms_vs_quadrature(act):
    """Closed forms (scale-invariant (5.60)-(5.62), (5.113); sin; erf) against adaptive quadrature
    split at the kink."""
    K, C_W = np.array([0.05, 0.7, 2.5]), 1.7
    closed, quad = _helpers(act, K, C_W, "auto"), _helpers(act, K, C_W, "quad")
    assert np.allclose(closed, quad, rtol=1e-9, atol=1e-12)


def test_scale_invariant_closed_values():
    K, C_W = np.array([0.3, 2.0]), 1.5
    A2, A4, rho = cr.scale_invariant_constants(1.0, 0.1)
    act = get_activation("leaky_relu", a=0.1)
    assert np.allclose(cr.g(act, K), A2 * K)                                  # (5.60)
    assert np.allclose(cr.chi_par(act, K, C_W), A2 * C_W)                     # (5.62)
    assert np.allclose(cr.chi_perp(act, K, C_W), A2 * C_W)
    assert np.allclose(cr.h_helper(act, K, C_W), 0) and np.allclose(cr.j_helper(act, K, C_W), 0)
    assert np.allclose(cr.vertex_source(act, K, C_W), C_W**2 * (3 * A4 - A2**2) * K**2)   # (5.113)
    assert cr.scale_invariant_constants("relu") == pytest.approx((0.5, 0.5, 1 / np.pi))
    A2, A4, _ = cr.scale_invariant_constants("relu")
    assert 3 * A4 / A2**2 - 1 == pytest.approx(5)                             # ReLU: 5
    A2, A4, rho = cr.scale_invariant_constants("linear")
    assert (3 * A4 / A2**2 - 1, rho) == (pytest.approx(2), 0.0)               # linear: 2, rho = 0
    (pt,) = cr.find_critical_points("relu")
    assert pt["K_star"] is None and (pt["C_b"], pt["C_W"]) == (0.0, 2.0)      # Kaiming (5.67)


def test_sin_closed_forms():
    K, C_W = np.array([0.1, 1.3]), 0.8
    e = np.exp(-2 * K)
    assert np.allclose(cr.g("sin", K), (1 - e) / 2, rtol=1e-14)
    assert np.allclose(cr.chi_par("sin", K, C_W), C_W * e, rtol=1e-14)
    assert np.allclose(cr.chi_perp("sin", K, C_W), C_W * (1 + e) / 2, rtol=1e-14)
    assert np.allclose(cr.h_helper("sin", K, C_W), -C_W * e / 2, rtol=1e-14)
    assert np.allclose(cr.j_helper("sin", K, C_W), -8 * C_W * K**2 * e, rtol=1e-14)
    assert np.allclose(cr.vertex_source("sin", K, C_W), C_W**2 / 8 * (1 - np.exp(-4 * K)) ** 2, rtol=1e-13)


@pytest.mark.parametrize("name,K_max", [("tanh", 3.0), ("gelu", 14.0), ("swish", 14.0),
                                        ("softplus", 14.0), ("sigmoid", 3.0)])
def test_grid_vs_quadrature(name, K_max):
    """The default node set is accurate to ~1e-12 for the K ranges where each activation is used
    (tanh near K* = 0; SWISH / GELU up to their half-stable points). tanh at K = 14: ~2e-8."""
    K, C_W = np.array([1e-3, 0.4, K_max]), 1.3
    assert np.allclose(_helpers(name, K, C_W, "auto"), _helpers(name, K, C_W, "quad"),
                       rtol=1e-10, atol=1e-13)
    rel = cr.g("tanh", 14.0) / cr.g("tanh", 14.0, method="quad") - 1
    assert abs(rel) < 1e-7


@pytest.mark.parametrize("name", ["tanh", "gelu", "swish", "erf", "sin", "softplus"])
def test_derivative_identities(name):
    """(5.50), (5.52), (5.111) via (5.53): chi_par = C_W g', h = chi_perp'/2, j = 4K^2 C_W g''
    (central finite differences; error ~ step^2), and the (z^2 - K) form of chi_par."""
    C_W = 1.4
    for K in (0.3, 1.7):
        e = 1e-4 * K
        d1 = (cr.g(name, K + e) - cr.g(name, K - e)) / (2 * e)
        assert cr.chi_par(name, K, C_W) == pytest.approx(C_W * d1, rel=1e-7)
        dp = (cr.chi_perp(name, K + e, C_W) - cr.chi_perp(name, K - e, C_W)) / (2 * e)
        assert cr.h_helper(name, K, C_W) == pytest.approx(dp / 2, rel=1e-6, abs=1e-9)
        e2 = 2e-3 * K
        d2 = (cr.g(name, K + e2) - 2 * cr.g(name, K) + cr.g(name, K - e2)) / e2**2
        assert cr.j_helper(name, K, C_W) == pytest.approx(4 * K**2 * C_W * d2, rel=1e-5, abs=1e-9)
        act = get_activation(name)
        zform = C_W / (2 * K**2) * gaussian_expectation(
            lambda z: act.f(z[..., 0]) ** 2 * (z[..., 0] ** 2 - K), np.array([[K]]), deg=200,
            rule="trapezoid")
        assert cr.chi_par(name, K, C_W) == pytest.approx(float(zform), rel=1e-10)


@pytest.mark.parametrize("name", ["tanh", "gelu", "sigmoid", "softplus", "sin"])
def test_K_zero_limits(name):
    """Helpers at K = 0 (Taylor data) are the K -> 0 limits."""
    C_W, k = 1.3, 1e-7
    for f in (cr.chi_par, cr.chi_perp, cr.h_helper, cr.j_helper, cr.vertex_source):
        assert f(name, 0.0, C_W) == pytest.approx(f(name, k, C_W), rel=1e-5, abs=1e-6)
    assert cr.g(name, 0.0) == pytest.approx(cr.g(name, k), abs=1e-6)
    assert cr.criticality_ratio(name, 0.0) == pytest.approx(cr.criticality_ratio(name, k), rel=1e-5)
    assert cr.a1_tilde(name, 0.0, C_W) == pytest.approx(cr.a1_tilde(name, 1e-4, C_W), rel=1e-3, abs=1e-4)


def test_erratum_5_81_softplus_slope():
    """(5.81) corrected: g'(0) = sigma_1^2 + sigma_0 sigma_2 (printed: + 2 sigma_0 sigma_2)."""
    s0, s1, s2 = cr.taylor_coefficients("softplus")[:3]
    slope = (cr.g("softplus", 1e-5, method="quad") - s0**2) / 1e-5
    assert slope == pytest.approx(s1**2 + s0 * s2, rel=1e-4)
    assert abs(slope - (s1**2 + 2 * s0 * s2)) > 0.1
    assert cr.chi_par("softplus", 0.0, 1.0) == pytest.approx(s1**2 + s0 * s2, rel=1e-15)
    r = cr.criticality_ratio("softplus", 1e-5, method="quad")
    assert r == pytest.approx(1 / (1 + math.log(2)), rel=1e-4)               # 0.5906, not 0.4191
    assert cr.criticality_ratio("softplus", 0.0) == pytest.approx(1 / (1 + math.log(2)), rel=1e-14)


def test_erratum_footnote21_gelu_second_fixed_point():
    """Footnote 21: at the half-critical GELU constants the trivial fixed point is at 3.035 (printed
    ~3.2); footnote 20: SWISH's is at 14.593 (printed ~14.5)."""
    crit = cr.find_critical_points("gelu")[1]
    C_b, C_W = crit["C_b"], crit["C_W"]              # the constants to full precision
    r = cr.fixed_points("gelu", C_b, C_W)
    assert len(r) == 2 and r[0] == pytest.approx(3.0349813, abs=1e-6)
    assert r[1] == pytest.approx((3 + math.sqrt(17)) / 2, abs=1e-6)           # the tangent root
    assert abs(r[0] - 3.2) > 0.1
    assert cr.fixed_point("gelu", C_b, C_W) == pytest.approx(r[0])           # the attracting one
    assert cr.chi_par("gelu", r[0], C_W) < 1
    assert cr.fixed_points("gelu", C_b, C_W, method="quad")[0] == pytest.approx(r[0], abs=1e-9)
    # with the printed 8-digit constants the tangent root splits (a near miss); the trivial root
    # moves by only 3e-5
    assert cr.fixed_point("gelu", *GELU_CB_CW, bracket=(2.5, 3.3)) == pytest.approx(3.03501, abs=1e-5)
    crit = cr.find_critical_points("swish")[1]
    s = cr.fixed_points("swish", crit["C_b"], crit["C_W"])
    assert len(s) == 2 and s[0] == pytest.approx(14.3201736, abs=1e-4)
    # 1 - chi_par ~ 8e-7 there: a 1e-10 change of the constants moves this root by ~3e-4
    assert s[1] == pytest.approx(14.5932, abs=1e-3)


def test_fixed_points_misc():
    assert cr.fixed_point("relu", 0.1, 1.0) == pytest.approx(0.2)              # K* = C_b/(1 - chi)
    assert cr.fixed_point("relu", 0.0, 3.0) == 0.0
    assert cr.fixed_point("perceptron", 0.2, 1.0) == pytest.approx(0.7)
    assert np.allclose(cr.fixed_points("tanh", 0.0, 1.0), [0.0])
    with pytest.raises(ValueError, match="line of fixed points"):
        cr.fixed_point("relu", 0.0, 2.0)
    with pytest.raises(ValueError, match="flows to infinity"):
        cr.fixed_point("relu", 0.1, 2.0)
    with pytest.raises(ValueError, match="flows to infinity"):
        cr.fixed_point("gelu", 0.5, 2.5, K_max=1e3)
    with pytest.raises(ValueError, match="bracket"):
        cr.fixed_point("tanh", 0.1, 1.5, bracket=(2.0, 3.0))


# ----------------------------------------------------------------------------- classes
def test_classify_registry():
    expect = {"linear": "scale-invariant", "relu": "scale-invariant", "leaky_relu": "scale-invariant",
              "scale_invariant": "scale-invariant", "perceptron": "none", "sigmoid": "none",
              "tanh": "K*=0", "sin": "K*=0", "erf": "K*=0", "softplus": "none", "swish": "half-stable",
              "gelu": "half-stable"}
    for name, cls in expect.items():
        assert cr.classify(name) == cls, name
    for p in (2, 3, 4):
        assert cr.classify(get_activation("monomial", p=p)) == "none"
    assert cr.classify(get_activation("monomial", p=1)) == "scale-invariant"
    import jax.numpy as jnp
    assert cr.classify(get_activation(lambda z: jnp.logaddexp(0.0, z) - jnp.log(2.0))) == "none"
    assert cr.classify(get_activation(lambda z: 2 * jnp.tanh(z / 2))) == "K*=0"   # shifted sigmoid
    with pytest.raises(ValueError):
        cr.classify("nope")


# ----------------------------------------------------------------------------- flows
def test_single_input_flow_spec_numbers_and_speed():
    """Spec §4.8 (tanh, C_W = 1, K^(1) = 1), verified there against ensembles of real networks."""
    t = time.perf_counter()
    f = cr.single_input_flow("tanh", 0.0, 1.0, 1.0, 10_000)
    assert time.perf_counter() - t < 1.0                                       # 10^4 layers < 1 s
    K, V, G1 = f["K"], f["V"], f["G1"]
    assert np.isnan(K[0]) and K.shape == (10_001,)
    assert K[16] == pytest.approx(0.034676, abs=5e-7)
    assert K[16] + G1[16] / 64 == pytest.approx(0.032711, abs=5e-7)
    assert V[8] == pytest.approx(0.023644, abs=5e-7)
    assert 1e4 * K[10_000] == pytest.approx(0.50021, abs=5e-6)
    fr = cr.single_input_flow("tanh", 0.0, 1.0, 1.0, 16, c_W1=2 / 3)
    assert fr["K"][16] + fr["G1"][16] / 64 == pytest.approx(0.03567, abs=5e-6)
    assert np.allclose(fr["K"], K[:17], equal_nan=True)


def test_single_input_flow_scale_invariant():
    """(5.115)-(5.120): at criticality K = K*, V = (l-1)(3A4/A2^2 - 1) K*^2, G1 = 0; semi-criticality
    C_b > 0: K grows linearly and V/K^2 -> (3A4/A2^2 - 1) l/3."""
    l = np.arange(1, 21)
    for name, c in (("relu", 5.0), ("linear", 2.0)):
        A2 = cr.scale_invariant_constants(name)[0]
        f = cr.single_input_flow(name, 0.0, 1 / A2, 0.7, 20)
        assert np.allclose(f["K"][1:], 0.7, rtol=1e-14)
        assert np.allclose(f["V"][1:], (l - 1) * c * 0.49, rtol=1e-13)
        assert np.all(f["G1"][1:] == 0)
    f = cr.single_input_flow("relu", 0.1, 2.0, 1.0, 4000)
    assert np.allclose(f["K"][1:], 1.0 + 0.1 * (np.arange(1, 4001) - 1), rtol=1e-12)
    assert f["V"][4000] / f["K"][4000] ** 2 / 4000 == pytest.approx(5 / 3, rel=1e-2)  # O(log l/l)


def test_single_input_flow_matches_kernels_flow():
    """The single-input recursions (5.108)-(5.110) are the N = 1 case of the chapter-4 flow."""
    kernels = pytest.importorskip("dlt.kernels")
    from dlt.networks import MLP
    x = np.array([[0.9, -0.4, 1.3]])
    for name, C_b, C_W in (("tanh", 0.0, 1.0), ("gelu", 0.1, 1.8), ("relu", 0.0, 2.0)):
        net = MLP((3,) + (32,) * 7 + (1,), name, C_b=C_b, C_W=C_W)
        fl = kernels.preactivation_flow(net, x)
        K1 = C_b + C_W * (x @ x.T)[0, 0] / 3
        mine = cr.single_input_flow(name, C_b, C_W, K1, net.L)
        assert np.allclose(mine["K"][1:], fl.K[1:, 0, 0], rtol=1e-11)
        assert np.allclose(mine["V"][1:], fl.V[1:, 0, 0, 0, 0], rtol=1e-9, atol=1e-13)
        assert np.allclose(mine["G1"][1:], fl.G1[1:, 0, 0], rtol=1e-8, atol=1e-12)


def test_flow_divergence_warns():
    with pytest.warns(RuntimeWarning, match="non-finite"):
        f = cr.single_input_flow("relu", 0.0, 2.2, 1.0, 5000)
    assert np.isinf(f["K"][-1]) or np.isinf(f["V"][-1])
    assert np.all(np.isfinite(f["K"][1:100]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cr.single_input_flow("tanh", 0.3, 3.0, 1.0, 2000)     # bounded: no warning


# ----------------------------------------------------------------------------- deep asymptotics
def _log_ell0(a1, a2, b1, ell, K):
    return brentq(lambda L0: cr.k0_asymptotics(a1, a2, b1, ell, L0)["K"] - K, -40, 40)


@pytest.mark.parametrize("name", ["tanh", "sin"])
def test_k0_asymptotics_vs_iteration(name):
    """(5.94), (5.127), (5.134), (5.97): l_0 fitted once at l = 10^4 (from K), then K, V, G1, dK1
    compared at other depths with tolerances of the next term: K O(1/l^3) (relative 1/l^2),
    V O(log^2 l/l^3) (relative log^2 l/l^2), G1 O(log l/l), dK1's local exponent O(1/l)."""
    a1, a2, b1 = cr.k0_coefficients(name)
    Lmax = 10_000
    f = cr.single_input_flow(name, 0.0, 1.0, 1.0, Lmax)
    L0 = _log_ell0(a1, a2, b1, Lmax, f["K"][Lmax])
    for l in (300, 1000, 3000):
        A = cr.k0_asymptotics(a1, a2, b1, l, L0)
        assert f["K"][l] / A["K"] - 1 == pytest.approx(0, abs=1 / l**2)
        assert f["V"][l] / A["V"] - 1 == pytest.approx(0, abs=math.log(l) ** 2 / l**2)
        assert f["G1"][l] == pytest.approx(A["G1_bare"], abs=2 * math.log(l) / l)
    # leading orders: l K -> 1/(-a1), l V -> 2/(3 a1^2), V/(K^2 l) -> 2/3 (5.131)
    assert Lmax * f["K"][Lmax] == pytest.approx(1 / -a1, rel=2 * math.log(Lmax) / Lmax)
    assert f["V"][Lmax] / f["K"][Lmax] ** 2 / Lmax == pytest.approx(2 / 3, rel=3 * math.log(Lmax) / Lmax)
    # parallel perturbation: dK1 ~ l^-2 (5.97); compare the ratio dK1(2l)/dK1(l)
    d = cr.delta_recursions(name, 0.0, 1.0, 1.0, 1e-3, 0.0, 4000)
    for l in (1000, 2000):
        A1, A2 = cr.k0_asymptotics(a1, a2, b1, [l, 2 * l], L0)["dK1"]
        assert d[2 * l, 1] / d[l, 1] == pytest.approx(A2 / A1, rel=1 / l)
        assert d[2 * l, 1] / d[l, 1] == pytest.approx(0.25, rel=4 * math.log(l) / l)
    # perpendicular perturbation of an odd sigma: p_perp = b1/a1 = 1, K_[2]/K_[0] -> const (5.99)
    d = cr.delta_recursions(name, 0.0, 1.0, 1.0, 0.0, 1e-4, 4000)
    for l in (1000, 2000):
        A = cr.k0_asymptotics(a1, a2, b1, [l, 2 * l], L0)
        assert d[2 * l, 2] / d[l, 2] == pytest.approx(A["ddK2"][1] / A["ddK2"][0], rel=1 / l)
        assert (d[2 * l, 2] / d[2 * l, 0]) / (d[l, 2] / d[l, 0]) == pytest.approx(1, rel=2 * math.log(l) / l)


def test_perpendicular_exponent_non_odd():
    """(5.99): p_perp = b1/a1 for sigma = tanh + tanh^2/4 (0.96552): local exponent of ddK2 between
    l and 2l against the asymptotic form (with its log term), error O(1/l)."""
    import jax.numpy as jnp
    act = get_activation(lambda z: jnp.tanh(z) + 0.25 * jnp.tanh(z) ** 2)
    a1, a2, b1 = cr.k0_coefficients(act)
    d = cr.delta_recursions(act, 0.0, 1.0, 1.0, 0.0, 1e-4, 3000)
    L0 = _log_ell0(a1, a2, b1, 3000, d[3000, 0])
    l = 1500
    A1, A2 = cr.k0_asymptotics(a1, a2, b1, [l, 2 * l], L0)["ddK2"]
    assert d[2 * l, 2] / d[l, 2] == pytest.approx(A2 / A1, rel=2 / l)
    p_local = -np.log(d[2 * l, 2] / d[l, 2]) / np.log(2)
    assert p_local == pytest.approx(b1 / a1, abs=3 * math.log(l) / l)
    assert abs(p_local - 1) > 0.02                                         # not the odd-class 1


@pytest.mark.parametrize("name,gamma", [("tanh", 89 / 72), ("sin", 20 / 9)])
def test_renormalized_gamma_corrected(name, gamma):
    """(5.143) corrected: with c_W^{1} = 2/(3 sigma_1^2), l G1 -> gamma = (84a1^2 - 90a1b1 - a2)/(3a1^3)
    (fit gamma + (c1 log l + c0)/l at l = 10^4, 2 10^4, 4 10^4); the printed value is excluded, and
    gamma does not depend on K^(1)."""
    a1, a2, b1 = cr.k0_coefficients(name)
    assert cr.gamma_renormalized(a1, a2, b1) == pytest.approx(gamma, rel=1e-14)
    s1 = cr.taylor_coefficients(name)[1]
    ls = np.array([10_000, 20_000, 40_000])
    A = np.stack([np.ones(3), np.log(ls) / ls, 1 / ls], 1)
    for K1 in (0.3, 1.0):
        G = cr.single_input_flow(name, 0.0, 1 / s1**2, K1, 40_000, c_W1=2 / (3 * s1**2))["G1"]
        est = np.linalg.solve(A, ls * G[ls])[0]
        assert est == pytest.approx(gamma, abs=1e-4)               # next term ~ log^2 l / l^2
        assert abs(est - cr.gamma_printed(a1, a2)) > 0.1
    assert cr.k0_asymptotics(a1, a2, b1, 10.0)["gamma"] == pytest.approx(gamma)


def test_k0_asymptotics_bad_input():
    with pytest.raises(ValueError, match="-a1 > 0"):
        cr.k0_asymptotics(0.75, 0.1, 1.0, 10)
    with pytest.raises(ValueError):
        cr.k0_asymptotics(-2, 17 / 3, -2, 0.5)


# ----------------------------------------------------------------------------- gamma basis, delta expansion
@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=4, max_size=4))
def test_gamma_project_compose(v):
    M = np.array([[v[0], v[1]], [v[1], v[2]]])
    k = cr.gamma_project(M)
    assert np.allclose(k, [(M[0, 0] + M[1, 1] + 2 * M[0, 1]) / 4, (M[0, 0] - M[1, 1]) / 2,
                           (M[0, 0] + M[1, 1] - 2 * M[0, 1]) / 4])         # (5.17)-(5.19)
    assert np.allclose(cr.gamma_compose(k), M)
    G = cr.gamma_basis()
    assert np.allclose(cr.gamma_project(G), np.eye(3))                       # orthogonality (5.20)


def test_delta_initial():
    x0, dx = np.array([0.5, -1.0, 0.3]), np.array([0.02, 0.01, -0.03])
    C_b, C_W = 0.1, 1.7
    K00, dK1, ddK2 = cr.delta_initial(x0, dx, C_b, C_W)
    X = np.stack([x0 + dx / 2, x0 - dx / 2])
    k = cr.gamma_project(C_b + C_W * X @ X.T / 3)
    assert np.allclose(k, [K00, dK1, ddK2], rtol=1e-14)                      # ddK_[0] = 0 exactly


def _exact_two_input(act, C_b, C_W, x0, dx, L):
    """Exact two-input recursion (5.1) by 2-D quadrature, tracking K_[2] = (C_W/4)<(s+ - s-)^2>."""
    act = get_activation(act)
    X = np.stack([x0 + dx / 2, x0 - dx / 2])
    kpp, kmm = (C_b + C_W * X @ X.T / len(x0))[[0, 1], [0, 1]]
    k2 = C_W * dx @ dx / (4 * len(x0))
    for _ in range(L - 1):
        kpm = (kpp + kmm) / 2 - 2 * k2
        e = gaussian_expectation(
            lambda z: np.stack([act.f(z[..., 0]) ** 2, act.f(z[..., 1]) ** 2,
                                (act.f(z[..., 0]) - act.f(z[..., 1])) ** 2], -1),
            np.array([[kpp, kpm], [kpm, kmm]]), deg=80, rule="trapezoid")
        kpp, kmm, k2 = C_b + C_W * e[0], C_b + C_W * e[1], C_W * e[2] / 4
    return (kpp - kmm) / 2, k2


@pytest.mark.parametrize("name,C_b,C_W", [("tanh", 0.0, 1.0), ("gelu",) + GELU_CB_CW,
                                          ("swish",) + SWISH_CB_CW, ("tanh", 0.1, 1.5)])
@pytest.mark.parametrize("frac", [0.0, 0.7])
def test_delta_recursions_vs_exact(name, C_b, C_W, frac):
    """(5.46)-(5.48) against the exact two-input recursion at layer 11: relative error O(delta^2)
    (tolerance 20 delta^2, spec), shrinking with log-log slope 2 +- 0.3."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(4)
    x0 *= 2 / np.linalg.norm(x0)
    u = rng.standard_normal(4)
    u -= u @ x0 / (x0 @ x0) * x0
    d = math.sqrt(1 - frac**2) * u / np.linalg.norm(u) + frac * x0 / np.linalg.norm(x0)
    errs = []
    for eps in (1e-2, 3e-3):
        dx = eps * np.linalg.norm(x0) * d
        K1, K2 = _exact_two_input(name, C_b, C_W, x0, dx, 11)
        dr = cr.delta_recursions(name, C_b, C_W, *cr.delta_initial(x0, dx, C_b, C_W), 11)
        e2 = K2 / dr[11, 2] - 1
        assert abs(e2) < 20 * eps**2
        if frac:
            assert abs(K1 / dr[11, 1] - 1) < 20 * eps**2
        errs.append(abs(e2))
    assert np.log(errs[0] / errs[1]) / np.log(10 / 3) == pytest.approx(2, abs=0.3)


def test_delta_expectation():
    """(5.39) against the exact 2-D expectation: error O(delta^3) (slope >= 2.7)."""
    act = get_activation("tanh")
    s, s1, s2 = act.f, act.df, act.ddf
    ss1 = lambda z: 2 * s(z) * s1(z)
    cases = {  # F(z+, z-) -> (F0, Fm, Fp, Fmm)
        "s+^2": (lambda a, b: s(a) ** 2,
                 (lambda z: s(z) ** 2, ss1, ss1, lambda z: 2 * s1(z) ** 2 + 2 * s(z) * s2(z))),
        "s+s-": (lambda a, b: s(a) * s(b),
                 (lambda z: s(z) ** 2, lambda z: 0 * z, ss1, lambda z: 2 * s(z) * s2(z) - 2 * s1(z) ** 2)),
    }
    K00 = 0.8
    for F, parts in cases.values():
        errs = []
        for eps in (0.04, 0.02):
            dK1, ddK0, ddK2 = 0.5 * eps, 0.3 * eps**2, 0.4 * eps**2
            K = cr.gamma_compose([K00 + ddK0, dK1, ddK2])
            exact = float(gaussian_expectation(lambda z: F(z[..., 0], z[..., 1]), K, deg=80,
                                               rule="trapezoid"))
            approx = cr.delta_expectation(*parts, K00, dK1, ddK0, ddK2)
            errs.append(abs(approx - exact))
            assert approx == pytest.approx(
                cr.delta_expectation(*parts, K00, dK1, ddK0, ddK2, method="quad"), abs=1e-12)
        assert errs[0] < 5 * 0.04**3
        assert np.log2(errs[0] / errs[1]) > 2.7


# ----------------------------------------------------------------------------- finite angle
def test_two_input_closed_forms_vs_arc_cosine():
    """(5.158), (5.159), (5.161) against the arc-cosine forms of dlt.activations, and vs quadrature."""
    psi = np.linspace(0, np.pi, 9)
    Kd = 1.7
    c = np.cos(psi)
    K = Kd * np.stack([np.stack([np.ones_like(c), c], -1), np.stack([c, np.ones_like(c)], -1)], -2)
    for ap, am in ((1, 0), (1, 0.2), (1, -0.5), (2, 1)):
        act = get_activation("scale_invariant", a_plus=ap, a_minus=am)
        ss, s1 = cr.scale_invariant_two_input(Kd, psi, ap, am)
        assert np.allclose(ss, gauss_expect(act, K, (0, 0)), atol=1e-14)
        assert np.allclose(s1, gauss_expect(act, K, (1, 1)), atol=1e-14)
    ss = cr.scale_invariant_two_input(Kd, psi, 1, 0)[0]
    assert np.allclose(ss, Kd / (2 * np.pi) * (np.sin(psi) + (np.pi - psi) * np.cos(psi)))  # (5.158)


def test_angle_recursion_vs_exact_steps():
    """(5.162) equals the critical non-perturbative step (5.160) and the arc-cosine kernel recursion."""
    ap, am = 1.0, 0.2
    A2, _, rho = cr.scale_invariant_constants(ap, am)
    act = get_activation("leaky_relu", a=am)
    psi = cr.angle_recursion(rho, np.pi / 2, 12)
    Kd, p = 1.3, np.pi / 2
    for l in range(2, 13):
        Kd, p = cr.scale_invariant_step(Kd, p, ap, am)
        assert p == pytest.approx(psi[l], abs=1e-13) and Kd == pytest.approx(1.3, rel=1e-14)
    # exact 2x2 kernel recursion with the arc-cosine forms
    K = 1.3 * np.array([[1.0, 0.0], [0.0, 1.0]])
    for l in range(2, 13):
        d = gauss_expect(act, np.array([[K[0, 0], K[0, 0]], [K[0, 0], K[0, 0]]]), (0, 0))
        off = gauss_expect(act, K, (0, 0))
        K = np.array([[d, off], [off, d]]) / A2
    assert np.arccos(K[0, 1] / K[0, 0]) == pytest.approx(psi[12], abs=1e-10)
    # non-critical step: Kd' = C_b + C_W A2 Kd
    Kd2, _ = cr.scale_invariant_step(2.0, 1.0, 1, 0, C_b=0.1, C_W=1.5)
    assert Kd2 == pytest.approx(0.1 + 1.5 * 0.5 * 2.0)


@pytest.mark.parametrize("ap,am", [(1.0, 0.0), (1.0, 0.2)])
def test_angle_asymptotics(ap, am):
    """(5.166), (5.168): l psi -> 3/rho and l^2 K_[2]/Kd -> 9/(4 rho^2), approached like log(l)/l:
    psi = (3/(rho l)) [1 - (3/2) log l / l + O(1/l)]; tolerances from those terms."""
    rho = cr.scale_invariant_constants(ap, am)[2]
    P = cr.angle_recursion(rho, np.array([np.pi / 2, 0.1]), 10_000)
    for l in (1000, 10_000):
        A = cr.angle_asymptotics(rho, l)
        p = P[l, 0]
        assert p == pytest.approx(A["psi"], rel=2 * 1.5 * math.log(l) / l)
        assert p == pytest.approx(A["psi_log"], rel=10 / l)                      # log term included
        assert (1 - np.cos(p)) / 2 == pytest.approx(A["K2_over_Kd"], rel=2 * 3 * math.log(l) / l)
    # the small angle psi1 = 0.1 has a long plateau: l_cross = 3/(rho psi1) (5.169)
    lc = cr.crossover_depth(rho, 0.1)
    assert P[2, 1] == pytest.approx(0.1, rel=0.05) and lc > 90
    assert P[10_000, 1] == pytest.approx(cr.angle_asymptotics(rho, 10_000)["psi"], rel=0.05)
    # (5.169) second form: (3/(2 rho)) sqrt(K0/K2) with K0 = Kd(1 + cos)/2, K2 = Kd(1 - cos)/2
    psi1 = 0.1
    assert cr.crossover_depth(rho, K0=(1 + np.cos(psi1)) / 2, K2=(1 - np.cos(psi1)) / 2) == pytest.approx(
        lc, rel=psi1**2)


def test_small_angle_steps():
    """(5.164) and (5.171) are the small-angle limits of the exact step (5.162): errors O(psi^3)."""
    rho = 1 / np.pi
    for psi in (1e-2, 1e-3):
        exact = cr.angle_recursion(rho, psi, 2)[2]
        assert cr.small_angle_step(psi, rho) == pytest.approx(exact, abs=rho**2 * psi**3)
        Kd = 1.4
        dd = Kd * (1 - np.cos(psi)) / 2
        dd_exact = Kd * (1 - np.cos(exact)) / 2
        assert cr.ddK2_step(dd, Kd, rho) == pytest.approx(dd_exact, rel=psi**2)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match=">= 0"):
        cr.g("tanh", -1.0)
    with pytest.raises(ValueError, match="C_W"):
        cr.chi_par("tanh", 1.0, 0.0)
    with pytest.raises(ValueError, match="C_W"):
        cr.fixed_point("tanh", 0.0, -1.0)
    with pytest.raises(ValueError, match="C_b"):
        cr.fixed_point("tanh", -0.1, 1.0)
    with pytest.raises(ValueError, match="method"):
        cr.g("tanh", 1.0, method="simpson")
    with pytest.raises(ValueError, match="deg"):
        cr.g("tanh", 1.0, deg=3)
    with pytest.raises(ValueError, match="unknown activation"):
        cr.g("tanhh", 1.0)
    with pytest.raises(ValueError, match="delta function"):
        cr.chi_perp("perceptron", 1.0, 1.0)
    with pytest.raises(ValueError, match="delta"):
        cr.find_critical_points("perceptron")
    with pytest.raises(ValueError, match="0/0"):
        cr.criticality_ratio(get_activation("monomial", p=2), 0.0)
    with pytest.raises(ValueError, match="sigma_0"):
        cr.k0_coefficients("softplus")
    with pytest.raises(ValueError, match="sigma_1"):
        cr.k0_coefficients([0, 0, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="scale-invariant"):
        cr.scale_invariant_constants("tanh")
    with pytest.raises(ValueError, match="depth"):
        cr.single_input_flow("tanh", 0.0, 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="K1"):
        cr.single_input_flow("tanh", 0.0, 1.0, 0.0, 5)
    with pytest.raises(ValueError, match="K00"):
        cr.delta_recursions("tanh", 0.0, 1.0, -1.0, 0.0, 0.0, 5)
    with pytest.raises(ValueError, match="shape"):
        cr.gamma_project(np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        cr.gamma_compose([1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        cr.delta_initial([1.0, 2.0], [1.0], 0.0, 1.0)
    with pytest.raises(ValueError, match="rho"):
        cr.angle_recursion(0.7, 1.0, 10)
    with pytest.raises(ValueError, match="psi1"):
        cr.angle_recursion(0.2, 4.0, 10)
    with pytest.raises(ValueError, match="rho"):
        cr.angle_asymptotics(0.0, 10)
    with pytest.raises(ValueError):
        cr.crossover_depth(0.3)
    with pytest.raises(TypeError):
        cr.g("tanh", "abc")
