"""Multilayer perceptrons in the book's parameterization (chapter 2) and ensembles of real networks.

One frozen description, :class:`MLP`, is shared by theory and simulation. The network is

    z^(1)_i   = b^(1)_i + sum_j W^(1)_ij x_j                          (2.5), first layer
    z^(l+1)_i = b^(l+1)_i + sum_j W^(l+1)_ij sigma(z^(l)_j)           (2.5)

with b^(l) ~ N(0, C_b^(l)) and W^(l)_ij ~ N(0, C_W^(l) / n_{l-1})  (2.19)-(2.22), and the NTK uses
the learning-rate tensor lambda_b^(l), lambda_W^(l) / n_{l-1} (book ch. 7-8). Layer indices in
this module are the book's: ``z[l]`` is z^(l), ``params[l]`` holds W^(l) and b^(l), and entry
``l-1`` of a per-layer tuple such as ``net.C_W`` belongs to layer l.

Two engines, each used where it is fastest (measured on a 2-core machine):

* :func:`forward` / :func:`init_params` / :func:`empirical_ntk` are JAX, for autodiff of a single
  network (the NTK, training), as are the random features of ch. 10, :func:`ntk_features`
  (10.138)-(10.141) and :func:`last_layer_features` (10.134)-(10.137).
* :func:`ensemble` draws many networks at once as batched numpy matrix products, chunked to bound
  memory. It is the ground truth that notebooks check the theory against. (A vmapped JAX version
  was several times slower on 2 cores and spent 20-30 s compiling; see spec ch02-03 pitfalls.)
  Its random numbers come from an explicit ``numpy.random.Generator`` (or an int seed) rather
  than a JAX key, for the same reason.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .activations import Activation, get_activation

__all__ = ["MLP", "num_params", "init_params", "forward", "empirical_ntk", "ntk_features",
           "last_layer_features", "ensemble", "ensemble_by_metric",
           "stochastic_metric", "ntk_ensemble", "jacobian_norms",
           "check_widths", "per_layer"]


def per_layer(value, L: int, name: str, *, positive: bool = False) -> np.ndarray:
    """Validate a per-layer hyperparameter: a scalar or a length-L sequence -> float array (L,).

    Entry l-1 belongs to layer l. Raises ``ValueError`` for a wrong length, a non-finite value,
    a negative value, or (``positive=True``) a value <= 0."""
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1 or arr.size not in (1, L):
        raise ValueError(f"{name} must be a scalar or a sequence of length L={L} (one per layer), "
                         f"got {value!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or (positive and np.any(arr <= 0)):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value!r}")
    return np.array(np.broadcast_to(arr, (L,)))


def check_widths(widths) -> tuple:
    """Validate ``[n_0, ..., n_L]``: positive integers, depth L >= 1. Returns a tuple of ints.

    Raises ``TypeError`` for a non-sequence, ``ValueError`` otherwise."""
    try:
        ws = tuple(widths)
    except TypeError:
        raise TypeError(f"widths must be a sequence [n_0, n_1, ..., n_L], got {widths!r}") from None
    if len(ws) < 2:
        raise ValueError(f"widths must list n_0 (input) and at least one layer (depth L >= 1), got {ws}")
    for w in ws:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w <= 0:
            raise ValueError(f"every width must be a positive integer, got {ws}")
    return tuple(int(w) for w in ws)


def num_params(widths) -> int:
    """Number of parameters P = sum_{l=1}^{L} (n_l + n_l n_{l-1}) of eq. (2.7), biases included.

    Raises ``ValueError`` for non-positive or non-integer widths or depth zero."""
    ws = check_widths(widths)
    return sum(n + n * m for m, n in zip(ws[:-1], ws[1:]))


@dataclass(frozen=True)
class MLP:
    """Description of a multilayer perceptron, shared by theory and simulation.

    Parameters
    ----------
    widths : sequence of int
        ``[n_0, n_1, ..., n_L]``: input dimension, hidden widths, output dimension (L >= 1).
    activation : str, Activation or callable
        Anything :func:`dlt.activations.get_activation` accepts.
    C_b, C_W : float or length-L sequence
        Bias variance and rescaled weight variance per layer (2.19)-(2.20); C_b >= 0, C_W >= 0.
    lambda_b, lambda_W : float or length-L sequence
        Learning-rate tensor of the NTK (book ch. 7-8), >= 0.

    After construction ``widths`` is a tuple of ints, ``activation`` an :class:`Activation` and
    the four hyperparameters are tuples of length L. Raises ``ValueError``/``TypeError`` on bad input.
    """
    widths: tuple
    activation: Activation | str = "relu"
    C_b: tuple | float = 0.0
    C_W: tuple | float = 1.0
    lambda_b: tuple | float = 1.0
    lambda_W: tuple | float = 1.0

    def __post_init__(self):
        ws = check_widths(self.widths)
        L = len(ws) - 1
        set_ = object.__setattr__
        set_(self, "widths", ws)
        set_(self, "activation", get_activation(self.activation))
        for name in ("C_b", "C_W", "lambda_b", "lambda_W"):
            set_(self, name, tuple(float(v) for v in per_layer(getattr(self, name), L, name)))

    @property
    def L(self) -> int:
        """Depth: the number of layers with parameters."""
        return len(self.widths) - 1

    @property
    def num_params(self) -> int:
        """P of eq. (2.7)."""
        return num_params(self.widths)

    def replace(self, **changes) -> "MLP":
        """A copy with some fields changed (e.g. ``net.replace(widths=(2, 64, 64, 1))``)."""
        fields = dict(widths=self.widths, activation=self.activation, C_b=self.C_b, C_W=self.C_W,
                      lambda_b=self.lambda_b, lambda_W=self.lambda_W)
        fields.update(changes)
        return MLP(**fields)


def _check_inputs(net: MLP, X):
    X = np.asarray(X, dtype=float) if not isinstance(X, jax.Array) else X
    if X.ndim != 2 or X.shape[1] != net.widths[0]:
        raise ValueError(f"inputs must have shape (N_D, n_0={net.widths[0]}), got {X.shape}")
    return X


def init_params(net: MLP, key) -> dict:
    """Draw one network's parameters from the initialization distribution (2.19)-(2.22).

    ``key``: a ``jax.random`` key. Returns ``{l: {"W": (n_l, n_{l-1}), "b": (n_l,)}}`` for
    l = 1..L, with W ~ N(0, C_W^(l)/n_{l-1}) and b ~ N(0, C_b^(l)). The biases are drawn (and
    counted in P) even when C_b = 0."""
    keys = jax.random.split(key, 2 * net.L)
    params = {}
    for l in range(1, net.L + 1):
        n_in, n_out = net.widths[l - 1], net.widths[l]
        params[l] = {
            "W": jnp.sqrt(net.C_W[l - 1] / n_in) * jax.random.normal(keys[2 * l - 2], (n_out, n_in)),
            "b": jnp.sqrt(net.C_b[l - 1]) * jax.random.normal(keys[2 * l - 1], (n_out,)),
        }
    return params


def forward(net: MLP, params: dict, X) -> list:
    """Forward pass (2.5)-(2.6) of one network on N_D inputs.

    ``X``: (N_D, n_0). Returns a list ``z`` of length L+1 with ``z[0] = X`` and ``z[l]`` the
    preactivations z^(l) of shape (N_D, n_l); the output is ``z[net.L]``. The activation is applied
    neither to the input nor to the output. Differentiable with JAX."""
    X = _check_inputs(net, X)
    z = [X]
    h = X
    for l in range(1, net.L + 1):
        z.append(h @ params[l]["W"].T + params[l]["b"])
        h = net.activation.f(z[-1])
    return z


def empirical_ntk(net: MLP, params: dict, X):
    """Empirical neural tangent kernel of one network by autodiff (book eqs. (7.17), (8.5)).

        H_{i1 i2; a1 a2} = sum_l [ lambda_b^(l) sum_j dz_{i1;a1}/db^(l)_j dz_{i2;a2}/db^(l)_j
                           + lambda_W^(l)/n_{l-1} sum_{jk} dz_{i1;a1}/dW^(l)_jk dz_{i2;a2}/dW^(l)_jk ]

    for the output z = z^(L). ``X``: (N_D, n_0). Returns an array of shape (n_L, n_L, N_D, N_D)
    in the book's index order H[i1, i2, a1, a2]. Memory grows like N_D n_L P: meant for single
    networks of moderate size (the statistics of the NTK come from the recursions of ch. 8)."""
    return _ntk(net, params, jnp.asarray(_check_inputs(net, X)))


@partial(jax.jit, static_argnums=0)   # compiled once per network description and input shape
def _ntk(net: MLP, params: dict, X):
    jac = jax.jacrev(lambda p: forward(net, p, X)[net.L])(params)  # leaves (N_D, n_L, *shape)
    H = 0.0
    for l in range(1, net.L + 1):
        jb, jW = jac[l]["b"], jac[l]["W"]
        H = H + net.lambda_b[l - 1] * jnp.einsum("aij,bkj->ikab", jb, jb)
        H = H + net.lambda_W[l - 1] / net.widths[l - 1] * jnp.einsum("aijm,bkjm->ikab", jW, jW)
    return H


def ntk_features(net: MLP, params: dict, X):
    """Random features of the NTK, book eqs. (10.138)-(10.141): the Jacobians of the outputs scaled by the
    square root of the learning-rate tensor (8.6),

        F[i, a, mu] = sqrt(lambda_mu) dz^(L)_{i;a} / dtheta_mu,   lambda = lambda_b^(l) (biases),
                                                                         lambda_W^(l) / n_{l-1} (weights),

    so that sum_mu F[i1, a1, mu] F[i2, a2, mu] = H^_{i1 i2; a1 a2}, the empirical NTK (10.140)
    (:func:`empirical_ntk`): the network's linearized model is the linear model (10.119) with these
    features, and its kernel is the NTK. Explicitly (10.139) F is a product of backward Jacobians and
    sigma^(l-1) (evaluated here by autodiff).

    ``X``: (N, n_0). Returns an array (n_L, N, P), P = :func:`num_params`, the parameter axis in the order
    of ``jax.flatten_util.ravel_pytree(params)``: for l = 1..L, W^(l) row-major (entry (j, k) at
    j n_{l-1} + k), then b^(l). Memory N n_L P: moderate networks only."""
    return _features(net, params, jnp.asarray(_check_inputs(net, X)))


@partial(jax.jit, static_argnums=0)
def _features(net: MLP, params: dict, X):
    jac = jax.jacrev(lambda p: forward(net, p, X)[net.L])(params)  # leaves (N_D, n_L, *shape)
    N, nL = X.shape[0], net.widths[-1]
    cols = []
    for l in range(1, net.L + 1):
        cols.append(jnp.sqrt(net.lambda_W[l - 1] / net.widths[l - 1]) * jac[l]["W"].reshape(N, nL, -1))
        cols.append(jnp.sqrt(net.lambda_b[l - 1]) * jac[l]["b"].reshape(N, nL, -1))
    return jnp.concatenate(cols, axis=-1).transpose(1, 0, 2)


def last_layer_features(net: MLP, params: dict, X):
    """Random features of the last layer, book eqs. (10.134)-(10.137): the penultimate activations with
    phi_0 = 1 for the bias, weighted as in (10.135),

        phi[a, 0] = sqrt(C_b^(L)),   phi[a, j] = sqrt(C_W^(L) / n_{L-1}) sigma(z^(L-1)_{j;a}),  j = 1..n_{L-1}

    (for L = 1 the inputs x_a instead of sigma), so that phi @ phi.T is the stochastic kernel
    k^_{a1 a2} = C_b + C_W / n_{L-1} sum_j sigma_j;a1 sigma_j;a2 (10.135), the stochastic metric (4.70)
    (:func:`stochastic_metric`), whose mean is K^(L) (10.137). Training only the last layer
    (``dlt.learning.bayes_learning_rates``) is linear regression on these features.

    ``X``: (N, n_0). Returns (N, n_{L-1} + 1)."""
    X = jnp.asarray(_check_inputs(net, X))
    L = net.L
    h = X if L == 1 else net.activation.f(forward(net, params, X)[L - 1])
    return jnp.concatenate([jnp.full((X.shape[0], 1), jnp.sqrt(net.C_b[L - 1])),
                            jnp.sqrt(net.C_W[L - 1] / net.widths[L - 1]) * h], axis=1)


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be an int or a numpy Generator, got {type(seed)}")


def stochastic_metric(net: MLP, z_prev, l: int):
    """The stochastic metric of layer l, book eq. (4.70), from the preactivations of layer l-1:

        G_hat^(l)_ab = C_b^(l) + C_W^(l) / n_{l-1}  sum_j sigma(z^(l-1)_{j;a}) sigma(z^(l-1)_{j;b}).

    Given layer l-1, the preactivations of layer l are exactly N(0, G_hat^(l)) for every neuron (4.69),
    so estimators built on G_hat integrate the last layer out analytically. ``z_prev``:
    (..., N_D, n_{l-1}) (e.g. an ensemble ``z[l-1]``), l in 2..L. Returns (..., N_D, N_D)."""
    if not 2 <= int(l) <= net.L:
        raise ValueError(f"l must lie in 2..L={net.L} (layer 1 has the deterministic metric (4.8))")
    z_prev = np.asarray(z_prev, dtype=float)
    if z_prev.ndim < 2 or z_prev.shape[-1] != net.widths[l - 1]:
        raise ValueError(f"z_prev must have shape (..., N_D, n_{l - 1}={net.widths[l - 1]}), "
                         f"got {z_prev.shape}")
    h = net.activation.f(z_prev)
    cb, cw, n = net.C_b[l - 1], net.C_W[l - 1], net.widths[l - 1]
    return cb + cw * (h @ np.swapaxes(h, -1, -2)) / n


def _ensemble_args(net, X, n_ens, seed, layers):
    """Validated (X, sorted layer tuple, Generator) for the two ensemble samplers."""
    X = np.asarray(_check_inputs(net, X))
    if isinstance(n_ens, bool) or not isinstance(n_ens, (int, np.integer)) or n_ens < 1:
        raise ValueError(f"n_ens must be a positive integer, got {n_ens!r}")
    layers = tuple(range(1, net.L + 1)) if layers is None else tuple(sorted({int(l) for l in layers}))
    if not layers or layers[0] < 1 or layers[-1] > net.L:
        raise ValueError(f"layers must lie in 1..L={net.L}, got {layers}")
    return X, layers, _rng(seed)


def ensemble(net: MLP, X, n_ens: int, seed, layers=None, chunk: int | None = None,
             progress="auto") -> dict:
    """Preactivations of ``n_ens`` independently initialized real networks on the inputs ``X``.

    Draws every network's weights and biases from (2.19)-(2.22) and runs the forward pass (2.5),
    as batched numpy matrix products over ``chunk`` networks at a time (default: about 64 MB of
    weights per chunk). This samples the induced distribution p(z^(1..L) | D) of eq. (2.24).

    Parameters: ``X`` (N_D, n_0); ``n_ens`` positive int; ``seed`` int or ``numpy.random.Generator``
    (same seed and chunk give the same numbers); ``layers``: iterable of layer indices in 1..L to
    return (default all); ``progress``: ``True`` / ``False`` / ``"auto"`` (a one-line bar on stderr
    once a run has taken more than 3 s).

    Returns ``{l: array (n_ens, N_D, n_l)}`` keyed by the book's layer index. Raises ``ValueError``
    for bad shapes, ``n_ens`` < 1 or layers out of range.
    """
    X, layers, rng = _ensemble_args(net, X, n_ens, seed, layers)
    ws, ND = net.widths, X.shape[0]
    if chunk is None:
        per_net = max(ws[l] * (ws[l - 1] + 1 + ND) for l in range(1, layers[-1] + 1))
        chunk = int(max(1, min(n_ens, 8_000_000 // per_net)))
    out = {l: np.empty((n_ens, ND, ws[l])) for l in layers}
    f = net.activation.f
    t0, shown = time.perf_counter(), False
    for start in range(0, n_ens, chunk):
        B = min(chunk, n_ens - start)
        h = np.broadcast_to(X, (B, ND, ws[0]))
        for l in range(1, layers[-1] + 1):
            W = rng.standard_normal((B, ws[l - 1], ws[l]))
            W *= np.sqrt(net.C_W[l - 1] / ws[l - 1])
            z = h @ W
            z += np.sqrt(net.C_b[l - 1]) * rng.standard_normal((B, 1, ws[l]))
            if l in out:
                out[l][start:start + B] = z
            if l < layers[-1]:
                h = f(z)
        elapsed = time.perf_counter() - t0
        if progress is True or (progress == "auto" and (shown or elapsed > 3.0)):
            done = start + B
            bar = "#" * int(30 * done / n_ens)
            sys.stderr.write(f"\rensemble {bar:<30s} {done}/{n_ens} networks, {elapsed:.1f} s")
            shown = True
    if shown:
        sys.stderr.write("\n")
    return out


def ensemble_by_metric(net: MLP, X, n_ens: int, seed, layers=None, chunk: int | None = None) -> dict:
    """Preactivations of ``n_ens`` networks drawn layer by layer from the exact conditional law.

    Given layer l, the preactivations of layer l+1 are independent across neurons and Gaussian,
    z^(l+1)_i ~ N(0, G_hat^(l+1)), with the stochastic metric (book eqs. (4.69)-(4.70))

        G_hat^(l+1)_ab = C_b + C_W / n_l  sum_j sigma(z^(l)_{j;a}) sigma(z^(l)_{j;b}),

    and z^(1) ~ N(0, G^(1)) with G^(1) = C_b + C_W X X^T / n_0 (4.8). So this samples the same joint
    distribution of (z^(1), ..., z^(L)) as :func:`ensemble`, with no weight matrices: the cost per
    layer is O(n N_D^2) per network instead of O(n^2 N_D). Use it for large ensembles of wide
    networks on few inputs; :func:`ensemble` (real weights) is the reference it is tested against.

    Same arguments and return value as :func:`ensemble` (``{l: (n_ens, N_D, n_l)}``). Raises
    ``ValueError`` for bad shapes, ``n_ens`` < 1 or layers out of range.
    """
    X, layers, rng = _ensemble_args(net, X, n_ens, seed, layers)
    ws, ND = net.widths, X.shape[0]
    chunk = int(chunk or max(1, min(n_ens, 4_000_000 // (max(ws[1:]) * ND * ND))))
    out = {l: np.empty((n_ens, ND, ws[l])) for l in layers}
    G1 = net.C_b[0] + net.C_W[0] * X @ X.T / ws[0]
    for start in range(0, n_ens, chunk):
        B = min(chunk, n_ens - start)
        G = np.broadcast_to(G1, (B, ND, ND))
        for l in range(1, layers[-1] + 1):
            lam, U = np.linalg.eigh(G)                                 # PSD square root
            root = U * np.sqrt(np.clip(lam, 0.0, None))[:, None, :]
            z = root @ rng.standard_normal((B, ND, ws[l]))             # (B, N_D, n_l)
            if l in out:
                out[l][start:start + B] = z
            if l < layers[-1]:
                G = stochastic_metric(net, z, l + 1)
    return out


# ----------------------------------------------------------------------------------------------------
# NTK ensembles (book ch. 8-9): backward Jacobians over a batch of networks in numpy
# ----------------------------------------------------------------------------------------------------

# Working set of one chunk, in float64 numbers (8 MB). Measured on 2 cores, 10k nets of widths (4,64,64,8)
# on 2 inputs: 0.6-0.8 s at 8 MB (chunk ~100; drawing the weights is ~0.6 s of it) against 0.85-1.4 s at
# 200 MB, where the batched products fall out of cache; wide nets (n = 256) are dominated by the draws.
_CHUNK_FLOATS = 1_000_000


def _draw_params(net: MLP, B: int, rng) -> tuple:
    """Weights and biases of ``B`` networks, drawn in the same order as :func:`ensemble` draws them.

    Returns ``(Ws, bs)``: lists over layers l = 1..L of ``Ws[l-1]`` (B, n_{l-1}, n_l) -- the
    *transpose* of the book's W^(l), so that z = h @ W -- and ``bs[l-1]`` (B, n_l). With the same
    generator state and chunk, the networks are those of ``ensemble(net, X, ..., chunk=B)``."""
    ws, Ws, bs = net.widths, [], []
    for l in range(1, net.L + 1):
        W = rng.standard_normal((B, ws[l - 1], ws[l]))
        W *= np.sqrt(net.C_W[l - 1] / ws[l - 1])
        Ws.append(W)
        bs.append(np.sqrt(net.C_b[l - 1]) * rng.standard_normal((B, ws[l])))
    return Ws, bs


def _forward_store(net: MLP, X, Ws, bs) -> tuple:
    """Batched forward pass keeping what the backward pass needs.

    Returns ``(z_L (B, N, n_L), hs, ds)``: ``hs[l-1]`` = sigma^(l-1) (B or 1, N, n_{l-1}) for
    l = 1..L with sigma^(0) = x, and ``ds[l]`` = sigma'(z^(l)) (B, N, n_l) for l = 1..L-1."""
    f, df = net.activation.f, net.activation.df
    h = np.asarray(X, dtype=float)[None]
    hs, ds = [h], {}
    for l in range(1, net.L + 1):
        z = h @ Ws[l - 1]
        z += bs[l - 1][:, None, :]
        if l < net.L:
            h = f(z)
            hs.append(h)
            ds[l] = df(z)
    return z, hs, ds


