"""What the architecture gradient is (DARTS Sec. 2.3), apart from how a step runs it.

  hg = hypergrad.first_order()                       # grad_alpha L_val(w, alpha)
  hg = hypergrad.unrolled(virtual_tx)                # Eq. 6-7, exact (forward-over-reverse HVP)
  hg = hypergrad.unrolled(virtual_tx, hvp="fd")      # Eq. 7 with Eq. 8's finite difference

The virtual step of Eq. 6 is one application of an Optax transformation's update with
the weight optimiser's current state (as `optax.contrib.sam` takes an inner optimiser):
`virtual_tx` must have the state structure of the weight optimiser `w_tx`. DARTS's
reference takes the weight optimiser's step without its gradient clipping:
`bilevel.make_w_tx(lr, momentum, weight_decay, grad_clip=None)` is that transformation,
and shares the state of the clipped one.

Eq. 7 through any update u(g) of the virtual step w' = w + u(g), g = grad_w L_train:
  dL_val(w', alpha)/d alpha = grad_alpha L_val(w', alpha)
                              + grad^2_{alpha,w} L_train(w, alpha) (du/dg)^T v,
v = grad_w' L_val(w', alpha). For momentum SGD (du/dg)^T v = -eta v, the paper's form;
the transpose comes from `jax.vjp` of the update, so Adam or any differentiable update
gives its exact one-step hypergradient too. The momentum buffer and weight decay terms do
not depend on alpha.
"""

from typing import NamedTuple

import jax
import optax

ORDERS = ("first", "second", "second_fd")


class Hypergradient(NamedTuple):
  """An architecture-gradient rule: `order` is "first", "second" (exact) or "second_fd"
  (Eq. 8 with difference step `fd_r` / ||v||); `virtual_tx` the virtual step's update;
  `remat`: the exact HVP recomputes cell activations (`autodiff.rematerialize`)."""
  order: str
  virtual_tx: optax.GradientTransformation | None = None
  fd_r: float = 0.01
  remat: bool = False


def first_order() -> Hypergradient:
  """DARTS first order: grad_alpha L_val(w, alpha), the weights held fixed."""
  return Hypergradient("first")


def unrolled(virtual_tx: optax.GradientTransformation, *, hvp: str = "exact",
             fd_r: float = 0.01, remat: bool = False) -> Hypergradient:
  """DARTS second order through one virtual step of `virtual_tx` (Eq. 6-7); the mixed
  second derivative exactly (`hvp="exact"`) or by Eq. 8's central difference ("fd")."""
  orders = {"exact": "second", "fd": "second_fd"}
  if hvp not in orders:
    raise ValueError(f"hvp {hvp!r} is unknown; valid: exact, fd")
  return Hypergradient(orders[hvp], virtual_tx, fd_r, remat)


def from_order(order: str, virtual_tx: optax.GradientTransformation | None = None, *,
               fd_r: float = 0.01, remat: bool = False) -> Hypergradient:
  """The rule of a config's `search.order` (ORDERS)."""
  if order not in ORDERS:
    raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
  if order == "first":
    return first_order()
  return unrolled(virtual_tx, hvp="exact" if order == "second" else "fd", fd_r=fd_r,
                  remat=remat)


def virtual_step(tx: optax.GradientTransformation, params, grads, opt_state):
  """Eq. 6: w' = w + u(g), one update of `tx` with its current state (not kept)."""
  updates, _ = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates)


def update_transpose(tx: optax.GradientTransformation, params, grads, opt_state, v):
  """(du/dg)^T v of the update u(g) = tx.update(g, opt_state, params): how a change of
  the weight gradient moves the virtual weights, applied to v (momentum SGD: -eta v)."""
  _, vjp = jax.vjp(lambda g: tx.update(g, opt_state, params)[0], grads)
  return vjp(v)[0]
