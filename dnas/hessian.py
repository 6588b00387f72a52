"""The dominant eigenvalue of the architecture Hessian of the validation loss: the signal
with which RobustDARTS (Zela et al., ICLR 2020) tracks DARTS's collapse (it grows as the
search drifts into sharp regions of the validation loss in alpha) and on which its
DARTS-ES stops the search and DARTS-ADA goes back to an earlier epoch with stronger
weight decay (`dnas.methods.robust_darts`).

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

from dnas import kernels


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
  return jax.jit(kernels.for_local_devices(eig))