def _backward(Ws, ds, L: int):
    """Yield ``(l, Jt_l)`` for l = L-1, ..., 1: the Jacobians J_l = dz^(L)/dz^(l) of eqs. (8.17)-(8.18),

        J_L = I,    J_l = J_{l+1} W^(l+1) diag(sigma'(z^(l))),

    one per input, stored transposed as (B, n_l, N, n_L): Jt_l[b, j, a, i] = dz^(L)_{i;a} / dz^(l)_{j;a}.
    (This layout keeps both operands of every batched product contiguous: numpy's stacked matmul runs
    about 8 times slower when one operand is a transposed view.)"""
    Jt = None
    for l in range(L - 1, 0, -1):
        d = np.swapaxes(ds[l], 1, 2)[:, :, :, None]                    # sigma'(z^(l)) as (B, n_l, N, 1)
        if Jt is None:                                                 # J_L = I: J_{L-1} = W^(L) diag
            Jt = Ws[l][:, :, None, :] * d
        else:                                                          # Ws[l] = W^(l+1)^T, (B, n_l, n_{l+1})
            B, n, N, nL = Jt.shape
            Jt = (Ws[l] @ Jt.reshape(B, n, N * nL)).reshape(B, -1, N, nL)
            Jt *= d
        yield l, Jt


