"""Losses and gradient-based training of real networks (book ch. 7; ch. 10 extends this module).

Everything here acts on one real network from :mod:`dlt.networks`: a description ``net``
(:class:`~dlt.networks.MLP`) and its parameters ``params = {l: {"W", "b"}}``. Shapes follow the
library's conventions: inputs ``X`` are ``(N, n_0)``, outputs and targets ``z``, ``y`` are
``(N, n_L)`` (samples first, like :func:`dlt.networks.forward`), and the NTK is the
``H[i1, i2, a1, a2]`` of :func:`dlt.networks.empirical_ntk` (shape ``(n_L, n_L, N_D, N_D)``).

Contents, in the book's order:

* **Losses** (7.1)-(7.5), (10.36)-(10.38): :func:`mse`, :func:`cross_entropy` (with :func:`softmax`),
  the registry :func:`get_loss`, the training loss :func:`training_loss` (extensive by default, as in
  the book; ``intensive=True`` gives the mean (7.5)) and the error factor
  :func:`error_factor` eps = dL_A/dz (7.15)-(7.16), (10.6).
* **Gradient descent in parameter space** (7.8)-(7.12): :func:`learning_rate_tree` (the diagonal
  learning-rate tensor lambda_b^(l), lambda_W^(l)/n_{l-1} of ``net``), :func:`loss_gradient`,
  :func:`apply_update`, :func:`gd_step`; stochastic gradient descent (7.10) with
  :func:`minibatches`; and :func:`train`, which runs many steps and records the loss.
* **Function-space view of one step** (7.13)-(7.20), through the NTK (7.17) computed by
  :func:`dlt.networks.empirical_ntk` (not re-implemented here): :func:`predicted_output_change`
  (7.20), :func:`predicted_observable_change` (7.19), :func:`predicted_loss_change` (7.14), and
  :func:`linearized_outputs`, the output trajectory when the NTK is frozen at its initial value.

All functions are pure; randomness (mini-batch order) comes from an explicit ``numpy.random.Generator``,
an int seed or a ``jax.random`` key. Bad input raises ``ValueError`` / ``TypeError`` saying what was
wrong. Computations are float64 (``import dlt`` enables JAX x64).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .networks import MLP, forward

__all__ = ["Loss", "LOSSES", "get_loss", "softmax", "mse", "cross_entropy", "error_factor",
           "training_loss", "loss_gradient", "learning_rate_tree", "apply_update", "gd_step",
           "minibatches", "train", "predicted_output_change", "predicted_observable_change",
           "predicted_loss_change", "linearized_outputs"]


# ============================================================================================ losses

def softmax(z):
    """The softmax q(i|x) = exp z_i / sum_j exp z_j over the last axis, eqs. (6.11), (10.38).

    Works on numpy and JAX arrays (returns a JAX array); numerically stable for large |z|."""
    return jax.nn.softmax(jnp.asarray(z), axis=-1)


def mse(z, y):
    """Extensive mean-squared-error loss (7.2), (7.4): ``1/2 sum_{a,i} (z_{i;a} - y_{i;a})^2``.

    ``z``, ``y``: arrays of the same shape, e.g. ``(N, n_L)``. Returns a scalar (JAX array).
    Raises ``ValueError`` when the shapes differ."""
    z, y = jnp.asarray(z), jnp.asarray(y)
    if z.shape != y.shape:
        raise ValueError(f"mse: outputs and targets must have the same shape, got {z.shape} and {y.shape}")
    return 0.5 * jnp.sum((z - y) ** 2)


def cross_entropy(z, p):
    """Extensive cross-entropy loss (10.36): ``-sum_{a,i} p(i|x_a) log q(i|x_a)``, q = softmax(z).

    ``z``: network outputs ``(N, n_L)`` (logits, before any softmax); ``p``: target distributions of
    the same shape, each row a probability vector (one-hot labels or soft targets; targets given as
    logits y become p = softmax(y), eq. (10.37)). Returns a scalar. Raises ``ValueError`` for shapes
    that differ, or (when ``p`` is concrete) negative entries or rows not summing to 1."""
    z, p = jnp.asarray(z), jnp.asarray(p)
    if z.shape != p.shape:
        raise ValueError(f"cross_entropy: outputs and target distributions must have the same shape, "
                         f"got {z.shape} and {p.shape}")
    _check_distribution(p)
    return -jnp.sum(p * jax.nn.log_softmax(z, axis=-1))


def _check_distribution(p):
    if isinstance(p, jax.core.Tracer):   # inside jit: validated by the caller before tracing
        return
    p = np.asarray(p)
    if p.ndim == 0 or np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, rtol=0, atol=1e-8):
        raise ValueError("cross-entropy targets must be probability vectors over the last axis "
                         "(entries >= 0, rows summing to 1); for logit targets y pass softmax(y) (10.37)")


@dataclass(frozen=True)
class Loss:
    """A loss: ``value(z, y)`` (extensive, summed over samples and components) and its error factor
    ``eps(z, y) = d value / d z`` in closed form (eqs. (7.15)-(7.16), (10.6)). ``check(y)`` validates
    targets (raises ``ValueError``)."""
    name: str
    value: Callable
    eps: Callable
    check: Callable


LOSSES = {
    "mse": Loss("mse", mse, lambda z, y: z - y, lambda y: None),                      # (7.2), (7.15)
    "cross_entropy": Loss("cross_entropy", cross_entropy,                            # (10.36), (10.6)
                          lambda z, p: jax.nn.softmax(z, axis=-1) - p, _check_distribution),
}


def get_loss(loss) -> Loss:
    """Return the :class:`Loss` for a name (``"mse"``, ``"cross_entropy"``) or a ``Loss`` itself.

    A user-defined loss is a ``Loss(name, value, eps, check)`` with ``value(z, y)`` a JAX-traceable
    scalar summed over samples, ``eps(z, y)`` its gradient with respect to ``z`` and ``check(y)``
    raising ``ValueError`` for invalid targets; it works everywhere a name does.

    Raises ``ValueError`` for an unknown name (listing the known ones), ``TypeError`` otherwise."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        key = loss.lower().replace("-", "_")
        if key in LOSSES:
            return LOSSES[key]
        raise ValueError(f"unknown loss {loss!r}; known losses: {sorted(LOSSES)}")
    raise TypeError(f"loss must be a name {sorted(LOSSES)} or a dlt.learning.Loss, got {type(loss)}")


