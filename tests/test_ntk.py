"""Tests of dlt.ntk (book chapter 8): the joint flow of K, V, the NTK mean H and D, F, B, A.

Independent references: the printed raised-index recursions (8.77), (8.79), (8.89), (8.97) with the
full inverse kernel and full N-dimensional quadrature (the library uses block-local z-forms); the
compact single-input forms (9.13)-(9.16) with 1-D quadrature; exact layer-2 numbers for ReLU (spec);
closed forms of deep linear networks; the per-draw forward equation (8.12) against autodiff."""
import numpy as np
import pytest

import dlt  # noqa: F401
from dlt.activations import gauss_expect, get_activation
from dlt.gaussian import gaussian_expectation
from dlt.kernels import kernel_fn
from dlt.networks import MLP, empirical_ntk, forward, init_params
from dlt.ntk import first_layer_ntk, ntk_flow, ntk_mean_step

LB, LW = [0.5, 1.0, 0.7, 1.2, 0.3, 0.9], [1.5, 0.8, 1.1, 0.6, 1.3, 2.0]
X3 = np.array([[1, .3, -.5, .8], [.2, -1, .7, .1], [-.6, .4, .9, -1.2]])


def tensors(f, l):
    return [getattr(f, k)[l] for k in "KVHDFBA"]


# ----------------------------------------------------------------------------- single input
def single_reference(act, Cb, CW, lb, lw, x2, L, widths):
    """(9.6), (9.13)-(9.16) with r = n_l/n_{l-1} on every inherited term; 1-D Gauss-Hermite, deg 200."""
    x, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()

    def E(f, K):
        return f(np.sqrt(K) * x) @ w

    s, ds = act.f, act.df
    K, Th, V, D, F, B, A = Cb[0] + CW[0] * x2, lb[0] + lw[0] * x2, 0.0, 0.0, 0.0, 0.0, 0.0
    out = [(K, V, Th, D, F, B, A)]
    for l in range(1, L):
        cw, cb, r = CW[l], Cb[l], widths[l] / widths[l - 1]
        g = E(lambda z: s(z) ** 2, K)
        cpar, cperp = cw * E(lambda z: z * s(z) * ds(z), K) / K, cw * E(lambda z: ds(z) ** 2, K)
        h = cw / (4 * K ** 2) * E(lambda z: ds(z) ** 2 * (z * z - K), K)
        s4, d4 = E(lambda z: s(z) ** 4, K), E(lambda z: ds(z) ** 4, K)
        s2d2 = E(lambda z: (s(z) * ds(z)) ** 2, K)
        q = lw[l] / cw
        loc = cw ** 2 * s4 - (cw * g) ** 2
        brD = cw ** 2 * s2d2 - cw * g * cperp + 2 * h * cpar * r * V
        V, D, F, B, A, Th, K = (
            r * cpar ** 2 * V + loc,
            r * cperp * cpar * D + q * (loc + r * cpar ** 2 * V) + Th * brD,
            r * cpar ** 2 * F + cw ** 2 * s2d2 * Th,
            r * cperp ** 2 * B + cw ** 2 * d4 * Th ** 2,
            r * cperp ** 2 * A + q * q * (loc + r * cpar ** 2 * V) + 2 * q * Th * brD
            + 2 * q * r * cperp * cpar * D + 4 * h * r * cperp * Th * D
            + Th ** 2 * (cw ** 2 * d4 - cperp ** 2 + (2 * h) ** 2 * r * V),
            lb[l] + lw[l] * g + cperp * Th, cb + cw * g)
        out.append((K, V, Th, D, F, B, A))
    return np.array(out)


@pytest.mark.parametrize("name,Cb,CW", [("tanh", 0.2, 1.5), ("tanh", 0.0, 1.0), ("relu", 0.0, 2.0),
                                        ("leaky_relu", 0.1, 1.5), ("gelu", 0.1, 1.8), ("sin", 0.0, 1.0)])