def _gram(A):
    """A^T A over a stack, (B, n, m) -> (B, m, m), with contiguous operands (fast BLAS path)."""
    return np.ascontiguousarray(np.swapaxes(A, -1, -2)) @ A


def _ntk_batch(net: MLP, X, Ws, bs) -> tuple:
    """Output preactivations and output-layer NTK of a batch of networks with given parameters.

    ``X`` (N, n_0); ``Ws``, ``bs`` as returned by :func:`_draw_params`. Computes (spec ch. 8 item 3)

        H^(L)_{i1 i2; a1 a2} = sum_l [lambda_b^(l) + lambda_W^(l) sigma^(l-1)_{a1}.sigma^(l-1)_{a2} / n_{l-1}]
                                     (J_{l;a1} J_{l;a2}^T)_{i1 i2},      sigma^(0) = x,

    which is (8.5)-(8.7) with the chain rule dz^(L)/db^(l) = J_l, dz^(L)/dW^(l)_jk = J_l sigma^(l-1)_k.
    Returns ``(Z (B, N, n_L), H (B, n_L, n_L, N, N))``."""
    L, ws = net.L, net.widths
    z, hs, ds = _forward_store(net, X, Ws, bs)
    B, N, nL = z.shape

    def coeff(l):                                                      # (B or 1, N, N)
        h = hs[l - 1]
        gram = np.einsum("bak,bck->bac", h, h) if N > 1 else (h * h).sum(-1, keepdims=True)
        return net.lambda_b[l - 1] + net.lambda_W[l - 1] / ws[l - 1] * gram

    Hacc = np.zeros((B, N, nL, N, nL))                                 # [b, a1, i1, a2, i2]
    Hacc += coeff(L)[:, :, None, :, None] * np.eye(nL)[None, None, :, None, :]
    for l, Jt in _backward(Ws, ds, L):
        G = _gram(Jt.reshape(B, ws[l], N * nL)).reshape(B, N, nL, N, nL)
        G *= coeff(l)[:, :, None, :, None]
        Hacc += G
    return z, Hacc.transpose(0, 2, 4, 1, 3)