def _check_targets(z_shape, y, loss: Loss, what="targets"):
    y = jnp.asarray(y, dtype=float)
    if y.shape != tuple(z_shape):
        raise ValueError(f"{what} must have the shape of the network outputs (N, n_L) = {tuple(z_shape)}, "
                         f"got {y.shape}")
    loss.check(y)
    return y


def error_factor(z, y, loss="mse", *, intensive: bool = False):
    """Error factor eps_{i;a} = dL_A/dz_{i;a} (7.16) in closed form.

    MSE: eps = z - y (7.15). Cross-entropy: eps = softmax(z) - p (10.6). With ``intensive=True``
    the loss is the mean (7.5) and eps is divided by N. ``z``, ``y``: ``(N, n_L)``; returns ``(N, n_L)``.
    Raises ``ValueError`` for mismatched shapes or an unknown loss."""
    loss = get_loss(loss)
    z = jnp.asarray(z, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"outputs must have shape (N, n_L), got {z.shape}")
    y = _check_targets(z.shape, y, loss)
    eps = loss.eps(z, y)
    return eps / z.shape[0] if intensive else eps


def _loss_of_params(net, params, X, y, loss, intensive):
    z = forward(net, params, X)[net.L]
    val = get_loss(loss).value(z, y)
    return val / X.shape[0] if intensive else val


def _prepare(net, params, X, y, loss):
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a dlt.networks.MLP, got {type(net)}")
    _check_params(net, params)
    X = jnp.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != net.widths[0]:
        raise ValueError(f"inputs must have shape (N, n_0={net.widths[0]}), got {X.shape}")
    loss = get_loss(loss)
    y = _check_targets((X.shape[0], net.widths[-1]), y, loss)
    return X, y, loss


