"""The dominant eigenvalue of the architecture Hessian of the validation loss: the signal
with which RobustDARTS (Zela et al., ICLR 2020) tracks DARTS's collapse (it grows as the
search drifts into sharp regions of the validation loss in alpha) and on which its
DARTS-ES stops the search (`early_stop_epoch`) and DARTS-ADA goes back to an earlier
epoch with stronger weight decay (`ada_weight_decay`).

The Hessian is never formed: Lanczos iterations (with full reorthogonalisation, which
the small architecture vectors afford: 30 numbers on NAS-Bench-201, 448 on the DARTS
space) on exact Hessian-vector products (forward-over-reverse autodiff of the loss in
alpha, the weights fixed) give the tridiagonal T whose largest eigenvalue approximates
the Hessian's largest; with as many iterations as alpha has numbers it is exact up to
rounding. RobustDARTS takes the largest eigenvalue of the full Hessian (numpy `eigvals`)
on one validation batch; so does dnas (`make_eigenvalue_fn`).
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def lanczos_max_eigenvalue(matvec, n: int, key: jax.Array, iters: int) -> jax.Array:
  """Largest eigenvalue of the symmetric linear map `matvec` on f32[n] (Lanczos, `iters`
  <= n steps from a random start, fully reorthogonalised). -> f32[]."""
  iters = min(iters, n)
  v0 = jax.random.normal(key, (n,), jnp.float32)
  basis = jnp.zeros((iters + 1, n), jnp.float32).at[0].set(v0 / jnp.linalg.norm(v0))

  def body(i, carry):
    basis, diag, off = carry
    v = basis[i]
    w = matvec(v)
    a = jnp.dot(w, v)
    # Full reorthogonalisation against every vector so far (rows past i are zero).
    w = w - basis.T @ (basis @ w)
    w = w - basis.T @ (basis @ w)
    b = jnp.linalg.norm(w)
    # An invariant subspace found (b ~ 0): the rest of T stays zero.
    nxt = jnp.where(b > 1e-6 * (jnp.abs(a) + 1.0), w / jnp.maximum(b, 1e-30), 0.0)
    return basis.at[i + 1].set(nxt), diag.at[i].set(a), off.at[i].set(b)

  _, diag, off = jax.lax.fori_loop(
      0, iters, body, (basis, jnp.zeros(iters), jnp.zeros(iters)))
  t = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
  return jnp.max(jnp.linalg.eigvalsh(t))


def max_eigenvalue(loss_fn, x, key: jax.Array, iters: int = 20) -> jax.Array:
  """Largest eigenvalue of the Hessian of the scalar `loss_fn(x)` in the pytree `x`, from
  exact Hessian-vector products (jvp of grad)."""
  flat, unravel = ravel_pytree(x)
  grad = jax.grad(lambda f: loss_fn(unravel(f)))

  def hvp(v):
    return jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1].astype(jnp.float32)
  return lanczos_max_eigenvalue(hvp, flat.size, key, iters)


def make_eigenvalue_fn(loss_fn, iters: int = 20):
  """f(state, batch, key) -> f32[]: the largest eigenvalue of the Hessian in alpha of the
  loss on `batch` (`loss_fn(params, alphas, stats, batch, inputs) -> (loss, aux)`, e.g.
  `bilevel.make_loss_fn(graphdef)`; no relaxation inputs: softmax weights, or the
  deterministic ones of a sampling relaxation), jitted."""
  def eig(state, batch, key):
    def loss_in_alpha(alphas):
      return loss_fn(state.params, alphas, state.batch_stats, batch, {})[0]
    return max_eigenvalue(loss_in_alpha, state.alphas, key, iters)
  return jax.jit(eig)


def early_stop_epoch(epochs, eigenvalues, *, window: int = 5, delta: int = 4,
                     factor: float = 1.3, min_epoch: int = 10) -> int | None:
  """DARTS-ES (RobustDARTS Sec. 4.2): with the eigenvalues measured at `epochs` (every
  few epochs), their local average over the last `window` measurements; stop when it has
  grown by more than `factor` over the local average `delta` measurements earlier, and
  go back to that earlier epoch (if it is at least `min_epoch`). Returns the epoch to
  take the architecture from, or None (go on). The official values: window 5, delta 4,
  factor 1.3 (a ratio of 0.75 in the paper's terms)."""
  ev = [float(e) for e in eigenvalues]
  if len(ev) < window + delta:
    return None
  local = [sum(ev[i - window + 1:i + 1]) / window for i in range(window - 1, len(ev))]
  past = local[-1 - delta]
  stop = epochs[len(ev) - 1 - delta]
  if stop >= min_epoch and past > 0 and local[-1] / past > factor:
    return int(stop)
  return None


def ada_weight_decay(weight_decay: float, *, mul_factor: float = 3.0,
                     max_weight_decay: float = 243e-4) -> float | None:
  """DARTS-ADA (RobustDARTS Sec. 5.2): the weight decay after one more rollback, or None
  when it would pass `max_weight_decay` (the official loop stops adapting once the decay
  has reached it: 3e-4 -> 9e-4 -> ... -> 243e-4, four rollbacks)."""
  new = weight_decay * mul_factor
  return new if new <= max_weight_decay * (1 + 1e-9) else None