def _no_perceptron(net: MLP):
    if net.activation.name == "perceptron":
        raise ValueError("the perceptron's sigma' is a delta function: its NTK and Jacobians are not defined")


class _Progress:
    """One-line progress bar on stderr: shown when ``mode`` is True, or "auto" once a run has taken
    over 3 s; redrawn only when the bar grows or at the end, so small chunks do not flood the output."""

    def __init__(self, label, total, mode):
        self.label, self.total, self.mode = label, total, mode
        self.t0, self.ticks, self.shown = time.perf_counter(), -1, False

    def update(self, done):
        elapsed = time.perf_counter() - self.t0
        if self.mode is True or (self.mode == "auto" and (self.shown or elapsed > 3.0)):
            ticks = int(30 * done / self.total)
            if ticks != self.ticks or done == self.total:
                sys.stderr.write(f"\r{self.label} {'#' * ticks:<30s} {done}/{self.total} networks, "
                                 f"{elapsed:.1f} s")
            self.ticks, self.shown = ticks, True

    def close(self):
        if self.shown:
            sys.stderr.write("\n")


def ntk_ensemble(net: MLP, X, n_ens: int, seed, *, chunk: int | None = None, progress="auto") -> tuple:
    """Output preactivations and neural tangent kernels of ``n_ens`` independently initialized networks.

    Each network is drawn from (2.19)-(2.22) and its NTK of the output layer is (8.5)-(8.7), with the
    learning-rate tensor (8.6): lambda_b^(l) per bias, lambda_W^(l) / n_{l-1} per weight (n_0 for the
    first layer). It is computed with the backward Jacobians (8.17)-(8.18), J_L = I,
    J_l = J_{l+1} W^(l+1) diag(sigma'(z^(l))), as

      H_{i1 i2; a1 a2} = sum_{l=1}^L [lambda_b^(l) + lambda_W^(l) sigma^(l-1)_{a1}.sigma^(l-1)_{a2} / n_{l-1}]
                                     (J_{l;a1} J_{l;a2}^T)_{i1 i2},        sigma^(0) = x,

    in batched numpy matrix products over ``chunk`` networks at a time (default: about 8 MB of
    working memory per chunk, which measured fastest). It equals :func:`empirical_ntk` on the same
    weights (up to the value of a kinked sigma' exactly at its kink, ``net.activation.df`` here; a set of
    measure zero).

    Parameters: ``X`` (N_D, n_0); ``n_ens`` positive int; ``seed`` int or ``numpy.random.Generator``
    (with the same seed and chunk, ``Z`` equals ``ensemble(net, X, n_ens, seed, chunk=chunk)[L]``);
    ``progress``: ``True`` / ``False`` / ``"auto"`` (a bar on stderr once a run has taken over 3 s).

    Returns ``(Z, H)``: ``Z`` (n_ens, N_D, n_L) the output preactivations z^(L)_{i;a}, ``H``
    (n_ens, n_L, n_L, N_D, N_D) with ``H[m, i1, i2, a1, a2]`` the book's H^(L)_{i1 i2; a1 a2} of network m.
    Raises ``ValueError`` for bad shapes, ``n_ens`` < 1, a non-positive chunk or the perceptron
    (sigma' is a delta function); ``TypeError`` for a bad seed.
    """
    X, _, rng = _ensemble_args(net, X, n_ens, seed, None)
    _no_perceptron(net)
    ws, ND, nL = net.widths, X.shape[0], net.widths[-1]
    if chunk is None:
        per_net = (sum(ws[l] * (ws[l - 1] + 1) for l in range(1, net.L + 1)) + 2 * ND * sum(ws[1:])
                   + 3 * ND * nL * max(ws[1:]) + 4 * (ND * nL) ** 2)    # float64 numbers per network
        chunk = int(max(1, min(n_ens, _CHUNK_FLOATS // per_net)))
    elif isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
    Z = np.empty((n_ens, ND, nL))
    H = np.empty((n_ens, nL, nL, ND, ND))
    bar = _Progress("ntk_ensemble", n_ens, progress)
    for start in range(0, n_ens, chunk):
        B = min(chunk, n_ens - start)
        Z[start:start + B], H[start:start + B] = _ntk_batch(net, X, *_draw_params(net, B, rng))
        bar.update(start + B)
    bar.close()
    return Z, H


def jacobian_norms(net: MLP, x, n_ens: int, seed, *, chunk: int | None = None) -> tuple:
    """Mean squared Jacobian of the output with respect to each layer's preactivations, book §9.4.

    For one input ``x`` (n_0,) and l = 1..L, estimates over ``n_ens`` networks drawn from
    (2.19)-(2.22)

        J[l-1] = E (1/n_L) sum_{i,j} (dz^(L)_i / dz^(l)_j)^2,

    the gradient factor of (9.90)-(9.93), whose leading order is prod_{l''=l}^{L-1} chi_perp^(l'') (and
    exactly C_W^(L-l) for a linear network). The Jacobians are the backward ones (8.17)-(8.18); the
    last entry is exactly 1 (dz^(L)/dz^(L) = I). ``seed``: int or ``numpy.random.Generator``;
    ``chunk``: networks per batch (default: about 8 MB of working memory).

    Returns ``(mean (L,), se (L,))``, the standard error taken across networks (0 for l = L).
    Raises ``ValueError`` for ``x`` not of shape (n_0,), ``n_ens`` < 2, a non-positive chunk or the
    perceptron; ``TypeError`` for a bad seed.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.shape[0] != net.widths[0]:
        raise ValueError(f"x must be one input of shape (n_0={net.widths[0]},), got {x.shape}")
    if isinstance(n_ens, bool) or not isinstance(n_ens, (int, np.integer)) or n_ens < 2:
        raise ValueError(f"n_ens must be an integer >= 2 (a standard error needs 2 networks), got {n_ens!r}")
    X, _, rng = _ensemble_args(net, x[None], n_ens, seed, None)
    _no_perceptron(net)
    ws, L, nL = net.widths, net.L, net.widths[-1]
    if chunk is None:
        per_net = (sum(ws[l] * (ws[l - 1] + 1) for l in range(1, L + 1)) + 2 * sum(ws[1:])
                   + 3 * nL * max(ws[1:]))
        chunk = int(max(1, min(n_ens, _CHUNK_FLOATS // per_net)))
    elif isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
    norms = np.ones((n_ens, L))
    for start in range(0, n_ens, chunk):
        B = min(chunk, n_ens - start)
        Ws, bs = _draw_params(net, B, rng)
        _, _, ds = _forward_store(net, X, Ws, bs)
        for l, Jt in _backward(Ws, ds, L):
            norms[start:start + B, l - 1] = np.einsum("bjai,bjai->b", Jt, Jt) / nL
    mean = norms.mean(0)
    se = norms.std(0, ddof=1) / np.sqrt(n_ens)
    return mean, se
