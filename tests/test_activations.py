import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlt  # noqa: F401  (float64)
from dlt.activations import ACTIVATION_NAMES, gauss_expect, get_activation

Z = np.linspace(-3.3, 3.1, 41)  # avoids the kink at 0


def test_values_from_the_book():
    assert get_activation("perceptron").f(np.array(0.0)) == 1.0
    s, t = get_activation("sigmoid").f(Z), np.tanh(Z / 2)
    assert np.allclose(s, 0.5 + 0.5 * t, atol=1e-15, rtol=0)  # (2.10)
    assert math.isclose(get_activation("softplus").f(np.array(0.0)), math.log(2), rel_tol=1e-15)
    assert math.isclose(get_activation("swish").f(np.array(1.0)), 0.7310585786300049, rel_tol=1e-14)
    assert math.isclose(get_activation("gelu").f(np.array(1.0)), 0.8413447460685429, rel_tol=1e-14)
    assert get_activation("relu").f(np.array(-2.0)) == 0.0
    assert get_activation("leaky_relu", a=0.1).f(np.array(-2.0)) == pytest.approx(-0.2)


@pytest.mark.parametrize("name", [n for n in ACTIVATION_NAMES if n != "step"])
def test_derivatives_match_autodiff(name):
    act = get_activation(name, **({"p": 3} if name == "monomial" else {}))
    g1 = jax.vmap(jax.grad(act.f))
    g2 = jax.vmap(jax.grad(jax.grad(act.f)))
    zj = jnp.asarray(Z)
    assert np.allclose(act.df(Z), g1(zj), rtol=1e-10, atol=1e-12)
    assert np.allclose(act.ddf(Z), g2(zj), rtol=1e-10, atol=1e-12)
    # numpy in -> numpy out, jax in -> jax out
    assert isinstance(act.f(Z), np.ndarray) and isinstance(act.f(zj), jax.Array)


@settings(max_examples=50, deadline=None)
@given(ap=st.floats(-3, 3), am=st.floats(-3, 3), lam=st.floats(1e-3, 1e3))
def test_scale_invariance(ap, am, lam):
    act = get_activation("scale_invariant", a_plus=ap, a_minus=am)
    assert act.scale_invariant
    assert np.allclose(act.f(lam * Z), lam * act.f(Z), rtol=1e-12, atol=1e-12)


def test_tanh_is_not_scale_invariant():
    act = get_activation("tanh")
    assert not act.scale_invariant
    assert np.max(np.abs(act.f(3.7 * Z) - 3.7 * act.f(Z))) > 1


def test_user_defined_activation():
    act = get_activation(lambda z: jnp.tanh(z) + 0.1 * z**2, name="custom")
    assert act.name == "custom"
    assert np.allclose(act.df(Z), 1 - np.tanh(Z) ** 2 + 0.2 * Z, rtol=1e-12)
    assert np.allclose(act.ddf(Z), -2 * np.tanh(Z) * (1 - np.tanh(Z) ** 2) + 0.2, rtol=1e-10)


def test_bad_input():
    with pytest.raises(ValueError, match="known: .*relu"):
        get_activation("rleu")
    with pytest.raises(ValueError):
        get_activation("leaky_relu", slope=0.1)
    with pytest.raises(ValueError):
        get_activation("monomial", p=0)
    with pytest.raises(TypeError):
        get_activation(3)


KS = np.array([[[1.0, 0.3], [0.3, 0.5]], [[2.0, -1.2], [-1.2, 0.9]], [[0.7, 0.7], [0.7, 0.7]]])


@pytest.mark.parametrize("name,derivs", [("erf", (0, 0)), ("erf", (1, 1)), ("sin", (0, 0)),
                                         ("sin", (1, 1)), ("erf", (1,)), ("sin", (1,))])
def test_smooth_closed_forms_vs_quadrature(name, derivs):
    act = get_activation(name)
    quad = get_activation(act.f, name="generic")  # same function, no closed form: quadrature path
    K = KS if len(derivs) == 2 else KS[:, :1, :1]
    assert np.allclose(gauss_expect(act, K, derivs), gauss_expect(quad, K, derivs, deg=80),
                       rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("derivs", [(0, 0), (1, 1), (1, 0), (0, 1), (0,), (1,)])
def test_scale_invariant_closed_forms_vs_monte_carlo(derivs):
    act = get_activation("leaky_relu", a=-0.4)
    rng = np.random.default_rng(7)
    S = 400_000
    for K in KS[:2]:
        Kd = K if len(derivs) == 2 else K[:1, :1]
        z = rng.multivariate_normal(np.zeros(len(derivs)), Kd, size=S)
        vals = np.prod([(act.f, act.df)[d](z[:, i]) for i, d in enumerate(derivs)], axis=0)
        exact = gauss_expect(act, Kd, derivs)
        assert abs(vals.mean() - exact) < 4 * vals.std() / np.sqrt(S), (K, derivs)


def test_linear_and_relu_special_values():
    K = KS[0]
    assert np.isclose(gauss_expect("linear", K), K[0, 1], rtol=1e-14)
    # ReLU on identical inputs: <relu^2> = K/2
    Kdeg = np.full((2, 2), 1.7)
    assert np.isclose(gauss_expect("relu", Kdeg), 1.7 / 2, rtol=1e-14)
    assert np.isclose(gauss_expect("relu", Kdeg, (1, 1)), 0.5, rtol=1e-14)


def test_smooth_quadrature_batched_shape():
    K = np.broadcast_to(KS[0], (4, 3, 2, 2))
    out = gauss_expect("tanh", K, (0, 0))
    assert out.shape == (4, 3) and np.allclose(out, out[0, 0])


def test_gauss_expect_bad_input():
    with pytest.raises(ValueError, match="delta"):
        gauss_expect("relu", KS[0], (2, 0))
    with pytest.raises(ValueError, match="shape"):
        gauss_expect("tanh", KS[0], (0,))
    with pytest.raises(ValueError, match="positive semi-definite"):
        gauss_expect("tanh", np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        gauss_expect("tanh", np.array([[1.0, 0.2], [0.1, 1.0]]))
