"""Activation functions (book §2.2, eqs. (2.9)-(2.18)) and their Gaussian expectations.

One registry, :func:`get_activation`, returns an :class:`Activation` holding the function and its
first and second derivatives. Each of them accepts numpy arrays (returns numpy) and JAX arrays or
tracers (returns JAX), so the same object drives the numpy ensembles and the JAX autodiff.

:func:`gauss_expect` computes ``<sigma^(d1)(z1) sigma^(d2)(z2)>_K``, the Gaussian expectations that
every kernel recursion is built from. Closed forms are used where they exist: the linear and
scale-invariant (ReLU / leaky ReLU) family (arc-cosine kernel), erf (arcsine kernel) and sin. Those
are exact at kinks, where Gauss-Hermite quadrature does not converge. Everything else goes
through :func:`dlt.gaussian.gaussian_expectation`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import scipy.special as ss

from .gaussian import gaussian_expectation

__all__ = ["Activation", "get_activation", "gauss_expect", "closed_form_expectation", "closed_form_pair",
           "ACTIVATION_NAMES"]


class _NP:  # numpy namespace with the special functions we need
    erf, expit, ndtr = ss.erf, ss.expit, ss.ndtr
    where, maximum, minimum, exp, tanh, sin, cos, logaddexp = (
        np.where, np.maximum, np.minimum, np.exp, np.tanh, np.sin, np.cos, np.logaddexp)
    asarray, zeros_like, ones_like = np.asarray, np.zeros_like, np.ones_like


class _JNP:
    erf, expit, ndtr = jss.erf, jss.expit, jss.ndtr
    where, maximum, minimum, exp, tanh, sin, cos, logaddexp = (
        jnp.where, jnp.maximum, jnp.minimum, jnp.exp, jnp.tanh, jnp.sin, jnp.cos, jnp.logaddexp)
    asarray, zeros_like, ones_like = jnp.asarray, jnp.zeros_like, jnp.ones_like


def _xp(z):
    return _JNP if isinstance(z, jax.Array) else _NP


@dataclass(frozen=True)
class Activation:
    """An activation function sigma with derivatives.

    Attributes: ``name``; ``params`` (tuple of (key, value)); ``f``, ``df``, ``ddf`` (callables on
    numpy or JAX arrays); ``a_plus``/``a_minus`` (slopes, only for the scale-invariant family
    (2.14), else ``None``). For kinked activations ``df``/``ddf`` are the derivatives away from the
    kink (the perceptron's and ReLU's delta functions at 0 are not represented).
    """
    name: str
    f: Callable = field(repr=False, compare=False)   # equality and hashing go by name and params,
    df: Callable = field(repr=False, compare=False)  # so equal descriptions share JAX compilations
    ddf: Callable = field(repr=False, compare=False)
    params: tuple = ()
    a_plus: float | None = None
    a_minus: float | None = None

    @property
    def scale_invariant(self) -> bool:
        """True for the family sigma(lambda z) = lambda sigma(z), lambda > 0 (eq. (2.13)-(2.14))."""
        return self.a_plus is not None

    @property
    def smooth(self) -> bool:
        """False where sigma or sigma' has a kink (quadrature is then inaccurate)."""
        return self.name not in ("relu", "leaky_relu", "scale_invariant", "perceptron")

    def __call__(self, z):
        return self.f(z)


def _scale_invariant(name, a_plus, a_minus, params=()):
    a_plus, a_minus = float(a_plus), float(a_minus)

    def f(z):
        x = _xp(z)
        return a_plus * x.maximum(z, 0) + a_minus * x.minimum(z, 0)

    def df(z):
        return _xp(z).where(z > 0, a_plus, a_minus) + 0.0 * z

    def ddf(z):
        return 0.0 * z

    return Activation(name, f, df, ddf, params, a_plus, a_minus)


def _linear(a=1.0):
    return _scale_invariant("linear", a, a, (("a", float(a)),))


def _relu():
    return _scale_invariant("relu", 1.0, 0.0)


