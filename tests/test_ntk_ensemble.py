"""Tests of the NTK ensemble (networks.ntk_ensemble, networks.jacobian_norms) and stats.ntk_moments."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlt  # noqa: F401
import dlt.networks as nw
from dlt.networks import MLP, empirical_ntk, ensemble, forward, jacobian_norms, ntk_ensemble
from dlt.stats import jackknife, ntk_moments


def _params(Ws, bs, m):
    """Network m of a batch from _draw_params, in the dict format of init_params."""
    return {l: {"W": jnp.asarray(W[m].T), "b": jnp.asarray(b[m])}
            for l, (W, b) in enumerate(zip(Ws, bs), start=1)}


def test_ntk_batch_equals_autodiff():
    net = MLP((3, 5, 6, 4), "tanh", C_b=(0.1, 0.3, 0.2), C_W=(1.2, 1.7, 0.9),
              lambda_b=(0.5, 1.5, 2.0), lambda_W=(1.1, 0.7, 3.0))
    X = np.random.default_rng(0).normal(size=(3, 3))
    Ws, bs = nw._draw_params(net, 3, np.random.default_rng(1))
    Z, H = nw._ntk_batch(net, X, Ws, bs)
    assert Z.shape == (3, 3, 4) and H.shape == (3, 4, 4, 3, 3)
    for m in range(3):
        p = _params(Ws, bs, m)
        np.testing.assert_allclose(H[m], np.asarray(empirical_ntk(net, p, X)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Z[m], np.asarray(forward(net, p, X)[3]), rtol=1e-12, atol=1e-12)


def test_ntk_ensemble_draws_the_ensemble_networks():
    net = MLP((3, 5, 6, 4), "tanh", C_b=0.2, C_W=1.5, lambda_b=0.3, lambda_W=2.0)
    X = np.random.default_rng(2).normal(size=(2, 3))
    Z, H = ntk_ensemble(net, X, 10, 7, chunk=4)          # 10 = 4 + 4 + 2: a ragged last chunk
    np.testing.assert_array_equal(Z, ensemble(net, X, 10, 7, chunk=4)[3])
    rng = np.random.default_rng(7)
    for start, B in ((0, 4), (4, 4), (8, 2)):
        Zb, Hb = nw._ntk_batch(net, X, *nw._draw_params(net, B, rng))
        np.testing.assert_array_equal(H[start:start + B], Hb)
    assert np.allclose(H, np.swapaxes(np.swapaxes(H, 1, 2), 3, 4))   # H_{i1 i2; a1 a2} = H_{i2 i1; a2 a1}


def test_first_layer_ntk_is_deterministic():
    net = MLP((5, 3), "relu", C_b=0.4, C_W=1.7, lambda_b=0.6, lambda_W=2.5)
    X = np.random.default_rng(3).normal(size=(4, 5))
    Z, H = ntk_ensemble(net, X, 100, 0)
    H1 = 0.6 + 2.5 * X @ X.T / 5                                     # (8.23)
    expect = np.eye(3)[:, :, None, None] * H1
    assert H.std(0).max() < 1e-13
    np.testing.assert_allclose(H, np.broadcast_to(expect, H.shape), rtol=1e-13, atol=1e-13)


def test_second_layer_relu_exact_values():
    # spec ch. 8-9 §4 item 3: one step from the deterministic first layer is exact at any width
    net = MLP((4, 8, 8), "relu", C_b=0.0, C_W=2.0, lambda_b=1.0, lambda_W=1.0)
    Z, H = ntk_ensemble(net, np.ones((1, 4)), 20_000, 11)           # |x|^2 / n0 = 1
    mo = ntk_moments(Z, H, 8)
    expect = {"K": 2.0, "H": 4.0, "V": 20.0, "A": 13.0, "B": 8.0, "D": 14.0, "F": 8.0}
    assert set(mo) == set(expect)
    for key, val in expect.items():
        est, se = mo[key]
        assert est.shape == ((1, 1) if key in "KH" else (1, 1, 1, 1))
        assert abs(est.item() - val) < 4.5 * se.item(), (key, est.item(), se.item(), val)
    # diagonal identity: n Var(H_ii) = A + 2 B = 29
    Hd = np.diagonal(H[:, :, :, 0, 0], axis1=1, axis2=2)            # (M, n_L)
    nvar, se = jackknife(lambda h: 8 * ((h**2).mean() - h.mean()**2), Hd)
    assert abs(nvar - 29.0) < 4.5 * se


def test_ntk_moments_matches_explicit_pair_loops():
    rng = np.random.default_rng(4)
    M, N, nL, n = 6, 2, 3, 5.0
    Z = rng.normal(size=(M, N, nL))
    H = rng.normal(size=(M, nL, nL, N, N))
    mo = ntk_moments(Z, H, n, n_batches=3)
    pairs = [(i, j) for i in range(nL) for j in range(nL) if i != j]
    E = lambda f: np.mean([np.mean([f(m, i, j) for i, j in pairs]) for m in range(M)])
    for a1, a2, a3, a4 in itertools.product(range(N), repeat=4):
        zz = lambda m, i, a, b: Z[m, a, i] * Z[m, b, i]
        Ezz12 = np.mean([zz(m, i, a1, a2) for m in range(M) for i in range(nL)])
        Ezz34 = np.mean([zz(m, i, a3, a4) for m in range(M) for i in range(nL)])
        EH12 = np.mean([H[m, i, i, a1, a2] for m in range(M) for i in range(nL)])
        EH34 = np.mean([H[m, i, i, a3, a4] for m in range(M) for i in range(nL)])
        V = n * (E(lambda m, i, j: zz(m, i, a1, a2) * zz(m, j, a3, a4)) - Ezz12 * Ezz34)
        D = n * (E(lambda m, i, j: zz(m, i, a1, a2) * H[m, j, j, a3, a4]) - Ezz12 * EH34)
        A = n * (E(lambda m, i, j: H[m, i, i, a1, a2] * H[m, j, j, a3, a4]) - EH12 * EH34)
        B = n * E(lambda m, i, j: H[m, i, j, a1, a2] * H[m, i, j, a3, a4])
        F = n * E(lambda m, i, j: Z[m, a1, i] * Z[m, a2, j] * H[m, i, j, a3, a4])
        assert np.isclose(mo["V"][0][a1, a2, a3, a4], V, rtol=1e-12, atol=1e-12)
        assert np.isclose(mo["D"][0][a1, a2, a3, a4], D, rtol=1e-12, atol=1e-12)
        assert np.isclose(mo["A"][0][a1, a2, a3, a4], A, rtol=1e-12, atol=1e-12)
        assert np.isclose(mo["B"][0][a1, a3, a2, a4], B, rtol=1e-12, atol=1e-12)   # stored [a1,a3,a2,a4]
        assert np.isclose(mo["F"][0][a1, a3, a2, a4], F, rtol=1e-12, atol=1e-12)
        assert np.isclose(mo["K"][0][a1, a2], Ezz12, rtol=1e-12)
        assert np.isclose(mo["H"][0][a1, a2], EH12, rtol=1e-12)
    for key, (val, se) in mo.items():
        assert se.shape == val.shape and np.all(se > 0)


def test_jacobian_norms_linear_and_last_layer():
    C_W = 1.3
    net = MLP((3, 10, 12, 9, 5), "linear", C_b=0.2, C_W=C_W)
    x = np.random.default_rng(5).normal(size=3)
    mean, se = jacobian_norms(net, x, 4000, 6)
    assert mean.shape == se.shape == (4,)
    assert mean[-1] == 1.0 and se[-1] == 0.0
    expect = C_W ** (4 - np.arange(1, 5))                                # E |J_l|^2 / n_L = C_W^(L-l)
    assert np.all(np.abs(mean[:-1] - expect[:-1]) < 4 * se[:-1]), (mean, se, expect)


def test_jacobian_norms_equal_autodiff():
    net = MLP((3, 6, 7, 4), "tanh", C_b=0.3, C_W=1.6)
    x = np.random.default_rng(7).normal(size=3)
    mean, _ = jacobian_norms(net, x, 3, 8)                                # one chunk: same draws below
    Ws, bs = nw._draw_params(net, 3, np.random.default_rng(8))
    norms = np.zeros((3, 3))
    for m in range(3):
        p = _params(Ws, bs, m)
        zs = forward(net, p, x[None])
        for l in (1, 2, 3):
            def tail(z):
                for k in range(l + 1, 4):
                    z = jnp.tanh(z) @ p[k]["W"].T + p[k]["b"]
                return z
            J = np.asarray(jax.jacfwd(tail)(zs[l][0]))
            norms[m, l - 1] = (J**2).sum() / 4
    np.testing.assert_allclose(mean, norms.mean(0), rtol=1e-12)


def test_bad_inputs():
    net = MLP((3, 4, 2), "tanh")
    X = np.ones((2, 3))
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="n_ens"):
            ntk_ensemble(net, X, bad, 0)
    with pytest.raises(ValueError, match="shape"):
        ntk_ensemble(net, np.ones((2, 4)), 10, 0)
    with pytest.raises(ValueError, match="shape"):
        ntk_ensemble(net, np.ones(3), 10, 0)
    with pytest.raises(ValueError, match="chunk"):
        ntk_ensemble(net, X, 10, 0, chunk=0)
    with pytest.raises(TypeError, match="seed"):
        ntk_ensemble(net, X, 10, "abc")
    with pytest.raises(ValueError, match="perceptron"):
        ntk_ensemble(net.replace(activation="perceptron"), X, 10, 0)
    with pytest.raises(ValueError, match="x must be"):
        jacobian_norms(net, X, 10, 0)
    with pytest.raises(ValueError, match="n_ens"):
        jacobian_norms(net, X[0], 1, 0)
    Z, H = ntk_ensemble(net.replace(widths=(3, 4, 1)), X, 10, 0)
    with pytest.raises(ValueError, match="n_L >= 2"):
        ntk_moments(Z, H, 4)
    Z, H = ntk_ensemble(net, X, 10, 0)
    with pytest.raises(ValueError, match="match"):
        ntk_moments(Z, H[:, :, :, :1, :1], 4)
    with pytest.raises(ValueError, match="match"):
        ntk_moments(Z[:5], H, 4)
    with pytest.raises(ValueError, match="Z must"):
        ntk_moments(Z[0], H, 4)
    with pytest.raises(ValueError, match="n_prev"):
        ntk_moments(Z, H, 0)
    with pytest.raises(ValueError, match="n_batches"):
        ntk_moments(Z, H, 4, n_batches=11)


def test_progress_bar(capsys):
    net = MLP((3, 4, 2), "tanh")
    ntk_ensemble(net, np.ones((1, 3)), 50, 0, chunk=1, progress=True)
    err = capsys.readouterr().err
    assert "ntk_ensemble" in err and "50/50" in err and err.endswith("\n") and err.count("\r") <= 31
    ntk_ensemble(net, np.ones((1, 3)), 50, 0, progress=False)
    assert capsys.readouterr().err == ""
