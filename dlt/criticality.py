"""Criticality of the preactivation kernel for any activation (book chapter 5) and of the NTK (chapter 9).

Single-input helpers, all vectorized over the kernel value K (any array shape; K >= 0):

  g(K)        = <sigma^2>_K                                          (5.5), (5.49)
  chi_par(K)  = C_W g'(K) = (C_W / K) <z sigma' sigma>_K              (5.10), (5.50)
  chi_perp(K) = C_W <sigma'^2>_K                                     (5.51)
  h(K)        = C_W/(4K^2) <sigma'^2 (z^2 - K)>_K = chi_perp'(K)/2    (5.52)
  j(K)        = C_W <sigma^2 [(z^2/K)^2 - 6 z^2/K + 3]>_K = 4K^2 C_W g''(K)   (5.111)
  vertex_source(K) = C_W^2 (<sigma^4>_K - <sigma^2>_K^2)              (5.109)

Criticality (5.55): chi_par(K*) = chi_perp(K*) = 1 at a fixed point K* = C_b + C_W g(K*) (5.56),
found through the hyperparameter-free ratio (5.73) and the map K* -> (C_b, C_W) of (5.71)-(5.72).
Universality classes: scale-invariant (5.58)-(5.67), K* = 0 (5.80)-(5.99), half-stable
(5.100)-(5.105), none (5.74)-(5.79). Deep asymptotics of K, the parallel and perpendicular
perturbations, the vertex V and the NLO metric G^{1} (5.94)-(5.143). The delta expansion of two
nearby inputs in the gamma basis (5.15)-(5.48), and the finite-angle analysis of the scale-invariant
class (5.145)-(5.171).

Gaussian expectations (``method``):
  'auto'      closed forms where they exist (scale-invariant family (5.60)-(5.62), (5.113); perceptron;
              sin; erf, whose <sigma sigma>, <sigma' sigma'> come from
              :func:`dlt.activations.gauss_expect`; erf's <sigma^4> has none), otherwise a
              fixed node set of :mod:`dlt.gaussian`: the trapezoid rule (geometric convergence also for
              tanh / sigmoid / softplus / SWISH, whose poles at Im z = pi/2, pi slow Gauss-Hermite
              down) or Gauss-Hermite for polynomials (monomials; exact).
  'gh', 'trapezoid'  force that node set (``deg`` nodes, default 200).
  'quad'      adaptive :func:`scipy.integrate.quad` on each half-line (split at the kink z = 0),
              epsrel 1e-13: needed for the 8-9 digit SWISH / GELU constants (spec ch. 5, pitfalls),
              and an independent check of the closed forms.

Errata implemented in corrected form (see ``book/errata.md``): the K-coefficient of g in (5.81) is
sigma_1^2 + sigma_0 sigma_2 (not + 2 sigma_0 sigma_2); the renormalized NLO-metric coefficient of
(5.143) is gamma = (84 a1^2 - 90 a1 b1 - a2) / (3 a1^3) (tanh: 89/72, printed 13/12).

Flows are indexed by the book's layer index: entry l of a returned array is layer l; entry 0 is nan.

Chapter 9 (single-input NTK at criticality; the multi-input recursions live in :mod:`dlt.ntk`):
critical exponents of the frozen NTK Theta, the cross-correlations D, F and the NTK variance A, B with
their scaling laws (9.27) (:func:`ntk_exponents`); the formal solution (9.28) of the frozen-NTK
recursion (9.6) (:func:`frozen_ntk_formal`); the exact scale-invariant solutions (9.42)-(9.52)
(:func:`scale_invariant_ntk`) and the K* = 0 asymptotics (9.65)-(9.86) (:func:`kstar0_ntk_asymptotics`);
the chain-rule factor prod chi_perp of the exploding/vanishing gradient problem (9.90)-(9.93)
(:func:`gradient_factor`) and the equivalence-principle learning rates (9.94)-(9.96)
(:func:`equivalence_learning_rates`). Per-layer inputs and outputs of these functions are arrays (L,)
with entry l-1 = layer l (the layout of dlt.networks.MLP's lambda_b, lambda_W), stated in each docstring.

Chapter 10 (generalization near a training input): the delta expansion of the frozen NTK of two nearby
inputs, (10.58)-(10.70) with the unequal-norm terms of footnote 32 (:func:`ntk_delta_recursion`, smooth
activations); the finite-angle NTK recursion of the scale-invariant class (10.82)-(10.98)
(:func:`ntk_finite_angle`); and the large-depth robustness of the K* = 0 class (10.74)-(10.81)
(:func:`robustness_asymptotic_kstar0`, with the constant-rate coefficient of (10.80)-(10.81) corrected:
see its docstring and book/errata.md).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.integrate as si
from scipy.optimize import brentq

from .activations import Activation, gauss_expect, get_activation
from .gaussian import gaussian_expectation, quadrature_nodes

__all__ = [
    "METHODS", "DEG", "CLASSES", "taylor_coefficients",
    "g", "chi_par", "chi_perp", "h_helper", "j_helper", "vertex_source",
    "fixed_points", "fixed_point", "criticality_ratio", "hyperparams_at", "a1_tilde",
    "find_critical_points", "k0_coefficients", "scale_invariant_constants", "classify",
    "k0_asymptotics", "gamma_renormalized", "gamma_printed", "single_input_flow",
    "gamma_basis", "gamma_project", "gamma_compose", "delta_initial", "delta_recursions",
    "delta_expectation", "scale_invariant_two_input", "scale_invariant_step", "angle_recursion",
    "angle_asymptotics", "small_angle_step", "ddK2_step", "crossover_depth",
    "ntk_exponents", "equivalence_learning_rates", "frozen_ntk_formal", "scale_invariant_ntk",
    "kstar0_ntk_asymptotics", "gradient_factor",
    "ntk_delta_recursion", "ntk_finite_angle", "robustness_asymptotic_kstar0",
]

METHODS = ("auto", "gh", "trapezoid", "quad")
DEG = 200                     # nodes of the fixed 1-D rules ('auto', 'gh', 'trapezoid')
_QUAD = dict(epsabs=0.0, epsrel=1e-13, limit=400)
CLASSES = ("scale-invariant", "K*=0", "half-stable", "none")


# ----------------------------------------------------------------------------- validation
def _act(act) -> Activation:
    return get_activation(act)


def _method(method, deg):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(deg, bool) or not isinstance(deg, (int, np.integer)) or deg < 8 or deg > 2000:
        raise ValueError(f"deg must be an integer in [8, 2000], got {deg!r}")
    return method, int(deg)


def _kernel(K, name="K", positive=False):
    try:
        K = np.asarray(K, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or array, got {type(K).__name__}") from None
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} must be finite")
    if positive and np.any(K <= 0):
        raise ValueError(f"{name} must be > 0 (a variance; this quantity has 1/K), got min {K.min():g}")
    if np.any(K < 0):
        raise ValueError(f"{name} must be >= 0 (a variance), got min {K.min():g}")
    return K


def _CW(C_W):
    C_W = float(C_W)
    if not (np.isfinite(C_W) and C_W > 0):
        raise ValueError(f"C_W must be a finite number > 0 (Var W = C_W / n), got {C_W}")
    return C_W


def _Cb(C_b):
    C_b = float(C_b)
    if not (np.isfinite(C_b) and C_b >= 0):
        raise ValueError(f"C_b must be a finite number >= 0 (a variance), got {C_b}")
    return C_b


def _layers(L):
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
        raise ValueError(f"the depth L must be an integer >= 1, got {L!r}")
    return int(L)


def _out(x):
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


# ----------------------------------------------------------------------------- Taylor data
_SQPI, _SQ2PI = math.sqrt(math.pi), math.sqrt(2 * math.pi)
_TAYLOR = {  # sigma_p = sigma^(p)(0), p = 0..5 (5.80), exact series
    "tanh": (0, 1, 0, -2, 0, 16),
    "sin": (0, 1, 0, -1, 0, 1),
    "erf": (0, 2 / _SQPI, 0, -4 / _SQPI, 0, 24 / _SQPI),
    "gelu": (0, 0.5, 2 / _SQ2PI, 0, -4 / _SQ2PI, 0),
    "swish": (0, 0.5, 0.5, 0, -0.5, 0),
    "softplus": (math.log(2), 0.5, 0.25, 0, -0.125, 0),
    "sigmoid": (0.5, 0.25, 0, -0.125, 0, 0.25),
}


def _jax_taylor(f, order):
    import jax
    import jax.numpy as jnp
    out, d = [], f
    for _ in range(order + 1):
        out.append(float(d(jnp.float64(0.0))))
        d = jax.grad(d)
    return out


def taylor_coefficients(act, order: int = 5) -> np.ndarray:
    """Taylor coefficients sigma_p = sigma^(p)(0), p = 0..order, of sigma(z) = sum sigma_p z^p/p! (5.80).

    Exact series for the registry (tanh, sin, erf, gelu, swish, softplus, sigmoid, linear,
    monomial); for a user-defined activation, nested ``jax.grad`` at 0 in float64. Returns an array
    of shape (order+1,). Raises ValueError for a kinked activation (ReLU family other than linear,
    perceptron), where sigma is not analytic at 0, or a bad order.
    """
    act = _act(act)
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= 12:
        raise ValueError(f"order must be an integer in 0..12, got {order!r}")
    out = np.zeros(order + 1)
    if act.scale_invariant:
        if act.a_plus != act.a_minus:
            raise ValueError(f"{act.name} has a kink at z = 0: no Taylor expansion (use the "
                             "scale-invariant constants A2, A4, rho instead)")
        if order >= 1:
            out[1] = act.a_plus
        return out
    if act.name == "perceptron":
        raise ValueError("the perceptron is discontinuous at z = 0: no Taylor expansion")
    if act.name == "monomial":
        p = dict(act.params)["p"]
        if p <= order:
            out[p] = math.factorial(p)
        return out
    if act.name in _TAYLOR and order <= 5:
        return np.array(_TAYLOR[act.name][: order + 1], dtype=float)
    return np.array(_jax_taylor(act.f, order))


def _sig012(act):
    """(sigma(0), sigma'(0), sigma''(0)) from the activation itself."""
    z = np.zeros(1)
    return float(act.f(z)[0]), float(act.df(z)[0]), float(act.ddf(z)[0])


# ----------------------------------------------------------------------------- Gaussian moments
# Integrands in the standard variable x ~ N(0, 1), z = sqrt(K) x:
#   ss = <s^2>, xss1 = <x s s'> (= <z s s'>/sqrt K), s1s1 = <s'^2>, s4 = <s^4>,
#   he4 = <s^2 He4(x)>, hd = <s'^2 (x^2 - 1)> (= <s'^2 (z^2 - K)>/K).
# Chapter 10 (delta expansion of the NTK, smooth sigma only): s2s2 = <s''^2>, xs1s2 = <x s' s''>
# (= <z s' s''>/sqrt K), hd2 = <s''^2 (x^2 - 1)> (= <s''^2 (z^2 - K)>/K).
_NEEDS_D = ("xss1", "s1s1", "hd", "xs1s2")
_NEEDS_DD = ("s2s2", "xs1s2", "hd2")


def _integrands(act, x, sk, names):
    z = sk * x
    s = act.f(z)
    d = act.df(z) if any(n in _NEEDS_D for n in names) else None
    dd = act.ddf(z) if any(n in _NEEDS_DD for n in names) else None
    x2 = x * x
    table = {"ss": lambda: s * s, "xss1": lambda: x * s * d, "s1s1": lambda: d * d,
             "s4": lambda: (s * s) ** 2, "he4": lambda: s * s * ((x2 - 6) * x2 + 3),
             "hd": lambda: d * d * (x2 - 1), "s2s2": lambda: dd * dd, "xs1s2": lambda: x * d * dd,
             "hd2": lambda: dd * dd * (x2 - 1)}
    return [np.asarray(table[n](), dtype=float) for n in names]


def _two(K):
    return K[..., None, None] * np.ones((2, 2))


def _closed_moments(act, K, names):
    """Closed-form moments for the scale-invariant family, perceptron, sin, erf; None otherwise."""
    sk = np.sqrt(K)
    if act.scale_invariant:
        A2 = (act.a_plus**2 + act.a_minus**2) / 2
        A4 = (act.a_plus**4 + act.a_minus**4) / 2
        t = {"ss": lambda: A2 * K, "s1s1": lambda: A2 + 0 * K, "xss1": lambda: A2 * sk,
             "s4": lambda: 3 * A4 * K**2, "he4": lambda: 0 * K, "hd": lambda: 0 * K}   # (5.60)-(5.62)
    elif act.name == "perceptron":
        def delta():
            raise ValueError("sigma' of the perceptron is a delta function: <sigma'^2> (chi_perp, h) "
                             "is infinite")
        t = {"ss": lambda: 0.5 + 0 * K, "xss1": lambda: 0 * K, "s4": lambda: 0.5 + 0 * K,
             "he4": lambda: 0 * K, "s1s1": delta, "hd": delta}
    elif act.name == "sin":
        e2 = np.exp(-2 * K)
        t = {"xss1": lambda: sk * e2, "s4": lambda: (3 - 4 * e2 + np.exp(-8 * K)) / 8,
             "he4": lambda: -8 * K**2 * e2, "hd": lambda: -2 * K * e2}
    elif act.name == "erf":
        a, b = 1 + 2 * K, 1 + 4 * K
        t = {"xss1": lambda: sk * 4 / (np.pi * a * np.sqrt(b)),           # sqrt(K) g'(K)
             "he4": lambda: -16 / np.pi * K**2 * (2 / (a**2 * np.sqrt(b)) + 2 / (a * b**1.5)),
             "hd": lambda: -16 / np.pi * K / b**1.5}
    else:
        return None
    out = {}
    for n in names:
        if n in t:
            out[n] = np.asarray(t[n](), dtype=float)
        elif n in ("ss", "s1s1"):  # <sigma sigma>, <sigma' sigma'>: arc-cosine / arcsine / sin forms
            out[n] = gauss_expect(act, _two(K), (0, 0) if n == "ss" else (1, 1))
        else:  # erf <sigma^4>: no closed form
            return None
    return out


def _rule(act, method):
    if method == "gh" or act.name == "monomial":  # Gauss-Hermite is exact on polynomials
        return "hermite"
    return "trapezoid"


def _quad1(fun):
    """int phi(x) fun(x) dx on each half-line; returns (value, error estimate)."""
    tot, err = 0.0, 0.0
    phi = lambda x: math.exp(-0.5 * x * x) / _SQ2PI
    for a, b in ((-np.inf, 0.0), (0.0, np.inf)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", si.IntegrationWarning)
            v, e = si.quad(lambda x: phi(x) * fun(x), a, b, **_QUAD)
        tot, err = tot + v, err + e
    return tot, err


def _quad_moments(act, K, names):
    out = {n: np.empty(K.shape) for n in names}
    for idx in np.ndindex(K.shape):
        sk = math.sqrt(K[idx])
        for n in names:
            f = lambda x, n=n: float(_integrands(act, np.array([x]), sk, [n])[0][0])
            out[n][idx] = _quad1(f)[0]
    return out


def _moments(act, K, names, method="auto", deg=DEG):
    """dict name -> <integrand>_K, arrays of K.shape (K validated, >= 0)."""
    method, deg = _method(method, deg)
    if method == "auto":
        c = _closed_moments(act, K, names)
        if c is not None:
            return c
    elif act.name == "perceptron":  # the fixed rules cannot resolve sigma' = delta anyway
        c = _closed_moments(act, K, names)
        if c is not None:
            return c
    if method == "quad":
        return _quad_moments(act, K, names)
    sk = np.sqrt(K)

    def f(u):  # u (..., P, 1) standard normal nodes; batch of identity covariances
        return np.stack(_integrands(act, u[..., 0], sk[..., None], names), axis=-1)

    res = gaussian_expectation(f, np.ones(K.shape + (1, 1)), deg=deg, rule=_rule(act, method))
    return {n: res[..., i] for i, n in enumerate(names)}


class _Local:
    """Fast moments at one scalar K per call (the per-layer step of a flow): closed forms, a fixed
    node set of dlt.gaussian (precomputed once), or adaptive quadrature."""

    def __init__(self, act, names, method, deg):
        self.act, self.names = act, names
        self.method, deg = _method(method, deg)
        self.closed = method == "auto" and _closed_moments(act, np.ones(1), names) is not None
        if not self.closed and method != "quad":
            u, w = quadrature_nodes(1, deg, _rule(act, method))
            self.x, self.w = u[:, 0], w

    def __call__(self, K):
        if self.closed:
            c = _closed_moments(self.act, np.array([K]), self.names)
            return {n: np.float64(v[0]) for n, v in c.items()}
        if self.method == "quad":
            return {n: np.float64(v) for n, v in _quad_moments(self.act, np.asarray(K), self.names).items()}
        vals = _integrands(self.act, self.x, math.sqrt(K), self.names)
        return {n: np.float64(self.w @ v) for n, v in zip(self.names, vals)}


# ----------------------------------------------------------------------------- K -> 0 limits
def _limit0(act, what, C_W=1.0):
    """Values at K = 0 of quantities with a 1/K: chi_par, h, ratio (Taylor data, (5.81) corrected)."""
    s0, s1, s2 = _sig012(act)
    if act.scale_invariant:
        A2 = (act.a_plus**2 + act.a_minus**2) / 2
        return {"chi_par": C_W * A2, "h": 0.0, "ratio": 1.0}[what]
    if what == "chi_par":       # C_W g'(0) = C_W (sigma1^2 + sigma0 sigma2)
        return C_W * (s1 * s1 + s0 * s2)
    if what == "ratio":
        den = s1 * s1 + s0 * s2
        if den == 0:
            raise ValueError(f"the ratio (5.73) of {act.name} is 0/0 at K = 0; evaluate it at K > 0")
        return s1 * s1 / den
    t = taylor_coefficients(act, 3)  # h(0) = C_W (sigma2^2 + sigma1 sigma3) / 2
    return C_W * (t[2] ** 2 + t[1] * t[3]) / 2


def _with_zero(K, fn_pos, val0):
    """Evaluate fn_pos on K > 0 and put the K -> 0 limit val0() at K == 0."""
    out = np.empty(K.shape)
    pos = K > 0
    if np.any(pos):
        out[pos] = fn_pos(K[pos])
    if np.any(~pos):
        out[~pos] = val0()
    return out


# ----------------------------------------------------------------------------- helpers
def g(act, K, method="auto", deg=DEG):
    """Helper g(K) = <sigma(z) sigma(z)>_K (5.5), (5.49). K: scalar or array, >= 0 -> same shape.

    Closed forms: scale-invariant A2 K (5.60), sin (1 - e^{-2K})/2, erf (2/pi) arcsin(2K/(1+2K)).
    Raises ValueError for K < 0, an unknown activation or method.
    """
    act, K = _act(act), _kernel(K)
    return _out(_moments(act, K, ["ss"], method, deg)["ss"])


def chi_par(act, K, C_W, method="auto", deg=DEG):
    """Parallel susceptibility chi_par(K) = C_W g'(K) = (C_W/K) <z sigma' sigma>_K (5.10), (5.50).

    Uses the <z sigma sigma'> form (the (z^2 - K) form cancels at small K); at K = 0 the limit
    C_W (sigma_1^2 + sigma_0 sigma_2) (corrected (5.81)). K >= 0 (array), C_W > 0.
    Raises ValueError for bad K, C_W or method.
    """
    act, K, C_W = _act(act), _kernel(K), _CW(C_W)
    pos = lambda k: C_W * _moments(act, k, ["xss1"], method, deg)["xss1"] / np.sqrt(k)
    return _out(_with_zero(K, pos, lambda: _limit0(act, "chi_par", C_W)))


def chi_perp(act, K, C_W, method="auto", deg=DEG):
    """Perpendicular susceptibility chi_perp(K) = C_W <sigma'(z) sigma'(z)>_K (5.51).

    K >= 0 (array), C_W > 0. Raises ValueError for bad input or for the perceptron (sigma' = delta).
    """
    act, K, C_W = _act(act), _kernel(K), _CW(C_W)
    return _out(C_W * _moments(act, K, ["s1s1"], method, deg)["s1s1"])


def h_helper(act, K, C_W, method="auto", deg=DEG):
    """Helper h(K) = C_W/(4K^2) <sigma'^2 (z^2 - K)>_K = chi_perp'(K)/2 (5.52), source of the
    perpendicular perturbation by (delta K_[1])^2 in (5.48). K >= 0 (K = 0 by Taylor data), C_W > 0.
    Raises ValueError for bad input or the perceptron.
    """
    act, K, C_W = _act(act), _kernel(K), _CW(C_W)
    pos = lambda k: C_W * _moments(act, k, ["hd"], method, deg)["hd"] / (4 * k)
    return _out(_with_zero(K, pos, lambda: _limit0(act, "h", C_W)))


def j_helper(act, K, C_W, method="auto", deg=DEG):
    """Helper j(K) = C_W <sigma^2 [(z^2/K)^2 - 6 z^2/K + 3]>_K = 4 K^2 C_W g''(K) (5.111), the
    source of the NLO metric in (5.110). K >= 0 (array), C_W > 0. Raises ValueError for bad input.
    """
    act, K, C_W = _act(act), _kernel(K), _CW(C_W)
    return _out(C_W * _moments(act, K, ["he4"], method, deg)["he4"])


def vertex_source(act, K, C_W, method="auto", deg=DEG):
    """C_W^2 (<sigma^4>_K - <sigma^2>_K^2), the local source of the single-input vertex (5.109);
    C_W^2 (3 A4 - A2^2) K^2 for the scale-invariant class (5.113). K >= 0, C_W > 0."""
    act, K, C_W = _act(act), _kernel(K), _CW(C_W)
    m = _moments(act, K, ["s4", "ss"], method, deg)
    return _out(C_W**2 * (m["s4"] - m["ss"] ** 2))


# ----------------------------------------------------------------------------- fixed points
def _F(act, C_b, C_W, method, deg):
    return lambda K: C_b + C_W * float(_moments(act, np.asarray(K, float), ["ss"], method, deg)["ss"]) - K


def fixed_points(act, C_b, C_W, K_max=1e4, n_grid=4000, method="auto", deg=DEG, tol=1e-8):
    """All fixed points K* = C_b + C_W g(K*) (5.7), (5.56) in [0, K_max], sorted.

    Simple roots: sign changes of F(K) = C_b + C_W g(K) - K on the grid {0} u geomspace(1e-8, K_max)
    refined by brentq (xtol 1e-14); tangent (double) roots, e.g. the half-stable K* at the
    half-critical constants: extrema of F (chi_par = 1) with |F| <= tol (1 + K) that bend toward 0
    (rounded constants leave a near-miss of size ~1e-10). Scale-invariant activations
    are solved exactly. Returns an array (possibly empty).
    Raises ValueError for C_b < 0, C_W <= 0, bad K_max, and for the scale-invariant critical case
    (C_b, C_W) = (0, 1/A2), where every K is a fixed point (5.66).
    """
    act, C_b, C_W = _act(act), _Cb(C_b), _CW(C_W)
    if not (np.isfinite(K_max) and K_max > 1e-8):
        raise ValueError(f"K_max must be a finite number > 1e-8, got {K_max}")
    if act.scale_invariant:
        chi = C_W * (act.a_plus**2 + act.a_minus**2) / 2
        if abs(chi - 1) < 1e-13:
            if C_b == 0:
                raise ValueError("scale-invariant criticality (C_b, C_W) = (0, 1/A2): every K is a "
                                 "fixed point (a line of fixed points, (5.66))")
            return np.array([])   # semi-criticality: K grows linearly in l
        ks = C_b / (1 - chi)
        return np.array([ks]) if 0 <= ks <= K_max else np.array([])
    grid = np.concatenate([[0.0], np.geomspace(1e-8, K_max, n_grid)])
    gg = np.asarray(_moments(act, grid, ["ss"], method if method != "quad" else "auto", deg)["ss"])
    Fg = C_b + C_W * gg - grid
    F = _F(act, C_b, C_W, method, deg)
    roots = [0.0] if Fg[0] == 0 else []
    for i in range(len(grid) - 1):
        a, b = grid[i], grid[i + 1]
        if Fg[i] == 0 and i > 0:
            roots.append(a)
        elif Fg[i] * Fg[i + 1] < 0:
            roots.append(brentq(F, a, b, xtol=1e-14, rtol=1e-15))
    # tangent roots: chi_par - 1 changes sign and F ~ 0 there
    cp = np.asarray(chi_par(act, grid[1:], C_W, method if method != "quad" else "auto", deg)) - 1
    for i in range(len(cp) - 1):
        if cp[i] * cp[i + 1] < 0:
            k = brentq(lambda k: float(chi_par(act, k, C_W, method, deg)) - 1, grid[i + 1], grid[i + 2],
                       xtol=1e-14, rtol=1e-15)
            Fk, curv = F(k), float(a1_tilde(act, k, C_W, method, deg))  # F'' = 2 a1~
            new = lambda k: all(abs(k - r) > 1e-9 * (1 + k) for r in roots)
            if Fk * curv >= 0:
                # an extremum of F bending toward 0: a tangent root if it (nearly) touches 0
                if abs(Fk) <= tol * (1 + k) and new(k):
                    roots.append(k)
            else:  # F crosses 0 on both sides of the extremum; roots inside one grid cell are
                for a, b in ((grid[i + 1], k), (k, grid[i + 2])):   # missed by the scan above
                    if F(a) * Fk < 0:
                        x = brentq(F, a, b, xtol=1e-14, rtol=1e-15)
                        if new(x):
                            roots.append(x)
    return np.array(sorted(roots))


def fixed_point(act, C_b, C_W, bracket=None, K_max=1e4, method="auto", deg=DEG):
    """The fixed point K* = C_b + C_W g(K*) (5.7) that the single-input kernel flows to.

    bracket=(lo, hi): the root in [lo, hi] (brentq; F must change sign, or the bracket must hold a
    tangent root). Without a bracket: the unique fixed point in [0, K_max], or, if there are several,
    the unique attracting one (chi_par(K*) < 1); e.g. GELU at its half-critical constants -> 3.035.
    Returns a float. Raises ValueError if there is no fixed point ("the kernel flows to infinity"),
    if several remain ambiguous (pass a bracket), for bad hyperparameters, and for the scale-invariant
    critical line.
    """
    act, C_b, C_W = _act(act), _Cb(C_b), _CW(C_W)
    if bracket is not None:
        lo, hi = (float(v) for v in bracket)
        if not 0 <= lo < hi:
            raise ValueError(f"bracket must be (lo, hi) with 0 <= lo < hi, got {bracket}")
        F = _F(act, C_b, C_W, method, deg)
        if F(lo) * F(hi) <= 0:
            return float(brentq(F, lo, hi, xtol=1e-14, rtol=1e-15))
        r = fixed_points(act, C_b, C_W, K_max=max(hi, 1e-7), method=method, deg=deg)
        r = r[(r >= lo) & (r <= hi)]
        if len(r) == 1:
            return float(r[0])
        raise ValueError(f"no (unique) fixed point of K = C_b + C_W g(K) in the bracket {bracket}")
    r = fixed_points(act, C_b, C_W, K_max=K_max, method=method, deg=deg)
    if len(r) == 0:
        raise ValueError(f"no fixed point of K = C_b + C_W g(K) in [0, {K_max:g}] for {act.name} with "
                         f"(C_b, C_W) = ({C_b}, {C_W}): the kernel flows to infinity")
    if len(r) == 1:
        return float(r[0])
    att = [k for k in r if float(chi_par(act, k, C_W, method, deg)) < 1 - 1e-12]
    if len(att) == 1:
        return float(att[0])
    raise ValueError(f"several fixed points {np.round(r, 10).tolist()}; pass bracket=(lo, hi)")


# ----------------------------------------------------------------------------- criticality
def criticality_ratio(act, K, method="auto", deg=DEG):
    """chi_perp/chi_par = 2K^2 <sigma'^2>_K / <sigma^2 (z^2 - K)>_K = K <sigma'^2> / <z sigma sigma'>
    (5.73), independent of C_b and C_W; criticality needs ratio = 1 at K*. K >= 0 (array); at K = 0
    the limit sigma_1^2/(sigma_1^2 + sigma_0 sigma_2) (corrected (5.81)). Monomials z^p give
    p/(2p-1) (5.78). Raises ValueError for K < 0, 0/0 at K = 0 (e.g. z^2), the perceptron.
    """
    act, K = _act(act), _kernel(K)

    def pos(k):
        m = _moments(act, k, ["s1s1", "xss1"], method, deg)
        return m["s1s1"] * np.sqrt(k) / m["xss1"]

    return _out(_with_zero(K, pos, lambda: _limit0(act, "ratio")))


def hyperparams_at(act, K, method="auto", deg=DEG):
    """(C_b, C_W) that make K a fixed point with chi_perp(K) = 1 (5.71), (5.72):
    C_W = 1/<sigma'^2>_K, C_b = K - <sigma^2>_K / <sigma'^2>_K. K >= 0 (array) -> two arrays.
    Raises ValueError for K < 0 or <sigma'^2>_K = 0 (e.g. z^p, p >= 2, at K = 0).
    """
    act, K = _act(act), _kernel(K)
    m = _moments(act, K, ["ss", "s1s1"], method, deg)
    if np.any(m["s1s1"] <= 0):
        raise ValueError(f"<sigma'^2>_K = 0 for {act.name} at some K: no finite C_W (5.71)")
    return _out(K - m["ss"] / m["s1s1"]), _out(1 / m["s1s1"])


def a1_tilde(act, K_star, C_W, method="auto", deg=DEG):
    """Quadratic coefficient a1~ = C_W g''(K*)/2 = j(K*)/(8 K*^2) of Delta K' = Delta K + a1~ Delta K^2
    (5.102) at a fixed point with chi_par = 1; a1~ < 0 attracts from above (GELU), a1~ > 0 from below
    (SWISH). At K* = 0 it is C_W (2 s0 s4 + 8 s1 s3 + 6 s2^2)/8, = a1 (5.86) at C_W = 1/sigma_1^2.
    Raises ValueError for K* < 0, C_W <= 0.
    """
    act, K, C_W = _act(act), _kernel(K_star, "K_star"), _CW(C_W)

    def zero():
        if act.scale_invariant:
            return 0.0
        t = taylor_coefficients(act, 4)
        return C_W * (2 * t[0] * t[4] + 8 * t[1] * t[3] + 6 * t[2] ** 2) / 8

    pos = lambda k: C_W * _moments(act, k, ["he4"], method, deg)["he4"] / (8 * k * k)
    return _out(_with_zero(K, pos, zero))


def k0_coefficients(taylor):
    """(a1, a2, b1) of the K* = 0 class (5.86)-(5.88) from Taylor data (sigma_0 .. sigma_5) (a
    sequence, padded with zeros) or from an activation (via :func:`taylor_coefficients`):
      a1 = s3/s1 + (3/4)(s2/s1)^2,  a2 = (1/4) s5/s1 + (5/8) s4 s2/s1^2 + (5/12)(s3/s1)^2,
      b1 = s3/s1 + (s2/s1)^2.
    With C_W = 1/s1^2: C_W g = K + a1 K^2 + a2 K^3, chi_par = 1 + 2 a1 K + 3 a2 K^2, chi_perp =
    1 + b1 K (5.83)-(5.85). tanh (-2, 17/3, -2), sin (-1, 2/3, -1).
    Raises ValueError if sigma_0 != 0 or sigma_1 == 0 (no K* = 0 fixed point, (5.89)).
    """
    if isinstance(taylor, (str, Activation)) or callable(taylor):
        taylor = taylor_coefficients(taylor, 5)
    t = np.zeros(6)
    tt = np.asarray(taylor, dtype=float).ravel()[:6]
    t[: len(tt)] = tt
    if t[0] != 0:
        raise ValueError(f"the K* = 0 expansion needs sigma_0 = sigma(0) = 0 (5.89), got {t[0]:g}; "
                         "shift the activation first")
    if t[1] == 0:
        raise ValueError("the K* = 0 expansion needs sigma_1 = sigma'(0) != 0 (5.89)")
    s = t / t[1]
    return (float(s[3] + 0.75 * s[2] ** 2), float(s[5] / 4 + 5 / 8 * s[4] * s[2] + 5 / 12 * s[3] ** 2),
            float(s[3] + s[2] ** 2))


def scale_invariant_constants(a_plus=1.0, a_minus=0.0):
    """(A2, A4, rho) of sigma = a+ z (z >= 0), a- z (z < 0): A2 = (a+^2 + a-^2)/2 (5.61),
    A4 = (a+^4 + a-^4)/2 (5.114), rho = (a+ - a-)^2 / (pi (a+^2 + a-^2)) (5.163). Critical
    (C_b, C_W) = (0, 1/A2) (5.67). a_plus may instead be a scale-invariant activation.
    Raises ValueError for a non-scale-invariant activation or a+ = a- = 0.
    """
    if isinstance(a_plus, (str, Activation)):
        act = _act(a_plus)
        if not act.scale_invariant:
            raise ValueError(f"{act.name} is not in the scale-invariant family (5.58)")
        a_plus, a_minus = act.a_plus, act.a_minus
    ap, am = float(a_plus), float(a_minus)
    if ap == 0 and am == 0:
        raise ValueError("a_plus = a_minus = 0 is the zero function")
    A2, A4 = (ap**2 + am**2) / 2, (ap**4 + am**4) / 2
    return A2, A4, (ap - am) ** 2 / (np.pi * (ap**2 + am**2))


def _stability(a1t, K_star):
    if a1t is None:
        return None
    if K_star == 0:
        return "stable" if a1t < 0 else ("unstable" if a1t > 0 else "marginal")
    return "attracts from above" if a1t < 0 else ("attracts from below" if a1t > 0 else "marginal")


def find_critical_points(act, K_grid=None, method="quad", deg=DEG):
    """Critical points of the kernel (5.55): roots of the ratio (5.73) = 1, with their
    hyperparameters (5.71)-(5.72) and quadratic coefficient (5.102).

    Scans the ratio on ``K_grid`` (default geomspace(1e-4, 50, 400)) with the fixed node set, refines
    each crossing of 1 with brentq (xtol 1e-14) using ``method`` ('quad' by default: 8-9 digits),
    and adds the K -> 0 limit when sigma_1^2/(sigma_1^2 + sigma_0 sigma_2) = 1 (Taylor data).
    Returns a list (sorted by K*) of dicts K_star, C_b, C_W, a1tilde, stability, physical:
    stability 'stable'/'unstable' at K* = 0 (-a1 > 0 / < 0), 'attracts from above' (a1~ < 0) or
    'attracts from below' (a1~ > 0) at K* > 0; physical = (C_b >= 0). A scale-invariant activation
    gives one entry with K_star=None (every K, (5.66)), (C_b, C_W) = (0, 1/A2).
    Raises ValueError for the perceptron (sigma' is a delta function) or a bad grid.
    """
    act = _act(act)
    if act.scale_invariant:
        A2 = scale_invariant_constants(act)[0]
        return [dict(K_star=None, C_b=0.0, C_W=1 / A2, a1tilde=0.0, stability="marginal",
                     physical=True)]
    if act.name == "perceptron":
        raise ValueError("the perceptron has sigma' = delta: chi_perp is infinite, no criticality")
    grid = np.geomspace(1e-4, 50, 400) if K_grid is None else _kernel(K_grid, "K_grid", positive=True)
    grid = np.sort(grid.ravel())
    if grid.size < 2:
        raise ValueError("K_grid needs at least two points")
    r = np.asarray(criticality_ratio(act, grid, "auto", deg)) - 1
    if np.all(np.abs(r) < 1e-12):   # ratio identically 1: a linear function (scale-invariant)
        C_W = 1 / _sig012(act)[1] ** 2
        return [dict(K_star=None, C_b=0.0, C_W=C_W, a1tilde=0.0, stability="marginal", physical=True)]
    out = []

    def entry(K):
        C_b, C_W = (float(v) for v in hyperparams_at(act, K, method, deg))
        at = float(a1_tilde(act, K, C_W, method, deg))
        return dict(K_star=K, C_b=C_b, C_W=C_W, a1tilde=at, stability=_stability(at, K),
                    physical=C_b >= 0)

    s0, s1, s2 = _sig012(act)
    if s1 != 0 and s0 * s2 == 0:   # ratio -> 1 at K -> 0
        C_W = 1 / s1**2
        if s0 == 0:
            a1 = k0_coefficients(taylor_coefficients(act, 5))[0]
        else:
            a1 = None
        out.append(dict(K_star=0.0, C_b=-((s0 / s1) ** 2) + 0.0, C_W=C_W, a1tilde=a1,
                        stability=_stability(a1, 0.0), physical=s0 == 0))
    f = lambda K: float(criticality_ratio(act, K, method, deg)) - 1
    for i in range(len(grid) - 1):
        if r[i] == 0:
            out.append(entry(float(grid[i])))
        elif r[i] * r[i + 1] < 0:
            out.append(entry(brentq(f, grid[i], grid[i + 1], xtol=1e-14, rtol=1e-15)))
    return out


def classify(act) -> str:
    """Universality class (§5.2-5.3): 'scale-invariant' (sigma(lambda z) = lambda sigma(z), (5.58)),
    'K*=0' (sigma_0 = 0, sigma_1 != 0 and -a1 > 0, (5.89)-(5.92); or a1 = 0 with -a2 > 0, footnote 19),
    'half-stable' (a physical critical point K* > 0: SWISH, GELU), or 'none' (sigmoid, softplus,
    monomials z^p with p >= 2, perceptron). Raises ValueError for an unknown activation.
    """
    act = _act(act)
    if act.scale_invariant:
        return "scale-invariant"
    if act.name == "perceptron":
        return "none"
    t = taylor_coefficients(act, 5)
    if t[0] == 0 and t[1] != 0 and not np.any(t[2:]):
        return "scale-invariant"      # sigma = sigma_1 z (a linear function)
    if t[0] == 0 and t[1] != 0:
        a1, a2, _ = k0_coefficients(t)
        if a1 < 0 or (a1 == 0 and a2 < 0):
            return "K*=0"
    pts = find_critical_points(act, method="auto")
    if any(p["physical"] and p["K_star"] > 0 and p["a1tilde"] != 0 for p in pts):
        return "half-stable"
    return "none"


# ----------------------------------------------------------------------------- deep asymptotics
def gamma_renormalized(a1, a2, b1):
    """Coefficient gamma of the renormalized NLO metric G^{1} = gamma/l + O(log l / l^2) with
    c_b^{1} = 0, c_W^{1} = 2/(3 sigma_1^2) (5.142), corrected from (5.143):
    gamma = (84 a1^2 - 90 a1 b1 - a2)/(3 a1^3) = (2/3)(3a2 - a1^2)/(-a1)^3 + a1 v2, with v2 the
    1/l^2 coefficient of V (5.127). tanh 89/72, sin 20/9. See book/errata.md."""
    a1, a2, b1 = float(a1), float(a2), float(b1)
    if a1 == 0:
        raise ValueError("gamma needs a1 != 0")
    return (84 * a1**2 - 90 * a1 * b1 - a2) / (3 * a1**3)


def gamma_printed(a1, a2, b1=None):
    """The coefficient as printed in (5.143), (2/3)(3 a2 - a1^2)/(-a1)^3 (tanh 13/12): wrong, kept
    for the erratum comparison; use :func:`gamma_renormalized`."""
    return 2 / 3 * (3 * a2 - a1**2) / (-a1) ** 3


def k0_asymptotics(a1, a2, b1, ell, log_ell0=0.0):
    """Large-depth solutions for the K* = 0 class at criticality (C_b, C_W) = (0, 1/sigma_1^2).

    ell: depth(s) >= 1 (array); log_ell0 = log(l_0), the data-dependent scale (L = log(l/l_0)).
    Returns a dict of arrays (shape of ell):
      'K'       (5.94): 1/((-a1) l) - q/a1^3 L/l^2 - q^2/a1^5 L^2/l^3 + q^2/a1^5 L/l^3, q = a2 - a1^2
      'dK1'     (5.97): l^-2 [1 + 2 a1 q/a1^3 L/l]             (times the constant delta_par)
      'ddK2'    (5.99): l^(-b1/a1) [1 + b1 q/a1^3 L/l]         (times the constant delta_2)
      'V'       (5.127): 2/(3a1^2 l) + 2q/(3a1^4) L/l^2 + (5a2 + a1(82a1 - 90b1))/(3a1^4) / l^2
      'G1_bare' (5.134): -1/(3(-a1))  (constant)
      'G1_ren'  (5.143, corrected): gamma/l with gamma = gamma_renormalized(a1, a2, b1)
    plus the scalars 'gamma', 'gamma_printed', 'p_perp' = b1/a1. Errors: O(1/l^3) for K and
    O(log^2 l/l^3) for V (absolute), relative O(1/l) for dK1, ddK2, O(log l/l) for G1.
    Raises ValueError unless -a1 > 0 (the K* = 0 point must be stable) and ell >= 1.
    """
    a1, a2, b1 = float(a1), float(a2), float(b1)
    if not a1 < 0:
        raise ValueError(f"the K* = 0 asymptotics need -a1 > 0 (stable fixed point), got a1 = {a1}")
    ell = np.asarray(ell, dtype=float)
    if np.any(~np.isfinite(ell)) or np.any(ell < 1):
        raise ValueError("ell must be finite and >= 1")
    L, q = np.log(ell) - log_ell0, a2 - a1**2
    c = q**2 / a1**5
    out = {
        "K": 1 / (-a1 * ell) - q / a1**3 * L / ell**2 - c * L**2 / ell**3 + c * L / ell**3,
        "dK1": ell**-2.0 * (1 + 2 * a1 * q / a1**3 * L / ell),
        "ddK2": ell ** (-b1 / a1) * (1 + b1 * q / a1**3 * L / ell),
        "V": 2 / (3 * a1**2 * ell) + 2 * q / (3 * a1**4) * L / ell**2
        + (5 * a2 + a1 * (82 * a1 - 90 * b1)) / (3 * a1**4) / ell**2,
        "G1_bare": -1 / (3 * (-a1)) + 0 * ell,
        "G1_ren": gamma_renormalized(a1, a2, b1) / ell,
    }
    out = {k: _out(v) for k, v in out.items()}
    out.update(gamma=gamma_renormalized(a1, a2, b1), gamma_printed=gamma_printed(a1, a2),
               p_perp=b1 / a1)
    return out


# ----------------------------------------------------------------------------- single-input flow
def _diverged(name, l, arrays, fill):
    warnings.warn(f"{name}: the kernel is no longer finite at layer {l} (it diverges off "
                  "criticality); deeper layers are set to inf (K, V) / nan (G1)", RuntimeWarning,
                  stacklevel=3)
    for a, v in zip(arrays, fill):
        a[l:] = v


def single_input_flow(act, C_b, C_W, K1, L, c_b1=0.0, c_W1=0.0, method="auto", deg=DEG):
    """Single-input K, V, G^{1} of an MLP with equal hidden widths n, to layer L (5.108)-(5.110),
    with the optional 1/n retuning C_b = C_b + c_b1/n, C_W = C_W + c_W1/n of layers >= 2 (5.138)-(5.140):
      K(l+1)  = C_b + C_W g(K(l))
      V(l+1)  = chi_par(K(l))^2 V(l) + C_W^2 (<sigma^4> - <sigma^2>^2)_{K(l)}
      G1(l+1) = c_b1 + c_W1 g(K(l)) + chi_par(K(l)) G1(l) + j(K(l))/8 V(l)/K(l)^2
    with V(1) = G1(1) = 0; E[z_i z_i] = K + G1/n + O(1/n^2), connected E[z_i^2 z_j^2] = V/n (i != j).
    Why a second code path beside dlt.kernels.preactivation_flow (whose N_D = 1 case is the same
    recursion; tests/test_criticality.py checks the two agree to ~1e-11 at moderate depth): the deep
    asymptotics of chapter 5 run to K ~ 1e-5 at depth 4e4, where this compact form (chi_par through
    <z sigma sigma'>, Taylor limits at K -> 0) stays accurate while the general block-tensor z-form of
    j loses digits: the extrapolated renormalized coefficient (5.143) for tanh comes out 2.3e-7 from
    89/72 here and 2.2e-6 through the general engine. It also takes the 1/n-retuned hyperparameters
    (c_b1, c_W1) and the quadrature switch (method='quad' for 8-digit constants).
    K1: first-layer kernel C_b + C_W |x|^2/n_0 (> 0). Returns dict K, V, G1 of arrays (L+1,) indexed
    by layer (entry 0 is nan). About 10-30 us per layer for registry activations (10^4 layers in
    0.1-0.3 s); a user-defined (JAX) activation costs ~0.3 ms per layer. Accuracy of the default
    node set: ~1e-13 relative for K <~ 3, degrading for tanh at large K (2e-8 at K = 14); use
    method='quad' (slow) or a larger deg there.
    Raises ValueError for bad hyperparameters, K1 <= 0, L < 1; warns and fills inf (K, V) / nan (G1)
    from the layer where the kernel stops being finite (divergence off criticality).
    """
    act, C_b, C_W, L = _act(act), _Cb(C_b), _CW(C_W), _layers(L)
    K1 = float(_kernel(K1, "K1", positive=True))
    c_b1, c_W1 = float(c_b1), float(c_W1)
    loc = _Local(act, ["ss", "xss1", "s4", "he4"], method, deg)
    K, V, G1 = np.full(L + 1, np.nan), np.full(L + 1, np.nan), np.full(L + 1, np.nan)
    K[1], V[1], G1[1] = K1, 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(1, L):
            k = K[l]
            if not (np.isfinite(k) and k < 1e300):
                K[l:], V[l:], G1[l:] = np.inf, np.inf, np.nan
                break
            m = loc(k)
            chi = C_W * m["xss1"] / math.sqrt(k) if k > 0 else _limit0(act, "chi_par", C_W)
            K[l + 1] = C_b + C_W * m["ss"]
            src = m["s4"] - m["ss"] ** 2
            if not np.isfinite(src):    # inf - inf once sigma^4 overflows: the vertex diverges
                src = np.inf
            V[l + 1] = chi * chi * V[l] + C_W**2 * src
            jv = C_W * m["he4"] / 8 * V[l] / (k * k) if (V[l] != 0 and m["he4"] != 0) else 0.0
            G1[l + 1] = c_b1 + c_W1 * m["ss"] + chi * G1[l] + jv
    bad = ~(np.isfinite(K[1:]) & np.isfinite(V[1:]) & np.isfinite(G1[1:]))
    if bad.any():
        warnings.warn(f"single_input_flow: non-finite values from layer {1 + int(np.argmax(bad))} on "
                      "(divergence off criticality, or float64 overflow of V ~ K^2)", RuntimeWarning,
                      stacklevel=2)
    return {"K": K, "V": V, "G1": G1}


# ----------------------------------------------------------------------------- gamma basis, delta expansion
_GAMMA = np.array([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]], [[1.0, -1.0], [-1.0, 1.0]]])
_GAMMA.flags.writeable = False


