import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlt  # noqa: F401
from dlt import learning as lrn
from dlt.networks import MLP, empirical_ntk, forward, init_params

RNG = np.random.default_rng(7)
X_A = RNG.normal(size=(4, 3))
Y_A = RNG.normal(size=(4, 2))
X_B = RNG.normal(size=(3, 3))
P_A = np.asarray(lrn.softmax(RNG.normal(size=(4, 2))))       # soft targets for cross-entropy


def _net(**kw):
    kw.setdefault("C_b", 0.1)
    return MLP((3, 16, 16, 2), "tanh", **kw)


def _tree_sum(f, *trees):
    return sum(float(x) for x in jax.tree_util.tree_leaves(jax.tree_util.tree_map(f, *trees)))


# ------------------------------------------------------------------------------------- losses

def test_loss_values_by_hand():
    z = RNG.normal(size=(5, 3))
    y = RNG.normal(size=(5, 3))
    assert np.isclose(lrn.mse(z, y), 0.5 * np.sum((z - y) ** 2), rtol=1e-14)
    p = np.asarray(lrn.softmax(y))
    q = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert np.allclose(lrn.softmax(z), q, rtol=1e-14)
    assert np.isclose(lrn.cross_entropy(z, p), -np.sum(p * np.log(q)), rtol=1e-13)
    # shifting all logits of one sample leaves the softmax and the loss unchanged (ch. 10.2.3)
    assert np.isclose(lrn.cross_entropy(z + RNG.normal(size=(5, 1)), p), lrn.cross_entropy(z, p), rtol=1e-13)
    # cross-entropy is minimal (= entropy of p) when q = p, i.e. z = y up to a shift
    assert lrn.cross_entropy(y, p) < lrn.cross_entropy(z, p)
    assert np.isclose(lrn.cross_entropy(y, p), -np.sum(p * np.log(p)), rtol=1e-13)
    assert lrn.get_loss("Cross-Entropy") is lrn.LOSSES["cross_entropy"]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_error_factor_vs_finite_differences(loss):
    z = RNG.normal(size=(4, 3))
    y = np.asarray(lrn.softmax(RNG.normal(size=(4, 3))))
    L = lambda zz: float(lrn.get_loss(loss).value(zz, y))
    h = 1e-5
    fd = np.zeros_like(z)
    for a in range(4):
        for i in range(3):
            e = np.zeros_like(z)
            e[a, i] = h
            fd[a, i] = (L(z + e) - L(z - e)) / (2 * h)
    eps = np.asarray(lrn.error_factor(z, y, loss))
    # central differences: truncation h^2 L''' / 6 ~ 1e-11, round-off 1e-16 * L / h ~ 1e-11
    assert np.allclose(eps, fd, rtol=0, atol=1e-9)
    assert np.allclose(lrn.error_factor(z, y, loss, intensive=True), eps / 4, rtol=1e-14)
    if loss == "cross_entropy":
        assert np.allclose(eps.sum(1), 0, atol=1e-15)       # (10.6): q - p sums to zero over i


@pytest.mark.parametrize("loss, y", [("mse", Y_A), ("cross_entropy", P_A)])
def test_parameter_gradient_vs_finite_differences(loss, y):
    net = _net()
    p = init_params(net, jax.random.PRNGKey(3))
    g = lrn.loss_gradient(net, p, X_A, y, loss)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(p)
    h = 1e-6
    for l, k, idx in [(1, "W", (3, 1)), (2, "W", (0, 5)), (2, "b", (7,)), (3, "W", (1, 9)), (3, "b", (0,))]:
        def shifted(s):
            q = jax.tree_util.tree_map(lambda x: x, p)
            q[l] = dict(q[l])
            q[l][k] = q[l][k].at[idx].add(s)
            return lrn.training_loss(net, q, X_A, y, loss)
        fd = (shifted(h) - shifted(-h)) / (2 * h)
        assert abs(float(g[l][k][idx]) - fd) < 1e-8 * (1 + abs(fd))