def test_single_input_matches_compact_forms(name, Cb, CW):
    widths = (2, 5, 9, 4, 12, 6)
    Cbs, CWs = [Cb, 0.1, Cb, 0.0, Cb], [CW, CW, 1.1 * CW, CW, 0.9 * CW]
    net = MLP(widths, name, C_b=Cbs, C_W=CWs, lambda_b=LB[:5], lambda_W=LW[:5])
    X = np.array([[1.0, 0.6]])
    f = ntk_flow(net, X)
    ref = single_reference(get_activation(name), Cbs, CWs, LB, LW, 0.68, 5, widths)
    got = np.stack([T[1:].reshape(5, -1)[:, 0] for T in tensors(f, slice(None))], 1)
    np.testing.assert_allclose(got, ref, rtol=2e-9, atol=1e-13)


def test_relu_second_layer_numbers():
    """Spec §4 item 3: C_W = 2, lambda = 1, |x|^2/n_0 = 1: Theta = 4, V = 20, A = 13, B = 8, D = 14, F = 8."""
    f = ntk_flow(MLP((1, 8, 4), "relu", C_W=2.0), np.ones((1, 1)))
    np.testing.assert_allclose([T.item() for T in tensors(f, 2)][1:], [20, 4, 14, 8, 8, 13], rtol=1e-13)


# ----------------------------------------------------------------------------- multi-input, literal forms
def literal_step(act, K, V, H, D, F, B, A, cw, lb, lw, r, deg=48):
    """The printed raised-index forms with the full K^{-1} and one N-dimensional Gauss-Hermite grid."""
    N = K.shape[0]

    def moments(z):
        s, d = act.f(z), act.df(z)
        zz = z[..., :, None] * z[..., None, :]
        e = np.einsum
        return np.concatenate([x.reshape(x.shape[:z.ndim - 1] + (-1,)) for x in (
            e("...a,...b->...ab", s, s), e("...a,...b->...ab", d, d),
            e("...a,...b,...c,...d->...abcd", s, s, s, s), e("...a,...b,...c,...d->...abcd", s, s, d, d),
            e("...a,...b,...c,...d->...abcd", d, d, d, d),
            e("...a,...b,...gd->...abgd", s, s, zz), e("...a,...b,...gd->...abgd", d, d, zz),
            e("...a,...c,...g->...acg", s, d, z))], -1)

    m = gaussian_expectation(moments, K, deg=deg)
    sizes = [N ** 2] * 2 + [N ** 4] * 5 + [N ** 3]
    S2, Sd, S4, M4, P4, Tss, Tdd, Tsd = (x.reshape((N,) * k) for x, k in zip(
        np.split(m, np.cumsum(sizes)[:-1]), (2, 2, 4, 4, 4, 4, 4, 3)))
    G = np.linalg.inv(K)
    Tss, Tdd = Tss - S2[:, :, None, None] * K, Tdd - Sd[:, :, None, None] * K  # <(zz - K) O>
    O, TO = lw * S2 + cw * H * Sd, lw * Tss + cw * H[:, :, None, None] * Tdd     # <Omega>, <(zz-K) Omega>
    Vup = np.einsum("ai,bj,ck,dl,ijkl->abcd", G, G, G, G, V)
    e = np.einsum
    OO = (lw * lw * S4 + lw * cw * (H[None, None] * M4 + H[:, :, None, None] * M4.transpose(2, 3, 0, 1))
          + cw * cw * H[:, :, None, None] * H[None, None] * P4)
    sO = lw * S4 + cw * H[None, None] * M4
    Dn = (cw * (sO - e("ab,cd->abcd", S2, O)) + r * cw / 4 * e("ghef,abgh,cdef->abcd", Vup, Tss, TO)
          + r * cw * cw / 2 * e("ghcd,abij,ig,jh,cd->abcd", D, Tss, G, G, Sd))
    p = e("acb,bg->acg", Tsd, G)  # <s_a s'_c z_b> G^{bg}
    Fn = (cw * cw * e("abcd,cd->acbd", M4, H) + r * cw * cw * e("acg,bde,gced->acbd", p, p, F))
    Bn = cw * cw * (e("abcd,ab,cd->acbd", P4, H, H) + r * e("ac,bd,acbd->acbd", Sd, Sd, B))
    DO = e("abij,ig,jh,ghcd,cd->abcd", TO, G, G, D, Sd)
    An = (OO - e("ab,cd->abcd", O, O) + r / 4 * e("ghef,abgh,cdef->abcd", Vup, TO, TO)
          + r * cw * cw * e("ab,cd,abcd->abcd", Sd, Sd, A) + r * cw / 2 * (DO + DO.transpose(2, 3, 0, 1)))
    return Dn, Fn, Bn, An, lb + O