def gamma_basis() -> np.ndarray:
    """The matrices gamma^[0], gamma^[1], gamma^[2] (5.16), shape (3, 2, 2), index order (+, -)."""
    return _GAMMA.copy()


def gamma_project(M) -> np.ndarray:
    """Components M_[a] = sum M_ab gamma^[a]_ba / sum gamma^[a]_ab gamma^[a]_ba (5.20) of 2x2 matrices.

    M (..., 2, 2) -> (..., 3): for a kernel, K_[0] = (K++ + K-- + 2K+-)/4, K_[1] = (K++ - K--)/2,
    K_[2] = (K++ + K-- - 2K+-)/4 (5.17)-(5.19). Raises ValueError for a wrong shape.
    """
    M = np.asarray(M, dtype=float)
    if M.ndim < 2 or M.shape[-2:] != (2, 2):
        raise ValueError(f"M must have shape (..., 2, 2), got {M.shape}")
    num = np.einsum("...ab,kba->...k", M, _GAMMA)
    return num / np.einsum("kab,kba->k", _GAMMA, _GAMMA)


def gamma_compose(k) -> np.ndarray:
    """The 2x2 matrix sum_a k_[a] gamma^[a] (5.15); k (..., 3) -> (..., 2, 2). Inverse of
    :func:`gamma_project`. Raises ValueError for a wrong shape."""
    k = np.asarray(k, dtype=float)
    if k.ndim < 1 or k.shape[-1] != 3:
        raise ValueError(f"k must have shape (..., 3), got {k.shape}")
    return np.einsum("...k,kab->...ab", k, _GAMMA)