def test_user_defined_loss():
    quartic = lrn.Loss("quartic", lambda z, y: 0.25 * jnp.sum((z - y) ** 4), lambda z, y: (z - y) ** 3,
                       lambda y: None)
    net = _net()
    p = init_params(net, jax.random.PRNGKey(2))
    g = lrn.loss_gradient(net, p, X_A, Y_A, quartic)
    J = jax.jacrev(lambda q: forward(net, q, X_A)[3])(p)
    eps = lrn.error_factor(forward(net, p, X_A)[3], Y_A, quartic)
    chain = jnp.einsum("ai,ai...->...", eps, J[2]["W"])              # chain rule (7.13)
    assert np.allclose(g[2]["W"], chain, rtol=1e-12, atol=1e-15)
    assert lrn.train(net, p, X_A, Y_A, 0.01, 2, quartic)[1]["loss"].shape == (3,)


def test_intensive_loss_is_extensive_over_N():
    net = _net()
    p = init_params(net, jax.random.PRNGKey(4))
    ext = lrn.training_loss(net, p, X_A, Y_A)
    assert np.isclose(lrn.training_loss(net, p, X_A, Y_A, intensive=True), ext / 4, rtol=1e-14)
    z = forward(net, p, X_A)[net.L]
    assert np.isclose(ext, 0.5 * np.sum((np.asarray(z) - Y_A) ** 2), rtol=1e-13)


# ---------------------------------------------------------------------- learning-rate conventions

def test_learning_rate_tree_convention():
    net = MLP((3, 5, 7, 2), "relu", lambda_b=[0.5, 1.0, 2.0], lambda_W=[3.0, 1.5, 0.25])
    lam = lrn.learning_rate_tree(net)
    assert lam == {1: {"W": 3.0 / 3, "b": 0.5}, 2: {"W": 1.5 / 5, "b": 1.0}, 3: {"W": 0.25 / 7, "b": 2.0}}


def test_gd_step_equals_hand_computed_update_linear_model():
    """L = 1 (z = b + W x): dL/dW_ij = sum_a eps_{i;a} x_{j;a}, dL/db_i = sum_a eps_{i;a}; the step is
    W - eta lambda_W / n_0 dL/dW, b - eta lambda_b dL/db (7.11)."""
    net = MLP((3, 2), "linear", C_b=1.0, lambda_b=0.7, lambda_W=2.5)
    p = init_params(net, jax.random.PRNGKey(5))
    W, b = np.asarray(p[1]["W"]), np.asarray(p[1]["b"])
    eps = X_A @ W.T + b - Y_A
    eta = 0.03
    new = lrn.gd_step(net, p, X_A, Y_A, eta)
    assert np.allclose(new[1]["W"], W - eta * 2.5 / 3 * eps.T @ X_A, rtol=1e-14, atol=1e-15)
    assert np.allclose(new[1]["b"], b - eta * 0.7 * eps.sum(0), rtol=1e-14, atol=1e-15)
    plain = lrn.gd_step(net, p, X_A, Y_A, eta, lam=1.0)            # (7.8): lambda = identity
    assert np.allclose(plain[1]["W"], W - eta * eps.T @ X_A, rtol=1e-14, atol=1e-15)


def test_gd_step_per_layer_learning_rates_deep():
    net = _net(lambda_b=[0.5, 1.0, 2.0], lambda_W=[3.0, 1.5, 0.25])
    p = init_params(net, jax.random.PRNGKey(6))
    eta = 0.01
    g = jax.grad(lambda q: 0.5 * jnp.sum((forward(net, q, X_A)[3] - Y_A) ** 2))(p)
    new = lrn.gd_step(net, p, X_A, Y_A, eta)
    for l, (lb, lW, n_prev) in enumerate(zip([0.5, 1.0, 2.0], [3.0, 1.5, 0.25], [3, 16, 16]), start=1):
        assert np.allclose(new[l]["W"], p[l]["W"] - eta * lW / n_prev * g[l]["W"], rtol=1e-13, atol=1e-15)
        assert np.allclose(new[l]["b"], p[l]["b"] - eta * lb * g[l]["b"], rtol=1e-13, atol=1e-15)
    # apply_update with the tree is the same step
    same = lrn.apply_update(p, g, eta, lrn.learning_rate_tree(net))
    assert _tree_sum(lambda a, c: jnp.max(jnp.abs(a - c)), same, new) < 1e-14