def _leaky_relu(a=0.01):
    return _scale_invariant("leaky_relu", 1.0, a, (("a", float(a)),))


def _scale_inv(a_plus=1.0, a_minus=0.0):
    return _scale_invariant("scale_invariant", a_plus, a_minus,
                            (("a_plus", float(a_plus)), ("a_minus", float(a_minus))))


def _perceptron():
    return Activation("perceptron", lambda z: _xp(z).where(z >= 0, 1.0, 0.0) + 0.0 * z,
                      lambda z: 0.0 * z, lambda z: 0.0 * z)


def _sigmoid():
    def df(z):
        s = _xp(z).expit(z)
        return s * (1 - s)

    def ddf(z):
        s = _xp(z).expit(z)
        return s * (1 - s) * (1 - 2 * s)

    return Activation("sigmoid", lambda z: _xp(z).expit(z), df, ddf)


def _tanh():
    def df(z):
        return 1 - _xp(z).tanh(z) ** 2

    def ddf(z):
        t = _xp(z).tanh(z)
        return -2 * t * (1 - t**2)

    return Activation("tanh", lambda z: _xp(z).tanh(z), df, ddf)


def _sin():
    return Activation("sin", lambda z: _xp(z).sin(z), lambda z: _xp(z).cos(z),
                      lambda z: -_xp(z).sin(z))


def _softplus():
    def df(z):
        return _xp(z).expit(z)

    def ddf(z):
        s = _xp(z).expit(z)
        return s * (1 - s)

    return Activation("softplus", lambda z: _xp(z).logaddexp(0.0, z), df, ddf)


def _swish():
    def df(z):
        s = _xp(z).expit(z)
        return s + z * s * (1 - s)

    def ddf(z):
        s = _xp(z).expit(z)
        return 2 * s * (1 - s) + z * s * (1 - s) * (1 - 2 * s)

    return Activation("swish", lambda z: z * _xp(z).expit(z), df, ddf)


_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)


def _gelu():
    def phi(z):
        return _INV_SQRT_2PI * _xp(z).exp(-0.5 * z * z)

    return Activation("gelu", lambda z: z * _xp(z).ndtr(z),
                      lambda z: _xp(z).ndtr(z) + z * phi(z), lambda z: (2 - z * z) * phi(z))


def _erf():
    c = 2 / math.sqrt(math.pi)
    return Activation("erf", lambda z: _xp(z).erf(z), lambda z: c * _xp(z).exp(-z * z),
                      lambda z: -2 * c * z * _xp(z).exp(-z * z))


def _monomial(p=2):
    if not (isinstance(p, (int, np.integer)) and p >= 1):
        raise ValueError(f"monomial power p must be an integer >= 1, got {p!r}")
    p = int(p)
    return Activation("monomial", lambda z: z**p, lambda z: p * z ** (p - 1),
                      lambda z: p * (p - 1) * z ** max(p - 2, 0) if p >= 2 else 0.0 * z,
                      (("p", p),))


_REGISTRY = {
    "linear": _linear, "relu": _relu, "leaky_relu": _leaky_relu,
    "scale_invariant": _scale_inv, "perceptron": _perceptron, "step": _perceptron,
    "sigmoid": _sigmoid, "tanh": _tanh, "sin": _sin, "softplus": _softplus,
    "swish": _swish, "gelu": _gelu, "erf": _erf, "monomial": _monomial,
}
ACTIVATION_NAMES = tuple(_REGISTRY)


def _from_callable(fn, name):
    """A user-defined activation written with jax.numpy; derivatives by autodiff."""
    d1 = jax.grad(fn)
    d2 = jax.grad(d1)

    def wrap(g):
        vec = jnp.vectorize(g)
        fast = jax.jit(vec)

        def h(z):
            if isinstance(z, jax.Array):
                return vec(z)
            return np.asarray(fast(jnp.asarray(z, dtype=jnp.float64)))
        return h

    return Activation(name, wrap(fn), wrap(d1), wrap(d2), (("fn", fn),))