def _check_params(net, params):
    if not isinstance(params, dict) or set(params) != set(range(1, net.L + 1)):
        raise ValueError(f"params must be a dict {{l: {{'W', 'b'}}}} for l = 1..{net.L} "
                         "(as returned by dlt.networks.init_params)")
    for l in range(1, net.L + 1):
        W, b = params[l].get("W"), params[l].get("b")
        if W is None or b is None or jnp.shape(W) != (net.widths[l], net.widths[l - 1]) \
                or jnp.shape(b) != (net.widths[l],):
            raise ValueError(f"params[{l}] must hold W of shape {(net.widths[l], net.widths[l - 1])} "
                             f"and b of shape {(net.widths[l],)}")


def training_loss(net: MLP, params: dict, X, y, loss="mse", *, intensive: bool = False):
    """Training loss L_A(theta) of eq. (7.4): the loss summed over the samples of ``X`` (extensive,
    the book's convention); ``intensive=True`` gives the mean (7.5).

    ``X``: ``(N_A, n_0)``; ``y``: ``(N_A, n_L)`` targets (probability rows for cross-entropy).
    Returns a float. Raises ``ValueError`` for mismatched shapes or an unknown loss."""
    X, y, loss = _prepare(net, params, X, y, loss)
    return float(_loss_jit(net, params, X, y, loss, intensive))


@partial(jax.jit, static_argnames=("net", "loss", "intensive"))
def _loss_jit(net, params, X, y, loss, intensive):
    return _loss_of_params(net, params, X, y, loss, intensive)


@partial(jax.jit, static_argnames=("net", "loss", "intensive"))
def _grad_jit(net, params, X, y, loss, intensive):
    return jax.grad(_loss_of_params, argnums=1)(net, params, X, y, loss, intensive)


def loss_gradient(net: MLP, params: dict, X, y, loss="mse", *, intensive: bool = False) -> dict:
    """Gradient dL_A/dtheta_mu of the training loss (7.4) by reverse-mode autodiff (the chain rule
    (7.13)). Returns a dict with the structure of ``params``. Raises ``ValueError`` like
    :func:`training_loss`."""
    X, y, loss = _prepare(net, params, X, y, loss)
    return _grad_jit(net, params, X, y, loss, intensive)


# ============================================================================= gradient descent