def test_intensive_loss_equals_rescaled_learning_rate():
    """Footnote 3: GD on the mean loss (7.5) with eta N_A is GD on the extensive loss (7.4) with eta."""
    net = _net()
    p = init_params(net, jax.random.PRNGKey(8))
    _, h1 = lrn.train(net, p, X_A, Y_A, 0.02, 10, X_eval=X_B)
    _, h2 = lrn.train(net, p, X_A, Y_A, 0.02 * 4, 10, intensive=True, X_eval=X_B)
    assert np.allclose(h1["z_eval"], h2["z_eval"], rtol=1e-12, atol=1e-13)
    assert np.allclose(h1["loss"], 4 * h2["loss"], rtol=1e-12)


# ----------------------------------------------------------------------- function-space dynamics

def test_one_step_prediction_residual_is_order_eta_squared():
    net = _net()
    p = init_params(net, jax.random.PRNGKey(9))
    XD = np.vstack([X_A, X_B])
    idx = np.arange(4)
    H = empirical_ntk(net, p, XD)
    z0 = np.asarray(forward(net, p, XD)[net.L])
    eps = lrn.error_factor(z0[idx], Y_A)
    res, dL_res = [], []
    etas = [4e-3, 2e-3, 1e-3]
    for eta in etas:
        p1 = lrn.gd_step(net, p, X_A, Y_A, eta)
        dz = np.asarray(forward(net, p1, XD)[net.L]) - z0
        dz_pred = np.asarray(lrn.predicted_output_change(H, eps, eta, idx))
        res.append(np.abs(dz - dz_pred).max())
        assert res[-1] < 0.05 * np.abs(dz).max()
        dL = lrn.training_loss(net, p1, X_A, Y_A) - lrn.training_loss(net, p, X_A, Y_A)
        dL_res.append(dL - float(lrn.predicted_loss_change(H, eps, eta, idx)))
    # R(eta) = c2 eta^2 (1 + O(eta ||H||)): halving eta divides the residual by 4
    lam_max = np.linalg.eigvalsh(np.asarray(H[:, :, :4, :4]).transpose(2, 0, 3, 1).reshape(8, 8)).max()
    tol = 4 * 2 * etas[0] * lam_max
    for r in (res, dL_res):
        assert abs(r[0] / r[1] - 4) < tol and abs(r[1] / r[2] - 4) < tol / 2


def test_loss_change_function_space_equals_parameter_space():
    """(7.14) with the NTK of dlt.networks equals (7.12) with the learning_rate_tree: this ties the
    two modules' lambda conventions together."""
    net = _net(lambda_b=[0.5, 1.0, 2.0], lambda_W=[3.0, 1.5, 0.25])
    p = init_params(net, jax.random.PRNGKey(10))
    g = lrn.loss_gradient(net, p, X_A, Y_A)
    lam = lrn.learning_rate_tree(net)
    param_space = -0.1 * _tree_sum(lambda la, gg: la * jnp.sum(gg ** 2), lam, g)
    H = empirical_ntk(net, p, X_A)
    eps = lrn.error_factor(forward(net, p, X_A)[3], Y_A)
    assert np.isclose(float(lrn.predicted_loss_change(H, eps, 0.1)), param_space, rtol=1e-12)
    # (7.19) with O = the training loss is (7.14); with O = z_{i;d} it is (7.20)
    assert np.isclose(float(lrn.predicted_observable_change(H, eps, eps, 0.1)), param_space, rtol=1e-12)
    dO = np.zeros((4, 2))
    dO[2, 1] = 1.0
    assert np.isclose(float(lrn.predicted_observable_change(H, eps, dO, 0.1)),
                      float(lrn.predicted_output_change(H, eps, 0.1)[2, 1]), rtol=1e-12)


