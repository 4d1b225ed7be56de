"""Timings of dlt.kernels against their targets. Run: python benchmarks/bench_kernels.py

kernel_fn: N = 1000 inputs in 10 dimensions, depth 10 (all layers returned), ReLU (closed form)
and tanh (Mehler series); the tanh error is measured against a 2-D trapezoid recursion at degree 200
on a 20-input subset; the same with the NTK mean (get=("nngp", "ntk"), chapter 8 targets: ReLU < 0.5 s,
tanh < 3 s). preactivation_flow (K, V, G1): N_D = 8 inputs at depth 20, and one input at depth 10^4
(also through the compact chapter-5 recursion of dlt.criticality). ntk.ntk_flow (K, V, H, D, F, B, A):
N_D = 4 at depth 20 and one input at depth 10^4. networks.ntk_ensemble: 10^4 real networks."""
import time

import numpy as np

import dlt  # noqa: F401
from dlt.criticality import single_input_flow
from dlt.gaussian import gaussian_expectation
from dlt.kernels import kernel_fn, preactivation_flow
from dlt.networks import MLP, ntk_ensemble
from dlt.ntk import ntk_flow


def best_of(fn, repeat=3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times[0], min(times)


def reference(net, K1, layers, H1=None):
    """The kernel (and, given H1, NTK-mean) recursion on the pairs of K1 by 2-D trapezoid quadrature
    at degree 200."""
    K, H, out, outH = K1, H1, {1: K1}, {1: H1}
    f, df = net.activation.f, net.activation.df
    for l in range(1, layers):
        d = np.diag(K)
        Kb = np.empty(K.shape + (2, 2))
        Kb[..., 0, 0], Kb[..., 0, 1], Kb[..., 1, 0], Kb[..., 1, 1] = d[:, None], K, K, d[None, :]
        S = gaussian_expectation(
            lambda z: np.stack([f(z[..., 0]) * f(z[..., 1]), df(z[..., 0]) * df(z[..., 1])], -1),
            Kb.reshape(-1, 2, 2), deg=200, rule="trapezoid").reshape(K.shape + (2,))
        if H is not None:
            H = outH[l + 1] = net.lambda_b[l] + net.lambda_W[l] * S[..., 0] + net.C_W[l] * S[..., 1] * H
        K = out[l + 1] = net.C_b[l] + net.C_W[l] * S[..., 0]
    return out, outH


def main():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 10))
    print(f"{'benchmark':<58s} {'first':>8s} {'best':>8s}   target")
    for act, cb, cw, target in (("relu", 0.0, 2.0, 0.5), ("tanh", 0.0, 1.0, 2.0), ("tanh", 0.1, 1.5, 2.0)):
        net = MLP((10,) + (100,) * 9 + (1,), act, cb, cw)
        out, first, best = best_of(lambda: kernel_fn(net, X, layers=range(1, 11)))
        flag = "PASS" if best < target else "FAIL"
        print(f"kernel_fn {act:<5s} C_b={cb} C_W={cw}, N=1000, n0=10, L=10 {first:8.3f} {best:8.3f}"
              f"   < {target} s  {flag}")
        if act == "tanh":
            sub = rng.choice(1000, 20, replace=False)
            ref = reference(net, out[1][np.ix_(sub, sub)], 10)[0]
            err = max(np.abs(ref[l] - out[l][np.ix_(sub, sub)]).max() for l in ref)
            print(f"  max |K - reference| over layers 1..10 (20 inputs): {err:.1e}   target < 1e-8  "
                  f"{'PASS' if err < 1e-8 else 'FAIL'}")
    for act, cb, cw, target in (("relu", 0.0, 2.0, 0.5), ("tanh", 0.0, 1.0, 3.0)):
        net = MLP((10,) + (100,) * 9 + (1,), act, cb, cw)
        out, first, best = best_of(lambda: kernel_fn(net, X, layers=range(1, 11), get=("nngp", "ntk")))
        print(f"kernel_fn {act:<5s} NNGP + NTK, N=1000, n0=10, L=10          {first:8.3f} {best:8.3f}"
              f"   < {target} s  {'PASS' if best < target else 'FAIL'}")
        if act == "tanh":
            sub = np.ix_(*(rng.choice(1000, 20, replace=False),) * 2)
            refK, refH = reference(net, out[1][0][sub], 10, out[1][1][sub])
            err = max(np.abs(refH[l] - out[l][1][sub]).max() / np.abs(refH[l]).max() for l in refH)
            print(f"  max |H - reference| / max|H| over layers 1..10 (20 inputs): {err:.1e}   target < 1e-8  "
                  f"{'PASS' if err < 1e-8 else 'FAIL'}")
    x1 = np.linspace(-2, 2, 1000)[:, None]  # a 1-D regression: every pair nearly parallel
    net = MLP((1,) + (100,) * 9 + (1,), "tanh", 0.1, 1.0)
    _, first, best = best_of(lambda: kernel_fn(net, x1, get=("nngp", "ntk")))
    print(f"kernel_fn tanh  NNGP + NTK, N=1000 inputs on a line, L=10  {first:8.3f} {best:8.3f}"
          f"   < 3.0 s  {'PASS' if best < 3 else 'FAIL'}")
    # Targets of the chapter 4-5 issue for the full flow (K, V, G1).
    Xs = rng.standard_normal((8, 4))
    for act, cb, cw in (("tanh", 0.0, 1.0), ("gelu", 0.17, 1.98), ("relu", 0.0, 2.0)):
        net = MLP((4,) + (32,) * 20, act, cb, cw)
        _, first, best = best_of(lambda: preactivation_flow(net, Xs), repeat=1)
        print(f"preactivation_flow {act:<5s} N_D=8, L=20 (K, V, G1)        {first:8.3f} {best:8.3f}"
              f"   < 10 s  {'PASS' if best < 10 else 'FAIL'}")
    net = MLP((1,) + (32,) * 10_000, "tanh", 0.0, 1.0)
    _, first, best = best_of(lambda: preactivation_flow(net, np.ones((1, 1))), repeat=1)
    print(f"preactivation_flow tanh  N_D=1, L=10^4 (K, V, G1)     {first:8.3f} {best:8.3f}"
          f"   < 1 s  {'PASS' if best < 1 else 'FAIL'}")
    _, first, best = best_of(lambda: single_input_flow("tanh", 0.0, 1.0, 1.0, 10_000))
    print(f"criticality.single_input_flow tanh, L=10^4 (K, V, G1)  {first:8.3f} {best:8.3f}"
          f"   < 1 s  {'PASS' if best < 1 else 'FAIL'}")

    for act, cb, cw in (("tanh", 0.0, 1.0), ("relu", 0.0, 2.0)):
        net = MLP((4,) + (32,) * 20, act, cb, cw)
        _, first, best = best_of(lambda: ntk_flow(net, Xs[:4]), repeat=1)
        print(f"ntk_flow {act:<5s} N_D=4, L=20 (K, V, H, D, F, B, A)     {first:8.3f} {best:8.3f}"
              f"   < 10 s  {'PASS' if best < 10 else 'FAIL'}")
    net = MLP((1,) + (32,) * 10_000, "tanh", 0.0, 1.0)
    _, first, best = best_of(lambda: ntk_flow(net, np.ones((1, 1))), repeat=1)
    print(f"ntk_flow tanh  N_D=1, L=10^4 (K, V, H, D, F, B, A)    {first:8.3f} {best:8.3f}"
          f"   < 5 s  {'PASS' if best < 5 else 'FAIL'}")
    net = MLP((4, 64, 64, 8), "tanh", 0.0, 1.0)
    _, first, best = best_of(lambda: ntk_ensemble(net, Xs[:2], 10_000, seed=0))
    print(f"ntk_ensemble tanh 10^4 nets (4, 64, 64, 8), N_D=2        {first:8.3f} {best:8.3f}"
          f"   < 5 s  {'PASS' if best < 5 else 'FAIL'}")


if __name__ == "__main__":
    main()
