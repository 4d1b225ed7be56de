import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlt  # noqa: F401
from dlt.networks import MLP, empirical_ntk, ensemble, forward, init_params, num_params
from dlt.stats import mean_se


def test_num_params_figure_2_1():
    assert num_params([4, 5, 5, 5, 1]) == 91
    net = MLP((4, 5, 5, 5, 1), "tanh")
    p = init_params(net, jax.random.PRNGKey(0))
    assert net.num_params == 91 == sum(x.size for x in jax.tree_util.tree_leaves(p))
    assert set(p) == {1, 2, 3, 4} and p[1]["W"].shape == (5, 4) and p[4]["b"].shape == (1,)


def test_forward_matches_explicit_loop():
    net = MLP((3, 7, 6, 2), "tanh", C_b=[0.1, 0.2, 0.3], C_W=[1.0, 1.5, 2.0])
    p = init_params(net, jax.random.PRNGKey(1))
    X = np.random.default_rng(0).normal(size=(4, 3))
    z = forward(net, p, X)
    assert len(z) == 4 and np.allclose(z[0], X)
    h = X
    for l in (1, 2, 3):
        W, b = np.asarray(p[l]["W"]), np.asarray(p[l]["b"])
        zl = np.array([[b[i] + sum(W[i, j] * h[a, j] for j in range(h.shape[1]))
                        for i in range(W.shape[0])] for a in range(X.shape[0])])
        assert np.allclose(z[l], zl, rtol=1e-12, atol=1e-14)
        h = np.tanh(zl)


def test_init_variances():
    net = MLP((50, 40, 30), "relu", C_b=0.4, C_W=[2.0, 1.3])
    keys = jax.random.split(jax.random.PRNGKey(2), 200)
    Ws = np.stack([init_params(net, k)[2]["W"] for k in keys]).reshape(-1)
    bs = np.stack([init_params(net, k)[1]["b"] for k in keys]).reshape(-1)
    # Var estimate of a Gaussian has relative SE sqrt(2/N)
    assert abs(Ws.var() * 40 / 1.3 - 1) < 4 * np.sqrt(2 / Ws.size)
    assert abs(bs.var() / 0.4 - 1) < 4 * np.sqrt(2 / bs.size)


def test_ensemble_first_layer_covariance_and_shapes():
    X = np.random.default_rng(3).normal(size=(3, 7))
    net = MLP((7, 5, 4), "tanh", C_b=0.2, C_W=1.5)
    zs = ensemble(net, X, 40_000, seed=4)
    assert set(zs) == {1, 2} and zs[1].shape == (40_000, 3, 5) and zs[2].shape == (40_000, 3, 4)
    G0 = X @ X.T / 7
    K1 = 0.2 + 1.5 * G0  # eq. (4.23)
    prod = np.einsum("sai,sbi->sab", zs[1], zs[1]) / 5  # per-network neuron average
    m, se = mean_se(prod)
    assert np.all(np.abs(m - K1) < 4 * se)
    assert np.allclose(zs[1].mean(), 0, atol=4 * np.sqrt(K1.max() / zs[1].size) * 3)


def test_ensemble_reproducible_and_layer_selection():
    net = MLP((2, 3, 3, 1), "relu")
    X = np.ones((1, 2))
    a = ensemble(net, X, 100, seed=5)
    b = ensemble(net, X, 100, seed=np.random.default_rng(5))
    assert all(np.array_equal(a[l], b[l]) for l in a)
    c = ensemble(net, X, 100, seed=5, layers=[3])
    assert list(c) == [3] and np.array_equal(c[3], a[3])