def test_linear_model_one_step_is_exact():
    """For a model linear in its parameters (L = 1) and MSE loss, (7.20) is exact and
    dL = -eta eps.H.eps + eta^2/2 |H eps|^2 exactly."""
    net = MLP((3, 2), "tanh", C_b=0.5, lambda_b=0.3, lambda_W=1.7)
    p = init_params(net, jax.random.PRNGKey(11))
    XD = np.vstack([X_A, X_B])
    idx = np.arange(4)
    H = empirical_ntk(net, p, XD)
    # closed form of the first-layer NTK (spec item 16): delta_ij [lambda_b + lambda_W x.x'/n_0]
    H1 = 0.3 + 1.7 * XD @ XD.T / 3
    assert np.allclose(H, np.eye(2)[:, :, None, None] * H1, rtol=1e-13, atol=1e-14)
    z0 = np.asarray(forward(net, p, XD)[1])
    eps = lrn.error_factor(z0[idx], Y_A)
    eta = 0.2
    p1 = lrn.gd_step(net, p, X_A, Y_A, eta)
    dz = np.asarray(forward(net, p1, XD)[1]) - z0
    dz_pred = np.asarray(lrn.predicted_output_change(H, eps, eta, idx))
    assert np.allclose(dz, dz_pred, rtol=1e-12, atol=1e-14)
    dL = lrn.training_loss(net, p1, X_A, Y_A) - lrn.training_loss(net, p, X_A, Y_A)
    exact = float(lrn.predicted_loss_change(H, eps, eta, idx)) + 0.5 * np.sum(dz_pred[idx] ** 2)
    assert np.isclose(dL, exact, rtol=1e-12)
    # and the frozen-NTK trajectory is the real trajectory, step after step
    _, hist = lrn.train(net, p, X_A, Y_A, eta, 15, X_eval=XD)
    zl = np.asarray(lrn.linearized_outputs(H, z0, Y_A, eta, 15, idx))
    assert zl.shape == (16, 7, 2)
    assert np.allclose(zl, hist["z_eval"], rtol=1e-11, atol=1e-12)


def test_linearized_outputs_first_step_and_cross_entropy():
    net = _net()
    p = init_params(net, jax.random.PRNGKey(12))
    H = empirical_ntk(net, p, X_A)
    z0 = forward(net, p, X_A)[3]
    zl = lrn.linearized_outputs(H, z0, P_A, 0.05, 3, loss="cross_entropy")
    eps = lrn.error_factor(z0, P_A, "cross_entropy")
    assert np.allclose(zl[1] - z0, lrn.predicted_output_change(H, eps, 0.05), rtol=1e-13, atol=1e-15)
    # the training loss decreases to first order (7.14): predicted change <= 0
    assert float(lrn.predicted_loss_change(H, eps, 0.05)) < 0


# -------------------------------------------------------------------------------------------- SGD

def test_minibatches_partition_and_reproducibility():
    b = lrn.minibatches(10, 3, np.random.default_rng(0))
    assert [len(x) for x in b] == [3, 3, 3, 1]
    assert sorted(np.concatenate(b).tolist()) == list(range(10))
    assert all((x == y).all() for x, y in zip(b, lrn.minibatches(10, 3, 0)))
    k = lrn.minibatches(10, 5, jax.random.PRNGKey(0))
    assert sorted(np.concatenate(k).tolist()) == list(range(10))


def test_sgd_full_batch_equals_gd_and_is_reproducible():
    net = _net()
    p = init_params(net, jax.random.PRNGKey(13))
    p_gd, h_gd = lrn.train(net, p, X_A, Y_A, 0.05, 8)
    p_sgd, h_sgd = lrn.train(net, p, X_A, Y_A, 0.05, 8, batch_size=4, rng=np.random.default_rng(1))
    assert np.allclose(h_gd["loss"], h_sgd["loss"], rtol=1e-12)    # same gradient, summed in another order
    assert _tree_sum(lambda a, c: jnp.max(jnp.abs(a - c)), p_gd, p_sgd) < 1e-12
    # genuine mini-batches: same seed -> same run; the steps use the minibatches() partition
    _, h1 = lrn.train(net, p, X_A, Y_A, 0.05, 5, batch_size=2, rng=3)
    _, h2 = lrn.train(net, p, X_A, Y_A, 0.05, 5, batch_size=2, rng=np.random.default_rng(3))
    assert np.array_equal(h1["loss"], h2["loss"])
    batches = lrn.minibatches(4, 2, 3)
    q = lrn.gd_step(net, p, X_A[batches[0]], Y_A[batches[0]], 0.05)
    assert np.isclose(h1["loss"][1], lrn.training_loss(net, q, X_A, Y_A), rtol=1e-13)
    _, h3 = lrn.train(net, p, X_A, Y_A, 0.05, 5, batch_size=2, rng=jax.random.PRNGKey(3))
    assert h3["loss"].shape == (6,)