def get_activation(activation, **params) -> Activation:
    """Look up an activation by name (with parameters), pass through an :class:`Activation`, or wrap
    a user-defined function.

    Names (book eq.): ``perceptron``/``step`` (2.9), ``sigmoid`` (2.10), ``tanh`` (2.11), ``sin``
    (2.12), ``scale_invariant(a_plus, a_minus)`` (2.14) with the special cases ``linear(a=1)``,
    ``relu`` and ``leaky_relu(a=0.01)``, ``softplus`` (2.15), ``swish`` (2.16), ``gelu`` (2.17),
    and for later chapters ``erf`` and ``monomial(p)``.

    A callable must be written with ``jax.numpy`` (scalar in, scalar out is enough); its
    derivatives are taken by ``jax.grad``.

    Raises ``ValueError`` for an unknown name (the message lists the known ones) or bad
    parameters, ``TypeError`` for anything that is neither a name, an Activation nor a callable.
    """
    if isinstance(activation, Activation):
        if params:
            raise ValueError("parameters cannot be given together with an Activation object")
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key not in _REGISTRY:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATION_NAMES)}"
                             " (or pass a callable written with jax.numpy)")
        try:
            return _REGISTRY[key](**params)
        except TypeError as e:
            raise ValueError(f"bad parameters {params} for activation {activation!r}: {e}") from None
    if callable(activation):
        return _from_callable(activation, params.get("name", getattr(activation, "__name__", "custom")))
    raise TypeError(f"activation must be a name, an Activation or a callable, got {type(activation)}")


# --------------------------------------------------------------------------- Gaussian expectations

def closed_form_expectation(act: Activation, K, derivs):
    """Closed-form <sigma^(d1) sigma^(d2)>_K (K (...,2,2)) or <sigma^(d)>_K (K (...,1,1)), or None.

    Exact expressions for the linear / scale-invariant family (arc-cosine kernel), erf (arcsine
    kernel) and sin; ``None`` when no closed form is known for this activation and ``derivs``.
    No input validation: :func:`gauss_expect` is the checked entry point."""
    if len(derivs) == 1:
        k = K[..., 0, 0]
        d = derivs[0]
        if act.scale_invariant:
            s, a = (act.a_plus + act.a_minus) / 2, (act.a_plus - act.a_minus) / 2
            if d == 0:
                return a * np.sqrt(2 * k / np.pi)
            if d == 1:
                return s + 0 * k
            return None
        if act.name == "erf":
            if d == 0:
                return 0 * k
            if d == 1:
                return 2 / np.sqrt(np.pi) / np.sqrt(1 + 2 * k)
        if act.name == "sin" and d in (0, 1):
            return 0 * k if d == 0 else np.exp(-k / 2)
        return None
    return closed_form_pair(act, K[..., 0, 0], K[..., 0, 1], K[..., 1, 1], derivs)


