"""Timings of dlt.kernels against their targets. Run: python benchmarks/bench_kernels.py

kernel_fn: N = 1000 inputs in 10 dimensions, depth 10 (all layers returned), ReLU (closed form)
and tanh (Mehler series); the tanh error is measured against a 2-D trapezoid recursion at degree 200
on a 20-input subset. preactivation_flow (K, V, G1): N_D = 8 inputs at depth 20, and one input at
depth 10^4 (also through the compact chapter-5 recursion of dlt.criticality)."""
import time

import numpy as np

import dlt  # noqa: F401
from dlt.criticality import single_input_flow
from dlt.gaussian import gaussian_expectation
from dlt.kernels import kernel_fn, preactivation_flow
from dlt.networks import MLP


def best_of(fn, repeat=3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times[0], min(times)


def reference(net, K1, layers):
    """The kernel recursion on the pairs of K1 by 2-D trapezoid quadrature at degree 200."""
    K, out = K1, {1: K1}
    for l in range(1, layers):
        d = np.diag(K)
        Kb = np.empty(K.shape + (2, 2))
        Kb[..., 0, 0], Kb[..., 0, 1], Kb[..., 1, 0], Kb[..., 1, 1] = d[:, None], K, K, d[None, :]
        S2 = gaussian_expectation(lambda z: net.activation.f(z[..., 0]) * net.activation.f(z[..., 1]),
                                  Kb.reshape(-1, 2, 2), deg=200, rule="trapezoid").reshape(K.shape)
        K = out[l + 1] = net.C_b[l] + net.C_W[l] * S2
    return out


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
            ref = reference(net, out[1][np.ix_(sub, sub)], 10)
            err = max(np.abs(ref[l] - out[l][np.ix_(sub, sub)]).max() for l in ref)
            print(f"  max |K - reference| over layers 1..10 (20 inputs): {err:.1e}   target < 1e-8  "
                  f"{'PASS' if err < 1e-8 else 'FAIL'}")
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


if __name__ == "__main__":
    main()