def test_training_reduces_loss():
    net = _net()
    p = init_params(net, jax.random.PRNGKey(14))
    for loss, y in (("mse", Y_A), ("cross_entropy", P_A)):
        _, h = lrn.train(net, p, X_A, y, 0.1, 50, loss)
        assert h["loss"][-1] < 0.5 * h["loss"][0] or loss == "cross_entropy" and h["loss"][-1] < h["loss"][0]


# ---------------------------------------------------------------------------------------- bad input

def test_bad_input():
    net = _net()
    p = init_params(net, jax.random.PRNGKey(15))
    with pytest.raises(ValueError, match="shape"):
        lrn.gd_step(net, p, X_A, Y_A[:3], 0.1)                    # mismatched targets
    with pytest.raises(ValueError, match="shape"):
        lrn.training_loss(net, p, X_A, Y_A.T)
    with pytest.raises(ValueError, match="same shape"):
        lrn.mse(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="positive"):
        lrn.gd_step(net, p, X_A, Y_A, -0.1)                       # negative learning rate
    with pytest.raises(ValueError, match="positive"):
        lrn.train(net, p, X_A, Y_A, 0.0, 3)
    with pytest.raises(TypeError):
        lrn.gd_step(net, p, X_A, Y_A, "fast")
    with pytest.raises(ValueError, match="unknown loss"):
        lrn.gd_step(net, p, X_A, Y_A, 0.1, "hinge")
    with pytest.raises(TypeError):
        lrn.get_loss(3)
    with pytest.raises(ValueError, match="probability"):
        lrn.training_loss(net, p, X_A, Y_A, "cross_entropy")       # targets are not distributions
    with pytest.raises(ValueError, match=">= 0"):
        lrn.gd_step(net, p, X_A, Y_A, 0.1, lam=-1.0)
    bad_lam = lrn.learning_rate_tree(net)
    bad_lam[2] = {"W": -0.1, "b": 1.0}
    with pytest.raises(ValueError, match=">= 0"):
        lrn.gd_step(net, p, X_A, Y_A, 0.1, lam=bad_lam)
    with pytest.raises(ValueError, match="params"):
        lrn.gd_step(net, {1: p[1]}, X_A, Y_A, 0.1)
    with pytest.raises(ValueError, match="inputs"):
        lrn.gd_step(net, p, X_A[:, :2], Y_A, 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        lrn.train(net, p, X_A, Y_A, 0.1, 3, batch_size=5, rng=0)
    with pytest.raises(ValueError, match="rng"):
        lrn.train(net, p, X_A, Y_A, 0.1, 3, batch_size=2)
    with pytest.raises(TypeError, match="rng"):
        lrn.minibatches(4, 2, "seed")
    with pytest.raises(ValueError, match="steps"):
        lrn.train(net, p, X_A, Y_A, 0.1, -1)
    H = empirical_ntk(net, p, X_A)
    eps = np.zeros((4, 2))
    with pytest.raises(ValueError, match="H must"):
        lrn.predicted_output_change(H[0], eps, 0.1)
    with pytest.raises(ValueError, match="eps"):
        lrn.predicted_output_change(H, eps[:3], 0.1)
    with pytest.raises(ValueError, match="idx_A"):
        lrn.predicted_output_change(H, eps, 0.1, idx_A=[0, 1, 2, 9])
    with pytest.raises(ValueError, match="dO_dz"):
        lrn.predicted_observable_change(H, eps, eps[:2], 0.1)
    with pytest.raises(ValueError, match="positive"):
        lrn.predicted_loss_change(H, eps, -1.0)
    with pytest.raises(ValueError, match="z0"):
        lrn.linearized_outputs(H, np.zeros((3, 2)), Y_A, 0.1, 3)