def closed_form_pair(act: Activation, k11, k12, k22, derivs):
    """:func:`closed_form_expectation` for two samples with the kernel given by its entries k11, k12,
    k22 (broadcastable arrays): no (..., 2, 2) array is formed (the kernel functions call this on
    millions of pairs). Returns an array or None."""
    k11, k12, k22 = np.broadcast_arrays(*(np.asarray(k, dtype=float) for k in (k11, k12, k22)))
    norm = np.sqrt(k11 * k22)
    rho = np.clip(np.divide(k12, norm, out=np.zeros_like(norm), where=norm > 0), -1.0, 1.0)
    d = tuple(derivs)
    if act.scale_invariant:
        # sigma = s z + a |z|  with s = (a+ + a-)/2, a = (a+ - a-)/2
        s, a = (act.a_plus + act.a_minus) / 2, (act.a_plus - act.a_minus) / 2
        if d == (0, 0):  # E|z1||z2| = (2/pi) sqrt(k11 k22) (sqrt(1-rho^2) + rho arcsin rho)
            return s * s * k12 + a * a * 2 / np.pi * norm * (np.sqrt(1 - rho**2) + rho * np.arcsin(rho))
        if d == (1, 1):  # E sgn z1 sgn z2 = (2/pi) arcsin rho
            return s * s + a * a * 2 / np.pi * np.arcsin(rho)
        if d in ((1, 0), (0, 1)):  # E[sgn(z_i) z_j] = sqrt(2/pi) k_ij / sqrt(k_ii)
            kii, kjj = (k11, k22) if d == (1, 0) else (k22, k11)
            e_sgn_z = np.sqrt(2 / np.pi) * np.divide(k12, np.sqrt(kii), out=np.zeros_like(k12),
                                                      where=kii > 0)
            return s * a * np.sqrt(2 * kjj / np.pi) + a * s * e_sgn_z
        return None
    if act.name == "erf":
        if d == (0, 0):
            return 2 / np.pi * np.arcsin(2 * k12 / np.sqrt((1 + 2 * k11) * (1 + 2 * k22)))
        if d == (1, 1):
            return 4 / np.pi / np.sqrt((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12**2)
        return None
    if act.name == "sin":
        e = np.exp(-(k11 + k22) / 2)
        table = {(0, 0): e * np.sinh(k12), (1, 1): e * np.cosh(k12)}
        return table.get(d)
    return None


def gauss_expect(act, K, derivs=(0, 0), deg: int = 64):
    """Gaussian expectation ``<sigma^(d1)(z1) sigma^(d2)(z2)>_K`` (book eq. (1.68) applied to sigma).

    ``act``: anything :func:`get_activation` accepts. ``K``: covariance of shape (..., N, N) with
    N = len(derivs) in {1, 2}; batched over the leading axes. ``derivs``: derivative orders
    (0, 1 or 2) applied to each variable, e.g. ``(0, 0)`` for <sigma sigma>, ``(1, 1)`` for
    <sigma' sigma'>, ``(1,)`` for <sigma'>. Returns an array of shape ``K.shape[:-2]``.

    Closed forms for linear / ReLU-family (arc-cosine), erf (arcsine) and sin; otherwise
    Gauss-Hermite quadrature of degree ``deg`` per axis. Raises ``ValueError`` for a second
    derivative of a kinked activation (a delta function), for shapes that do not match, or (via
    the quadrature) for a K that is not symmetric positive semi-definite.
    """
    act = get_activation(act)
    derivs = tuple(int(d) for d in derivs)
    K = np.asarray(K, dtype=float)
    N = len(derivs)
    if N not in (1, 2) or any(d not in (0, 1, 2) for d in derivs):
        raise ValueError(f"derivs must have length 1 or 2 with entries 0, 1, 2; got {derivs}")
    if K.ndim < 2 or K.shape[-2:] != (N, N):
        raise ValueError(f"K must have shape (..., {N}, {N}) for derivs {derivs}, got {K.shape}")
    if 2 in derivs and not act.smooth and not (act.scale_invariant and act.a_plus == act.a_minus):
        raise ValueError(f"sigma'' of {act.name} is a delta function at the kink; "
                         "its Gaussian expectation is not computed by this function")
    if np.any(np.abs(K - np.swapaxes(K, -1, -2)) > 1e-12 * (1 + np.abs(K))):
        raise ValueError("K must be symmetric")
    diag = np.diagonal(K, axis1=-2, axis2=-1)
    if np.any(diag < 0) or (N == 2 and np.any(K[..., 0, 1] ** 2 > diag[..., 0] * diag[..., 1]
                                                   * (1 + 1e-12) + 1e-300)):
        raise ValueError("K must be positive semi-definite")
    closed = closed_form_expectation(act, K, derivs)
    if closed is not None:
        return np.asarray(closed, dtype=float)
    fns = [(act.f, act.df, act.ddf)[d] for d in derivs]

    def integrand(z):
        out = fns[0](z[..., 0])
        for i in range(1, N):
            out = out * fns[i](z[..., i])
        return out

    return np.asarray(gaussian_expectation(integrand, K, deg=deg), dtype=float)