@pytest.mark.parametrize("name", ["gelu", "sin", "linear"])
def test_multi_input_matches_literal_raised_index_forms(name):
    """3 inputs, 4 layers, unequal widths: each step of the library (block-local z-form, conditioned
    quadrature) equals the literal (8.63), (8.77), (8.79), (8.89), (8.97) with K^{-1} on a 3-D grid."""
    net = MLP((4, 6, 9, 5, 7), name, C_b=0.1, C_W=[1.2, 1.4, 0.9, 1.3], lambda_b=LB[:4], lambda_W=LW[:4])
    f = ntk_flow(net, X3)
    act = get_activation(name)
    for l in (2, 3):
        K, V, H, D, F, B, A = tensors(f, l)
        ref = literal_step(act, K, V, H, D, F, B, A, net.C_W[l], net.lambda_b[l], net.lambda_W[l],
                           net.widths[l] / net.widths[l - 1])
        for k, want in zip("DFBAH", ref):
            got = getattr(f, k)[l + 1]
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * np.abs(want).max(), err_msg=k)


@pytest.mark.parametrize("name", ["tanh", "relu", "leaky_relu"])
def test_multi_input_diagonal_permutation_and_symmetries(name):
    rng = np.random.default_rng(3)
    X = 0.6 * rng.normal(size=(4, 3))  # first-layer variances <~ 2.5, where tanh V is accurate to ~1e-11
    net = MLP((3, 6, 7, 5, 4), name, C_b=0.1, C_W=1.8, lambda_b=LB[:4], lambda_W=LW[:4])
    f = ntk_flow(net, X)
    for a in range(4):  # the single-input flow is the diagonal of the multi-input one
        g = ntk_flow(net, X[a:a + 1])
        for k in "KVHDFBA":
            T = getattr(f, k)
            diag = T[(slice(None),) + (a,) * (T.ndim - 1)]
            single = getattr(g, k).reshape(5, -1)[:, 0]
            np.testing.assert_allclose(diag, single, rtol=1e-11, atol=1e-14, err_msg=k)
    p = rng.permutation(4)  # equivariance under relabelling the inputs
    h = ntk_flow(net, X[p])
    for k in "KVHDFBA":
        T = getattr(f, k)
        ix = np.ix_(*([range(5)] + [p] * (T.ndim - 1)))
        np.testing.assert_allclose(T[ix], getattr(h, k), rtol=0, atol=1e-10 * np.abs(T).max(), err_msg=k)
    sym = lambda T, *perm: np.abs(T - T.transpose(0, *(q + 1 for q in perm))).max() / np.abs(T).max()  # noqa: E731
    for T in (f.V, f.A):  # footnotes 5, 6
        assert sym(T, 1, 0, 2, 3) < 1e-12 and sym(T, 2, 3, 0, 1) < 1e-12
    assert sym(f.D, 1, 0, 2, 3) < 1e-12 and sym(f.D, 0, 1, 3, 2) < 1e-12
    assert sym(f.D, 2, 3, 0, 1) > 1e-3  # not symmetric under a swap of the pairs
    assert sym(f.B, 2, 3, 0, 1) < 1e-12 and sym(f.B, 1, 0, 3, 2) < 1e-12  # (12)<->(34), (13)<->(24)
    # a1 <-> a2 alone ([a1,a3,a2,a4] -> [a2,a3,a1,a4]): a symmetry at layer 2 only
    B = f.B
    assert np.abs(B[2] - B[2].transpose(2, 1, 0, 3)).max() < 1e-12 * np.abs(B[2]).max()
    assert np.abs(B[3] - B[3].transpose(2, 1, 0, 3)).max() > 1e-3 * np.abs(B[3]).max()