def delta_initial(x0, dx, C_b, C_W):
    """First-layer delta data for the inputs x_pm = x0 +- dx/2 (5.21), from (5.2):
    (K00, dK1, ddK2) = (C_b + C_W |x0|^2/n0, C_W x0.dx/n0, C_W |dx|^2/(4 n0)); the first-layer
    ddK_[0] is exactly 0. x0, dx: (n0,). Raises ValueError for shapes or bad hyperparameters."""
    x0, dx = np.asarray(x0, dtype=float), np.asarray(dx, dtype=float)
    if x0.ndim != 1 or x0.shape != dx.shape or x0.size == 0:
        raise ValueError(f"x0 and dx must be vectors of the same length n0, got {x0.shape}, {dx.shape}")
    C_b, C_W, n0 = _Cb(C_b), _CW(C_W), x0.size
    return C_b + C_W * (x0 @ x0) / n0, C_W * (x0 @ dx) / n0, C_W * (dx @ dx) / (4 * n0)


def delta_recursions(act, C_b, C_W, K00_1, dK1_1, ddK2_1, L, method="auto", deg=DEG):
    """Bootstrapped recursions of the delta expansion (5.46)-(5.48):
      K00(l+1)  = C_b + C_W g(K00(l)),  dK1(l+1) = chi_par(K00(l)) dK1(l),
      ddK2(l+1) = chi_perp(K00(l)) ddK2(l) + h(K00(l)) dK1(l)^2,
    from the first-layer values (see :func:`delta_initial`). Returns an array (L+1, 3) of
    (K00, dK1, ddK2) indexed by layer (row 0 is nan). The exact two-input kernel agrees up to
    relative O(delta^2): K_[1] = dK1 + O(delta^3), K_[2] = ddK2 + O(delta^4), K_[0] = K00 + O(delta^2).
    Raises ValueError for bad input (K00_1 <= 0, L < 1, ...); warns (inf/nan) on divergence.
    """
    act, C_b, C_W, L = _act(act), _Cb(C_b), _CW(C_W), _layers(L)
    k00 = float(_kernel(K00_1, "K00_1", positive=True))
    out = np.full((L + 1, 3), np.nan)
    out[1] = k00, float(dK1_1), float(ddK2_1)
    loc = _Local(act, ["ss", "xss1", "s1s1", "hd"], method, deg)
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(1, L):
            k, d1, d2 = out[l]
            if not (np.isfinite(k) and k < 1e300):
                _diverged("delta_recursions", l, (out,), (np.inf,))
                break
            m = loc(k)
            chi_p = C_W * m["xss1"] / math.sqrt(k)
            out[l + 1] = (C_b + C_W * m["ss"], chi_p * d1, C_W * m["s1s1"] * d2
                          + C_W * m["hd"] / (4 * k) * d1 * d1)
    return out


