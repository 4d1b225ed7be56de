"""Tests of the chapter-10 library (kernel learning): dlt.learning's kernel prediction, generalized posterior,
function-space training and linear models / kernel methods; dlt.networks' random features; dlt.criticality's
delta expansion and finite angle of the frozen NTK.

Independent references: dense linear algebra (np.linalg.solve / inv / lstsq / pinv on small cases); real
networks trained by gradient descent (a one-layer network and last-layer training are linear in their
parameters, a deep linear network is linear in its input); the ch. 7 linearized_outputs (discrete steps);
the exact two-input recursions of dlt.kernels.kernel_fn (closed forms for ReLU, Mehler series for tanh)
against the gamma-basis and finite-angle recursions; dlt.bayes.gp_posterior; autodiff Jacobians."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import dlt  # noqa: F401
from dlt import bayes
from dlt import criticality as cr
from dlt import learning as lrn
from dlt.kernels import kernel_fn
from dlt.networks import (
    MLP,
    empirical_ntk,
    forward,
    init_params,
    last_layer_features,
    ntk_features,
    stochastic_metric,
)

# the spec's default setup (ch. 10, §4): three training and two test inputs on the circle of radius sqrt 2
X5 = np.sqrt(2) * np.array([[1, 0], [0.6, 0.8], [-0.8, 0.6], [0.8, 0.6], [0, -1.0]])
IA, IB = np.arange(3), np.array([3, 4])
Y3 = np.array([[1.0, 0.2, -0.4], [-0.5, 0.7, 0.1], [0.3, -0.6, 0.9]])          # (N_A, n_out = 3)


def frozen(act="tanh", cw=1.0, **kw):
    net = MLP((2, 8, 8, 8, 3), act, C_b=0.0, C_W=cw, **kw)
    return kernel_fn(net, X5, get=("nngp", "ntk"))


K5, T5 = frozen()
Z5 = np.random.default_rng(5).normal(size=(5, 3))                              # one network's z(0) on D


def dense_prediction(T, z, y, A=IA, B=IB):
    return z[B] - T[np.ix_(B, A)] @ np.linalg.solve(T[np.ix_(A, A)], z[A] - y)


# ------------------------------------------------------------------------ kernel prediction (10.39)-(10.41)
def test_kernel_prediction_against_dense_solve():
    ref = dense_prediction(T5, Z5, Y3)
    got = lrn.kernel_prediction(T5[np.ix_(IB, IA)], T5[np.ix_(IA, IA)], Y3, Z5[IA], Z5[IB])
    assert np.allclose(got, ref, rtol=0, atol=1e-13)
    # the mean (10.40) and 1-d targets
    mean = lrn.kernel_prediction(T5[np.ix_(IB, IA)], T5[np.ix_(IA, IA)], Y3)
    assert np.allclose(mean, T5[np.ix_(IB, IA)] @ np.linalg.solve(T5[np.ix_(IA, IA)], Y3), atol=1e-13)
    one = lrn.kernel_prediction(T5[np.ix_(IB, IA)], T5[np.ix_(IA, IA)], Y3[:, 0])
    assert one.shape == (2,) and np.allclose(one, mean[:, 0], atol=1e-15)
    # an ensemble of initial outputs (leading axis) is vectorized
    zs = np.random.default_rng(1).normal(size=(7, 5, 3))
    ens = lrn.kernel_prediction(T5[np.ix_(IB, IA)], T5[np.ix_(IA, IA)], Y3, zs[:, IA], zs[:, IB])
    assert np.allclose(ens, np.stack([dense_prediction(T5, z, Y3) for z in zs]), atol=1e-13)
    # the training points are memorized (10.31); kernel_regression (10.132) is the mean
    assert np.allclose(lrn.kernel_prediction(T5[np.ix_(IA, IA)], T5[np.ix_(IA, IA)], Y3, Z5[IA], Z5[IA]), Y3,
                       atol=1e-13)
    assert np.array_equal(lrn.kernel_regression(T5[np.ix_(IB, IA)], T5[np.ix_(IA, IA)], Y3), mean)


def test_kernel_prediction_with_an_empirical_ntk_is_the_flattened_solve():
    net = MLP((2, 6, 6, 2), "tanh", C_b=0.1)
    params = init_params(net, jax.random.PRNGKey(0))
    H = np.asarray(empirical_ntk(net, params, X5))                     # (2, 2, 5, 5), mixes outputs
    z = np.asarray(forward(net, params, X5)[net.L])
    y = Y3[:, :2]
    flat = lambda M: M.transpose(2, 0, 3, 1).reshape(M.shape[2] * 2, M.shape[3] * 2)
    HA, HBA = flat(H[:, :, IA][:, :, :, IA]), flat(H[:, :, IB][:, :, :, IA])
    ref = z[IB].ravel() - HBA @ np.linalg.solve(HA, (z[IA] - y).ravel())
    got = lrn.kernel_prediction(H[:, :, IB][:, :, :, IA], H[:, :, IA][:, :, :, IA], y, z[IA], z[IB])
    assert np.allclose(got, ref.reshape(2, 2), atol=1e-12)


def test_kernel_posterior_is_the_law_of_the_linear_map_of_the_initial_outputs():
    mean, cov = lrn.kernel_posterior(K5, T5, IA, IB, Y3)
    P = T5[np.ix_(IB, IA)] @ np.linalg.inv(T5[np.ix_(IA, IA)])
    M = np.zeros((2, 5))                                               # z_B(T) = M z + P y  (10.39)
    M[:, IB], M[:, IA] = np.eye(2), -P
    assert np.allclose(mean, P @ Y3, atol=1e-13)
    assert np.allclose(cov, M @ K5 @ M.T, atol=1e-13)
    # (10.41) written out term by term
    KB, KBA, KA = K5[np.ix_(IB, IB)], K5[np.ix_(IB, IA)], K5[np.ix_(IA, IA)]
    assert np.allclose(cov, KB - P @ KBA.T - KBA @ P.T + P @ KA @ P.T, atol=1e-13)
    # Theta -> K: the Bayesian posterior (6.57), (6.64)
    mb, cb = lrn.kernel_posterior(K5, K5, IA, IB, Y3)
    mg, cg = bayes.gp_posterior(K5, IA, IB, Y3)
    assert np.allclose(mb, mg, atol=1e-13) and np.allclose(cb, cg, atol=1e-13)
    # test inputs inside A: memorized, no variance
    m2, c2 = lrn.kernel_posterior(K5, T5, IA, np.array([1, 4]), Y3)
    assert np.allclose(m2[0], Y3[1], atol=1e-13) and np.allclose(c2[0], 0, atol=1e-13)


def test_finite_time_posterior_is_the_ensemble_of_gd_trajectories():
    ts = np.array([0.0, 0.3, 2.0, 1e9])
    mean, cov = lrn.kernel_posterior(K5, T5, IA, IB, Y3, t=ts, eta=0.7)
    assert mean.shape == (4, 2, 3) and cov.shape == (4, 2, 2)
    assert np.allclose(mean[0], 0, atol=1e-15) and np.allclose(cov[0], K5[np.ix_(IB, IB)], atol=1e-15)
    m_inf, c_inf = lrn.kernel_posterior(K5, T5, IA, IB, Y3)
    assert np.allclose(mean[-1], m_inf, atol=1e-12) and np.allclose(cov[-1], c_inf, atol=1e-12)
    # gd_prediction is affine in z(0): z_B(t) = M_t z + c_t; the ensemble z ~ N(0, K) has mean c_t and
    # covariance M_t K M_t^T
    basis = np.eye(5)[:, :, None] * np.ones(3)                         # z(0) = e_k in every component
    c_t = lrn.gd_prediction(T5, IA, IB, np.zeros((5, 3)), Y3, ts, eta=0.7)
    M_t = (lrn.gd_prediction(T5, IA, IB, basis, Y3, ts, eta=0.7) - c_t[:, None])[..., 0]   # (T, 5, N_B)
    assert np.allclose(c_t, mean, atol=1e-12)
    assert np.allclose(np.einsum("tkb,kl,tlc->tbc", M_t, K5, M_t), cov, atol=1e-12)
    # discrete steps
    md, cd = lrn.kernel_posterior(K5, T5, IA, IB, Y3, t=25, eta=0.1, discrete=True)
    zd = lrn.gd_prediction(T5, IA, IB, np.zeros((5, 3)), Y3, 25, eta=0.1, discrete=True)
    assert np.allclose(md, zd, atol=1e-13) and cd.shape == (2, 2)


# ------------------------------------------------------------------------ finite time vs discrete steps
def test_gd_prediction_equals_linearized_outputs_step_by_step():
    H = np.einsum("ij,ab->ijab", np.eye(3), T5)                        # frozen NTK as an (n, n, N, N) NTK
    eta = 0.9 / np.linalg.eigvalsh(T5[np.ix_(IA, IA)]).max()
    steps = np.arange(41)
    ref = np.asarray(lrn.linearized_outputs(H, Z5, Y3, eta, 40, idx_A=IA))
    D = np.arange(5)
    assert np.allclose(lrn.gd_prediction(T5, IA, D, Z5, Y3, steps, eta=eta, discrete=True), ref, atol=1e-13)
    assert np.allclose(lrn.gd_prediction(H, IA, D, Z5, Y3, steps, eta=eta, discrete=True), ref, atol=1e-13)
    # continuous time is the eta -> 0 limit at fixed eta t: the gap closes like eta
    gaps = []
    for e in (0.02, 0.01):
        n = int(round(0.8 / e))
        disc = lrn.gd_prediction(T5, IA, IB, Z5, Y3, n, eta=e, discrete=True)
        gaps.append(np.abs(disc - lrn.gd_prediction(T5, IA, IB, Z5, Y3, n * e)).max())
    assert 1.8 < gaps[0] / gaps[1] < 2.2
    # t = 0 and t = inf
    assert np.array_equal(lrn.gd_prediction(T5, IA, IB, Z5, Y3, 0.0), Z5[IB])
    ref = dense_prediction(T5, Z5, Y3)
    assert np.allclose(lrn.gd_prediction(T5, IA, IB, Z5, Y3, np.inf), ref, atol=1e-13)
    # a singular training block is fine at finite t
    Ts = T5.copy()
    Ts[np.ix_(IA, IA)] = np.ones((3, 3))
    assert np.all(np.isfinite(lrn.gd_prediction(Ts, IA, IB, Z5, Y3, 5.0)))


# ------------------------------------------------------------------------ algorithm independence (10.35)
def test_algorithm_independence_gd_sgd_newton_kappa_cross_entropy():
    ref = dense_prediction(T5, Z5, Y3)
    TA = T5[np.ix_(IA, IA)]
    lmax = np.linalg.eigvalsh(TA).max()
    test = lambda z: np.asarray(z)[IB]
    # plain GD
    z = lrn.train_function_space(T5, IA, Z5, Y3, 1.5 / lmax, 4000)
    assert np.allclose(test(z), ref, atol=1e-10)
    # SGD, batches of 2 in turn, decaying rate (footnote 12, footnote 15)
    batches = [np.array([0, 1]), np.array([2, 0]), np.array([1, 2])]
    z = lrn.train_function_space(T5, IA, Z5, Y3, lambda t: 1.5 / lmax / (1 + t / 5000), 8000, batches=batches)
    assert np.allclose(test(z), ref, atol=1e-10)
    # SGD with a random batch per step (a callable)
    rng = np.random.default_rng(3)
    z = lrn.train_function_space(T5, IA, Z5, Y3, 1.5 / lmax, 8000, batches=lambda t: rng.choice(3, 2, False))
    assert np.allclose(test(z), ref, atol=1e-10)
    # generalized MSE with a random SPD Newton tensor (10.22)
    G = rng.normal(size=(3, 3))
    kappa = G @ G.T + 0.5 * np.eye(3)
    ev = np.linalg.eigvals(TA @ kappa).real.max()
    z = lrn.train_function_space(T5, IA, Z5, Y3, 1.5 / ev, 6000, kappa=kappa)
    assert np.allclose(test(z), ref, atol=1e-10)
    # Newton's method (10.25): one step; and 100 GD steps followed by one Newton step (10.34)
    z = lrn.train_function_space(T5, IA, Z5, Y3, 1.0, 1, kappa=np.linalg.inv(TA))
    assert np.allclose(test(z), ref, atol=1e-12)
    z100 = lrn.train_function_space(T5, IA, Z5, Y3, 1.0 / lmax, 100)
    z = lrn.train_function_space(T5, IA, z100, Y3, 1.0, 1, kappa=np.linalg.inv(TA))
    assert np.allclose(test(z), ref, atol=1e-12)
    # cross-entropy with soft targets p = softmax(y) (10.36)-(10.37): same softmax, shifted logits
    p = np.asarray(lrn.softmax(Y3))
    z = lrn.train_function_space(T5, IA, Z5, p, 3.0 / lmax, 20000, loss="cross_entropy")
    assert np.allclose(lrn.softmax(test(z)), lrn.softmax(ref), atol=1e-10)
    shift = test(z) - ref
    assert np.allclose(shift, shift[:, :1], atol=1e-9) and np.abs(shift).max() > 1e-3
    # record=True: the trajectory, starting at z(0)
    traj = lrn.train_function_space(T5, IA, Z5, Y3, 0.5 / lmax, 10, record=True)
    assert traj.shape == (11, 5, 3) and np.array_equal(traj[0], Z5)


def test_newton_step_of_real_networks():
    # a one-layer network is linear in its parameters: one Newton step trains it exactly (10.30)
    X = np.random.default_rng(0).normal(size=(4, 5))
    y = np.random.default_rng(1).normal(size=(4, 2))
    net1 = MLP((5, 2), "tanh", C_b=0.3, lambda_b=0.7, lambda_W=1.6)
    p1 = lrn.newton_step(net1, init_params(net1, jax.random.PRNGKey(0)), X, y)
    assert np.allclose(forward(net1, p1, X)[1], y, atol=1e-12)
    # a deep network: its linearized model lands exactly on y; the network itself by O(1/n) nonlinearity
    net = MLP((5, 128, 128, 2), "tanh", C_b=0.0, C_W=1.0)
    p0 = init_params(net, jax.random.PRNGKey(2))
    p1 = lrn.newton_step(net, p0, X, y)
    f = lambda p: forward(net, p, X)[net.L]
    dp = jax.tree_util.tree_map(lambda a, b: a - b, p1, p0)
    z0, dz = jax.jvp(f, (p0,), (dp,))
    assert np.allclose(z0 + dz, y, atol=1e-10)
    before, after = np.abs(z0 - y).max(), np.abs(f(p1) - y).max()
    assert after < 0.1 * before


# ------------------------------------------------------------------------ real models trained by GD
def test_one_layer_network_trained_by_gd_equals_kernel_prediction():
    rng = np.random.default_rng(4)
    XA, XB = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))
    y = rng.normal(size=(4, 2))
    net = MLP((6, 2), "tanh", C_b=0.5, lambda_b=0.5, lambda_W=2.0)
    params = init_params(net, jax.random.PRNGKey(3))
    X = np.concatenate([XA, XB])
    # the NTK of a one-layer network is (8.23) exactly, lambda_W / n_0 per weight
    Theta = net.lambda_b[0] + net.lambda_W[0] * X @ X.T / 6
    assert np.allclose(kernel_fn(net, X, get="ntk"), Theta, atol=1e-14)
    H = np.asarray(empirical_ntk(net, params, X))
    assert np.allclose(H, np.einsum("ij,ab->ijab", np.eye(2), Theta), atol=1e-13)
    z0 = np.asarray(forward(net, params, X)[1])
    TA = Theta[:4, :4]
    eta = 1.0 / np.linalg.eigvalsh(TA).max()
    params_T, hist = lrn.train(net, params, XA, y, eta, 1500)
    assert hist["loss"][-1] < 1e-26
    zT = np.asarray(forward(net, params_T, XB)[1])
    pred = lrn.kernel_prediction(Theta[4:, :4], TA, y, z0[:4], z0[4:])
    assert np.allclose(zT, pred, atol=1e-11)


def test_last_layer_training_is_linear_regression_on_random_features():
    """Bayes rates (10.46)-(10.48): only b^(L), W^(L) train; the real deep network trained by GD ends at
    the kernel prediction with its own stochastic kernel k^ = phi phi^T (10.134)-(10.135)."""
    rng = np.random.default_rng(6)
    net = bayes_net = lrn.bayes_learning_rates(MLP((2, 32, 32, 1), "tanh", C_b=0.2, C_W=1.5))
    assert bayes_net.lambda_b == (0.0, 0.0, 0.2) and bayes_net.lambda_W == (0.0, 0.0, 1.5)
    params = init_params(net, jax.random.PRNGKey(7))
    y = rng.normal(size=(3, 1))
    phi = np.asarray(last_layer_features(net, params, X5))             # (5, n_{L-1} + 1)
    k = phi @ phi.T
    assert np.allclose(k, stochastic_metric(net, forward(net, params, X5)[net.L - 1], net.L), atol=1e-14)
    assert np.allclose(np.asarray(empirical_ntk(net, params, X5))[0, 0], k, atol=1e-13)
    z0 = np.asarray(forward(net, params, X5)[net.L])
    eta = 1.0 / np.linalg.eigvalsh(k[:3, :3]).max()
    params_T, hist = lrn.train(net, params, X5[IA], y, eta, 1500)
    assert hist["loss"][-1] < 1e-26
    # the hidden layers did not move
    for l in (1, 2):
        assert np.array_equal(params_T[l]["W"], params[l]["W"])
    zT = np.asarray(forward(net, params_T, X5[IB])[net.L])
    assert np.allclose(zT, lrn.kernel_prediction(k[np.ix_(IB, IA)], k[:3, :3], y, z0[IA], z0[IB]), atol=1e-11)


def test_bayes_learning_rates_give_theta_equal_to_k_exactly():
    for act, cw in (("tanh", 1.0), ("relu", 2.0), ("gelu", 1.7)):
        net = MLP((2, 8, 8, 8, 2), act, C_b=0.1, C_W=cw, lambda_b=0.3, lambda_W=[1.0, 2.0, 0.5, 1.0])
        K = kernel_fn(net, X5)
        assert np.array_equal(kernel_fn(lrn.bayes_learning_rates(net), X5, get="ntk"), K)
        m, c = lrn.predict(net, X5[IA], Y3[:, :2], X5[IB], bayes=True)
        mg, cg = bayes.posterior_infinite_width(net, X5[IA], Y3[:, :2], X5[IB])
        assert np.allclose(m, mg, atol=1e-12) and np.allclose(c, cg, atol=1e-12)


def test_deep_linear_networks_star_polate_linearly():
    """(10.103)-(10.104): every trained deep linear network predicts s y+ + (1-s) y- on the line."""
    xp, xm = np.array([1.0, 0.4, -0.3]), np.array([-0.2, 0.9, 0.5])
    s = np.array([-1.0, 0.0, 0.3, 0.5, 1.0, 2.0])
    Xs = lrn.polation_inputs(xp, xm, s)
    assert np.allclose(Xs, s[:, None] * xp + (1 - s[:, None]) * xm, atol=1e-15)
    assert np.allclose(Xs[[1, 4]], [xm, xp], atol=1e-15)
    y = np.array([[0.7], [-1.2]])
    net = MLP((3, 32, 32, 1), "linear", C_b=0.1, C_W=1.0)
    params = init_params(net, jax.random.PRNGKey(1))
    params, hist = lrn.train(net, params, np.stack([xp, xm]), y, 0.1, 400)
    assert hist["loss"][-1] < 1e-24
    lin = s * y[0, 0] + (1 - s) * y[1, 0]
    assert np.allclose(np.asarray(forward(net, params, Xs)[net.L])[:, 0], lin, atol=1e-8)
    # at infinite width: mean on the line, and no variance (every network does it)
    m, c = lrn.predict(net, np.stack([xp, xm]), y, Xs)
    assert np.allclose(m[:, 0], lin, atol=1e-10) and np.abs(c).max() < 1e-10


def test_star_polation_corrected_against_printed_10_115():
    """Equal norms: m(s) = Sigma_s/Theta_[0] ybar + Delta_s/Theta_[2] dy; the symmetric channel is
    ybar [1 - 2 s(1-s) ddTheta_[0]/Theta_00] + O(delta^4) (book (10.115): factor 8 instead of 2)."""
    net = MLP((2, 8, 8, 1), "tanh", C_b=0.0, C_W=1.0)
    x0, e = np.array([1.2, 0.0]), np.array([0.0, 1.0])
    s = np.array([-0.5, 0.25, 0.5, 2.0])
    err_book, err_fix = [], []
    for d in (0.1, 0.05):
        xp, xm = x0 + d * e / 2, x0 - d * e / 2
        X = np.vstack([xp, xm, lrn.polation_inputs(xp, xm, s), x0])
        T = kernel_fn(net, X, get="ntk")
        r = cr.gamma_project(T[:2, :2])[0] / T[-1, -1] - 1          # ddTheta_[0] / Theta_00
        m = lrn.kernel_prediction(T[2:6, :2], T[:2, :2], np.ones((2, 1)))[:, 0]
        err_fix.append(np.abs(m - (1 - 2 * s * (1 - s) * r)).max())
        err_book.append(np.abs(m - (1 - 8 * s * (1 - s) * r)).max())
    assert err_fix[1] < 1e-5 and 12 < err_fix[0] / err_fix[1] < 20      # O(delta^4)
    assert err_book[1] > 100 * err_fix[1] and 3.5 < err_book[0] / err_book[1] < 4.5   # O(delta^2)


# ------------------------------------------------------------------------ features, learning-rate convention
def test_ntk_features_gram_is_the_empirical_ntk():
    net = MLP((2, 7, 5, 3), "tanh", C_b=0.2, lambda_b=[0.5, 1.0, 2.0], lambda_W=[1.5, 0.25, 1.0])
    params = init_params(net, jax.random.PRNGKey(4))
    F = np.asarray(ntk_features(net, params, X5))
    assert F.shape == (3, 5, net.num_params)
    H = np.asarray(empirical_ntk(net, params, X5))
    assert np.allclose(np.einsum("iam,jbm->ijab", F, F), H, rtol=0, atol=1e-12 * np.abs(H).max())
    # the parameter axis is ravel_pytree's, scaled by sqrt(lambda_b), sqrt(lambda_W / n_{l-1}):
    # F v / sqrt(lam) is the directional derivative of the outputs along the flat parameter direction v
    flat, unravel = ravel_pytree(params)
    lam, _ = ravel_pytree(jax.tree_util.tree_map(lambda p, la: la * jnp.ones_like(p), params,
                                                 lrn.learning_rate_tree(net)))
    v = np.random.default_rng(0).normal(size=flat.size)
    h = 1e-6
    out = lambda w: np.asarray(forward(net, unravel(w), X5)[net.L])
    fd = (out(flat + h * v) - out(flat - h * v)) / (2 * h)
    assert np.allclose(np.einsum("iam,m->ai", F, v / np.sqrt(lam)), fd, rtol=0, atol=1e-8)
    # the linearized model is the linear model (10.119) with these features: a GD step of the real
    # network moves the outputs by -eta F F^T eps to first order
    y = Y3
    z0 = np.asarray(forward(net, params, X5)[net.L])
    eta = 1e-6
    p1 = lrn.gd_step(net, params, X5[IA], y, eta)
    dz = (np.asarray(forward(net, p1, X5)[net.L]) - z0) / eta
    pred = -np.einsum("iam,jbm,bj->ai", F, F[:, IA], z0[IA] - y)
    assert np.allclose(dz, pred, rtol=0, atol=1e-4 * np.abs(pred).max())


# ------------------------------------------------------------------------ generalization helpers
def test_bias_variance_robustness_by_hand():
    mean, cov = lrn.kernel_posterior(K5, T5, IA, IB, Y3)
    yB = np.array([[0.1, 0.2, 0.3], [-0.4, 0.0, 0.5]])
    bias, var = lrn.mse_bias_variance(mean, cov, yB)
    assert np.isclose(bias, 0.5 * np.sum((mean - yB) ** 2), rtol=1e-14)
    assert np.isclose(var, 0.5 * 3 * np.trace(cov), rtol=1e-14)
    # E[L_B] = bias + variance (10.52) for Gaussian predictions: Monte Carlo
    rng = np.random.default_rng(0)
    z = mean + np.einsum("bc,mcj->mbj", np.linalg.cholesky(cov), rng.normal(size=(40000, 2, 3)))
    LB = 0.5 * np.sum((z - yB) ** 2, axis=(1, 2))
    assert abs(LB.mean() - bias - var) < 4 * LB.std() / np.sqrt(LB.size)
    # robustness (10.57) and the one-training-point posterior (10.56), (10.63)
    T2, K2 = T5[np.ix_([0, 3], [0, 3])], K5[np.ix_([0, 3], [0, 3])]
    r = lrn.robustness(T2)
    assert np.isclose(r, T2[1, 0] / T2[0, 0] - 1, rtol=1e-15)
    m1, c1 = lrn.kernel_posterior(K2, T2, [0], [1], Y3[:1])
    assert np.allclose(m1 - Y3[:1], r * Y3[:1], atol=1e-14)                                     # y+ = y-
    q = T2[1, 0] / T2[0, 0]
    assert np.isclose(c1[0, 0], K2[1, 1] - 2 * q * K2[1, 0] + q * q * K2[0, 0], rtol=1e-12)
    assert lrn.robustness(np.stack([T2, 2 * T2])).shape == (2,)


def test_linear_regression_and_kernel_methods():
    rng = np.random.default_rng(8)
    xA, xB = rng.uniform(-1, 1, 12), rng.uniform(-1, 1, 4)
    feats = lambda x, p: np.vander(x, p, increasing=True)                  # phi_0 = 1, x, x^2, ...
    y = np.sin(3 * xA)[:, None] + np.array([[0.0, 1.0]])
    # underparameterized: the normal equations (10.121)-(10.123) = least squares
    W = lrn.linear_regression(feats(xA, 5), y)
    assert W.shape == (2, 5)
    assert np.allclose(W.T, np.linalg.lstsq(feats(xA, 5), y, rcond=None)[0], atol=1e-11)
    # overparameterized: the a -> 0+ limit is the minimum-norm interpolant, = the kernel machine (10.132)
    PhiA, PhiB = (np.hstack([np.ones((n, 1)), rng.normal(size=(n, 19))]) for n in (12, 4))  # P = 20 > N_A
    W = lrn.linear_regression(PhiA, y)
    assert np.allclose(W.T, np.linalg.pinv(PhiA) @ y, atol=1e-9)
    assert np.allclose(PhiA @ W.T, y, atol=1e-11)
    k = lambda P, Q: lrn.linear_kernel(P, Q)
    assert np.allclose(PhiB @ W.T, lrn.kernel_regression(k(PhiB, PhiA), k(PhiA, PhiA), y), atol=1e-7)
    # with a ridge, primal (10.124) and dual agree on both sides of P = N_A
    for P in (5, 20):
        a = 1e-3
        Phi = feats(xA, P)
        W = lrn.linear_regression(Phi, y, ridge=a)
        assert np.allclose(W.T, np.linalg.solve(Phi.T @ Phi + a * np.eye(P), Phi.T @ y), atol=1e-10)
        assert np.allclose(feats(xB, P) @ W.T,
                           lrn.kernel_regression(k(feats(xB, P), Phi), k(Phi, Phi), y, ridge=a), atol=1e-10)
    assert lrn.linear_regression(feats(xA, 3), y[:, 0]).shape == (3,)
    # kernels (10.128), (10.136), (10.133)
    c = rng.uniform(0.5, 2, 5)
    assert np.allclose(lrn.linear_kernel(feats(xA, 5), weights=c), feats(xA, 5) @ np.diag(c) @ feats(xA, 5).T)
    C = np.diag(c) + 0.1
    assert np.allclose(lrn.linear_kernel(feats(xA, 5), feats(xB, 5), weights=C),
                       feats(xA, 5) @ C @ feats(xB, 5).T)
    G = lrn.gaussian_kernel(X5, X5[IB], sigma=0.7)
    ref = np.exp(-((X5[:, None] - X5[IB][None]) ** 2).sum(-1) / (2 * 0.49))
    assert np.allclose(G, ref, atol=1e-15) and np.allclose(np.diag(lrn.gaussian_kernel(X5)), 1.0)


# ------------------------------------------------------------------------ criticality: finite angle, delta
def test_finite_angle_recursion_equals_two_input_kernel_fn():
    L, psi0 = 12, 0.7
    x = np.array([[1.0, 0.3, 0.0], [np.cos(psi0), 0.3, np.sin(psi0)]])
    x[1] *= np.linalg.norm(x[0]) / np.linalg.norm(x[1])                  # equal norms
    G, c0 = x[0] @ x[0] / 3, x[0] @ x[1] / (x[0] @ x[0])
    lb, lw = np.linspace(0.1, 1, L), np.linspace(1, 0.3, L)
    for act, ap, am, cw, cb in (("relu", 1, 0, 2.0, 0.0), ("leaky_relu", 1, 0.01, 1.9, 0.1),
                                ("linear", 1, 1, 1.0, 0.2)):
        net = MLP((3,) + (8,) * (L - 1) + (1,), act, C_b=cb, C_W=cw, lambda_b=lb, lambda_W=lw)
        out = kernel_fn(net, x, layers=range(1, L + 1), get=("nngp", "ntk"))
        fa = cr.ntk_finite_angle(L, ap, am, cw, G, c0, lb, lw, C_b=cb)
        for l in range(1, L + 1):
            K, T = out[l]
            assert np.allclose([K[0, 0], K[0, 1]], fa["Kd"][l] * np.array([1, np.cos(fa["psi"][l])]),
                               rtol=1e-13)
            assert np.allclose([T[0, 0], T[0, 1]], fa["Theta_d"][l] * np.array([1, fa["cos_zeta"][l]]),
                               rtol=1e-13)
            assert np.isclose(fa["robustness"][l], lrn.robustness(T), rtol=1e-12)
    assert np.isnan(fa["Kd"][0])


def test_finite_angle_asymptotics_relu_and_deep_linear():
    # ReLU at criticality, equivalence rates lambda = lt / L (10.90)-(10.95), orthogonal inputs
    cz = []
    for L in (10, 100, 10000):
        fa = cr.ntk_finite_angle(L, 1.0, 0.0, 2.0, 1.0, 0.0, 1.0 / L, 1.0 / L)
        ell = np.arange(1, L + 1)
        assert np.allclose(fa["Theta_d"][1:], (1 + 1 * 0.5 * 2.0) * ell / L, rtol=1e-12)       # (10.91)
        cz.append(fa["cos_zeta"][L])
    assert np.allclose(cz[:2], [0.36347, 0.27364], atol=1e-5)           # the spec's values, computed apart
    assert abs(cz[2] - 0.25) < 1e-3                                       # (10.93)
    assert abs(fa["variance"][L] / fa["Kd"][L] - 9 / 16) < 1e-3          # (10.95)
    assert abs(L * fa["psi"][L] / (3 * np.pi) - 1) < 3e-3                # (10.90), rho = 1/pi
    # deep linear, C_b = 0: cos zeta is the layer-1 value at every layer (10.96)-(10.98)
    fa = cr.ntk_finite_angle(30, 1.0, 1.0, 1.0, 1.3, 0.4, 1.0 / 30, 2.0 / 30)
    assert np.allclose(fa["cos_zeta"][1:], (1 + 2 * 1.3 * 0.4) / (1 + 2 * 1.3), rtol=1e-13)


def test_ntk_delta_recursion_against_exact_gamma_components():
    """Unequal norms (dK1 != 0): relative errors of dTheta_[1], ddTheta_[2] are O(delta^2)."""
    L = 5
    lb, lw = np.linspace(0.5, 1, L), np.linspace(1, 0.3, L)
    x0, v = np.array([0.8, -0.5, 0.6]), np.array([0.3, 0.9, -0.2])
    for act, cb, cw in (("tanh", 0.2, 1.3), ("sin", 0.1, 1.0)):
        net = MLP((3,) + (8,) * (L - 1) + (1,), act, C_b=cb, C_W=cw, lambda_b=lb, lambda_W=lw)
        errs = []
        for d in (0.1, 0.05):
            dx = d * v
            K, T = kernel_fn(net, np.array([x0 + dx / 2, x0 - dx / 2]), get=("nngp", "ntk"))
            th1 = (lb[0] + lw[0] * x0 @ x0 / 3, lw[0] * x0 @ dx / 3, lw[0] * dx @ dx / 12)
            r = cr.ntk_delta_recursion(act, cw, lb, lw, *cr.delta_initial(x0, dx, cb, cw), *th1, L, C_b=cb)
            gT = cr.gamma_project(T)
            errs.append([gT[1] / r["dTheta1"][L] - 1, gT[2] / r["ddTheta2"][L] - 1])
        errs = np.abs(errs)
        assert np.all(errs[1] < 0.06) and np.all((3.5 < errs[0] / errs[1]) & (errs[0] / errs[1] < 4.5))
    with pytest.raises(ValueError, match="kink"):
        cr.ntk_delta_recursion("relu", 2.0, 1, 1, 1.0, 0.0, 0.01, 1.0, 0.0, 0.01, 3)


def test_robustness_asymptotics_kstar0_against_exact_recursion():
    """tanh at criticality, L = 1000, exact two-input recursion: (10.78) with equivalence rates, and the
    corrected constant-rate (10.81) (the printed form, -4 lambda_W delta2 / (lambda_b L), is off by a
    factor 2 at lambda_b = lambda_W and predicts 0 for lambda_W = 0)."""
    ang, L = 0.05, 1000
    X = np.sqrt(2) * np.array([[1.0, 0.0], [np.cos(ang), np.sin(ang)]])
    kd = cr.delta_recursions("tanh", 0.0, 1.0, *cr.delta_initial(X.mean(0), X[0] - X[1], 0.0, 1.0), 5000)
    delta2 = 5000 * kd[5000, 2]                                           # lim l ddK_[2] to ~1e-3
    lb, lw = cr.equivalence_learning_rates("K*=0", L, 1.0, 1.0)
    for rates, lams, tol in (("equivalence", (lb, lw), 0.03), ("constant", (1.0, 1.0), 0.01),
                             ("constant", (1.0, 0.0), 0.01)):
        net = MLP((2,) + (4,) * (L - 1) + (1,), "tanh", C_b=0.0, C_W=1.0, lambda_b=lams[0], lambda_W=lams[1])
        T = kernel_fn(net, X, get="ntk")
        lt = (1.0, 1.0) if rates == "equivalence" else lams
        pred = cr.robustness_asymptotic_kstar0("tanh", *lt, delta2, L, rates=rates)
        assert abs(lrn.robustness(T) / pred - 1) < tol
    printed = -4 * 1.0 * delta2 / (1.0 * L)
    corrected = cr.robustness_asymptotic_kstar0("tanh", 1, 1, delta2, L, rates="constant")
    assert abs(printed / corrected - 0.5) < 1e-12
    with pytest.raises(ValueError, match="sigma_2"):
        cr.robustness_asymptotic_kstar0(lambda z: z + z**2 / 2 - z**3 / 3, 1, 1, delta2, L, rates="constant")


# ------------------------------------------------------------------------ users' data, speed, bad input
def test_predict_matches_kernels_and_scales_to_thousands_of_inputs():
    net = MLP((2, 8, 8, 8, 3), "tanh", C_b=0.0, C_W=1.0)
    m, c = lrn.predict(net, X5[IA], Y3, X5[IB])
    mr, cr_ = lrn.kernel_posterior(K5, T5, IA, IB, Y3)
    assert np.allclose(m, mr, atol=1e-13) and np.allclose(c, cr_, atol=1e-13)
    mt, ct = lrn.predict(net, X5[IA], Y3, X5[IB], t=[1.0, 5.0], eta=0.5)
    assert mt.shape == (2, 2, 3) and ct.shape == (2, 2, 2)
    rng = np.random.default_rng(9)
    big = MLP((4, 8, 8, 8, 1), "erf", C_b=0.1, C_W=1.5)
    XA, XB = rng.normal(size=(2000, 4)), rng.normal(size=(50, 4))
    yA = np.sin(XA[:, :1])
    t0 = time.perf_counter()
    m, c = lrn.predict(big, XA, yA, XB, ridge=1e-10)
    assert time.perf_counter() - t0 < 8.0
    assert m.shape == (50, 1) and c.shape == (50, 50) and np.all(np.isfinite(m))
    assert np.all(np.linalg.eigvalsh(c) > -1e-8)


def test_bad_input():
    TA, TBA = T5[np.ix_(IA, IA)], T5[np.ix_(IB, IA)]
    # a singular training kernel (a duplicated input) -> ValueError naming ridge; ridge > 0 works
    Xd = np.vstack([X5[:2], X5[:1], X5[3:]])
    net = MLP((2, 8, 8, 1), "tanh")
    Kd, Td = kernel_fn(net, Xd, get=("nngp", "ntk"))
    with pytest.raises(ValueError, match="singular.*ridge"):
        lrn.kernel_posterior(Kd, Td, IA, IB, Y3[:, :1])
    with pytest.raises(ValueError, match="ridge"):
        lrn.predict(net, Xd[IA], Y3[:, :1], Xd[IB])
    with pytest.raises(ValueError, match="ridge"):
        lrn.gd_prediction(Td, IA, IB, np.zeros((5, 1)), Y3[:, :1], np.inf)
    m, c = lrn.kernel_posterior(Kd, Td, IA, IB, Y3[:, :1], ridge=1e-8)
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(c))
    with pytest.raises(ValueError, match="ridge"):
        lrn.linear_regression(np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="ridge"):
        lrn.newton_step(MLP((2, 2), "tanh"), init_params(MLP((2, 2), "tanh"), jax.random.PRNGKey(0)),
                        X5, np.zeros((5, 2)))
    # shapes
    with pytest.raises(ValueError, match="theta_BA"):
        lrn.kernel_prediction(TBA.T, TA, Y3)
    with pytest.raises(ValueError, match="y_A"):
        lrn.kernel_prediction(TBA, TA, Y3[:2])
    with pytest.raises(ValueError, match="both"):
        lrn.kernel_prediction(TBA, TA, Y3, z_A=Z5[IA])
    with pytest.raises(ValueError, match="z_B"):
        lrn.kernel_prediction(TBA, TA, Y3, Z5[IA], Z5[:3])
    with pytest.raises(ValueError, match="symmetric"):
        lrn.kernel_prediction(TBA, TA + np.triu(np.ones((3, 3)), 1), Y3)
    with pytest.raises(ValueError, match="same shape"):
        lrn.kernel_posterior(K5, T5[:4, :4], IA, IB, Y3)
    with pytest.raises(ValueError, match="idx_A"):
        lrn.kernel_posterior(K5, T5, [0, 0, 1], IB, Y3)
    with pytest.raises(ValueError, match="z0"):
        lrn.gd_prediction(T5, IA, IB, Z5[:4], Y3, 1.0)
    with pytest.raises(ValueError, match="kappa"):
        lrn.train_function_space(T5, IA, Z5, Y3, 0.1, 3, kappa=np.eye(2))
    with pytest.raises(ValueError, match="batches"):
        lrn.train_function_space(T5, IA, Z5, Y3, 0.1, 3, batches=[np.array([3])])
    with pytest.raises(ValueError, match="mean"):
        lrn.mse_bias_variance(np.zeros((2, 3)), np.eye(2), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2, 2"):
        lrn.robustness(np.eye(3))
    with pytest.raises(ValueError, match="n_0"):
        lrn.predict(net, X5[:, :1], Y3[:, :1], X5[IB])
    with pytest.raises(TypeError):
        lrn.predict("net", X5[IA], Y3[:, :1], X5[IB])
    with pytest.raises(ValueError, match="same shape"):
        lrn.polation_inputs([1.0, 2.0], [1.0], 0.5)
    # negative or zero rates, times, ridges, widths of kernels
    for bad in (-0.1, 0.0):
        with pytest.raises(ValueError, match="eta"):
            lrn.gd_prediction(T5, IA, IB, Z5, Y3, 1.0, eta=bad)
        with pytest.raises(ValueError, match="eta"):
            lrn.kernel_posterior(K5, T5, IA, IB, Y3, t=1.0, eta=bad)
        with pytest.raises(ValueError, match="eta"):
            lrn.train_function_space(T5, IA, Z5, Y3, bad, 3)
    with pytest.raises(ValueError, match="eta"):
        lrn.train_function_space(T5, IA, Z5, Y3, lambda t: 0.1 - 0.1 * t, 3)
    with pytest.raises(ValueError, match="t must"):
        lrn.gd_prediction(T5, IA, IB, Z5, Y3, -1.0)
    with pytest.raises(ValueError, match="integers"):
        lrn.gd_prediction(T5, IA, IB, Z5, Y3, 1.5, discrete=True)
    with pytest.raises(ValueError, match="ridge"):
        lrn.kernel_prediction(TBA, TA, Y3, ridge=-1.0)
    with pytest.raises(ValueError, match="steps"):
        lrn.train_function_space(T5, IA, Z5, Y3, 0.1, -1)
    with pytest.raises(ValueError, match="sigma"):
        lrn.gaussian_kernel(X5, sigma=0.0)
    with pytest.raises(ValueError, match="weights"):
        lrn.linear_kernel(X5, weights=np.ones(3))
    with pytest.raises(ValueError, match="cos_psi0"):
        cr.ntk_finite_angle(3, 1.0, 0.0, 2.0, 1.0, 1.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="lam_b"):
        cr.ntk_finite_angle(3, 1.0, 0.0, 2.0, 1.0, 0.5, [1.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="rates"):
        cr.robustness_asymptotic_kstar0("tanh", 1, 1, 0.01, 10, rates="uniform")
    with pytest.raises(TypeError):
        lrn.bayes_learning_rates("net")