# ----------------------------------------------------------------------------- NTK mean, kernel_fn
def test_deep_linear_ntk_mean_closed_form():
    """sigma = z, C_b = 0: K^(l) = C_W^l G0 (per-layer C_W products) and H^(l+1) = lambda_b + lambda_W K^(l)
    + C_W H^(l) exactly; kernel_fn and ntk_flow agree with it."""
    rng = np.random.default_rng(0)
    X, CW = rng.normal(size=(5, 3)), [1.3, 0.7, 1.1, 2.0]
    net = MLP((3, 4, 4, 4, 4), "linear", C_W=CW, lambda_b=LB[:4], lambda_W=LW[:4])
    G0 = X @ X.T / 3
    K, H = CW[0] * G0, LB[0] + LW[0] * G0
    for l in range(1, 4):
        K, H = CW[l] * K, LB[l] + LW[l] * K + CW[l] * H
    np.testing.assert_allclose(kernel_fn(net, X, get="ntk"), H, rtol=1e-13)
    np.testing.assert_allclose(ntk_flow(net, X).H[4], H, rtol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "erf", "relu", "swish"])
def test_kernel_fn_ntk_against_2d_quadrature(name):
    """Layer by layer with gauss_expect (Gauss-Hermite on each 2x2 kernel, or the arc-cosine closed form),
    an independent path to the Mehler series / closed forms of kernel_fn."""
    rng = np.random.default_rng(1)
    X1, X2 = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    net = MLP((2, 5, 5, 5), name, C_b=0.2, C_W=1.6, lambda_b=LB[:3], lambda_W=LW[:3])
    Ks, Hs = kernel_fn(net, X1, X2, layers=[1, 2, 3], get=("nngp", "ntk"))[3]
    X = np.vstack([X1, X2])
    K, H = 0.2 + 1.6 * X @ X.T / 2, LB[0] + LW[0] * X @ X.T / 2
    for l in (1, 2):
        d = K.diagonal()
        Kb = np.empty(K.shape + (2, 2))
        Kb[..., 0, 0], Kb[..., 0, 1], Kb[..., 1, 0], Kb[..., 1, 1] = d[:, None], K, K, d[None, :]
        ss = gauss_expect(name, Kb, (0, 0), deg=160)
        dd = gauss_expect(name, Kb, (1, 1), deg=160)
        K, H = 0.2 + 1.6 * ss, LB[l] + LW[l] * ss + 1.6 * dd * H
    tol = 1e-6 if name in ("tanh", "swish") else 1e-12  # Gauss-Hermite on sigma with poles: ~1e-7 at deg 160
    np.testing.assert_allclose(Ks, K[:3, 3:], rtol=tol)
    np.testing.assert_allclose(Hs, H[:3, 3:], rtol=tol)


def test_kernel_fn_get_forms_and_ntk_mean_step():
    net = MLP((4, 6, 6, 3), "tanh", C_W=1.2, lambda_b=0.3, lambda_W=[1.0, 2.0, 0.5])
    K, H = kernel_fn(net, X3, get=("nngp", "ntk"))
    np.testing.assert_array_equal(kernel_fn(net, X3), K)
    np.testing.assert_array_equal(kernel_fn(net, X3, get="ntk"), H)
    d = kernel_fn(net, X3, layers=[1, 3], get=("ntk",))
    assert set(d) == {1, 3} and isinstance(d[3], tuple) and np.array_equal(d[3][0], H)
    f = ntk_flow(net, X3)
    np.testing.assert_allclose(ntk_mean_step("tanh", f.K[2], f.H[2], 1.2, 0.3, 0.5), f.H[3], rtol=1e-13)
    np.testing.assert_allclose(H, f.H[3], rtol=1e-12)


