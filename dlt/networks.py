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
  network (the NTK, training).
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

__all__ = ["MLP", "num_params", "init_params", "forward", "empirical_ntk", "ensemble", "ensemble_by_metric",
           "stochastic_metric",
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