def delta_expectation(F0, Fm, Fp, Fmm, K00, dK1, ddK0, ddK2, method="auto", deg=DEG):
    """Two-input Gaussian expectation <F(z+, z-)>_K to O(delta^2) by single-input integrals (5.39):
      <F> = <F0> + dK1/(2K00) <z Fm> + ddK0/(2K00) <z Fp>
            + 1/2 < [ddK2 + (dK1/(2K00))^2 (z^2 - K00)] Fmm >,   all at variance K00,
    with F0(z) = F(z, z), Fm = (d+ - d-)F, Fp = (d+ + d-)F, Fmm = (d+ - d-)^2 F at z+ = z- = z
    (callables on numpy arrays of z). K = gamma_compose(K00 + ddK0, dK1, ddK2). method 'auto'/'gh'/
    'trapezoid' (fixed nodes; 'auto' = trapezoid) or 'quad'. Returns a float.
    Raises ValueError for K00 <= 0 or a bad method.
    """
    K00 = float(_kernel(K00, "K00", positive=True))
    method, deg = _method(method, deg)
    e = dK1 / (2 * K00)

    def fun(z):
        return (F0(z) + e * z * Fm(z) + ddK0 / (2 * K00) * z * Fp(z)
                + 0.5 * (ddK2 + e * e * (z * z - K00)) * Fmm(z))

    if method == "quad":
        sk = math.sqrt(K00)
        return float(_quad1(lambda x: float(np.asarray(fun(np.array([sk * x])))[0]))[0])
    rule = "hermite" if method == "gh" else "trapezoid"
    return float(gaussian_expectation(lambda z: fun(z[..., 0]), np.array([[K00]]), deg=deg, rule=rule))