# ----------------------------------------------------------------------------- per-draw NTK
def forward_equation_ntk(net, params, X):
    """The exact per-draw forward equation (8.12) from (8.23): O(n^3) per layer, numpy."""
    act, n = net.activation, net.widths
    z = [np.asarray(v) for v in forward(net, params, X)]
    H = np.einsum("ij,ab->ijab", np.eye(n[1]), first_layer_ntk(net, X))
    for l in range(1, net.L):
        s, d, W = act.f(z[l]), act.df(z[l]), np.asarray(params[l + 1]["W"])
        mean = net.lambda_b[l] + net.lambda_W[l] * s @ s.T / n[l]
        H = (np.einsum("ij,ab->ijab", np.eye(n[l + 1]), mean)
             + np.einsum("ik,jm,ak,bm,kmab->ijab", W, W, d, d, H))
    return H


def test_autodiff_equals_forward_equation():
    import jax
    net = MLP((4, 5, 7, 6, 3), "tanh", C_b=0.3, C_W=1.7, lambda_b=[0.5, 1.0, 0.2, 2.0],
              lambda_W=[1.5, 0.7, 1.1, 0.4])
    params = init_params(net, jax.random.PRNGKey(0))
    H = np.asarray(empirical_ntk(net, params, X3))
    np.testing.assert_allclose(H, forward_equation_ntk(net, params, X3), rtol=1e-12, atol=1e-13)
    one = MLP((4, 5), "tanh", lambda_b=0.5, lambda_W=1.5)
    H1 = np.asarray(empirical_ntk(one, init_params(one, jax.random.PRNGKey(1)), X3))
    np.testing.assert_allclose(H1, np.einsum("ij,ab->ijab", np.eye(5), first_layer_ntk(one, X3)), atol=1e-14)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="delta function"):
        ntk_flow(MLP((2, 3, 3), "perceptron"), np.ones((1, 2)))
    with pytest.raises(ValueError, match="delta function"):
        kernel_fn(MLP((2, 3, 3), "perceptron"), np.ones((1, 2)), get="ntk")
    net = MLP((2, 3, 3), "tanh")
    with pytest.raises(ValueError):
        ntk_flow(net, np.ones((2, 3)))  # n_0 mismatch
    with pytest.raises(ValueError):
        ntk_flow(net, np.ones((2, 2)))  # duplicate inputs: singular 2x2 block
    with pytest.raises(ValueError, match="get"):
        kernel_fn(net, np.ones((1, 2)), get="ntk_mean")
    with pytest.raises(ValueError):
        ntk_mean_step("tanh", np.eye(2), np.eye(3), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        ntk_mean_step("tanh", np.eye(2), np.eye(2), -1.0, 0.0, 1.0)
    with pytest.raises(TypeError):
        ntk_flow("not a net", np.ones((1, 2)))


def test_off_criticality_warns_and_fills_nan():
    with pytest.warns(UserWarning, match="exploded or vanished"):
        f = ntk_flow(MLP((1,) + (4,) * 400, "relu", C_W=0.5), np.ones((1, 1)))
    assert np.isnan(f.A[-1]).all() and np.isfinite(f.H[2]).all()


# ----------------------------------------------------------------------------- real networks
def test_second_layer_against_real_networks():
    """Layer 2 is exact at any width (the tensors vanish at layer 1): two inputs, tanh, n_1 = 8; every
    component of H, V, D, F, B, A within 4.5 standard errors of 20k real networks (spec §4 item 3)."""
    from dlt.networks import ntk_ensemble
    from dlt.stats import ntk_moments
    X = np.array([[1.0, 0.0], [0.6, 0.8]]) * np.sqrt(2)  # G0 = [[1, .6], [.6, 1]]
    net = MLP((2, 8, 4), "tanh", C_b=0.1, C_W=1.3, lambda_b=0.5, lambda_W=1.5)
    f = ntk_flow(net, X)
    Z, H = ntk_ensemble(net, X, 20000, seed=11)
    m = ntk_moments(Z, H, n_prev=8)
    for k in "HVDFBA":
        val, se = m[k]
        pull = np.abs(val - getattr(f, k)[2]) / np.maximum(se, 1e-300)
        assert np.max(pull) < 4.5, (k, np.max(pull))
