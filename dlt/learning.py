"""Losses, gradient-based training (book ch. 7) and kernel learning at infinite width (ch. 10).

The ch. 7 part acts on one real network from :mod:`dlt.networks`: a description ``net``
(:class:`~dlt.networks.MLP`) and its parameters ``params = {l: {"W", "b"}}``. Shapes follow the
library's conventions: inputs ``X`` are ``(N, n_0)``, outputs and targets ``z``, ``y`` are
``(N, n_L)`` (samples first, like :func:`dlt.networks.forward`), and the NTK is the
``H[i1, i2, a1, a2]`` of :func:`dlt.networks.empirical_ntk` (shape ``(n_L, n_L, N_D, N_D)``). The
ch. 10 part works with a *frozen* NTK or kernel on the samples, an ``(N_D, N_D)`` array (the
infinite-width Theta = H^(L) of :func:`dlt.kernels.kernel_fn`, get="ntk"; diagonal in the outputs),
with index sets ``idx_A`` (training), ``idx_B`` (test) into the sample axis; the functions that describe
one network also accept its empirical NTK. Training blocks are inverted by Cholesky solves, never
explicitly; a singular one is a ``ValueError`` unless ``ridge > 0`` adds ridge * I to it.

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
* **A giant leap** (§10.2): :func:`newton_step`, one Newton step of a real network (10.30);
  :func:`train_function_space`, many steps of GD / SGD / a Newton tensor / any loss with a frozen NTK
  (10.33)-(10.35) (algorithm independence); :func:`kernel_prediction`, the fully trained network
  (10.31), (10.39) and the mean (10.40); :func:`gd_prediction`, the closed-form MSE trajectory at any
  time; :func:`kernel_posterior`, the generalized posterior (10.40)-(10.41) of the ensemble (at the end
  of training or at time t); :func:`bayes_learning_rates`, last-layer training = exact Bayesian
  inference (10.44)-(10.49); :func:`predict`, all of it for users' inputs through the kernels of
  :func:`dlt.kernels.kernel_fn`.
* **Generalization** (§10.3): :func:`mse_bias_variance` (10.50)-(10.52), :func:`robustness` (10.57),
  :func:`polation_inputs` for *-polation (10.99). (The depth dependence of the NTK's delta-expansion
  components and finite angle, (10.66)-(10.98), is in :mod:`dlt.criticality`.)
* **Linear models and kernel methods** (§10.4): :func:`linear_regression` (10.119)-(10.125),
  :func:`linear_kernel` (10.127)-(10.128), (10.136), :func:`gaussian_kernel` (10.133),
  :func:`kernel_regression` (10.132). The random features of a network, (10.134)-(10.141), are
  :func:`dlt.networks.last_layer_features` and :func:`dlt.networks.ntk_features`.

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
from scipy.linalg import cho_factor, cho_solve

from .kernels import kernel_fn
from .networks import MLP, empirical_ntk, forward

__all__ = ["Loss", "LOSSES", "get_loss", "softmax", "mse", "cross_entropy", "error_factor",
           "training_loss", "loss_gradient", "learning_rate_tree", "apply_update", "gd_step",
           "minibatches", "train", "predicted_output_change", "predicted_observable_change",
           "predicted_loss_change", "linearized_outputs",
           "train_function_space", "newton_step", "kernel_prediction", "kernel_posterior", "gd_prediction",
           "bayes_learning_rates", "predict", "mse_bias_variance", "robustness", "polation_inputs",
           "linear_regression", "linear_kernel", "gaussian_kernel", "kernel_regression"]


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
    (small eta * steps, or wide networks, ch. 10) this tracks the real network's outputs. It is the
    plain-GD case of :func:`train_function_space` (same compiled engine); for MSE the closed form is
    :func:`gd_prediction` with ``discrete=True``.

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
    scale = 1.0 / idx_A.size if intensive else 1.0
    return _function_space_run(H[:, :, :, idx_A], True, z0, y, jnp.asarray(idx_A), np.full(int(steps), eta),
                               lambda t0, t1: None, None, loss, scale, True)


# ======================================================================= kernel learning (ch. 10)
#
# Conventions of this part: a *frozen* NTK or kernel on the samples D is an (N_D, N_D) array (the
# infinite-width Theta = H^(L), kernel_fn's "ntk"; diagonal in the output index, so every output
# component is trained with the same matrix); the empirical NTK of one finite network is the
# (n_L, n_L, N_D, N_D) array H[i1, i2, a1, a2] of dlt.networks.empirical_ntk, and functions that accept
# it treat the pair (sample, component) as one index. idx_A / idx_B are integer positions into the
# sample axis. The inverse of the training block is never formed: Cholesky solves (t = end of
# training) or the eigendecomposition of the training block (finite t).

_SINGULAR = "pass ridge > 0 to add ridge * I to the training block (a documented regularization)"
_PIVOT = 1e-10   # smallest relative Cholesky pivot of a training block that counts as non-singular


def _f64(x, name):
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real array, got {type(x).__name__}") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def _ridge(ridge):
    try:
        r = float(ridge)
    except (TypeError, ValueError):
        raise TypeError(f"ridge must be a real number, got {ridge!r}") from None
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"ridge must be finite and >= 0, got {ridge!r}")
    return r


def _indices(idx, N, name):
    try:
        idx = np.asarray(idx)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of integer sample positions") from None
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-d array of integer sample positions, got {idx!r}")
    if idx.min() < 0 or idx.max() >= N or np.unique(idx).size != idx.size:
        raise ValueError(f"{name} must hold distinct positions in 0..{N - 1}, got {idx.tolist()}")
    return idx.astype(int)


def _outputs(y, N, name, n_out=None):
    """y (N, n_out) or (N,) -> (float array (N, n_out), was_1d)."""
    y = _f64(y, name)
    one = y.ndim == 1
    if one:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != N or y.shape[1] == 0 or (n_out is not None and y.shape[1] != n_out):
        want = f"(N={N}, n_out{'' if n_out is None else '=' + str(n_out)})"
        raise ValueError(f"{name} must have shape {want} (samples first) or (N,), got {np.shape(y)}")
    return y, one


def _check_symmetric(M, name):
    scale = max(np.abs(M).max(), 1e-300)
    if np.abs(M - np.swapaxes(M, -1, -2)).max() > 1e-10 * scale:
        raise ValueError(f"{name} must be symmetric")


class _Train:
    """The training block of a frozen NTK (N_A, N_A) or of an empirical NTK (n_L, n_L, N_A, N_A), as a
    symmetric matrix M on the flat training index (a, or (a, i) for the empirical NTK), plus ridge * I.

    ``flat(R)``: residuals (..., N_A, n_out) -> the columns M acts on; ``unflat`` the inverse map for
    outputs on B. ``solve(R)`` = M^{-1} R by Cholesky, or a ValueError that says the block is singular."""

    def __init__(self, T_AA, ridge, name="the training block of Theta"):
        T_AA = _f64(T_AA, name)
        if T_AA.ndim == 4:
            n, _, N, N2 = T_AA.shape
            if T_AA.shape[1] != n or N2 != N:
                raise ValueError(f"{name} must have shape (n_L, n_L, N_A, N_A), got {T_AA.shape}")
            self.n_out, self.N = n, N
            M = T_AA.transpose(2, 0, 3, 1).reshape(N * n, N * n)      # [(a1, i1), (a2, i2)]
        elif T_AA.ndim == 2 and T_AA.shape[0] == T_AA.shape[1] and T_AA.shape[0] > 0:
            self.n_out, self.N, M = None, T_AA.shape[0], T_AA
        else:
            raise ValueError(f"{name} must be a square (N_A, N_A) frozen NTK / kernel or an empirical NTK "
                             f"(n_L, n_L, N_A, N_A), got shape {T_AA.shape}")
        _check_symmetric(M, name)
        self.name, self.ridge = name, _ridge(ridge)
        self.M = 0.5 * (M + M.T) + self.ridge * np.eye(M.shape[0])
        self._cho = None

    @property
    def four(self):
        return self.n_out is not None

    def check_outputs(self, n_out, what):
        if self.four and n_out != self.n_out:
            raise ValueError(f"{what} has {n_out} output components but the empirical NTK has "
                             f"n_L = {self.n_out}")

    def flat(self, R):      # (..., N, n) -> (..., N*n, 1) for the empirical NTK; unchanged otherwise
        return R.reshape(R.shape[:-2] + (-1, 1)) if self.four else R

    def unflat(self, R):
        return R.reshape(R.shape[:-2] + (-1, self.n_out)) if self.four else R

    def cho(self):
        if self._cho is None:
            M = self.M
            try:
                c, low = cho_factor(M, lower=True, check_finite=False)
                # pivot^2 / M_aa: the fraction of sample a's variance left unexplained by the samples
                # before it. Below _PIVOT the block is singular to the accuracy of the kernels (~1e-12
                # relative, dlt.kernels): its inverse would be dominated by their errors. ridge > 0:
                # the caller's regularization, only a failed factorization is an error.
                ok = self.ridge > 0 or (np.diag(c) ** 2 / np.diag(M)).min() > _PIVOT
            except np.linalg.LinAlgError:
                ok = False
            if not ok:
                ev = np.linalg.eigvalsh(M)
                raise ValueError(f"{self.name} is singular: not numerically positive definite "
                                 f"(eigenvalues {ev.min():.3e} .. {ev.max():.3e}; duplicate or degenerate "
                                 "training inputs, more training outputs than parameters, or a collapsed "
                                 f"kernel); {_SINGULAR}")
            self._cho = (c, low)
        return self._cho

    def solve(self, R):
        """M^{-1} R over the flat axis -2 of R (..., m, k)."""
        R = np.asarray(R, dtype=float)
        Rm = np.moveaxis(R, -2, 0)
        S = cho_solve(self.cho(), Rm.reshape(Rm.shape[0], -1), check_finite=False)
        return np.moveaxis(S.reshape(Rm.shape), 0, -2)

    def eig(self):
        lam, U = np.linalg.eigh(self.M)
        if lam.min() < -1e-10 * max(abs(lam).max(), 1e-300):
            raise ValueError(f"{self.name} must be positive semi-definite (an NTK with a PSD learning-rate "
                             f"tensor), smallest eigenvalue {lam.min():.3e}")
        return lam, U


def _cross_block(T_BA, train, name="theta_BA"):
    """The (flat) test-train block: (N_B, N_A) or (n_L, n_L, N_B, N_A) -> matrix (m_B, m_A)."""
    T_BA = _f64(T_BA, name)
    if train.four:
        n, N = train.n_out, train.N
        if T_BA.ndim != 4 or T_BA.shape[:2] != (n, n) or T_BA.shape[3] != N:
            raise ValueError(f"{name} must have shape (n_L, n_L, N_B, N_A) = ({n}, {n}, N_B, {N}) like the "
                             f"training block, got {T_BA.shape}")
        return T_BA.transpose(2, 0, 3, 1).reshape(T_BA.shape[2] * n, N * n)
    if T_BA.ndim != 2 or T_BA.shape[1] != train.N:
        raise ValueError(f"{name} must have shape (N_B, N_A={train.N}), got {T_BA.shape}")
    return T_BA


def _z_pair(z_A, z_B, N_A, N_B, n_out):
    z_A, z_B = _f64(z_A, "z_A"), _f64(z_B, "z_B")
    if z_A.ndim < 2 or z_A.shape[-2:] != (N_A, n_out):
        raise ValueError(f"z_A must have shape (..., N_A, n_out) = (..., {N_A}, {n_out}), got {z_A.shape}")
    if z_B.shape != z_A.shape[:-2] + (N_B, n_out):
        raise ValueError(f"z_B must have shape {z_A.shape[:-2] + (N_B, n_out)} (the leading axes of z_A, "
                         f"then (N_B, n_out)), got {z_B.shape}")
    return z_A, z_B


def kernel_prediction(theta_BA, theta_AA, y_A, z_A=None, z_B=None, *, ridge: float = 0.0):
    """Kernel prediction of a fully trained network with a frozen NTK, eqs. (10.39)-(10.40):

        per network (10.39):  z_B(T) = z_B - Theta_BA Theta~^{-1} (z_A - y_A)
        mean (10.40):         m_B    = Theta_BA Theta~^{-1} y_A            (z_A, z_B omitted)

    with Theta~ the training block (its inverse (10.26) by a Cholesky solve). The same formula with the
    kernel K is the Bayesian posterior mean (6.64) and, with any kernel k, the kernel machine (10.132)
    (:func:`kernel_regression` is this function).

    ``theta_BA`` (N_B, N_A), ``theta_AA`` (N_A, N_A): a frozen NTK (diagonal in the outputs); or the
    empirical NTK of one network, ``(n_L, n_L, N_B, N_A)`` and ``(n_L, n_L, N_A, N_A)`` in the index order of
    :func:`dlt.networks.empirical_ntk`, with the pair (sample, component) inverted as one index: the end
    point of gradient descent of the network's linearized model. ``y_A`` (N_A, n_out) or (N_A,);
    ``z_A`` (..., N_A, n_out), ``z_B`` (..., N_B, n_out): initial outputs, leading axes for ensembles
    (both or neither). ``ridge`` >= 0 adds ridge * I to the training block.

    Returns (..., N_B, n_out) (or (N_B,) for 1-d targets and no z). Raises ``ValueError`` for shapes that
    do not match, a non-symmetric or singular training block (the message says to pass ridge > 0) or a
    negative ridge; ``TypeError`` for non-numeric input. Singular means, without a ridge, that some
    Cholesky pivot is below 1e-10 of its diagonal entry (the part of a sample's variance that the other
    training samples leave unexplained): the kernels of :mod:`dlt.kernels` are accurate to ~1e-12, so
    the inverse of such a block (duplicate inputs) would be dominated by their errors."""
    train = _Train(theta_AA, ridge, "the training block theta_AA")
    T_BA = _cross_block(theta_BA, train)
    y, one = _outputs(y_A, train.N, "y_A")
    train.check_outputs(y.shape[1], "y_A")
    if (z_A is None) != (z_B is None):
        raise ValueError("give both z_A and z_B (one network's initial outputs, (10.39)) or neither (the "
                         "mean (10.40))")
    N_B = T_BA.shape[0] // (train.n_out or 1)
    if z_A is None:
        out = train.unflat(T_BA @ train.solve(train.flat(y)))
        return out[:, 0] if one else out
    z_A, z_B = _z_pair(z_A, z_B, train.N, N_B, y.shape[1])
    return z_B - train.unflat(T_BA @ train.solve(train.flat(z_A - y)))


def kernel_regression(k_BA, k_AA, y_A, *, ridge: float = 0.0):
    """Kernel machine (kernel methods), eq. (10.132): z_B = k_BA k~^{-1} y_A, the dual form of linear
    regression (10.125) for the kernel k = sum_j phi_j phi_j (10.127) (ridge: (10.124) with ridge = 2a).
    It is the mean kernel prediction (10.40) (:func:`kernel_prediction`, which this calls).
    ``k_BA`` (N_B, N_A), ``k_AA`` (N_A, N_A), ``y_A`` (N_A, n_out) or (N_A,) -> (N_B, n_out) (or (N_B,)).
    Raises ``ValueError`` like :func:`kernel_prediction` (a singular k~: pass ridge > 0)."""
    return kernel_prediction(k_BA, k_AA, y_A, ridge=ridge)


def _times(t, discrete):
    try:
        ta = np.asarray(t, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"t must be a number or a 1-d array of numbers, got {t!r}") from None
    if ta.ndim > 1 or ta.size == 0 or np.any(np.isnan(ta)) or np.any(ta < 0):
        raise ValueError(f"t must be a number >= 0 or a non-empty 1-d array of them (inf = end of "
                         f"training), got {t!r}")
    if discrete and np.any(np.isfinite(ta) & (ta != np.round(ta))):
        raise ValueError(f"with discrete=True, t counts gradient-descent steps: integers >= 0 (or inf), "
                         f"got {t!r}")
    return ta


def _gd_filter(lam, t, eta, discrete, strict=True):
    """f_t(lam) with Theta~^{-1} (1 - e^{-eta Theta~ t}) = U diag f_t U^T (continuous time) or
    Theta~^{-1} (1 - (1 - eta Theta~)^t) (discrete steps); t (T,), lam (m,) -> (T, m). f = eta t at lam = 0,
    1/lam at t = inf."""
    tt, lm = t[:, None], lam[None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if discrete:
            x = eta * lm
            small = x < 1
            num = np.where(small, -np.expm1(tt * np.log1p(-np.where(small, x, 0.0))), 1 - (1 - x) ** tt)
        else:
            num = -np.expm1(-eta * lm * tt)
        f = np.where(lm == 0, eta * tt + 0 * lm, num / lm)
    inf = ~np.isfinite(tt[:, 0])
    if inf.any():
        if lam.min() <= 0 or (strict and lam.min() <= _PIVOT * lam.max()):
            raise ValueError(f"the training block is singular (smallest eigenvalue {lam.min():.3e}): the end "
                             f"of training t = inf needs its inverse; {_SINGULAR}")
        if discrete and eta * lam.max() >= 2:
            raise ValueError(f"discrete gradient descent diverges for eta * lambda_max = "
                             f"{eta * lam.max():.3g} >= 2")
        f[inf] = 1.0 / lam
    if discrete and not np.all(np.isfinite(f)):
        raise ValueError("discrete gradient descent overflowed: eta * lambda_max(Theta~) > 2 makes it "
                         "diverge")
    return f


def gd_prediction(Theta, idx_A, idx_B, z0, y_A, t, *, eta: float = 1.0, ridge: float = 0.0,
                  discrete: bool = False):
    """Closed-form trajectory of MSE gradient descent with a frozen NTK (a linear model), per network:

        z_B(t) = z_B - Theta_BA Theta~^{-1} [1 - e^{-eta Theta~ t}] (z_A - y_A)      (continuous time)
        z_B(t) = z_B - Theta_BA Theta~^{-1} [1 - (1 - eta Theta~)^t] (z_A - y_A)     (discrete=True: t steps)

    (the solution of the update (10.3) with eps = z - y; z_A(t) - y_A = e^{-eta Theta~ t} (z_A - y_A)). The
    discrete form is exactly t steps of :func:`linearized_outputs`; the continuous one is its limit
    eta -> 0 at fixed eta t. Both tend to the end of training (10.39) for t -> inf (t = inf is allowed).
    The bracket is a function of Theta~ evaluated on its eigendecomposition, so finite t needs no
    inverse (a singular Theta~ is fine; components along its null space keep their initial error).

    ``Theta``: frozen NTK on D (N_D, N_D), or one network's empirical NTK (n_L, n_L, N_D, N_D);
    ``idx_A``, ``idx_B``: positions of the training inputs and of the outputs wanted (may overlap A);
    ``z0`` (..., N_D, n_out) initial outputs (leading axes: networks); ``y_A`` (N_A, n_out); ``t`` >= 0
    (time, or steps with discrete=True) or a 1-d array of them; ``eta`` > 0 the global learning rate;
    ``ridge`` >= 0 adds ridge * I to Theta~ (regularized dynamics).

    Returns (..., N_B, n_out) for scalar t, (len(t), ..., N_B, n_out) for an array. Raises ``ValueError``
    for bad shapes, t < 0 (or not an integer when discrete), eta <= 0, a Theta~ that is not PSD, or t = inf
    with a singular Theta~ (pass ridge > 0)."""
    eta, discrete = _check_eta(eta), bool(discrete)
    Th = _f64(Theta, "Theta")
    if Th.ndim not in (2, 4) or Th.shape[-1] != Th.shape[-2] or (Th.ndim == 4 and Th.shape[0] != Th.shape[1]):
        raise ValueError(f"Theta must be a frozen NTK (N_D, N_D) or an empirical NTK (n_L, n_L, N_D, N_D), "
                         f"got shape {Th.shape}")
    ND = Th.shape[-1]
    A, B = _indices(idx_A, ND, "idx_A"), _indices(idx_B, ND, "idx_B")
    train = _Train(Th[..., A[:, None], A[None, :]], ridge, "the training block of Theta")
    T_BA = _cross_block(Th[..., B[:, None], A[None, :]], train, "Theta[B, A]")
    z0 = _f64(z0, "z0")
    if z0.ndim < 2 or z0.shape[-2] != ND:
        raise ValueError(f"z0 must have shape (..., N_D={ND}, n_out), got {z0.shape}")
    y, _ = _outputs(y_A, A.size, "y_A", z0.shape[-1])
    train.check_outputs(y.shape[1], "z0")
    ta = _times(t, discrete)
    lam, U = train.eig()
    f = _gd_filter(lam, np.atleast_1d(ta), eta, discrete, train.ridge == 0)  # (T, m)
    v = np.einsum("km,...kn->...mn", U, train.flat(z0[..., A, :] - y))     # U^T r
    G = T_BA @ U                                                           # (m_B, m)
    dz = np.einsum("bm,tm,...mn->t...bn", G, f, v)
    out = z0[..., B, :] - train.unflat(dz)
    return out[0] if ta.ndim == 0 else out


def kernel_posterior(K, Theta, idx_A, idx_B, y_A, *, t=None, eta: float = 1.0, ridge: float = 0.0,
                     discrete: bool = False):
    """Generalized posterior of the ensemble of networks trained with a frozen NTK: the distribution of
    z_B(T) over initializations, eqs. (10.40)-(10.41) (the counterpart of neural-tangents'
    predict.gradient_descent_mse_ensemble). With P = Theta_BA Theta~^{-1} (Theta~ the training block):

        mean (10.40):  m_B = P y_A
        cov  (10.41):  K_BB - P K_AB - K_BA P^T + P K_AA P^T   (the same for every output component)

    It is Gaussian since z_B(T) is linear in the Gaussian initial outputs z ~ N(0, K). Theta -> K gives
    the Bayesian posterior (6.57), (6.64) (:func:`dlt.bayes.gp_posterior`; last-layer training,
    :func:`bayes_learning_rates`). At a finite time ``t`` P becomes P_t = Theta_BA Theta~^{-1}
    [1 - e^{-eta Theta~ t}] (continuous-time gradient descent with global rate ``eta``; ``discrete=True``:
    [1 - (1 - eta Theta~)^t] after t steps), the ensemble of :func:`gd_prediction` trajectories; t = 0
    is the prior N(0, K_BB), t -> inf the end of training.

    ``K``, ``Theta``: (N, N) kernel and frozen NTK on D (e.g. :func:`dlt.kernels.kernel_fn` with
    get=("nngp", "ntk")); ``idx_A``, ``idx_B`` positions of the training and test inputs (may overlap);
    ``y_A`` (N_A, n_out) or (N_A,); ``t``: None (end of training; Cholesky solve), a time >= 0 or a 1-d
    array of times; ``ridge`` >= 0 adds ridge * I to Theta~ (everywhere Theta~ appears).

    Returns (mean (N_B, n_out), cov (N_B, N_B)), with a leading time axis on both for an array t (mean
    (N_B,) for 1-d targets). Raises ``ValueError`` for bad shapes, non-symmetric K or Theta, a singular
    Theta~ at t = None or inf (pass ridge > 0), t < 0, eta <= 0."""
    K, Th = _f64(K, "K"), _f64(Theta, "Theta")
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape != Th.shape:
        raise ValueError(f"K and Theta must be square arrays of the same shape (N, N), got {K.shape}, "
                         f"{Th.shape}")
    _check_symmetric(K, "K")
    N = K.shape[0]
    A, B = _indices(idx_A, N, "idx_A"), _indices(idx_B, N, "idx_B")
    y, one = _outputs(y_A, A.size, "y_A")
    train = _Train(Th[np.ix_(A, A)], ridge, "the training block of Theta")
    T_BA = _cross_block(Th[np.ix_(B, A)], train, "Theta[B, A]")
    K_AA, K_AB, K_BB = K[np.ix_(A, A)], K[np.ix_(A, B)], K[np.ix_(B, B)]
    if t is None:
        P = train.solve(T_BA.T).T[None]                                     # (1, N_B, N_A)
    else:
        eta = _check_eta(eta)
        ta = _times(t, discrete)
        lam, U = train.eig()
        f = _gd_filter(lam, np.atleast_1d(ta), eta, bool(discrete), train.ridge == 0)
        P = np.einsum("bm,tm,am->tba", T_BA @ U, f, U)
    PK = P @ K_AB                                                          # (T, N_B, N_B)
    cov = K_BB - PK - np.swapaxes(PK, 1, 2) + P @ K_AA @ np.swapaxes(P, 1, 2)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    mean = P @ y
    if one:
        mean = mean[..., 0]
    if t is None or np.ndim(t) == 0:
        return mean[0], cov[0]
    return mean, cov


# ------------------------------------------------------------------ many steps in function space
_CHUNK = 4096   # steps per compiled scan; the last chunk is padded with eta = 0 steps (no-ops)


@partial(jax.jit, static_argnames=("loss", "four", "record"))
def _fs_scan(H, kappa, z, y, idx_A, scale, etas, masks, loss, four, record):
    def body(z, inp):
        eta, m = inp
        eps = scale * loss.eps(z[..., idx_A, :], y)
        if m is not None:
            eps = eps * m[:, None]
        if kappa is not None:
            eps = jnp.einsum("ab,...bj->...aj", kappa, eps)
            if m is not None:
                eps = eps * m[:, None]
        upd = jnp.einsum("ijda,...aj->...di", H, eps) if four else jnp.einsum("da,...aj->...dj", H, eps)
        z = z - eta * upd
        return z, (z if record else None)

    return jax.lax.scan(body, z, (etas, masks))


def _function_space_run(HDA, four, z0, y, idx_A, etas, mask_fn, kappa, loss, scale, record):
    """Iterate z <- z - eta_t H_DA kappa_t eps(z_A) for len(etas) steps in compiled chunks (the engine of
    :func:`train_function_space` and :func:`linearized_outputs`). mask_fn(t0, t1) -> (t1 - t0, N_A)
    batch masks or None. Returns z(T), or the trajectory (steps+1, ...) with record=True."""
    steps = etas.size
    z = jnp.asarray(z0, dtype=float)
    traj = [z[None]] if record else None
    chunk = max(1, min(steps, _CHUNK))
    for t0 in range(0, steps, chunk):
        t1 = min(t0 + chunk, steps)
        e = np.zeros(chunk)
        e[: t1 - t0] = etas[t0:t1]
        m = mask_fn(t0, t1)
        if m is not None:
            m = np.concatenate([m, np.zeros((chunk - (t1 - t0), m.shape[1]))])
        z, zs = _fs_scan(HDA, kappa, z, y, idx_A, scale, jnp.asarray(e),
                         None if m is None else jnp.asarray(m), loss, four, record)
        if record:
            traj.append(zs[: t1 - t0])
    return jnp.concatenate(traj, axis=0) if record else z


def _steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    return int(steps)


def _eta_schedule(eta, steps):
    if callable(eta):
        vals = np.array([_f64(eta(t), "eta(t)") for t in range(steps)], dtype=float).reshape(steps)
        if np.any(vals <= 0):
            raise ValueError(f"the learning-rate schedule eta(t) must be > 0, got {vals.min():g} at "
                             f"t = {int(np.argmin(vals))}")
        return vals
    return np.full(steps, _check_eta(eta))


def _batch_index(b, N_A, what):
    try:
        b = np.asarray(b)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an array of integer positions into the training set") from None
    if b.ndim != 1 or b.size == 0 or not np.issubdtype(b.dtype, np.integer) or b.min() < 0 \
            or b.max() >= N_A or np.unique(b).size != b.size:
        raise ValueError(f"{what} must hold distinct positions into the training set A, in 0..{N_A - 1} "
                         f"(not into D), got {b!r}")
    return b


def _mask_schedule(batches, N_A):
    if batches is None:
        return lambda t0, t1: None
    if callable(batches):
        def masks(t0, t1):
            m = np.zeros((t1 - t0, N_A))
            for k, t in enumerate(range(t0, t1)):
                m[k, _batch_index(batches(t), N_A, f"batches({t})")] = 1.0
            return m
        return masks
    try:
        seq = list(batches)
    except TypeError:
        raise TypeError("batches must be None, a list of index arrays into A, or a callable "
                        "t -> index array") from None
    if not seq:
        raise ValueError("batches must not be empty")
    table = np.zeros((len(seq), N_A))
    for k, b in enumerate(seq):
        table[k, _batch_index(b, N_A, f"batches[{k}]")] = 1.0
    return lambda t0, t1: table[np.arange(t0, t1) % len(seq)]


def train_function_space(Theta, idx_A, z0, y_A, eta, steps: int, *, kappa=None, loss="mse", batches=None,
                         record: bool = False):
    """Training in function space with a frozen NTK, eqs. (10.33)-(10.35): iterate the update (10.20)

        z_{t+1; d} = z_{t; d} - eta_t sum_{a1, a2 in A} Theta_{d a1} kappa_t^{a1 a2} eps_{a2}(z_t)

    on all inputs D, with eps = dL_A/dz the error factor of ``loss`` (:func:`error_factor`: z - y for
    MSE, softmax(z) - p for cross-entropy (10.6)). Every algorithm of §10.2.2 is a choice of
    (eta_t, kappa_t, L_A): plain GD (kappa = 1), a constant Newton tensor ``kappa`` (N_A, N_A) (10.18) --
    with MSE this is GD on the generalized MSE loss (10.22)-(10.23), and eta kappa = Theta~^{-1} is
    Newton's method (10.25) -- and SGD (footnote 12): ``batches`` makes kappa_t = P_t kappa P_t, P_t the
    projector on the mini-batch S_t (the loss L_{S_t}). Algorithm independence (10.35): whatever the path,
    a converged run ends at :func:`kernel_prediction`'s (10.31). :func:`linearized_outputs` is the
    plain-GD special case with the empirical NTK.

    ``Theta``: frozen NTK (N_D, N_D), or an empirical NTK (n_L, n_L, N_D, N_D) (no kappa then acts on
    the outputs; kappa acts on samples); ``idx_A`` positions of the training inputs in D; ``z0``
    (..., N_D, n_out) initial outputs (leading axes: independent networks); ``y_A`` (N_A, n_out) targets
    (probability rows for cross-entropy; for logit targets y pass softmax(y) (10.37)); ``eta`` > 0 or a
    callable t -> eta_t (t = 0..steps-1); ``batches``: None (full batch), a list of index arrays into A
    used in turn and cyclically (e.g. :func:`minibatches`), or a callable t -> index array; ``record``:
    also return every step.

    Returns z_D(T) (..., N_D, n_out) after ``steps`` updates, or with ``record=True`` the trajectory
    (steps+1, ..., N_D, n_out). Runs as a compiled ``lax.scan`` in chunks of 4096 steps (one compilation
    per problem shape). Raises ``ValueError`` for inconsistent shapes, eta <= 0, steps < 0, a kappa that
    is not a symmetric (N_A, N_A) array, bad batches, an unknown loss or invalid targets."""
    loss = get_loss(loss)
    H = jnp.asarray(_f64(Theta, "Theta"))
    if H.ndim == 2 and H.shape[0] == H.shape[1]:
        four, ND = False, H.shape[0]
    elif H.ndim == 4 and H.shape[0] == H.shape[1] and H.shape[2] == H.shape[3]:
        four, ND = True, H.shape[2]
    else:
        raise ValueError(f"Theta must be a frozen NTK (N_D, N_D) or an empirical NTK (n_L, n_L, N_D, N_D), "
                         f"got shape {H.shape}")
    A = _indices(idx_A, ND, "idx_A")
    z0 = _f64(z0, "z0")
    if z0.ndim < 2 or z0.shape[-2] != ND or (four and z0.shape[-1] != H.shape[0]):
        raise ValueError(f"z0 must have shape (..., N_D={ND}, n_out{'=' + str(H.shape[0]) if four else ''}), "
                         f"got {z0.shape}")
    y = _check_targets((A.size, z0.shape[-1]), y_A, loss, "y_A")
    steps = _steps(steps)
    etas = _eta_schedule(eta, steps)
    if kappa is not None:
        kappa = _f64(kappa, "kappa")
        if kappa.shape != (A.size, A.size):
            raise ValueError(f"kappa (the Newton tensor (10.18)) must have shape (N_A, N_A) = "
                             f"{(A.size, A.size)}, got {kappa.shape}")
        _check_symmetric(kappa, "kappa (the Newton tensor (10.18))")
        kappa = jnp.asarray(kappa)
    HDA = H[..., jnp.asarray(A)]
    return _function_space_run(HDA, four, z0, y, jnp.asarray(A), etas, _mask_schedule(batches, A.size),
                               kappa, loss, 1.0, bool(record))


# ---------------------------------------------------------------------------- Newton's method
@partial(jax.jit, static_argnames=("net",))
def _vjp_jit(net, params, X, c):
    return jax.vjp(lambda p: forward(net, p, X)[net.L], params)[1](c)[0]


def newton_step(net: MLP, params: dict, X_A, y_A, *, ridge: float = 0.0) -> dict:
    """One Newton step of a real network, eq. (10.30) (the giant leap of §10.2.1):

        theta*_mu = theta_mu - sum lambda_{mu nu} dz_{i1;a1}/dtheta_nu H~^{(i1 a1)(i2 a2)} eps_{i2;a2},
        eps = z - y_A,

    with the network's empirical NTK H^ (:func:`dlt.networks.empirical_ntk`) on the training set, its
    inverse taken over the pair (sample, component) (at infinite width H^ = delta_ij Theta and this is
    (10.30) with eta kappa = Theta~^{-1} (10.25)). It puts the network's *linearized* model exactly on
    the targets (z + J dtheta = y_A); the real network misses them by its O(1/n) nonlinearity.
    Learning-rate tensor: the net's lambda_b, lambda_W / n_{l-1} (:func:`learning_rate_tree`).

    ``X_A`` (N_A, n_0), ``y_A`` (N_A, n_L); ``ridge`` >= 0 adds ridge * I to H~. Returns the new
    parameters. Raises ``ValueError`` for bad shapes, or an H~ that is singular (N_A n_L > P, duplicate
    inputs, lambda = 0: pass ridge > 0)."""
    X, y, _ = _prepare(net, params, X_A, y_A, "mse")
    z = _forward_jit(net, params, X)
    train = _Train(np.asarray(empirical_ntk(net, params, X)), ridge, "the empirical NTK on the training set")
    c = train.unflat(train.solve(train.flat(np.asarray(z - y))))
    g = _vjp_jit(net, params, X, jnp.asarray(c))
    return jax.tree_util.tree_map(lambda p, gg, la: p - la * gg, params, g, learning_rate_tree(net))


# ------------------------------------------------------------------------- users' data, Bayes
def bayes_learning_rates(net: MLP) -> MLP:
    """The training hyperparameters (10.46), (10.48) that make gradient descent exact Bayesian inference
    at infinite width: lambda_b^(L) = C_b^(L), lambda_W^(L) = C_W^(L) and lambda = 0 in every lower layer
    (only the last layer trains), so that the frozen NTK equals the kernel, Theta^(L) = K^(L) (10.49).
    Returns a copy of ``net`` with these learning rates. Raises ``TypeError`` for a non-MLP."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a dlt.networks.MLP, got {type(net)}")
    lb, lw = np.zeros(net.L), np.zeros(net.L)
    lb[-1], lw[-1] = net.C_b[-1], net.C_W[-1]
    return net.replace(lambda_b=tuple(lb), lambda_W=tuple(lw))