# ----------------------------------------------------------------------------- finite angle (5.5)
def _si(a_plus, a_minus):
    ap, am = float(a_plus), float(a_minus)
    return ap, am, (ap * ap + am * am) / 2


def _psi(psi, name="psi"):
    psi = np.asarray(psi, dtype=float)
    if np.any(~np.isfinite(psi)) or np.any(psi < 0) or np.any(psi > np.pi):
        raise ValueError(f"{name} must lie in [0, pi]")
    return psi


def _s_minus_pc(psi):
    """sin psi - psi cos psi, accurate also for small psi (series psi^3/3 - psi^5/30 + ...)."""
    p2 = psi * psi
    series = psi * p2 * (1 / 3 - p2 / 30 + p2 * p2 / 840 - p2**3 / 45360)
    return np.where(psi < 0.1, series, np.sin(psi) - psi * np.cos(psi))


def scale_invariant_two_input(Kd, psi, a_plus=1.0, a_minus=0.0):
    """Closed forms for two inputs of equal norm, K = Kd [[1, cos psi], [cos psi, 1]] (5.146):
      <sigma(z+) sigma(z-)> = Kd (a+ - a-)^2 (sin psi - psi cos psi)/(2 pi) + A2 Kd cos psi   (5.159)
      <sigma'(z+) sigma'(z-)> = A2 - psi (a+ - a-)^2/(2 pi)                                  (5.161)
    (ReLU: Kd (sin psi + (pi - psi) cos psi)/(2 pi) (5.158)). Kd >= 0, psi in [0, pi], broadcast.
    Returns (ss, s1s1). Raises ValueError for bad Kd or psi."""
    Kd, psi = _kernel(Kd, "Kd"), _psi(psi)
    ap, am, A2 = _si(a_plus, a_minus)
    d2 = (ap - am) ** 2
    return (_out(Kd * d2 * _s_minus_pc(psi) / (2 * np.pi) + A2 * Kd * np.cos(psi)),
            _out(A2 - psi * d2 / (2 * np.pi) + 0 * Kd))


def _arccos1m(u):
    """psi from u = 1 - cos psi, accurate near 0 (2 arcsin sqrt(u/2)) and near pi."""
    u = np.clip(u, 0.0, 2.0)
    return np.where(u < 1, 2 * np.arcsin(np.sqrt(u / 2)), np.arccos(1 - u))


def scale_invariant_step(Kd, psi, a_plus=1.0, a_minus=0.0, C_b=0.0, C_W=None):
    """One layer of the non-perturbative two-input recursion of the scale-invariant class:
    Kd' = C_b + C_W A2 Kd (5.147) and Kd' cos psi' = C_b + C_W <sigma(z+) sigma(z-)> (5.160).
    C_W defaults to the critical 1/A2. Kd > 0, psi in [0, pi] (arrays broadcast). Returns (Kd', psi').
    Raises ValueError for bad input."""
    Kd, psi = _kernel(Kd, "Kd", positive=True), _psi(psi)
    ap, am, A2 = _si(a_plus, a_minus)
    C_b = _Cb(C_b)
    C_W = 1 / A2 if C_W is None else _CW(C_W)
    Kn = C_b + C_W * A2 * Kd
    # 1 - cos psi' = (Kn - C_b - C_W <sigma sigma>)/Kn with (5.159), free of cancellation at small psi
    u = C_W * Kd * (A2 * 2 * np.sin(psi / 2) ** 2 - (ap - am) ** 2 * _s_minus_pc(psi) / (2 * np.pi)) / Kn
    return _out(Kn), _out(_arccos1m(u))


def angle_recursion(rho, psi1, L):
    """Polar angle at scale-invariant criticality, cos psi(l+1) = cos psi(l) + rho [sin psi(l) -
    psi(l) cos psi(l)] (5.162), iterated as 1 - cos psi (no cancellation at small psi).
    rho >= 0 (1/pi for ReLU, (5.163)); psi1: angle(s) at layer 1 in [0, pi] (array -> batched).
    Returns (L+1,) + psi1.shape indexed by layer (row 0 nan). Raises ValueError for bad input."""
    rho, L = float(rho), _layers(L)
    if not (np.isfinite(rho) and 0 <= rho <= 2 / np.pi + 1e-15):
        raise ValueError(f"rho must lie in [0, 2/pi] (5.163; 1/pi for ReLU, 2/pi for |z|), got {rho}")
    psi1 = _psi(psi1, "psi1")
    out = np.full((L + 1,) + psi1.shape, np.nan)
    out[1] = psi1
    for l in range(1, L):
        p = out[l]
        out[l + 1] = _arccos1m(2 * np.sin(p / 2) ** 2 - rho * _s_minus_pc(p))
    return out


def angle_asymptotics(rho, ell):
    """Small-angle large-depth solution at scale-invariant criticality:
    psi = 3/(rho l) (5.166); with the log correction derived from psi' = psi - rho psi^2/3 -
    rho^2 psi^3/18: psi = 3/(rho l) [1 - (3/2) log(l)/l + O(1/l)]; K_[2]/Kd = (1 - cos psi)/2
    = 9/(4 rho^2 l^2) (5.168). Returns dict psi, psi_log, K2_over_Kd (arrays of ell's shape).
    Raises ValueError for rho <= 0 or ell < 1."""
    rho = float(rho)
    if not rho > 0:
        raise ValueError("rho must be > 0 (rho = 0 is the linear activation: psi is constant)")
    ell = np.asarray(ell, dtype=float)
    if np.any(ell < 1):
        raise ValueError("ell must be >= 1")
    psi = 3 / (rho * ell)
    return {"psi": _out(psi), "psi_log": _out(psi * (1 - 1.5 * np.log(ell) / ell)),
            "K2_over_Kd": _out(9 / (4 * rho**2 * ell**2))}