def test_empirical_ntk_two_layer_by_hand():
    """H for L=2 written out from the chain rule (book eq. (8.12) at l=1 and l=2)."""
    net = MLP((3, 4, 2), "tanh", C_b=0.3, C_W=1.2, lambda_b=[0.5, 0.7], lambda_W=[1.5, 2.0])
    p = init_params(net, jax.random.PRNGKey(6))
    X = np.random.default_rng(7).normal(size=(2, 3))
    W1, W2 = np.asarray(p[1]["W"]), np.asarray(p[2]["W"])
    z1 = X @ W1.T + np.asarray(p[1]["b"])
    s, ds = np.tanh(z1), 1 - np.tanh(z1) ** 2
    H1 = 0.5 + 1.5 / 3 * X @ X.T                             # first-layer NTK, delta_{j k}
    H = np.zeros((2, 2, 2, 2))
    for i1 in range(2):
        for i2 in range(2):
            lay2 = (i1 == i2) * (0.7 + 2.0 / 4 * s @ s.T)
            back = np.einsum("j,j,aj,bj->ab", W2[i1], W2[i2], ds, ds) * H1
            H[i1, i2] = lay2 + back
    assert np.allclose(empirical_ntk(net, p, X), H, rtol=1e-12, atol=1e-13)


def test_bad_input():
    for widths in ([3], [3, 0, 2], [3, 2.5, 1], (3, -1)):
        with pytest.raises(ValueError):
            MLP(widths)
    with pytest.raises(TypeError):
        MLP(5)
    with pytest.raises(ValueError, match="length L"):
        MLP((2, 3, 1), C_W=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        MLP((2, 3, 1), C_b=-0.1)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP((2, 3, 1), "rleu")
    net = MLP((2, 3, 1))
    with pytest.raises(ValueError, match="shape"):
        ensemble(net, np.ones((4, 3)), 10, seed=0)
    with pytest.raises(ValueError):
        ensemble(net, np.ones((4, 2)), 0, seed=0)
    with pytest.raises(ValueError):
        ensemble(net, np.ones((4, 2)), 10, seed=0, layers=[3])
    with pytest.raises(TypeError):
        ensemble(net, np.ones((4, 2)), 10, seed="a")
    with pytest.raises(ValueError):
        forward(net, init_params(net, jax.random.PRNGKey(0)), jnp.ones((4, 3)))


def test_ensemble_by_metric_has_the_law_of_real_networks():
    """Same joint law as real weight matrices: compare per-network statistics at layers 2 and 3."""
    from dlt.networks import ensemble_by_metric
    X = np.array([[1.0, 0.2, -0.4], [-0.3, 0.8, 0.5]])
    net = MLP((3, 6, 5, 4), "tanh", C_b=0.1, C_W=1.8)
    a = ensemble(net, X, 60_000, seed=1)
    b = ensemble_by_metric(net, X, 60_000, seed=2)
    for l in (2, 3):
        for stat in (lambda z: np.einsum("sai,sbi->sab", z, z) / z.shape[-1],   # metric estimate
                     lambda z: (z[:, 0] ** 2).mean(1) * (z[:, 1] ** 2).mean(1)):   # a fourth moment
            (ma, sa), (mb, sb) = mean_se(stat(a[l])), mean_se(stat(b[l]))
            assert np.all(np.abs(ma - mb) < 4 * np.sqrt(sa**2 + sb**2)), (l, ma, mb)
    assert b[3].shape == (60_000, 2, 4)


def test_stochastic_metric_by_hand_and_bad_input():
    from dlt.networks import stochastic_metric
    net = MLP((2, 3, 4), "tanh", C_b=[0.1, 0.3], C_W=[1.0, 1.7])
    z = np.random.default_rng(0).normal(size=(5, 2, 3))
    G = stochastic_metric(net, z, 2)
    s = np.tanh(z)
    assert np.allclose(G, 0.3 + 1.7 / 3 * np.einsum("mai,mbi->mab", s, s), rtol=1e-14)
    with pytest.raises(ValueError):
        stochastic_metric(net, z, 1)
    with pytest.raises(ValueError):
        stochastic_metric(net, z[..., :2], 2)