def learning_rate_tree(net: MLP) -> dict:
    """The diagonal learning-rate tensor of ``net`` as a pytree shaped like the parameters:
    ``{l: {"W": lambda_W^(l) / n_{l-1}, "b": lambda_b^(l)}}`` (one float per layer and kind).

    This is the lambda_{mu nu} of the tensorial update (7.11) with the book's convention (set out
    at the start of ch. 8): lambda_{b b'} = delta lambda_b^(l), lambda_{W W'} = delta lambda_W^(l)/n_{l-1}.
    It is the same convention that :func:`dlt.networks.empirical_ntk` contracts the Jacobians with."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a dlt.networks.MLP, got {type(net)}")
    return {l: {"W": net.lambda_W[l - 1] / net.widths[l - 1], "b": net.lambda_b[l - 1]}
            for l in range(1, net.L + 1)}


def _check_eta(eta):
    try:
        e = float(eta)
    except (TypeError, ValueError):
        raise TypeError(f"learning rate eta must be a real number, got {eta!r}") from None
    if not np.isfinite(e) or e <= 0:
        raise ValueError(f"learning rate eta must be a finite positive number, got {eta!r}")
    return e


def _lam_tree(net, params, lam):
    """lam: None (the net's tensor), a scalar (uniform lambda, e.g. 1.0 for plain GD (7.8)) or a
    pytree shaped like params with non-negative leaves broadcastable to the parameters."""
    if lam is None:
        return learning_rate_tree(net)
    if np.ndim(lam) == 0 and not isinstance(lam, dict):
        lam = float(lam)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"a scalar learning-rate tensor must be finite and >= 0, got {lam!r}")
        return {l: {"W": lam, "b": lam} for l in params}
    if not isinstance(lam, dict) or set(lam) != set(params):
        raise ValueError("lam must be None, a scalar, or a dict {l: {'W', 'b'}} with the layers of params")
    for l in params:
        for k in ("W", "b"):
            if k not in lam[l]:
                raise ValueError(f"lam[{l}] is missing {k!r}")
            v = np.asarray(lam[l][k], dtype=float)
            try:
                np.broadcast_shapes(v.shape, jnp.shape(params[l][k]))
            except ValueError:
                raise ValueError(f"lam[{l}][{k!r}] of shape {v.shape} does not broadcast to the "
                                 f"parameter shape {jnp.shape(params[l][k])}") from None
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise ValueError(f"lam[{l}][{k!r}] must be finite and >= 0 (a diagonal PSD tensor, (7.12))")
    return lam


def apply_update(params: dict, grads: dict, eta, lam) -> dict:
    """Tensorial gradient-descent update (7.11) for a diagonal learning-rate tensor:
    ``theta_mu - eta * lam_mu * grad_mu`` leaf by leaf.

    ``lam``: a scalar or a pytree shaped like ``params`` (e.g. :func:`learning_rate_tree`).
    Raises ``ValueError`` for eta <= 0 or a negative lam."""
    eta = _check_eta(eta)
    if np.ndim(lam) == 0 and not isinstance(lam, dict):
        lam = float(lam)
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
        return jax.tree_util.tree_map(lambda p, g: p - eta * lam * g, params, grads)
    return jax.tree_util.tree_map(lambda p, g, la: p - eta * la * g, params, grads, lam)


@partial(jax.jit, static_argnames=("net", "loss", "intensive"))
def _step_jit(net, params, X, y, eta, lam, loss, intensive):
    g = jax.grad(_loss_of_params, argnums=1)(net, params, X, y, loss, intensive)
    return jax.tree_util.tree_map(lambda p, gg, la: p - eta * la * gg, params, g, lam)


def gd_step(net: MLP, params: dict, X, y, eta, loss="mse", *, lam=None, intensive: bool = False) -> dict:
    """One step of (tensorial) gradient descent on the training loss of ``(X, y)``:
    ``theta_mu <- theta_mu - eta * lambda_mu * dL_A/dtheta_mu``, eqs. (7.8), (7.11).

    ``lam=None`` uses the learning-rate tensor of ``net`` (:func:`learning_rate_tree`:
    lambda_b^(l) for biases, lambda_W^(l)/n_{l-1} for weights); ``lam=1.0`` is plain GD (7.8);
    any pytree shaped like ``params`` is a general diagonal tensor. Passing a mini-batch
    ``(X[S], y[S])`` makes this an SGD step (7.10). Returns the new parameters (a new dict).
    Raises ``ValueError`` for mismatched shapes, eta <= 0, a negative lam or an unknown loss."""
    X, y, loss = _prepare(net, params, X, y, loss)
    eta = _check_eta(eta)
    lam = _lam_tree(net, params, lam)
    return _step_jit(net, params, X, y, eta, lam, loss, intensive)


def _permutation(rng, n):
    """A random permutation of range(n) and the advanced rng (numpy Generator/int seed or jax key)."""
    if isinstance(rng, jax.Array):   # a jax.random key (raw uint32 or typed)
        rng, sub = jax.random.split(rng)
        return np.asarray(jax.random.permutation(sub, n)), rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        return rng.permutation(n), rng
    raise TypeError(f"rng must be a numpy Generator, an int seed or a jax.random key, got {type(rng)}")


def minibatches(N: int, batch_size: int, rng) -> list:
    """One epoch of SGD (footnote 4, eq. (7.10)): a random partition of the sample indices 0..N-1
    into consecutive mini-batches of ``batch_size`` (the last one smaller if ``batch_size`` does
    not divide N). ``rng``: ``numpy.random.Generator``, int seed or ``jax.random`` key.
    Returns a list of int arrays. Raises ``ValueError`` for N < 1 or batch_size not in 1..N."""
    N, batch_size = _check_batch(N, batch_size)
    perm, _ = _permutation(rng, N)
    return [perm[s:s + batch_size] for s in range(0, N, batch_size)]


def _check_batch(N, batch_size):
    for name, v in (("N", N), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if batch_size > N:
        raise ValueError(f"batch_size must be <= the number of training samples {N}, got {batch_size}")
    return int(N), int(batch_size)


def train(net: MLP, params: dict, X, y, eta, steps: int, loss="mse", *, lam=None,
          batch_size: int | None = None, rng=None, intensive: bool = False, X_eval=None):
    """Run ``steps`` updates of gradient descent (7.8)/(7.11), or SGD (7.10) when ``batch_size`` is
    given, on the training set ``(X, y)``.

    SGD draws, epoch after epoch, a random partition of the training set into mini-batches
    (:func:`minibatches`, using ``rng``: numpy Generator, int seed or jax key; required with
    ``batch_size``; a Generator passed in is advanced); each update uses one mini-batch. ``lam``
    and ``intensive`` as in :func:`gd_step` (for SGD with ``intensive=True`` each batch loss is a
    mean over the batch).

    Returns ``(params, history)``: the final parameters and a dict with ``"loss"`` (steps+1,), the
    full training loss L_A before the first and after every update, and, if ``X_eval`` (N_E, n_0)
    is given, ``"z_eval"`` (steps+1, N_E, n_L), the outputs on those inputs at the same times.
    Raises ``ValueError`` for bad shapes, eta <= 0, steps < 0, a bad batch size or a missing rng."""
    X, y, loss = _prepare(net, params, X, y, loss)
    eta = _check_eta(eta)
    lam = _lam_tree(net, params, lam)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    N = X.shape[0]
    if batch_size is not None:
        _check_batch(N, batch_size)
        if rng is None:
            raise ValueError("SGD (batch_size given) needs an explicit rng: "
                             "numpy Generator, int seed or jax key")
    if X_eval is not None:
        X_eval = jnp.asarray(X_eval, dtype=float)
        if X_eval.ndim != 2 or X_eval.shape[1] != net.widths[0]:
            raise ValueError(f"X_eval must have shape (N_E, n_0={net.widths[0]}), got {X_eval.shape}")
    losses = np.empty(steps + 1)
    z_eval = None if X_eval is None else np.empty((steps + 1, X_eval.shape[0], net.widths[-1]))

    def record(t, p):
        losses[t] = _loss_jit(net, p, X, y, loss, intensive)
        if X_eval is not None:
            z_eval[t] = _forward_jit(net, p, X_eval)

    record(0, params)
    queue = []
    for t in range(1, steps + 1):
        if batch_size is None:
            Xb, yb = X, y
        else:
            if not queue:
                perm, rng = _permutation(rng, N)
                queue = [perm[s:s + batch_size] for s in range(0, N, batch_size)]
            idx = queue.pop(0)
            Xb, yb = X[idx], y[idx]
        params = _step_jit(net, params, Xb, yb, eta, lam, loss, intensive)
        record(t, params)
    hist = {"loss": losses}
    if X_eval is not None:
        hist["z_eval"] = z_eval
    return params, hist


@partial(jax.jit, static_argnames=("net",))
def _forward_jit(net, params, X):
    return forward(net, params, X)[net.L]


# ===================================================================== function-space dynamics

def _check_ntk(H, eps, idx_A, dO_dz=None):
    H = jnp.asarray(H, dtype=float)
    if H.ndim != 4 or H.shape[0] != H.shape[1] or H.shape[2] != H.shape[3]:
        raise ValueError(f"H must be the NTK H[i1, i2, a1, a2] of shape (n_L, n_L, N_D, N_D) "
                         f"(dlt.networks.empirical_ntk), got {H.shape}")
    nL, ND = H.shape[0], H.shape[2]
    if idx_A is None:
        idx_A = np.arange(ND)
    idx_A = np.asarray(idx_A)
    if idx_A.ndim != 1 or not np.issubdtype(idx_A.dtype, np.integer) or idx_A.size == 0 \
            or idx_A.min() < 0 or idx_A.max() >= ND or np.unique(idx_A).size != idx_A.size:
        raise ValueError(f"idx_A must be distinct integer indices of the training inputs in 0..{ND - 1}")
    if eps is not None:
        eps = jnp.asarray(eps, dtype=float)
    if eps is not None and eps.shape != (idx_A.size, nL):
        raise ValueError(f"eps must have shape (N_A, n_L) = {(idx_A.size, nL)}, got {eps.shape}")
    if dO_dz is not None:
        dO_dz = jnp.asarray(dO_dz, dtype=float)
        if dO_dz.shape != (ND, nL):
            raise ValueError(f"dO_dz must have shape (N_D, n_L) = {(ND, nL)}, got {dO_dz.shape}")
    return H, eps, idx_A, dO_dz


def predicted_output_change(H, eps, eta, idx_A=None):
    """First-order change of the outputs after one gradient-descent step, eq. (7.20):

        dz_{i;d} = -eta sum_{j, a in A} H_{ij; d a} eps_{j;a}.

    ``H``: NTK ``(n_L, n_L, N_D, N_D)`` on all inputs D (from :func:`dlt.networks.empirical_ntk`);
    ``eps``: error factor ``(N_A, n_L)`` on the training inputs (:func:`error_factor`);
    ``idx_A``: positions of the training inputs in D (default: D = A). Returns ``(N_D, n_L)``, the
    layout of the outputs. The residual against the true change is O(eta^2) (exact for a model
    linear in its parameters). Raises ``ValueError`` for inconsistent shapes or eta <= 0."""
    eta = _check_eta(eta)
    H, eps, idx_A, _ = _check_ntk(H, eps, idx_A)
    return -eta * jnp.einsum("ijda,aj->di", H[:, :, :, idx_A], eps)


def predicted_observable_change(H, eps, dO_dz, eta, idx_A=None):
    """First-order change of an observable O(z(x_d1), ..., z(x_dM)) after one step, eq. (7.19):

        dO = -eta sum_{i1, i2} sum_{a in A} sum_{d in D} eps_{i1;a} dO/dz_{i2;d} H_{i1 i2; a d}.

    ``dO_dz``: ``(N_D, n_L)``, the gradient of O with respect to the outputs on D; other arguments
    as in :func:`predicted_output_change`. Returns a scalar."""
    eta = _check_eta(eta)
    H, eps, idx_A, dO_dz = _check_ntk(H, eps, idx_A, dO_dz)
    return -eta * jnp.einsum("ai,dj,ijad->", eps, dO_dz, H[:, :, idx_A, :])


def predicted_loss_change(H, eps, eta, idx_A=None):
    """First-order change of the training loss after one step, eq. (7.14):
    ``-eta sum eps_{i1;a1} H_{i1 i2; a1 a2} eps_{i2;a2}`` over a1, a2 in A; never positive, since
    the NTK is positive semi-definite for a PSD learning-rate tensor. Arguments as in
    :func:`predicted_output_change`. Returns a scalar."""
    eta = _check_eta(eta)
    H, eps, idx_A, _ = _check_ntk(H, eps, idx_A)
    HA = H[:, :, idx_A][:, :, :, idx_A]
    return -eta * jnp.einsum("ai,ijab,bj->", eps, HA, eps)


def linearized_outputs(H, z0, y, eta, steps: int, idx_A=None, loss="mse", *, intensive: bool = False):
    """Output trajectory of gradient descent in function space with the NTK frozen at ``H``:
    iterate the first-order update (7.20),

        z_{t+1; d} = z_{t; d} - eta sum_{j, a in A} H_{.j; d a} eps_{j;a}(z_t),

    with the error factor of ``loss`` recomputed at every step. For a network that barely moves
    (small eta * steps, or wide networks, ch. 10) this tracks the real network's outputs.

    ``H``: ``(n_L, n_L, N_D, N_D)``; ``z0``: initial outputs ``(N_D, n_L)`` on D; ``y``: targets
    ``(N_A, n_L)`` of the training inputs ``idx_A`` (default D = A). Returns ``(steps+1, N_D, n_L)``."""
    eta = _check_eta(eta)
    loss = get_loss(loss)
    z0 = jnp.asarray(z0, dtype=float)
    H, _, idx_A, _ = _check_ntk(H, None, idx_A)
    if z0.shape != (H.shape[2], H.shape[0]):
        raise ValueError(f"z0 must have shape (N_D, n_L) = {(H.shape[2], H.shape[0])}, got {z0.shape}")
    y = _check_targets((idx_A.size, H.shape[0]), y, loss)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    HDA = H[:, :, :, idx_A]
    scale = 1.0 / idx_A.size if intensive else 1.0

    def body(z, _):
        eps = scale * loss.eps(z[idx_A], y)
        z = z - eta * jnp.einsum("ijda,aj->di", HDA, eps)
        return z, z

    _, zs = jax.lax.scan(body, z0, None, length=int(steps))
    return jnp.concatenate([z0[None], zs], axis=0)