def small_angle_step(psi, rho):
    """Linearized angle recursion psi' = psi - rho psi^2/3 (5.164)."""
    psi = np.asarray(psi, dtype=float)
    return _out(psi - rho * psi * psi / 3)


def ddK2_step(ddK2, Kd, rho):
    """Small-angle perpendicular recursion ddK2' = ddK2 - (4 rho/(3 sqrt Kd)) ddK2^(3/2) (5.171),
    the non-analytic correction that the delta expansion misses. ddK2 >= 0, Kd > 0."""
    ddK2, Kd = _kernel(ddK2, "ddK2"), _kernel(Kd, "Kd", positive=True)
    return _out(ddK2 - 4 * rho / (3 * np.sqrt(Kd)) * ddK2**1.5)


def crossover_depth(rho, psi1=None, K0=None, K2=None):
    """Crossover depth from constant to ~1/l^2 decay of K_[2] (5.169): l_cross = 3/(rho psi1), or
    (3/(2 rho)) sqrt(K_[0]/K_[2]) at layer 1 when psi1 is not given. Raises ValueError otherwise."""
    rho = float(rho)
    if not rho > 0:
        raise ValueError("rho must be > 0")
    if psi1 is not None:
        return _out(3 / (rho * _psi(psi1, "psi1")))
    if K0 is None or K2 is None:
        raise ValueError("give psi1, or both K0 = K_[0] and K2 = K_[2] at layer 1")
    return _out(1.5 / rho * np.sqrt(_kernel(K0, "K0") / _kernel(K2, "K2", positive=True)))


# ----------------------------------------------------------------------------- chapter 9: the NTK
_NTK_CLASS_ALIASES = {"scale-invariant": "scale-invariant", "scale_invariant": "scale-invariant",
                      "K*=0": "K*=0", "k0": "K*=0"}


def _ntk_class(cls):
    if not isinstance(cls, str) or cls not in _NTK_CLASS_ALIASES:
        raise ValueError(f"cls must be 'scale-invariant' or 'K*=0' (the names classify() returns; aliases "
                         f"'scale_invariant', 'k0'), got {cls!r}; the half-stable class and 'none' have "
                         "no chapter-9 scaling solution")
    return _NTK_CLASS_ALIASES[cls]


def _real(x, name, nonneg=False):
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x[()]
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x) or (nonneg and x < 0):
        raise ValueError(f"{name} must be a finite number{' >= 0' if nonneg else ''}, got {x}")
    return x


def _p_perp(p_perp):
    if p_perp is None:
        raise ValueError("the K*=0 class needs p_perp = b1/a1 (5.99): 1 for tanh and sin; "
                         "k0_coefficients(act) gives (a1, a2, b1)")
    return _real(p_perp, "p_perp")


def ntk_exponents(cls, p_perp=None) -> dict:
    """Critical exponents O ~ l^(-p_O) (9.22) of the single-input NTK statistics at criticality.

    cls: 'scale-invariant' or 'K*=0' (the names :func:`classify` returns; 'scale_invariant' and 'k0'
    are accepted too). Returns a dict of floats p0 (kernel), pV (four-point vertex), pTheta (frozen
    NTK), pD, pF (NTK-preactivation cross-correlations), pA, pB (NTK variance):
      scale-invariant (9.53): p0 = 0, pV = -1, pTheta = -1, pD = pF = -2, pA = pB = -3;
      K*=0 (9.72), text after (9.86): p0 = 1, pV = 1, pTheta = pD = pF = p_perp - 1,
                                      pA = pB = 2 p_perp - 3,
    for the learning rates of (9.44) (uniform) and (9.70) (lambda_b ~ l^-p_perp, lambda_W ~ l^(1-p_perp))
    respectively. They obey the scaling laws (9.27) pA - 2 pTheta = pB - 2 pTheta = pD - pTheta - p0
    = pF - pTheta - p0 = -1 (and pV - 2 p0 = -1, (5.129)): every normalized NTK statistic grows like l/n.
    p_perp = b1/a1 (5.99) is required for 'K*=0' (1 for tanh, sin) and ignored for 'scale-invariant'
    (chi_perp = 1 exactly). Raises ValueError for another class or a missing/non-finite p_perp.
    """
    c = _ntk_class(cls)
    if c == "scale-invariant":
        return dict(p0=0.0, pV=-1.0, pTheta=-1.0, pD=-2.0, pF=-2.0, pA=-3.0, pB=-3.0)
    p = _p_perp(p_perp)
    return dict(p0=1.0, pV=1.0, pTheta=p - 1, pD=p - 1, pF=p - 1, pA=2 * p - 3, pB=2 * p - 3)


def equivalence_learning_rates(cls, L, lt_b, lt_W, p_perp=1.0):
    """Per-layer learning rates of the equivalence principle (§9.4): every layer and both parameter
    groups contribute parametrically equally to the frozen NTK, and Theta^(L) is O(1) in L.

      scale-invariant (9.94): lambda_b^(l) = lt_b / L,  lambda_W^(l) = lt_W / L;
      K*=0 (9.95):            lambda_b^(l) = lt_b l^(-p_perp) L^(p_perp - 1),
                              lambda_W^(l) = lt_W (L/l)^(p_perp - 1);
      K*=0, p_perp = 1 (tanh, sin) (9.96): lambda_b^(l) = lt_b / l,  lambda_W^(l) = lt_W.
    At scale-invariant criticality this gives exactly Theta^(L) = lt_b + lt_W A2 K* for every L; in the
    K*=0 class Theta^(L) -> lt_b + lt_W sigma_1^2/(-a1) (9.71) at large L (1.5 for tanh, lt = (1, 1)).
    The per-weight step is eta lambda_W^(l) / n_{l-1} (8.6), with n_0 in the first layer.

    cls: 'scale-invariant' or 'K*=0' (see :func:`ntk_exponents`); L: depth >= 1; lt_b, lt_W >= 0:
    the depth-independent rates; p_perp = b1/a1 (only used for 'K*=0').
    Returns (lam_b, lam_W), arrays of shape (L,) with entry l-1 = layer l (l = 1..L, the layer that
    owns the parameters), the layout of :class:`dlt.networks.MLP`'s lambda_b / lambda_W.
    Raises ValueError for an unknown class, L < 1, negative or non-finite rates, a non-finite p_perp.
    """
    c, L = _ntk_class(cls), _layers(L)
    lt_b, lt_W = _real(lt_b, "lt_b", nonneg=True), _real(lt_W, "lt_W", nonneg=True)
    if c == "scale-invariant":
        return np.full(L, lt_b / L), np.full(L, lt_W / L)
    p = _p_perp(p_perp)
    l = np.arange(1, L + 1, dtype=float)
    return lt_b * l**-p * float(L) ** (p - 1), lt_W * (L / l) ** (p - 1)


