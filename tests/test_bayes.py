"""Tests of dlt.bayes (book chapter 6): evidence, infinite- and finite-width posteriors.

Independent references: the full inverse of K (np.linalg.inv), conditioning through the precision
matrix (completing the square), parameter-space Bayesian linear regression on random features
(6.27), scipy.stats.multivariate_normal, 1-D optimizers, adaptive quadrature of the quartic
conditional distribution, the exact two-layer ReLU conditional variance (a binomial mixture of
chi-square laws), an Edgeworth expansion of the prior to first order in 1/n (a different route to
(6.88) than the book's couplings), the exact single-input posterior of a two-layer linear network
(a generalized inverse Gaussian law), and the importance sampler of real networks."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats
from scipy.optimize import minimize_scalar

import dlt  # noqa: F401
from dlt import bayes
from dlt.kernels import kernel_fn, preactivation_flow
from dlt.networks import MLP, ensemble, forward, init_params, stochastic_metric


def spd(rng, N, cond=20.0):
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    return Q @ np.diag(np.geomspace(1.0, 1.0 / cond, N)) @ Q.T


def condition_by_precision(S, A, B, y):
    """Mean and covariance of z_B given z_A = y from the precision matrix P = S^{-1} (completing
    the square: p(z_B|y) ~ exp(-1/2 z_B P_BB z_B - z_B P_BA y))."""
    P = np.linalg.inv(S)
    cov = np.linalg.inv(P[np.ix_(B, B)])
    return -cov @ P[np.ix_(B, A)] @ y, cov


# ----------------------------------------------------------------------------- block inverse, GP
def test_inverse_blocks_conventions():
    rng = np.random.default_rng(0)
    K = spd(rng, 7)
    A, B = np.array([5, 0, 3]), np.array([1, 6, 2, 4])
    r = bayes.inverse_blocks(K, A, B)
    Ki = np.linalg.inv(K)
    for key, (I, J) in dict(AA=(A, A), AB=(A, B), BA=(B, A), BB=(B, B)).items():
        np.testing.assert_allclose(r[key], Ki[np.ix_(I, J)], atol=1e-11 * np.abs(Ki).max())
    np.testing.assert_allclose(r["KA_inv"], np.linalg.inv(K[np.ix_(A, A)]), rtol=1e-12, atol=1e-12)
    # (6.35): the inverse of the A-block is not the A-block of the inverse
    assert np.abs(r["KA_inv"] - Ki[np.ix_(A, A)]).max() > 0.1 * np.abs(Ki[np.ix_(A, A)]).max()
    np.testing.assert_allclose(r["post_cov"], np.linalg.inv(Ki[np.ix_(B, B)]), rtol=1e-10)  # (6.56)


@pytest.mark.parametrize("noise", [0.0, 0.37])
def test_gp_posterior_vs_precision_conditioning(noise):
    rng = np.random.default_rng(1)
    K = spd(rng, 6)
    A, B = np.array([0, 2, 5]), np.array([4, 1, 3])
    y = rng.standard_normal((3, 2))
    S = K.copy()
    S[A, A] += noise                               # observed outputs carry the noise (6.10)
    mean, cov = bayes.gp_posterior(K, A, B, y, noise_var=noise)
    m_ref, c_ref = condition_by_precision(S, A, B, y)
    np.testing.assert_allclose(mean, m_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, c_ref, rtol=1e-10, atol=1e-12)
    # (6.67): component i of the mean uses y_i only; the covariance is shared
    m1, _ = bayes.gp_posterior(K, A, B, y[:, 0], noise_var=noise)
    assert m1.shape == (3,)
    np.testing.assert_allclose(m1, mean[:, 0], rtol=1e-14, atol=1e-15)


def test_gp_posterior_at_training_points():
    rng = np.random.default_rng(2)
    K = spd(rng, 5)
    y = rng.standard_normal((3, 1))
    mean, cov = bayes.gp_posterior(K, [0, 1, 2], [1, 3], y)
    np.testing.assert_allclose(mean[0], y[1], atol=1e-12)
    assert abs(cov[0, 0]) < 1e-12 and abs(cov[0, 1]) < 1e-12


def test_gp_posterior_equals_bayesian_linear_regression():
    """(6.27): conditioning in function space = parameter-space posterior of an L=1 model on
    random features (prior W ~ N(0, C_W/P), b ~ N(0, C_b)); also MAP = posterior mean there."""
    rng = np.random.default_rng(3)
    P, NA, NB, nL, Cb, Cw, s2 = 12, 8, 4, 2, 0.3, 1.7, 0.1
    Phi = np.tanh(rng.standard_normal((NA + NB, 3)) @ rng.standard_normal((3, P)))
    net = MLP((P, nL), "linear", C_b=Cb, C_W=Cw)
    theta_true = rng.standard_normal(P + 1)
    F = np.c_[np.ones(NA + NB), Phi]
    y = (F[:NA] @ theta_true)[:, None] + np.sqrt(s2) * rng.standard_normal((NA, nL))
    mean, cov = bayes.posterior_infinite_width(net, Phi[:NA], y, Phi[NA:], noise_var=s2)
    Lam = np.diag([Cb] + [Cw / P] * P)
    Sig = np.linalg.inv(F[:NA].T @ F[:NA] / s2 + np.linalg.inv(Lam))
    mu = Sig @ F[:NA].T @ y / s2                                     # (P+1, n_L)
    np.testing.assert_allclose(mean, F[NA:] @ mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, F[NA:] @ Sig @ F[NA:].T, rtol=1e-10, atol=1e-12)
    # the posterior mean of theta is the MAP (6.19): the gradient of (6.22) vanishes there
    params = {1: {"W": jnp.asarray(mu[1:].T), "b": jnp.asarray(mu[0])}}
    grad = jax.grad(lambda p: bayes.map_objective(net, p, Phi[:NA], y, s2))(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grad)) < 1e-9
    # and the MLE (6.21) minimizes the loss alone: least squares
    theta_mle = np.linalg.lstsq(F[:NA], y, rcond=None)[0]
    p_mle = {1: {"W": jnp.asarray(theta_mle[1:].T), "b": jnp.asarray(theta_mle[0])}}
    g = jax.grad(lambda p: bayes.gaussian_nll(forward(net, p, Phi[:NA])[1], jnp.asarray(y), s2))(p_mle)
    assert max(float(jnp.abs(v).max()) for v in jax.tree_util.tree_leaves(g)) < 1e-9


def test_gaussian_nll_and_prior():
    rng = np.random.default_rng(4)
    f, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    ref = -stats.norm.logpdf(y, loc=f, scale=np.sqrt(0.2)).sum()      # (6.16)-(6.17), summed over i
    assert bayes.gaussian_nll(f, y, 0.2) == pytest.approx(ref, rel=1e-13)
    net = MLP((3, 4, 2), "tanh", C_b=[0.5, 0.0], C_W=[1.5, 2.0])
    p = init_params(net, jax.random.PRNGKey(0))
    ref = (stats.norm.logpdf(np.asarray(p[1]["W"]), scale=np.sqrt(1.5 / 3)).sum()
           + stats.norm.logpdf(np.asarray(p[1]["b"]), scale=np.sqrt(0.5)).sum()
           + stats.norm.logpdf(np.asarray(p[2]["W"]), scale=np.sqrt(2.0 / 4)).sum())   # b^(2): C_b = 0
    assert float(bayes.log_prior(net, p)) == pytest.approx(ref, rel=1e-12)


# ----------------------------------------------------------------------------- evidence
@pytest.mark.parametrize("noise", [0.0, 0.25])
def test_log_evidence_vs_scipy(noise):
    rng = np.random.default_rng(5)
    K = spd(rng, 5)
    y = rng.standard_normal((5, 3))
    ref = sum(stats.multivariate_normal(np.zeros(5), K + noise * np.eye(5)).logpdf(y[:, i]) for i in range(3))
    assert bayes.log_evidence(K, y, noise) == pytest.approx(ref, rel=1e-12)


def test_single_input_evidence():
    y = np.array([0.7, -1.2, 0.4])
    K = np.geomspace(1e-3, 1e3, 7)
    np.testing.assert_allclose(bayes.log_evidence_single(K, y),
                               [bayes.log_evidence([[k]], y[None]) for k in K], rtol=1e-13)
    r = minimize_scalar(lambda lk: -bayes.log_evidence_single(np.exp(lk), y), bracket=(-2, 1),
                        tol=1e-12)
    Kstar = np.sum(y ** 2) / 3
    assert np.exp(r.x) == pytest.approx(Kstar, rel=1e-6)
    peak = -1.5 * (np.log(2 * np.pi * Kstar) + 1)
    assert bayes.log_evidence_single(Kstar, y) == pytest.approx(peak, rel=1e-14)
    # (6.37): slope -n_L/2 in log K at large K; (6.38): exponential collapse at small K
    h = 1e-3
    slope = (bayes.log_evidence_single(1e8 * np.exp(h), y) - bayes.log_evidence_single(1e8, y)) / h
    assert slope == pytest.approx(-1.5, abs=1e-6)
    assert 1e-6 * bayes.log_evidence_single(1e-6, y) == pytest.approx(-np.sum(y ** 2) / 2, rel=1e-4)


def test_two_input_evidence_closed_forms():
    rng = np.random.default_rng(6)
    for _ in range(5):
        K = spd(rng, 2, cond=rng.uniform(1.5, 50))
        y = rng.standard_normal((2, 4))
        assert bayes.log_evidence_two_input(K, y) == pytest.approx(bayes.log_evidence(K, y), rel=1e-12)
    # equal norms (6.40)-(6.45): K_[1] = 0 and the evidence factorizes into [0] and [2] parts
    K = np.array([[1.3, 0.9], [0.9, 1.3]])
    y = rng.standard_normal((2, 3))
    K0, K2 = (1.3 + 0.9) / 2, (1.3 - 0.9) / 2
    Y0, Y2 = np.sum(((y[0] + y[1]) / 2) ** 2), np.sum(((y[0] - y[1]) / 2) ** 2)
    f = -1.5 * np.log(4 * np.pi * K0) - Y0 / (2 * K0) - 1.5 * np.log(4 * np.pi * K2) - Y2 / (2 * K2)
    assert bayes.log_evidence_two_input(K, y) == pytest.approx(f, rel=1e-13)
    ref = sum(stats.multivariate_normal(np.zeros(2), K).logpdf(y[:, i]) for i in range(3))
    assert f == pytest.approx(ref, rel=1e-12)
    # batched kernels
    Ks = np.stack([K, 2 * K])
    np.testing.assert_allclose(bayes.log_evidence_two_input(Ks, y),
                               [bayes.log_evidence(k, y) for k in Ks], rtol=1e-12)


def test_bayes_factor():
    assert bayes.bayes_factor(-3.0, -5.0) == pytest.approx(np.exp(2.0), rel=1e-15)
    assert bayes.bayes_factor(-3.0, -5.0, log=True) == 2.0
    assert bayes.bayes_factor(0.0, -1000.0, log=True) == 1000.0


def test_profiled_evidence_and_scale_invariant_optimum():
    rng = np.random.default_rng(7)
    K = spd(rng, 4)
    y = rng.standard_normal((4, 2))
    val, s = bayes.profiled_log_evidence(K, y)
    r = minimize_scalar(lambda ls: -bayes.log_evidence(np.exp(ls) * K, y), bracket=(-1, 1), tol=1e-12)
    assert np.exp(r.x) == pytest.approx(s, rel=1e-6) and val == pytest.approx(-r.fun, rel=1e-12)
    th = np.linspace(0.1, 1.4, 5)
    X = np.c_[np.cos(th), np.sin(th), 0.5 * np.ones(5)]
    Y = np.c_[np.sin(2 * th) + 0.3, np.cos(3 * th)]
    for act, L in (("relu", 2), ("relu", 7), ("relu", 40), (("leaky_relu", 0.3), 5)):
        a = act if isinstance(act, str) else dlt.activations.get_activation(act[0], a=act[1])
        net = MLP((3,) + (4,) * (L - 1) + (2,), a)
        cw = bayes.evidence_optimal_cw(net, X, Y)
        r = minimize_scalar(lambda c: -bayes.network_log_evidence(net.replace(C_W=c), X, Y),
                            bounds=(0.5 * cw, 1.5 * cw), method="bounded", options=dict(xatol=1e-10))
        assert cw == pytest.approx(r.x, rel=1e-6)
    with pytest.raises(ValueError, match="scale-invariant"):
        bayes.evidence_optimal_cw(MLP((3, 4, 2), "tanh"), X, Y)
    with pytest.raises(ValueError, match="C_b = 0"):
        bayes.evidence_optimal_cw(MLP((3, 4, 2), "relu", C_b=0.1), X, Y)
    with pytest.raises(ValueError, match="same C_W"):
        bayes.evidence_optimal_cw(MLP((3, 4, 2), "relu", C_W=[1.0, 2.0]), X, Y)


def test_log_evidence_scan_matches_network_evidence():
    th = np.linspace(0, 1.5, 4)
    X = np.c_[np.cos(th), np.sin(th)]
    y = np.c_[np.sin(th), np.cos(2 * th)]
    net = MLP((2, 5, 5, 5, 2), "tanh", C_b=0.1)
    vals = [0.8, 1.3]
    out = bayes.log_evidence_scan(net, X, y, "C_W", vals, layers=[2, 4])
    for k, v in enumerate(vals):
        for l in (2, 4):
            sub = MLP((2,) + (5,) * (l - 1) + (2,), "tanh", C_b=0.1, C_W=v)
            assert out[l][k] == pytest.approx(bayes.network_log_evidence(sub, X, y), rel=1e-12)
    prof = bayes.log_evidence_scan(net, X, y, "C_W", vals, profile_scale=True)
    assert prof[0] == pytest.approx(bayes.profiled_log_evidence(
        kernel_fn(net.replace(C_W=0.8), X), y)[0], rel=1e-12)
    noisy = bayes.log_evidence_scan(net, X, y, "C_b", [0.3], noise_var=0.1)
    assert noisy[0] == pytest.approx(bayes.log_evidence(kernel_fn(net.replace(C_b=0.3), X), y, 0.1))


def test_noise_is_not_a_bias_shift():
    """Footnote 6: noise == last-layer bias shift for one input only; with N_A > 1 the bias shift
    adds sigma^2 to every entry of K, the noise only to the diagonal."""
    rng = np.random.default_rng(8)
    K = spd(rng, 3)
    y = rng.standard_normal((3, 2))
    s2 = 0.3
    one = bayes.log_evidence(K[:1, :1] + s2, y[:1])
    assert bayes.log_evidence(K[:1, :1], y[:1], s2) == pytest.approx(one, rel=1e-14)
    assert abs(bayes.log_evidence(K, y, s2) - bayes.log_evidence(K + s2, y)) > 1e-3


# ----------------------------------------------------------------------------- Hebbian
def test_quartic_conditional_variance_vs_quadrature():
    """(6.77): d/dv of the exact conditional variance at v = 0, by a central difference of 1-D
    quadratures (error O(v^2))."""
    g2, z1 = 1.3, 1.7

    def exact(v):
        w = lambda z: np.exp(-g2 * z ** 2 / 2 + v / 8 * (z ** 4 + 2 * z ** 2 * z1 ** 2))
        num = integrate.quad(lambda z: z ** 2 * w(z), -30, 30, epsabs=0, epsrel=1e-13, limit=200)[0]
        return num / integrate.quad(w, -30, 30, epsabs=0, epsrel=1e-13, limit=200)[0]

    v = 1e-4
    slope = (exact(v) - exact(-v)) / (2 * v)
    qcv = bayes.quartic_conditional_variance
    pred = (qcv(z1, g2, v) - qcv(z1, g2, -v)) / (2 * v)
    assert exact(0.0) == pytest.approx(1 / g2, rel=1e-12)
    assert slope == pytest.approx(pred, rel=1e-6)


def _relu_exact_conditional_variance(zc, n):
    """E[z2^2 | z1 = zc] for a 2-layer ReLU net, C_b = 0, C_W = 2, K^(1) = 1: G^ = (2/n) X with
    X = sum_j relu(z_j)^2 a binomial mixture of chi-square laws (z1, z2 | G^ iid N(0, G^))."""
    B = np.arange(1, n + 1)
    lpB = stats.binom.logpmf(B, n, 0.5)

    def dens(x, k):
        lf = special.logsumexp(lpB + stats.chi2.logpdf(x, B))
        return np.exp(lf + stats.norm.logpdf(zc, scale=np.sqrt(2 * x / n))) * (2 * x / n) ** k

    hi = n + 40 * np.sqrt(n) + 100
    q = [integrate.quad(dens, 0, hi, args=(k,), points=[n / 2], limit=400, epsabs=0, epsrel=1e-13)[0]
         for k in (0, 1)]
    return q[1] / q[0]


def test_hebbian_vs_exact_relu():
    """(6.78) for ReLU, L = 2 (G = 1, V = 5): Richardson extrapolation of n (exact - G) in 1/n."""
    zc = 1.5
    ns = np.array([256, 512, 1024])
    f = [n * (_relu_exact_conditional_variance(zc, n) - 1.0) for n in ns]
    a = np.linalg.solve(np.c_[np.ones(3), 1 / ns, 1 / ns ** 2], f)[0]
    pred = 200 * (bayes.hebbian_conditional_variance(zc, 1.0, 5.0, 200) - 1.0)
    assert a == pytest.approx(pred, rel=1e-4)        # next Richardson term ~ c3/n^3, |c3| ~ 1e4
    # (6.78) is (6.77) with the couplings (6.74)-(6.75) (m = 2), to O(1/n^2)
    d = []
    for n in (1000, 10000):
        g2, v = bayes.action_couplings_single(1.0, 5.0, n, 2)
        d.append(bayes.quartic_conditional_variance(zc, g2, v)
                 - bayes.hebbian_conditional_variance(zc, 1.0, 5.0, n))
    assert d[0] / d[1] == pytest.approx(100, rel=0.05)


# ----------------------------------------------------------------------------- finite-width mean
def _edgeworth_coefficient(K, V, G1, A, B, y, noise=0.0):
    """1/n coefficient of E[z_B | z_A = y] from the Edgeworth expansion of a prior with two-point
    function G = K + G1/n (+ noise on A) and fourth cumulant (V/n) x (three neuron pairings):
    d/d(1/n) of the Gaussian conditional mean + E_cond[(z_B - m) kappa.He_4(z)]/24, the Gaussian
    conditional expectation done exactly by Gauss-Hermite (the integrand is a polynomial)."""
    D = np.concatenate([A, B])
    NA, NB, N, nL = len(A), len(B), len(D), y.shape[1]
    K, V, G1 = K[np.ix_(D, D)].copy(), V[np.ix_(D, D, D, D)], G1[np.ix_(D, D)]
    K[:NA, :NA] += noise * np.eye(NA)
    sol = np.linalg.solve(K[:NA, :NA], y)
    m = K[NA:, :NA] @ sol
    dm = G1[NA:, :NA] @ sol - K[NA:, :NA] @ np.linalg.solve(K[:NA, :NA], G1[:NA, :NA] @ sol)
    P = K[NA:, NA:] - K[NA:, :NA] @ np.linalg.solve(K[:NA, :NA], K[:NA, NA:])
    I, M = np.eye(nL), nL * N
    kap = (np.einsum("ij,kl,abcd->iajbkcld", I, I, V) + np.einsum("ik,jl,acbd->iajbkcld", I, I, V)
           + np.einsum("il,jk,adbc->iajbkcld", I, I, V)).reshape((M,) * 4)
    Si = np.linalg.inv(np.kron(I, K))
    x, wq = np.polynomial.hermite_e.hermegauss(4)
    wq = wq / wq.sum()
    Lp = np.linalg.cholesky(P)
    acc = np.zeros((NB, nL))
    for idx in itertools.product(range(4), repeat=NB * nL):
        w = Lp @ x[list(idx)].reshape(nL, NB).T
        u = Si @ np.concatenate([y, m + w]).T.ravel()
        H = np.einsum("a,b,c,d->abcd", u, u, u, u)
        for s in ("ab,c,d->abcd", "ac,b,d->abcd", "ad,b,c->abcd",
                  "bc,a,d->abcd", "bd,a,c->abcd", "cd,a,b->abcd"):
            H -= np.einsum(s, Si, u, u)
        for s in ("ab,cd->abcd", "ac,bd->abcd", "ad,bc->abcd"):
            H += np.einsum(s, Si, Si)
        acc += np.prod(wq[list(idx)]) * w * np.sum(kap * H) / 24
    return m, dm + acc


@pytest.mark.parametrize("act,L,noise", [("tanh", 2, 0.0), ("tanh", 3, 0.0), ("relu", 3, 0.0),
                                          ("tanh", 3, 0.3)])
def test_finite_width_mean_vs_edgeworth(act, L, noise):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((4, 3))
    net = MLP((3,) + (20,) * (L - 1) + (2,), act, C_b=0.1, C_W=1.3)
    fl = preactivation_flow(net, X)
    A, B = np.array([0, 2]), np.array([3, 1])
    y = rng.standard_normal((2, 2))
    r = bayes.finite_width_posterior_mean(fl.K[L], fl.V[L], 20, A, B, y, G1=fl.G1[L], noise_var=noise)
    m, c = _edgeworth_coefficient(fl.K[L], fl.V[L], fl.G1[L], A, B, y, noise)
    np.testing.assert_allclose(r.m_inf, m, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.coef, c, rtol=1e-9, atol=1e-11 * np.abs(c).max())
    np.testing.assert_allclose(r.mean, m + c / 20, rtol=1e-12, atol=1e-14)
    # the unexpanded (6.88) agrees to first order: n (unexpanded - m_inf) -> coef
    big = bayes.finite_width_posterior_mean(fl.K[L], fl.V[L], 10 ** 7, A, B, y, G1=fl.G1[L], noise_var=noise)
    np.testing.assert_allclose(1e7 * (big.unexpanded - big.m_inf), c, rtol=1e-4, atol=1e-5 * np.abs(c).max())
    # the wrapper on a network gives the same numbers
    w = bayes.posterior_mean_finite_width(net, X[A], y, X[B], noise_var=noise)
    np.testing.assert_allclose(w.coef, r.coef, rtol=1e-10, atol=1e-12)


def test_finite_width_mean_mixes_components():
    """(6.89): at finite width y_{2;A} changes the posterior mean of component 1; at infinite width
    it does not (6.67)."""
    X = np.array([[1.0, 0.2], [0.3, -1.1], [0.8, -0.6]])
    net = MLP((2, 16, 2), "tanh")
    y = np.array([[1.2, -0.9], [-1.0, 1.4]])
    y2 = y.copy()
    y2[:, 1] *= -2
    r1, r2 = (bayes.posterior_mean_finite_width(net, X[:2], t, X[2:]) for t in (y, y2))
    assert r1.m_inf[0, 0] == pytest.approx(r2.m_inf[0, 0], rel=1e-14)
    assert abs(r1.coef[0, 0] - r2.coef[0, 0]) > 1e-2


# ----------------------------------------------------------------------------- representation learning
def _linear_exact_dO(Y, K1, Cw, n, nL):
    """Exact posterior shift of O = (1/n) sum z_j^2 for a 2-layer linear net on one input:
    G^ = Cw K1 X/n, X ~ chi2_n; the posterior of X is GIG(p = (n - nL)/2, a = 1, b = n Y/(Cw K1))."""
    p, b = (n - nL) / 2, n * Y / (Cw * K1)
    mode = ((p - 1) + np.sqrt((p - 1) ** 2 + b)) if p > 1 else np.sqrt(b)
    logf = lambda x: (p - 1) * np.log(x / mode) - (x - mode) / 2 - b / 2 * (1 / x - 1 / mode)
    q = [integrate.quad(lambda x: x ** k * np.exp(logf(x)), 0, mode + 60 * np.sqrt(n) + 60, points=[mode],
                        limit=400, epsabs=0, epsrel=1e-13)[0] for k in (0, 1)]
    EX = q[1] / q[0]
    return K1 * (EX - n) / n                   # E_post[O] - E_prior[O], O = K1 X / n


def test_representation_update_single_input_exact_linear():
    """(6.104) for one input reduces to V (Y - n_L K)/(2 n C_W K^2); for a 2-layer linear net the
    exact posterior is known (GIG); Richardson in 1/n recovers the coefficient."""
    K1, Cw, nL = 0.8, 1.5, 3
    y = np.array([[1.1, -0.7, 1.6]])
    Y = np.sum(y ** 2)
    K, V = Cw * K1, 2 * Cw ** 2 * K1 ** 2          # L = 2 linear: V = C_W^2 (<z^4> - <z^2>^2)
    ns = np.array([400, 800, 1600])
    f = [n * _linear_exact_dO(Y, K1, Cw, n, nL) for n in ns]
    a = np.linalg.solve(np.c_[np.ones(3), 1 / ns, 1 / ns ** 2], f)[0]
    pred = 100 * bayes.representation_update([[K]], np.full((1,) * 4, V), [0], y, Cw, 100)[0, 0]
    assert a == pytest.approx(pred, rel=1e-5)
    assert pred == pytest.approx(V * (Y - nL * K) / (2 * Cw * K ** 2), rel=1e-13)
    # (6.99) with E[dG dG] = V/n is the same thing
    upd = bayes.observable_update(np.full((1, 1), V / 100 / Cw), [[K]], y)
    assert upd == pytest.approx(pred / 100, rel=1e-13)


def test_importance_sampling_vs_exact_linear():
    """The exact sampler against the GIG closed form (one input), and z_B = 2 z_A exactly when
    x_B = 2 x_A in a bias-free linear net."""
    n, Cw, nL = 16, 1.5, 3
    x = np.array([[0.9, -0.4]])
    K1 = Cw * np.sum(x ** 2) / 2
    net = MLP((2, n, nL), "linear", C_W=Cw)
    y = np.array([[1.1, -0.7, 1.6]])
    r = bayes.posterior_importance_sampling(net, x, y, 2 * x, 100_000, seed=11)
    exact = _linear_exact_dO(np.sum(y ** 2), K1, Cw, n, nL)
    assert abs(r["dO"][0, 0] - exact) < 4 * r["dO_se"][0, 0]
    np.testing.assert_allclose(r["mean"], 2 * y, rtol=1e-10)
    assert 0 < r["ess"] <= r["n_samples"]
    # a stack of target sets shares the sampled networks: same numbers as one set at a time
    y2 = np.stack([y, 0.5 * y])
    r2 = bayes.posterior_importance_sampling(net, x, y2, 2 * x, 100_000, seed=11)
    assert r2["dO"].shape == (2, 2, 2) and r2["mean"].shape == (2, 1, 3)
    np.testing.assert_allclose(r2["dO"][0], r["dO"], rtol=1e-12)
    np.testing.assert_allclose(r2["dO_se"][0], r["dO_se"], rtol=1e-10)
    np.testing.assert_allclose(r2["log_evidence"][0], r["log_evidence"], rtol=1e-12)
    assert np.all(r2["dO_diff_se"][0] == 0) and np.all(r2["dO_diff_se"][1] > 0)
    assert np.all(r2["dO_diff_se"][1] < r2["dO_se"][0] + r2["dO_se"][1])
    assert r["prior_O"][0, 0] == pytest.approx(K1, rel=5e-3)   # se ~ 0.35/sqrt(1e5) relative


def test_representation_update_multi_input_vs_metric_covariance():
    """(6.104) = (6.99) with E[dG dG] taken from real networks' stochastic metrics (4 se)."""
    X = np.array([[1.0, 0.2], [0.3, -1.1], [0.8, -0.6]])
    n = 8
    net = MLP((2, n, 1), "tanh", C_b=0.1, C_W=1.2)
    y = np.array([[1.2], [-1.0]])
    th = bayes.penultimate_update(net, X[:2], y, X[2:])
    G = stochastic_metric(net, ensemble(net, X, 40_000, seed=12, layers=[1])[1], 2)  # (4.70)
    K = kernel_fn(net, X)
    from dlt.stats import jackknife

    def est(Gs):
        dG = Gs - Gs.mean(0)
        cov = np.einsum("sab,scd->abcd", dG[:, :2, :2], dG) / len(Gs)
        return bayes.observable_update(cov / 1.2, K[:2, :2], y)

    val, se = jackknife(est, G, n_batches=40)
    # the sample covariance of G^ is exact at any n (no 1/n expansion): V/n is exact for L = 2
    assert np.all(np.abs(val - th) <= 4 * se + 1e-12)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    rng = np.random.default_rng(13)
    K = spd(rng, 4)
    y = rng.standard_normal((2, 2))
    with pytest.raises(ValueError, match="noise_var"):
        bayes.gp_posterior(K, [0, 1], [2, 3], y, noise_var=-0.1)
    with pytest.raises(ValueError, match="shape"):
        bayes.gp_posterior(K, [0, 1], [2, 3], y[:1])
    with pytest.raises(ValueError, match="distinct positions"):
        bayes.gp_posterior(K, [0, 7], [2], y)
    with pytest.raises(ValueError, match="symmetric"):
        bayes.gp_posterior(K + np.triu(np.ones((4, 4)), 1), [0, 1], [2], y)
    dup = np.ones((3, 3))
    with pytest.raises(ValueError, match="not positive definite"):
        bayes.log_evidence(dup, np.ones((3, 1)))
    assert np.isfinite(bayes.log_evidence(dup, np.ones((3, 1)), noise_var=0.1))
    with pytest.raises(ValueError, match="not positive definite"):
        bayes.log_evidence_two_input([[1.0, 1.0], [1.0, 1.0]], np.ones((2, 1)))
    with pytest.raises(ValueError, match="> 0"):
        bayes.log_evidence_single(0.0, [1.0])
    with pytest.raises(ValueError, match="disjoint"):
        bayes.finite_width_posterior_mean(K, np.zeros((4,) * 4), 10, [0, 1], [1, 2], y)
    with pytest.raises(ValueError, match="positive integer"):
        bayes.finite_width_posterior_mean(K, np.zeros((4,) * 4), 0, [0, 1], [2, 3], y)
    with pytest.raises(ValueError, match="V must"):
        bayes.representation_update(K, np.zeros((3,) * 4), [0, 1], y, 1.0, 10)
    with pytest.raises(ValueError, match="cover every row"):
        bayes.inverse_blocks(K, [0, 1], [2])
    with pytest.raises(ValueError, match="noise_var > 0"):
        bayes.gaussian_nll(np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        bayes.gaussian_nll(np.zeros(3), np.zeros(4), 1.0)
    with pytest.raises(TypeError, match="MLP"):
        bayes.network_log_evidence("relu", np.ones((2, 2)), y)
    with pytest.raises(ValueError, match="param"):
        bayes.log_evidence_scan(MLP((2, 3, 2)), np.eye(2), y, "lambda_W", [1.0])
    with pytest.raises(ValueError, match="L >= 2"):
        bayes.posterior_importance_sampling(MLP((2, 2)), np.eye(2), y, None, 1000, seed=0)
    with pytest.raises(ValueError, match="G > 0"):
        bayes.hebbian_conditional_variance(1.0, -1.0, 1.0, 10)