def _net_inputs(net, X, name):
    X = _f64(X, name)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != net.widths[0]:
        raise ValueError(f"{name} must have shape (N, n_0={net.widths[0]}), got {X.shape}")
    return X


def predict(net: MLP, X_A, y_A, X_B, *, t=None, eta: float = 1.0, ridge: float = 0.0, bayes: bool = False,
            discrete: bool = False):
    """Predictions of the infinite-width ensemble of ``net`` trained on (X_A, y_A), at the test inputs X_B:
    the generalized posterior (10.40)-(10.41) (:func:`kernel_posterior`) with the kernel K^(L) and the
    frozen NTK Theta^(L) of :func:`dlt.kernels.kernel_fn` (get=("nngp", "ntk"), the net's C_b, C_W,
    lambda_b, lambda_W) on X_A u X_B. ``bayes=True``: only the last layer trains ((10.46)-(10.48),
    :func:`bayes_learning_rates`), Theta = K exactly (10.49), and the result is the Bayesian posterior
    (6.57), (6.64). ``t``, ``eta``, ``discrete``: the ensemble at a finite training time (see
    :func:`kernel_posterior`); ``ridge`` >= 0 regularizes Theta~.

    ``X_A`` (N_A, n_0), ``y_A`` (N_A, n_L) or (N_A,), ``X_B`` (N_B, n_0). Returns (mean (N_B, n_L), cov
    (N_B, N_B)) (time axis first for an array t). The kernels cost O((N_A + N_B)^2 L): thousands of inputs
    take seconds for ReLU-type and erf activations (closed forms), longer for tanh (Mehler series).
    Raises ``TypeError`` for a non-MLP; ``ValueError`` for bad shapes or a singular training NTK
    (duplicate inputs: pass ridge > 0)."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a dlt.networks.MLP, got {type(net)}")
    X_A, X_B = _net_inputs(net, X_A, "X_A"), _net_inputs(net, X_B, "X_B")
    y = _f64(y_A, "y_A")
    if y.ndim == 2 and y.shape[1] != net.widths[-1]:
        raise ValueError(f"y_A must have shape (N_A, n_L={net.widths[-1]}) or (N_A,), got {y.shape}")
    X = np.concatenate([X_A, X_B])
    if bayes:
        K = Th = kernel_fn(net, X)
    else:
        K, Th = kernel_fn(net, X, get=("nngp", "ntk"))
    NA = X_A.shape[0]
    return kernel_posterior(K, Th, np.arange(NA), NA + np.arange(X_B.shape[0]), y, t=t, eta=eta, ridge=ridge,
                            discrete=discrete)


# ---------------------------------------------------------------------------- generalization
def mse_bias_variance(mean, cov, y_B):
    """Bias and variance of the expected MSE test loss, eqs. (10.50)-(10.52):

        E[L_B] = bias + variance,  bias = 1/2 sum_{b, i} (m_{i;b} - y_{i;b})^2,
                                   variance = 1/2 sum_{b, i} Cov[z_{i;b}(T), z_{i;b}(T)] = n_out tr(cov) / 2

    (the covariance (10.41) is the same for every output component). ``mean`` (N_B, n_out) or (N_B,),
    ``cov`` (N_B, N_B) (e.g. from :func:`kernel_posterior`), ``y_B`` the true test outputs, shaped like
    ``mean``. Returns (bias, variance), floats. Raises ``ValueError`` for mismatched shapes."""
    m = _f64(mean, "mean")
    if m.ndim not in (1, 2) or m.shape[0] == 0 or 0 in m.shape:
        raise ValueError(f"mean must have shape (N_B, n_out) or (N_B,), got {m.shape}")
    y = _f64(y_B, "y_B")
    if y.shape != m.shape:
        raise ValueError(f"y_B must have the shape of mean {m.shape}, got {y.shape}")
    m, y = m.reshape(m.shape[0], -1), y.reshape(m.shape[0], -1)
    c = _f64(cov, "cov")
    if c.shape != (m.shape[0], m.shape[0]):
        raise ValueError(f"cov must have shape (N_B, N_B) = {(m.shape[0],) * 2}, got {c.shape}")
    return 0.5 * float(np.sum((m - y) ** 2)), 0.5 * m.shape[1] * float(np.trace(c))


def robustness(theta2):
    """Robustness measure (10.57) of one training input + and a test input -: Theta_{-+} / Theta_{++} - 1,
    the coefficient of y_+ in the bias (10.56) (0: the prediction at - repeats y_+; equal norms:
    -2 ddTheta_[2] / Theta_00 + O(delta^4) (10.62); finite angle: cos zeta - 1 (10.94)).
    ``theta2`` (..., 2, 2): the NTK on (x_+, x_-), index 0 the training point. Returns a float (or an
    array over the leading axes). Raises ``ValueError`` for a wrong shape or Theta_{++} <= 0."""
    T = _f64(theta2, "theta2")
    if T.ndim < 2 or T.shape[-2:] != (2, 2):
        raise ValueError(f"theta2 must have shape (..., 2, 2) (index 0: the training input), got {T.shape}")
    if np.any(T[..., 0, 0] <= 0):
        raise ValueError("Theta_{++} must be > 0")
    r = T[..., 1, 0] / T[..., 0, 0] - 1
    return float(r) if r.ndim == 0 else r


def polation_inputs(x_plus, x_minus, s):
    """Inputs on the line through two training inputs, eq. (10.99): x_(2s-1) = s x_+ + (1 - s) x_-
    = x_0 + (2s - 1)/2 dx (x_0 the midpoint, dx = x_+ - x_-); s in [0, 1] interpolates, outside
    extrapolates (*-polation). ``x_plus``, ``x_minus`` (n_0,); ``s`` a number or 1-d array.
    Returns (len(s), n_0). Raises ``ValueError`` for shapes that differ or non-finite values."""
    xp, xm = _f64(x_plus, "x_plus"), _f64(x_minus, "x_minus")
    if xp.ndim != 1 or xp.shape != xm.shape or xp.size == 0:
        raise ValueError(f"x_plus and x_minus must be inputs of the same shape (n_0,), got {xp.shape}, "
                         f"{xm.shape}")
    s = _f64(s, "s")
    if s.ndim > 1:
        raise ValueError(f"s must be a number or a 1-d array, got shape {s.shape}")
    s = np.atleast_1d(s)[:, None]
    return s * xp + (1 - s) * xm


# ------------------------------------------------------------------ linear models, kernel methods
def linear_regression(Phi_A, y_A, *, ridge: float = 0.0):
    """Linear regression (10.119)-(10.125): the weights W* minimizing the MSE loss (10.120) of the linear
    model z_i(x) = sum_j W_ij phi_j(x), from the normal equations (10.121)-(10.123)

        W*_ij = sum_{k, a} y_{i;a} phi_k(x_a) (M^{-1})_kj,  M = sum_a phi(x_a) phi(x_a)^T (+ ridge I (10.124))

    (ridge = 2a of (10.124)). Overparameterized (P > N_A): M is singular, and W* is the limit a -> 0+ of
    the regularized solution (the minimum-norm interpolant), computed in the dual form
    W*^T = Phi_A^T (Phi_A Phi_A^T + ridge I)^{-1} y_A (10.126)-(10.131), whose predictions are those of
    :func:`kernel_regression` with :func:`linear_kernel`. Include a column of ones in ``Phi_A`` for the
    bias phi_0 = 1.

    ``Phi_A`` (N_A, P): features of the training inputs; ``y_A`` (N_A, n_out) or (N_A,). Returns W
    (n_out, P) (predictions: Phi_B @ W.T), or (P,) for 1-d targets. Raises ``ValueError`` for bad shapes or
    a singular M (underparameterized) / Phi Phi^T (overparameterized) (pass ridge > 0)."""
    Phi = _f64(Phi_A, "Phi_A")
    if Phi.ndim != 2 or 0 in Phi.shape:
        raise ValueError(f"Phi_A must be a feature matrix (N_A, P), got shape {Phi.shape}")
    y, one = _outputs(y_A, Phi.shape[0], "y_A")
    NA, P = Phi.shape
    if P <= NA:
        W = _Train(Phi.T @ Phi, ridge, "the feature matrix M (10.122)").solve(Phi.T @ y).T
    else:
        W = (Phi.T @ _Train(Phi @ Phi.T, ridge, "the kernel Phi_A Phi_A^T (10.127) (overparameterized, "
                            "P > N_A)").solve(y)).T
    return W[0] if one else W


def linear_kernel(Phi1, Phi2=None, *, weights=None):
    """Kernel of a linear model, eqs. (10.127)-(10.128), (10.136): k_{d1 d2} = sum_ij c_ij phi_i(x_d1)
    phi_j(x_d2), with c = 1 (``weights=None``: the plain inner product; with the inputs as features
    this is the linear kernel (10.128)), a vector (P,) (diagonal c) or a matrix (P, P).
    ``Phi1`` (N1, P), ``Phi2`` (N2, P) or None (= Phi1). Returns (N1, N2). Raises ``ValueError`` for shapes
    that do not match."""
    F1 = _f64(Phi1, "Phi1")
    F2 = F1 if Phi2 is None else _f64(Phi2, "Phi2")
    if F1.ndim != 2 or F2.ndim != 2 or F1.shape[1] != F2.shape[1]:
        raise ValueError(f"Phi1 and Phi2 must be feature matrices (N1, P), (N2, P), got {F1.shape}, "
                         f"{F2.shape}")
    if weights is None:
        return F1 @ F2.T
    c = _f64(weights, "weights")
    P = F1.shape[1]
    if c.shape == (P,):
        return (F1 * c) @ F2.T
    if c.shape == (P, P):
        return F1 @ c @ F2.T
    raise ValueError(f"weights must have shape (P,) or (P, P) with P = {P}, got {c.shape}")


def gaussian_kernel(X1, X2=None, sigma: float = 1.0):
    """Gaussian kernel (10.133): k(x1, x2) = exp[-|x1 - x2|^2 / (2 sigma^2)] (infinitely many features).
    ``X1`` (N1, n_0), ``X2`` (N2, n_0) or None (= X1), ``sigma`` > 0. Returns (N1, N2). Raises
    ``ValueError`` for shapes that do not match or sigma <= 0."""
    from scipy.spatial.distance import cdist
    A = _f64(X1, "X1")
    B = A if X2 is None else _f64(X2, "X2")
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"X1 and X2 must be inputs (N1, n_0), (N2, n_0), got {A.shape}, {B.shape}")
    s = float(sigma)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
    return np.exp(-cdist(A, B, "sqeuclidean") / (2 * s * s))