def _vector(x, name, n=None, nonneg=False):
    try:
        x = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D array of real numbers") from None
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {x.shape}")
    if n is not None and x.size not in n:
        raise ValueError(f"{name} must have length {' or '.join(map(str, n))}, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    if nonneg and np.any(x < 0):
        raise ValueError(f"{name} must be >= 0, got min {x.min():g}")
    return x


def frozen_ntk_formal(lam_b, lam_W, g_prev, chi_perp, contributions=False):
    """Frozen NTK from the formal solution (9.28) of the single-input recursion (9.6)-(9.7):

      Theta^(l) = sum_{l'=1}^{l} [lambda_b^(l') + lambda_W^(l') g^(l'-1)] prod_{l''=l'}^{l-1} chi_perp^(l'').

    Index conventions (all 1-D, entry l-1 = layer l, as in :class:`dlt.networks.MLP`):
      lam_b, lam_W (L,): lam_b[l-1] = lambda_b^(l), the rates of the parameters of layer l (>= 0);
      g_prev (L,):       g_prev[l-1] = g^(l-1) = g(K^(l-1)) = <sigma^2>_{K^(l-1)}, with
                         g^(0) = |x|^2 / n_0 (the first layer sees the input, (9.7));
      chi_perp (L,) or (L-1,): chi_perp[l-1] = chi_perp^(l) = C_W <sigma'^2>_{K^(l)}; only
                         chi_perp^(1..L-1) enter, an L-th entry is ignored.
    The product is the chain-rule factor of (9.30), (9.93) from layer l' to layer l.
    Returns Theta (L,), Theta[l-1] = Theta^(l); with contributions=True also the (L, L) lower-triangular
    matrix C[l-1, l'-1] = contribution of the parameters of layer l' to Theta^(l) (rows sum to Theta;
    C[L-1] / Theta[L-1] are the per-layer shares of the output NTK; memory L^2 floats).
    Raises ValueError for empty, non-finite or mismatched inputs, negative rates or g, chi_perp < 0;
    TypeError for non-numeric input.
    """
    lam_b = _vector(lam_b, "lam_b", nonneg=True)
    L = lam_b.size
    lam_W = _vector(lam_W, "lam_W", (L,), nonneg=True)
    g_prev = _vector(g_prev, "g_prev", (L,), nonneg=True)
    if L == 1 and np.asarray(chi_perp).size == 0:
        chi = np.zeros(0)
    else:
        chi = _vector(chi_perp, "chi_perp", (L, L - 1) if L > 1 else (1,), nonneg=True)[: L - 1]
    c = lam_b + lam_W * g_prev            # additive contribution of layer l'
    theta = np.empty(L)
    C = np.zeros((L, L)) if contributions else None
    prod = np.zeros(0)                    # prod[l'-1] = prod_{l''=l'}^{l-1} chi^(l'') for l' < l
    for l in range(1, L + 1):
        if l > 1:
            prod = np.append(prod * chi[l - 2], chi[l - 2])
        row = np.append(prod, 1.0) * c[:l]
        theta[l - 1] = row.sum()
        if contributions:
            C[l - 1, :l] = row
    return (theta, C) if contributions else theta


def _ell(ell, integer=False):
    try:
        ell = np.asarray(ell, dtype=float)
    except (TypeError, ValueError):
        raise TypeError("ell must be a number or an array of numbers (layer indices)") from None
    if np.any(~np.isfinite(ell)) or np.any(ell < 1):
        raise ValueError("ell must be finite and >= 1 (the book's layer index)")
    if integer and np.any(ell != np.round(ell)):
        raise ValueError("ell must hold integers (layers l = 1, 2, ...): the exact sums are over layers")
    return ell


def scale_invariant_ntk(ell, a_plus, a_minus, lam_b, lam_W, K_star) -> dict:
    """Exact single-input NTK statistics at scale-invariant criticality C_b = 0, C_W = 1/A2 (9.40),
    with uniform learning rates lambda_b, lambda_W (§9.2).

    sigma = a_plus z (z >= 0), a_minus z (z < 0) (9.31); A2, A4 from (9.39) (a_plus may instead be a
    scale-invariant activation, then a_minus is ignored); r = A4/A2^2, theta1 = lambda_b + lambda_W A2 K*,
    K* = |x|^2/(n_0 A2) (9.41) the (layer-independent) kernel. The exact solutions of (9.6) and
    (9.45)-(9.48) from V = D = F = B = A = 0 at l = 1 (9.17):
      V     = (l-1)(3r-1) K*^2                                                    (9.42)
      Theta = theta1 l                                                            (9.44)
      D     = l(l-1)/2 d,  d = (r-1) lambda_b K* + (4r-2) lambda_W A2 K*^2           (9.49)
      F     = l(l-1)/2 r theta1 K*                                                (9.50)
      B     = l(l-1)(2l-1)/6 r theta1^2                                           (9.51)
      A     = [(lambda_W A2)^2 (3r-1) K*^2 + 2(r-1) lambda_W A2 K* theta1] l(l-1)/2
              + lambda_W A2 d l(l-1)(l-2)/3 + (r-1) theta1^2 l(l-1)(2l-1)/6       ((9.48) summed exactly)
      A_leading = l^3/3 [(r-1) lambda_b^2 + 3(r-1) lambda_b lambda_W A2 K* + (5A4 - 3A2^2) lambda_W^2 K*^2]
                                                                                  (9.52, leading term)
    ell: integer layer(s) >= 1 (scalar or array). Returns a dict K, V, Theta, D, F, B, A, A_leading of
    floats / arrays of ell's shape (all normalized as in (8.67), (8.82): the tensors carry 1/n_{l-1}).
    Raises ValueError for non-integer or < 1 layers, a+ = a- = 0, negative rates or K* < 0.
    """
    ell = _ell(ell, integer=True)
    A2, A4, _ = scale_invariant_constants(a_plus, a_minus)
    lb, lw = _real(lam_b, "lam_b", nonneg=True), _real(lam_W, "lam_W", nonneg=True)
    Ks = _real(K_star, "K_star", nonneg=True)
    r, th1, l = A4 / A2**2, lb + lw * A2 * Ks, ell
    d = (r - 1) * lb * Ks + (4 * r - 2) * lw * A2 * Ks**2
    s1, s2, s3 = l * (l - 1) / 2, l * (l - 1) * (2 * l - 1) / 6, l * (l - 1) * (l - 2) / 3
    out = {
        "K": Ks + 0 * l,
        "V": (l - 1) * (3 * r - 1) * Ks**2,
        "Theta": th1 * l,
        "D": s1 * d,
        "F": s1 * r * th1 * Ks,
        "B": s2 * r * th1**2,
        "A": ((lw * A2) ** 2 * (3 * r - 1) * Ks**2 + 2 * (r - 1) * lw * A2 * Ks * th1) * s1
        + lw * A2 * d * s3 + (r - 1) * th1**2 * s2,
        "A_leading": l**3 / 3 * ((r - 1) * lb**2 + 3 * (r - 1) * lb * lw * A2 * Ks
                                 + (5 * A4 - 3 * A2**2) * lw**2 * Ks**2),
    }
    return {k: _out(v) for k, v in out.items()}


def kstar0_ntk_asymptotics(ell, act, lt_b, lt_W) -> dict:
    """Leading large-depth single-input NTK statistics of the K*=0 class at criticality C_b = 0,
    C_W = 1/sigma_1^2 (9.56), with the learning rates lambda_b^(l) = lt_b l^-p_perp,
    lambda_W^(l) = lt_W l^(1-p_perp) (9.70) (l: the layer that owns the parameters, from 1):

      K     = 1/((-a1) l)                              (9.65)
      V     = 2/(3 a1^2 l)                             (9.66)
      Theta = Lam l^(1-p_perp)                         (9.71)
      F     = Lam/((5-p_perp)(-a1)) l^(1-p_perp)       (9.81)
      B     = Lam^2/3 l^(3-2p_perp)                    (9.82)
      D     = -2 Lam'/(9(-a1)) l^(1-p_perp)            (9.84)   (negative for tanh: never take its log)
      A     = 4 Lam'^2/27 l^(3-2p_perp)                (9.86)
    with a1, b1 from (9.60)-(9.61) (:func:`k0_coefficients`), p_perp = b1/a1 (5.99),
    Lam = lt_b + lt_W sigma_1^2/(-a1) and Lam' = p_perp lt_b + (p_perp - 1) lt_W sigma_1^2/(-a1). For
    p_perp = 1 (tanh, sin) D and A do not depend on lt_W (footnote 4). Relative corrections are
    O(log l / l): measured <= 0.5% at l = 1e4 for tanh and sin (K1 = 1), 1.4% for z + z^2/2 - z^3/3;
    finite-depth values come from iterating (9.6), (9.13)-(9.16) (dlt.ntk). Higher orders of K and V:
    :func:`k0_asymptotics`. Avoid rates with Lam' ~ 0, where D and A converge very slowly.

    act: an activation (name, Activation or jax callable) or its Taylor data (sigma_0, sigma_1, ...)
    (5.80), from which sigma_1..sigma_3 are used; ell: depth(s) >= 1 (array); lt_b, lt_W >= 0.
    Returns a dict of K, V, Theta, D, F, B, A (floats / arrays of ell's shape) and the scalars p_perp,
    a1, b1, Lambda, Lambda_prime.
    Raises ValueError for an activation outside the K*=0 class: scale-invariant or kinked, sigma_0 != 0
    or sigma_1 = 0 (no K* = 0 fixed point, (9.55)), a1 >= 0 (K* = 0 not attracting; the footnote-19
    case a1 = 0 has other exponents), p_perp >= 5 (F is then dominated by its homogeneous l^-4 solution);
    and for bad ell or rates.
    """
    ell = _ell(ell)
    lt_b, lt_W = _real(lt_b, "lt_b", nonneg=True), _real(lt_W, "lt_W", nonneg=True)
    if isinstance(act, (list, tuple, np.ndarray)):
        t = np.zeros(6)
        tt = np.asarray(act, dtype=float).ravel()[:6]
        t[: tt.size] = tt
        name = "the given Taylor series"
    else:
        act = _act(act)
        name = act.name
        if act.scale_invariant:
            raise ValueError(f"{name} is in the scale-invariant class, not K*=0: use scale_invariant_ntk")
        t = taylor_coefficients(act, 5)        # raises for the perceptron
    if t[0] != 0 or t[1] == 0:
        raise ValueError(f"{name} is not in the K*=0 class: it needs sigma(0) = 0 and sigma'(0) != 0 (9.55), "
                         f"got sigma_0 = {t[0]:g}, sigma_1 = {t[1]:g}")
    a1, _, b1 = k0_coefficients(t)
    if not a1 < 0:
        raise ValueError(f"{name} is not in the K*=0 class: the fixed point K* = 0 attracts only for "
                         f"-a1 > 0 (5.92), got a1 = {a1:g}")
    p, ma1, s12 = b1 / a1, -a1, t[1] ** 2
    if p >= 5:
        raise ValueError(f"p_perp = {p:g} >= 5: the asymptotic form (9.81) of F does not apply")
    lam = lt_b + lt_W * s12 / ma1
    lamp = p * lt_b + (p - 1) * lt_W * s12 / ma1
    l = ell
    out = {
        "K": 1 / (ma1 * l),
        "V": 2 / (3 * a1**2 * l),
        "Theta": lam * l ** (1 - p),
        "D": -2 * lamp / (9 * ma1) * l ** (1 - p),
        "F": lam / ((5 - p) * ma1) * l ** (1 - p),
        "B": lam**2 / 3 * l ** (3 - 2 * p),
        "A": 4 * lamp**2 / 27 * l ** (3 - 2 * p),
    }
    out = {k: _out(v) for k, v in out.items()}
    out.update(p_perp=p, a1=a1, b1=b1, Lambda=lam, Lambda_prime=lamp)
    return out


def gradient_factor(act, C_b, C_W, K1, L, method="auto", deg=DEG) -> np.ndarray:
    """Leading-order chain-rule factor of the exploding/vanishing gradient problem (§9.4):

      E (1/n_L) sum_{i,j} (dz^(L)_i / dz^(l)_j)^2 = prod_{l''=l}^{L-1} chi_perp(K^(l''))   (9.90), (9.93),

    i.e. the product of (9.30) that multiplies layer l's contribution to the frozen NTK (9.28). The
    kernel follows the chapter-5 recursion K^(l+1) = C_b + C_W g(K^(l)) from K^(1) = K1 = C_b +
    C_W |x|^2/n_0 (5.3), with uniform C_b, C_W (9.1). Returns an array (L,) with entry l-1 = layer l
    (l = 1..L); the last entry (l = L) is 1. Linear sigma: C_W^(L-l); ReLU: (C_W/2)^(L-l).
    method/deg: the Gaussian expectations, as in :func:`single_input_flow`.
    Raises ValueError for bad hyperparameters, K1 <= 0, L < 1, the perceptron (sigma' is a delta
    function); warns and returns nan from where the kernel stops being finite (off criticality).
    """
    act, C_b, C_W, L = _act(act), _Cb(C_b), _CW(C_W), _layers(L)
    if not act.smooth and not act.scale_invariant:
        raise ValueError(f"gradient_factor needs sigma' as a function; that of {act.name} is a delta "
                         "function")
    with warnings.catch_warnings():  # the vertex V of the same flow may overflow first; only K is used
        warnings.simplefilter("ignore", RuntimeWarning)
        K = single_input_flow(act, C_b, C_W, K1, L, method=method, deg=deg)["K"][1:L]
    good = np.isfinite(K) & (K < 1e300)
    if not good.all():
        warnings.warn(f"gradient_factor: the kernel is no longer finite at layer {1 + int(np.argmin(good))} "
                      "(it diverges off criticality); the factors that need it are nan", RuntimeWarning,
                      stacklevel=2)
    chi = np.full(L - 1, np.nan)          # chi[l-1] = chi_perp^(l), l = 1..L-1
    chi[good] = chi_perp(act, K[good], C_W, method=method, deg=deg)
    out = np.ones(L)
    out[: L - 1] = np.cumprod(chi[::-1])[::-1]
    return out


# ----------------------------------------------------------------------------- chapter 10: the NTK's
# delta expansion and finite angle (generalization near a training input)
def _rates(x, L, name):
    """Per-layer learning rates: a scalar or an array (L,) with entry l-1 = layer l -> array (L,)."""
    try:
        a = np.atleast_1d(np.asarray(x, dtype=float))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array (L,) of numbers") from None
    if a.ndim != 1 or a.size not in (1, L) or not np.all(np.isfinite(a)) or np.any(a < 0):
        got = repr(x) if a.size <= 8 else f"an array of shape {np.shape(x)}"
        raise ValueError(f"{name} must be a finite number >= 0 or an array of L = {L} of them (entry l-1 = "
                         f"layer l), got {got}")
    return np.broadcast_to(a, (L,)).copy()


def ntk_delta_recursion(act, C_W, lam_b, lam_W, K00, dK1, ddK2, Theta00, dTheta1, ddTheta2, L, *,
                        C_b=0.0, method="auto", deg=DEG) -> dict:
    """Delta expansion of the frozen NTK of two nearby inputs x_pm = x_0 pm dx/2 (§10.3.1), layer by
    layer, with the kernel's (5.46)-(5.48) (:func:`delta_recursions`). In the gamma basis (10.58)-(10.61)
    Theta_[0] = Theta00 + O(delta^2), Theta_[1] = dTheta1 + O(delta^3), Theta_[2] = ddTheta2 + O(delta^4),
    and (K = K00^(l), expectations at variance K, rates of layer l+1):

      Theta00' = lambda_b + lambda_W <s s> + chi_perp Theta00                                   (9.5)
      dTheta1' = chi_perp dTheta1 + [lambda_W <z s s'>/K + C_W <z s' s''>/K Theta00] dK1         (10.66)
      ddTheta2' = chi_perp ddTheta2 + lambda_W [<s' s'> ddK2 + <s'^2 (z^2 - K)>/(4K^2) dK1^2]
                  + C_W [<s'' s''> ddK2 + <s''^2 (z^2 - K)>/(4K^2) dK1^2] Theta00
                  + C_W <z s' s''>/(2K) dK1 dTheta1                                             (10.70)

    (lambda_W <z s s'>/K = lambda_W chi_par / C_W, lambda_W <s' s'> = lambda_W chi_perp / C_W). For equal
    norms (dK1 = dTheta1 = 0) the last line is the book's (10.70); the dK1^2 and dK1 dTheta1 terms are
    the ones footnote 32 mentions, derived here by projecting (10.67) on gamma^[2] ((5.44) applied to
    sigma and sigma'). Smooth activations only: <s'' s''> is singular at a kink (scale-invariant class:
    use :func:`ntk_finite_angle`).

    Layer-1 values: (K00, dK1, ddK2) from :func:`delta_initial` (x0, dx, C_b^(1), C_W^(1)) and, by the
    same bilinear form (8.23), (Theta00, dTheta1, ddTheta2) = (lambda_b^(1) + lambda_W^(1) |x0|^2 / n_0,
    lambda_W^(1) x0.dx / n_0, lambda_W^(1) |dx|^2 / (4 n_0)). ``lam_b``, ``lam_W``: numbers or arrays
    (L,) with entry l-1 = layer l (entry 0 is not used: the layer-1 NTK is given); ``C_W`` > 0, ``C_b``
    >= 0 uniform; ``method``, ``deg``: the Gaussian expectations, as in :func:`delta_recursions`.

    Returns a dict of arrays (L+1,) indexed by layer (entry 0 nan): K00, dK1, ddK2, Theta00, dTheta1,
    ddTheta2. Raises ``ValueError`` for a kinked activation, K00 <= 0, L < 1 or bad hyperparameters;
    warns (and fills nan) where the kernel diverges."""
    act = _act(act)
    if not act.smooth:
        raise ValueError(f"{act.name} has a kink: <sigma'' sigma''> in (10.70) is singular; for the "
                         "scale-invariant class use ntk_finite_angle (10.82)-(10.89)")
    C_b, C_W, L = _Cb(C_b), _CW(C_W), _layers(L)
    lb, lw = _rates(lam_b, L, "lam_b"), _rates(lam_W, L, "lam_W")
    kern = delta_recursions(act, C_b, C_W, K00, dK1, ddK2, L, method, deg)
    th = np.full((L + 1, 3), np.nan)
    th[1] = [float(_real(Theta00, "Theta00", nonneg=True)), _real(dTheta1, "dTheta1"),
             _real(ddTheta2, "ddTheta2")]
    loc = _Local(act, ["ss", "xss1", "s1s1", "hd", "s2s2", "xs1s2", "hd2"], method, deg)
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(1, L):
            k, d1, d2 = kern[l]
            t0, t1, t2 = th[l]
            if not (np.isfinite(k) and k > 0 and np.all(np.isfinite(th[l]))):
                break
            m, sk = loc(k), math.sqrt(k)
            b, w = lb[l], lw[l]
            chi = C_W * m["s1s1"]
            th[l + 1] = (b + w * m["ss"] + chi * t0,
                         chi * t1 + (w * m["xss1"] + C_W * m["xs1s2"] * t0) / sk * d1,
                         chi * t2 + w * (m["s1s1"] * d2 + m["hd"] / (4 * k) * d1 * d1)
                         + C_W * (m["s2s2"] * d2 + m["hd2"] / (4 * k) * d1 * d1) * t0
                         + C_W * m["xs1s2"] / (2 * sk) * d1 * t1)
    return {"K00": kern[:, 0], "dK1": kern[:, 1], "ddK2": kern[:, 2],
            "Theta00": th[:, 0], "dTheta1": th[:, 1], "ddTheta2": th[:, 2]}


def ntk_finite_angle(L, a_plus, a_minus, C_W, G_d, cos_psi0, lam_b, lam_W, *, C_b=0.0) -> dict:
    """Frozen NTK of two inputs of equal norm for scale-invariant sigma (a+ z, z >= 0; a- z, z < 0) at a
    finite angle, eqs. (10.82)-(10.89): K = K_d (1, cos psi; cos psi, 1), Theta = Theta_d (1, cos zeta;
    cos zeta, 1), with (chi = C_W A2; A2, rho from :func:`scale_invariant_constants`; rates of layer l+1)

      K_d' = C_b + chi K_d,  K_d' cos psi' = C_b + C_W <s+ s->                     (5.147), (5.160)
      Theta_d' = chi Theta_d + lambda_b + lambda_W A2 K_d                          (10.88)
      Theta_d' cos zeta' = chi (1 - rho psi) Theta_d cos zeta + lambda_b
                           + lambda_W A2 K_d [cos psi + rho (sin psi - psi cos psi)]  (10.89)

    from layer 1: K_d = C_b + C_W G_d, cos psi = (C_b + C_W G_d cos psi0)/K_d (4.8) and Theta_d =
    lambda_b + lambda_W G_d, Theta_d cos zeta = lambda_b + lambda_W G_d cos psi0 (8.23). The angles are
    carried as 1 - cos (no cancellation at small angles; Theta_d (1 - cos zeta) = Theta_++ - Theta_+- obeys
    a recursion of its own), so tiny angles and deep networks (L ~ 1e5) are accurate. At criticality with
    the equivalence rates lambda = lt / L: Theta_d = (lt_b + lt_W A2 K_d) l / L (10.91), cos zeta -> 1/4
    (10.93), robustness cos zeta - 1 -> -3/4 (10.94), variance -> 9/16 K_d (10.95) (ReLU; the approach is
    slow: 0.36 at L = 10). Deep linear (rho = 0): (10.96)-(10.98).

    ``L`` depth >= 1; ``a_plus``, ``a_minus`` slopes (or a_plus a scale-invariant activation); ``C_W`` > 0,
    ``C_b`` >= 0; ``G_d`` = |x_pm|^2 / n_0 > 0; ``cos_psi0`` in [-1, 1], the cosine of the angle between the
    two inputs; ``lam_b``, ``lam_W`` numbers or arrays (L,) (entry l-1 = layer l).

    Returns a dict of arrays (L+1,) indexed by layer (entry 0 nan): Kd, psi, Theta_d, cos_zeta, zeta, and
    robustness = cos zeta - 1 (10.57) and variance = K_d (1 - 2 cos zeta cos psi + cos^2 zeta), the exact
    (10.63) for training input + and test input -. Raises ``ValueError`` for bad input."""
    L = _layers(L)
    A2, _, rho = scale_invariant_constants(a_plus, a_minus)
    if isinstance(a_plus, (str, Activation)):
        act = _act(a_plus)
        a_plus, a_minus = act.a_plus, act.a_minus
    C_b, C_W = _Cb(C_b), _CW(C_W)
    G_d, c0 = _real(G_d, "G_d"), _real(cos_psi0, "cos_psi0")
    if G_d <= 0:
        raise ValueError(f"G_d = |x|^2 / n_0 must be > 0, got {G_d}")
    if not -1 <= c0 <= 1:
        raise ValueError(f"cos_psi0 must lie in [-1, 1], got {c0}")
    lb, lw = _rates(lam_b, L, "lam_b"), _rates(lam_W, L, "lam_W")
    Kd, psi, Th, D = (np.full(L + 1, np.nan) for _ in range(4))
    Kd[1] = C_b + C_W * G_d
    psi[1] = _arccos1m(C_W * G_d * (1 - c0) / Kd[1])
    Th[1], D[1] = lb[0] + lw[0] * G_d, lw[0] * G_d * (1 - c0)
    chi = C_W * A2
    d2 = (a_plus - a_minus) ** 2
    for l in range(1, L):
        Kd[l + 1], psi[l + 1] = scale_invariant_step(Kd[l], psi[l], a_plus, a_minus, C_b, C_W)
        one_m = Kd[l] * (A2 * 2 * np.sin(psi[l] / 2) ** 2 - d2 * _s_minus_pc(psi[l]) / (2 * np.pi))
        Th[l + 1] = chi * Th[l] + lb[l] + lw[l] * A2 * Kd[l]
        D[l + 1] = chi * D[l] + chi * rho * psi[l] * (Th[l] - D[l]) + lw[l] * one_m   # A2 K_d - <s+ s->
    with np.errstate(invalid="ignore", divide="ignore"):
        u = D / Th
    cz = 1 - u
    return {"Kd": Kd, "psi": psi, "Theta_d": Th, "cos_zeta": cz, "zeta": _arccos1m(np.nan_to_num(u)) + 0 * u,
            "robustness": -u, "variance": Kd * (1 - 2 * cz * np.cos(psi) + cz * cz)}


def robustness_asymptotic_kstar0(act, lt_b, lt_W, delta2, L, *, rates="equivalence"):
    """Leading large-depth robustness -2 ddTheta_[2]^(L) / Theta_00^(L) (10.62) of a K* = 0 network at
    criticality (C_b = 0, C_W = 1/sigma_1^2), with ddK_[2]^(l) = delta2 / l^p_perp (10.71) (delta2 =
    lim l^p_perp ddK_[2]^(l), e.g. from :func:`delta_recursions`; p_perp = b1/a1):

      rates="equivalence", lambda_b = lt_b l^-p L^(p-1), lambda_W = lt_W (L/l)^(p-1) (10.74):
          2 delta2/(p - 2) [lt_W s1^2 / (lt_b + lt_W s1^2/(-a1)) + s2^2/s1^2] L^(1-p)     (10.78)
      rates="constant", lambda_b = lt_b, lambda_W = lt_W in every layer, sigma_2 = 0 (odd sigma, p = 1):
          -4 [lt_W s1^2 + (-a1) lt_b / 2] delta2 / (lt_b L)                                 (10.81) corrected

    The book's (10.80)-(10.81) keep only lt_W s1^2: with Theta_00 = lt_b l/2 (10.79) growing, the term
    C_W <s'' s''> Theta_00 ddK_[2] of (10.70) is O(1/l) as well (<s'' s''> = s3^2 K00, K00 = 1/(-a1 l)),
    and adds (-a1) lt_b / 2 to ddTheta_[2] (tanh: ddTheta_[2] -> (lt_W + lt_b) delta2, not lt_W delta2).
    Corrections are O(log L / L) relative.

    ``act``: a K* = 0 activation or its Taylor data (as in :func:`kstar0_ntk_asymptotics`); ``lt_b``,
    ``lt_W`` >= 0 (lt_b > 0 for constant rates); ``delta2`` >= 0; ``L`` depth(s) >= 1. Returns a float or
    an array of L's shape. Raises ``ValueError`` for an activation outside the K* = 0 class, an unknown
    ``rates``, constant rates with sigma_2 != 0 or lt_b = 0, or both rates zero."""
    info = kstar0_ntk_asymptotics(L, act, lt_b, lt_W)
    if isinstance(act, (list, tuple, np.ndarray)):
        t = np.zeros(3)
        tt = np.asarray(act, dtype=float).ravel()[:3]
        t[: tt.size] = tt
    else:
        t = taylor_coefficients(_act(act), 2)
    s1, s2 = t[1], t[2]
    p, a1 = info["p_perp"], info["a1"]
    d2, Lf = _real(delta2, "delta2", nonneg=True), _ell(L)
    if rates == "equivalence":
        if info["Lambda"] == 0:
            raise ValueError("lt_b = lt_W = 0: the NTK vanishes")
        bracket = float(lt_W) * s1 * s1 / info["Lambda"] + s2 * s2 / (s1 * s1)
        return _out(2 * d2 / (p - 2) * bracket * Lf ** (1 - p))
    if rates == "constant":
        if s2 != 0:
            raise ValueError("the constant-rate asymptotics (10.79)-(10.81) are for sigma_2 = 0 (odd sigma, "
                             "p_perp = 1); iterate ntk_delta_recursion for other activations")
        if not lt_b > 0:
            raise ValueError("constant rates need lt_b > 0 (Theta_00 = lt_b l / 2 (10.79))")
        return _out(-4 * (float(lt_W) * s1 * s1 + (-a1) * lt_b / 2) * d2 / (lt_b * Lf))
    raise ValueError(f"rates must be 'equivalence' (10.74) or 'constant' (10.79), got {rates!r}")
