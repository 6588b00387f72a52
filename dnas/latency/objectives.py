"""The latency-aware objectives of the architecture step: FBNet (Wu et al., CVPR 2019)
and ProxylessNAS (Cai et al., ICLR 2019), on the expected latency in ms."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dnas.latency.table import LatencyError

OBJECTIVES = ("none", "fbnet", "proxyless", "target")


def make_objective(form: str, *, weight: float = 0.0, fbnet_alpha: float = 0.2,
                   fbnet_beta: float = 0.6, target_ms: float = 0.0) -> Callable | None:
  """objective(ce, lat) -> loss of the architecture step, f32[] x f32[] -> f32[]; None
  for "none". `lat` is the expected latency in ms.

    fbnet      ce * a * log(lat)^b            FBNet Eq. 2 (a = fbnet_alpha, b = fbnet_beta)
    proxyless  ce + weight * lat              ProxylessNAS Sec. 3.3 (lambda_2 E[LAT])
    target     ce + weight * max(0, lat / target_ms - 1)   only latency above a budget
  """
  if form not in OBJECTIVES:
    raise LatencyError(f"latency.objective {form!r} is unknown; valid: {', '.join(OBJECTIVES)}")
  if form == "none":
    return None
  if form == "fbnet":
    # log(lat) must stay positive: lat > 1 ms (checked against the table's lower bound by
    # the caller); the floor only guards against a NaN.
    return lambda ce, lat: ce * fbnet_alpha * jnp.log(jnp.maximum(lat, 1.0 + 1e-6)) ** fbnet_beta
  if form == "proxyless":
    return lambda ce, lat: ce + weight * lat
  return lambda ce, lat: ce + weight * jax.nn.relu(lat / target_ms - 1.0)


def validate_settings(form: str, weight: float, fbnet_alpha: float, fbnet_beta: float,
                      target_ms: float, min_latency_ms: float | None = None) -> None:
  """One LatencyError line for settings that cannot work."""
  if form not in OBJECTIVES:
    raise LatencyError(f"latency.objective {form!r} is unknown; valid: {', '.join(OBJECTIVES)}")
  for name, v in (("latency.weight", weight), ("latency.fbnet_alpha", fbnet_alpha),
                  ("latency.fbnet_beta", fbnet_beta), ("latency.target_ms", target_ms)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
      raise LatencyError(f"{name} must be a number >= 0, got {v!r}")
  if form in ("proxyless", "target") and weight <= 0:
    raise LatencyError(f"latency.weight must be > 0 for latency.objective={form}, got {weight}")
  if form == "target" and target_ms <= 0:
    raise LatencyError(f"latency.target_ms must be > 0 for latency.objective=target, got "
                       f"{target_ms}")
  if form == "fbnet" and (fbnet_alpha <= 0 or fbnet_beta <= 0):
    raise LatencyError("latency.fbnet_alpha and latency.fbnet_beta must be > 0 for "
                       "latency.objective=fbnet")
  if form == "fbnet" and min_latency_ms is not None and min_latency_ms <= 1.0:
    raise LatencyError(f"latency.objective=fbnet needs log(latency in ms) > 0, but the fastest "
                       f"network of this table takes {min_latency_ms:.3f} ms; use a larger "
                       f"latency.batch_size or latency.objective=proxyless")


def arch_objective(objective: Callable, expected_ms: Callable) -> Callable:
  """The architecture step's objective for `bilevel.arch_loss`:
  (ce, alphas) -> (objective(ce, lat), {"a_latency_ms": lat}), lat = expected_ms(alphas)
  (alphas: the search state's `ArchParam` state)."""
  def fn(ce, alphas):
    lat = expected_ms(alphas)
    return objective(ce, lat), {"a_latency_ms": lat}
  return fn
