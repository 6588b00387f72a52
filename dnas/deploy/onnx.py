"""JAX -> ONNX: an inference function's jaxpr, converted primitive by primitive.

`to_onnx(fn, shape)` traces `fn` (closed-over weights become initializers), folds what
depends on constants only, and writes each remaining primitive as ONNX ops (opset 18).
It covers what dnas's final networks are made of (convolutions of any grouping and layout,
matmuls and einsums, max and sum pooling windows, BatchNorm's arithmetic, pads, slices,
concatenation, and the elementwise ops listed below); anything else, loops included, is a
ConversionError naming the primitive. BatchNorm stays four elementwise ops (not folded
into the convolution).

Layout: JAX's convolutions and pools are NHWC, ONNX's NCHW; each one is wrapped in the
two transposes that ONNX Runtime's layout optimizer cancels between neighbours. A
`broadcast_in_dim` only reshapes (ONNX broadcasts as NumPy does), so BatchNorm's
per-channel constants stay [C]-sized instead of becoming image-sized initializers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.extend import core as jcore

from dnas import kernels, layers

OPSET = 18
_EXTRA = "the ONNX export needs the onnx extra: pip install 'dnas[onnx]'"


class ConversionError(ValueError):
  """A function that the ONNX converter cannot express; the message names the part."""


def require_onnx():
  try:
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError(_EXTRA) from None
  return onnx


@dataclasses.dataclass(frozen=True)
class _Const:
  value: np.ndarray  # broadcastable (NumPy rules) to the variable's shape


@dataclasses.dataclass(frozen=True)
class _Tensor:
  name: str
  shape: tuple  # broadcastable (NumPy rules) to the variable's shape
  dtype: np.dtype


_BINARY = {"add": "Add", "add_any": "Add", "sub": "Sub", "mul": "Mul", "div": "Div",
           "max": "Max", "min": "Min", "pow": "Pow", "gt": "Greater", "lt": "Less",
           "ge": "GreaterOrEqual", "le": "LessOrEqual", "eq": "Equal", "and": "And",
           "or": "Or"}
_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
          "sqrt": "Sqrt", "abs": "Abs", "erf": "Erf", "sign": "Sign", "floor": "Floor",
          "ceil": "Ceil", "not": "Not", "sin": "Sin", "cos": "Cos"}
_IDENTITY = {"copy", "copy_p", "reduce_precision", "optimization_barrier",
             "sharding_constraint", "stop_gradient"}
_ELEMENTWISE = (set(_BINARY) | set(_UNARY) | _IDENTITY |
                {"ne", "rsqrt", "log1p", "expm1", "integer_pow", "square", "convert_element_type", "select_n",
                 "clamp"})
_REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
           "reduce_prod": "ReduceProd"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")  # the sub-jaxpr of call-like primitives
# Primitives that call their sub-jaxpr once on their operands (inlined); any other
# primitive with a jaxpr (scan, while, a generic reduce or reduce_window) is refused
# unless its operands are all constants.
_CALL_PRIMITIVES = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "checkpoint", "remat"}


class _Graph:
  """The ONNX graph being built: nodes, initializers, fresh names."""

  def __init__(self, onnx):
    self.onnx, self.nodes, self.inits, self.count = onnx, [], [], 0
    self.producer = {}  # tensor name -> (op_type, input names), for small peepholes

  def fresh(self, hint: str) -> str:
    self.count += 1
    return f"{hint}_{self.count}"

  def const(self, value) -> str:
    value = np.asarray(value)
    name = self.fresh("c")
    self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name

  def ints(self, values) -> str:
    return self.const(np.asarray(list(values), np.int64))

  def node(self, op: str, inputs: Sequence[str], outputs: int = 1, **attrs):
    names = [self.fresh(op.lower()) for _ in range(outputs)]
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, **attrs))
    for n in names:
      self.producer[n] = (op, tuple(inputs))
    return names[0] if outputs == 1 else names


class _Converter:

  def __init__(self, graph: _Graph):
    self.g = graph

  # Values: constants stay NumPy until an op needs them; tensors may be "lazily
  # broadcast" (a smaller shape that broadcasts to the variable's).

  def name(self, v) -> str:
    return self.g.const(v.value) if isinstance(v, _Const) else v.name

  def full(self, v, aval) -> str:
    """The value at exactly the variable's shape (what non-elementwise ops need)."""
    shape = tuple(aval.shape)
    if isinstance(v, _Const):
      return self.g.const(np.broadcast_to(v.value, shape))
    if tuple(v.shape) == shape:
      return v.name
    return self.g.node("Expand", [v.name, self.g.ints(shape)])

  def tensor(self, name, aval, shape=None) -> _Tensor:
    return _Tensor(name, tuple(aval.shape if shape is None else shape), np.dtype(aval.dtype))

  def read(self, env, atom):
    if isinstance(atom, jcore.Literal):
      return _Const(np.asarray(atom.val, atom.aval.dtype))
    return env[atom]

  def run(self, jaxpr: jcore.Jaxpr, consts, args) -> list:
    env = {}
    for var, c in zip(jaxpr.constvars, consts):
      env[var] = c if isinstance(c, (_Const, _Tensor)) else _Const(np.asarray(c))
    for var, a in zip(jaxpr.invars, args):
      env[var] = a
    for eqn in jaxpr.eqns:
      ins = [self.read(env, a) for a in eqn.invars]
      outs = self.eqn(eqn, ins)
      for var, out in zip(eqn.outvars, outs):
        env[var] = out
    return [self.read(env, a) for a in jaxpr.outvars]

  def eqn(self, eqn, ins) -> list:
    prim, params = eqn.primitive.name, eqn.params
    sub = next((params[k] for k in _CALLS if k in params), None)
    if sub is not None and prim in _CALL_PRIMITIVES:
      if isinstance(sub, jcore.ClosedJaxpr):
        return self.run(sub.jaxpr, [_Const(np.asarray(c)) for c in sub.consts], ins)
      return self.run(sub, [], ins)
    if prim == "cond":  # a constant branch index (lax.platform_dependent, switches)
      index, ops = ins[0], ins[1:]
      if not isinstance(index, _Const):
        raise ConversionError("lax.cond on a computed index has no ONNX translation here")
      branch = params["branches"][int(np.clip(index.value, 0, len(params["branches"]) - 1))]
      return self.run(branch.jaxpr, [_Const(np.asarray(c)) for c in branch.consts], ops)
    if all(isinstance(v, _Const) for v in ins):
      return self.fold(eqn, ins)
    handler = getattr(self, "p_" + prim, None)
    if handler is None:
      if prim in _BINARY:
        return [self.binary(eqn, ins, _BINARY[prim])]
      if prim in _UNARY:
        return [self.tensor(self.g.node(_UNARY[prim], [ins[0].name]), eqn.outvars[0].aval,
                            ins[0].shape)]
      if prim in _IDENTITY:
        return ins[:len(eqn.outvars)]
      if prim in _REDUCE:
        return [self.reduce(eqn, ins, _REDUCE[prim])]
      raise ConversionError(f"no ONNX translation for the JAX primitive {prim!r}")
    out = handler(eqn, ins, **params)
    return out if isinstance(out, list) else [out]

  def fold(self, eqn, ins) -> list:
    """Evaluates an equation of constants now (weights cast, BN scales, pooling counts)."""
    if eqn.primitive.name == "broadcast_in_dim":
      return [self.p_broadcast_in_dim(eqn, ins, **eqn.params)]
    if eqn.primitive.name in _IDENTITY:  # per operand: they need not share a shape
      return ins[:len(eqn.outvars)]
    if eqn.primitive.name in _ELEMENTWISE:
      shape = np.broadcast_shapes(*(v.value.shape for v in ins))
      args = [np.broadcast_to(v.value, shape) for v in ins]
    else:
      args = [np.broadcast_to(v.value, a.aval.shape) for v, a in zip(ins, eqn.invars)]
    with jax.default_device(jax.devices("cpu")[0]):
      out = eqn.primitive.bind(*args, **eqn.params)
    outs = out if eqn.primitive.multiple_results else [out]
    return [_Const(np.asarray(o)) for o in outs]

  # Elementwise ops (NumPy broadcasting keeps lazily broadcast operands as they are).

  def binary(self, eqn, ins, op: str) -> _Tensor:
    aval = eqn.outvars[0].aval
    shape = np.broadcast_shapes(*(np.shape(v.value) if isinstance(v, _Const) else v.shape
                                  for v in ins))
    a, b = ins
    if op == "Max" and isinstance(b, _Const) and b.value.size == 1 and b.value.item() == 0:
      return self.tensor(self.g.node("Relu", [a.name]), aval, shape)  # jax.nn.relu
    if op == "Min" and isinstance(b, _Const) and b.value.size == 1:
      made = self.g.producer.get(a.name)
      if made and made[0] == "Relu":  # jax.nn.relu6: Clip, which ORT fuses into a Conv
        return self.tensor(self.g.node("Clip", [made[1][0], self.g.const(
            np.zeros((), b.value.dtype)), self.g.const(b.value.reshape(()))]), aval, shape)
    return self.tensor(self.g.node(op, [self.name(a), self.name(b)]), aval, shape)

  def p_ne(self, eqn, ins, **_):
    eq = self.binary(eqn, ins, "Equal")
    return dataclasses.replace(eq, name=self.g.node("Not", [eq.name]))

  def p_rsqrt(self, eqn, ins, **_):
    x = ins[0]
    return self.tensor(self.g.node("Reciprocal", [self.g.node("Sqrt", [x.name])]),
                       eqn.outvars[0].aval, x.shape)

  def p_log1p(self, eqn, ins, **_):
    x = ins[0]
    one = self.g.const(np.ones((), x.dtype))
    return self.tensor(self.g.node("Log", [self.g.node("Add", [x.name, one])]),
                       eqn.outvars[0].aval, x.shape)

  def p_expm1(self, eqn, ins, **_):
    x = ins[0]
    one = self.g.const(np.ones((), x.dtype))
    return self.tensor(self.g.node("Sub", [self.g.node("Exp", [x.name]), one]),
                       eqn.outvars[0].aval, x.shape)

  def p_square(self, eqn, ins, **_):
    x = ins[0]
    return self.tensor(self.g.node("Mul", [x.name, x.name]), eqn.outvars[0].aval, x.shape)

  def p_integer_pow(self, eqn, ins, y, **_):
    x = ins[0]
    if y == 2:
      return self.p_square(eqn, ins)
    return self.tensor(self.g.node("Pow", [x.name, self.g.const(np.asarray(y, x.dtype))]),
                       eqn.outvars[0].aval, x.shape)

  def p_convert_element_type(self, eqn, ins, new_dtype, **_):
    x = ins[0]
    to = self.g.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(new_dtype))
    return self.tensor(self.g.node("Cast", [x.name], to=to), eqn.outvars[0].aval, x.shape)

  def p_select_n(self, eqn, ins, **_):
    if len(ins) != 3:
      raise ConversionError("select_n with more than two cases has no ONNX translation here")
    pred, no, yes = ins
    if np.dtype(eqn.invars[0].aval.dtype) != np.bool_:
      raise ConversionError("select_n on an integer index has no ONNX translation here")
    shape = np.broadcast_shapes(*(np.shape(v.value) if isinstance(v, _Const) else v.shape
                                  for v in ins))
    return self.tensor(self.g.node("Where", [self.name(pred), self.name(yes), self.name(no)]),
                       eqn.outvars[0].aval, shape)

  def p_clamp(self, eqn, ins, **_):
    lo, x, hi = ins
    if isinstance(lo, _Const) and isinstance(hi, _Const) and lo.value.size == hi.value.size == 1:
      return self.tensor(self.g.node("Clip", [x.name, self.g.const(lo.value.reshape(())),
                                              self.g.const(hi.value.reshape(()))]),
                         eqn.outvars[0].aval, x.shape)
    shape = np.broadcast_shapes(*(np.shape(v.value) if isinstance(v, _Const) else v.shape
                                  for v in ins))
    y = self.g.node("Min", [self.g.node("Max", [self.name(x), self.name(lo)]), self.name(hi)])
    return self.tensor(y, eqn.outvars[0].aval, shape)

  # Shapes.

  def p_broadcast_in_dim(self, eqn, ins, shape, broadcast_dimensions, **_):
    x = ins[0]
    src = np.shape(x.value) if isinstance(x, _Const) else x.shape
    operand = tuple(eqn.invars[0].aval.shape)
    if tuple(src) != operand:  # already lazily broadcast: make it exact first
      src, x = operand, (_Const(np.broadcast_to(x.value, operand)) if isinstance(x, _Const)
                         else _Tensor(self.full(x, eqn.invars[0].aval), operand, x.dtype))
    lazy = [1] * len(shape)
    for d, n in zip(broadcast_dimensions, src):
      lazy[d] = n
    if isinstance(x, _Const):
      return _Const(x.value.reshape(lazy))
    if tuple(lazy) == tuple(src):
      return _Tensor(x.name, tuple(lazy), x.dtype)
    return self.tensor(self.g.node("Reshape", [x.name, self.g.ints(lazy)]),
                       eqn.outvars[0].aval, lazy)

  def reshape_to(self, eqn, ins):
    aval = eqn.outvars[0].aval
    x = self.full(ins[0], eqn.invars[0].aval)
    return self.tensor(self.g.node("Reshape", [x, self.g.ints(aval.shape)]), aval)

  def p_reshape(self, eqn, ins, new_sizes, dimensions, **_):
    if dimensions is not None:
      raise ConversionError("reshape with a dimension order has no ONNX translation here")
    return self.reshape_to(eqn, ins)

  def p_squeeze(self, eqn, ins, dimensions, **_):
    return self.reshape_to(eqn, ins)

  def p_expand_dims(self, eqn, ins, **_):
    return self.reshape_to(eqn, ins)

  def p_transpose(self, eqn, ins, permutation, **_):
    x = self.full(ins[0], eqn.invars[0].aval)
    return self.tensor(self.g.node("Transpose", [x], perm=list(permutation)),
                       eqn.outvars[0].aval)

  def p_concatenate(self, eqn, ins, dimension, **_):
    xs = [self.full(v, a.aval) for v, a in zip(ins, eqn.invars)]
    return self.tensor(self.g.node("Concat", xs, axis=int(dimension)), eqn.outvars[0].aval)

  def p_pad(self, eqn, ins, padding_config, **_):
    if any(i != 0 or lo < 0 or hi < 0 for lo, hi, i in padding_config):
      raise ConversionError("pad with interior or negative padding has no ONNX translation "
                            "here")
    x = self.full(ins[0], eqn.invars[0].aval)
    pads = [lo for lo, _, _ in padding_config] + [hi for _, hi, _ in padding_config]
    value = self.g.const(np.asarray(ins[1].value if isinstance(ins[1], _Const) else 0,
                                    eqn.invars[0].aval.dtype).reshape(()))
    if not isinstance(ins[1], _Const):
      raise ConversionError("pad with a computed padding value has no ONNX translation here")
    return self.tensor(self.g.node("Pad", [x, self.g.ints(pads), value]), eqn.outvars[0].aval)

  def p_slice(self, eqn, ins, start_indices, limit_indices, strides, **_):
    x = self.full(ins[0], eqn.invars[0].aval)
    n = len(start_indices)
    steps = strides or (1,) * n
    y = self.g.node("Slice", [x, self.g.ints(start_indices), self.g.ints(limit_indices),
                              self.g.ints(range(n)), self.g.ints(steps)])
    return self.tensor(y, eqn.outvars[0].aval)

  def p_split(self, eqn, ins, sizes, axis, **_):
    x = self.full(ins[0], eqn.invars[0].aval)
    ys = self.g.node("Split", [x, self.g.ints(sizes)], outputs=len(sizes), axis=int(axis))
    ys = [ys] if len(sizes) == 1 else ys
    return [self.tensor(y, v.aval) for y, v in zip(ys, eqn.outvars)]

  def reduce(self, eqn, ins, op: str) -> _Tensor:
    axes = eqn.params["axes"]
    if not axes:  # ONNX reduces every axis when given none
      return ins[0]
    x = self.full(ins[0], eqn.invars[0].aval)
    y = self.g.node(op, [x, self.g.ints(axes)], keepdims=0)
    return self.tensor(y, eqn.outvars[0].aval)

  # Contractions and windows.

  def p_dot_general(self, eqn, ins, dimension_numbers, **_):
    (lc, rc), (lb, rb) = dimension_numbers
    la, ra = eqn.invars[0].aval, eqn.invars[1].aval
    lhs, rhs = self.full(ins[0], la), self.full(ins[1], ra)
    if not lb and tuple(lc) == (la.ndim - 1,) and tuple(rc) == (0,) and ra.ndim == 2:
      return self.tensor(self.g.node("MatMul", [lhs, rhs]), eqn.outvars[0].aval)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    l_sub = [next(letters) for _ in range(la.ndim)]
    r_sub = [None] * ra.ndim
    for i, j in list(zip(lc, rc)) + list(zip(lb, rb)):
      r_sub[j] = l_sub[i]
    r_sub = [s or next(letters) for s in r_sub]
    out = ([l_sub[i] for i in lb] + [s for i, s in enumerate(l_sub) if i not in lc + lb] +
           [s for j, s in enumerate(r_sub) if j not in rc + rb])
    eq = f"{''.join(l_sub)},{''.join(r_sub)}->{''.join(out)}"
    return self.tensor(self.g.node("Einsum", [lhs, rhs], equation=eq), eqn.outvars[0].aval)

  def p_conv_general_dilated(self, eqn, ins, window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers, feature_group_count,
                             batch_group_count, **_):
    if batch_group_count != 1 or any(d != 1 for d in lhs_dilation):
      raise ConversionError("a transposed or batch-grouped convolution has no ONNX "
                            "translation here")
    if any(lo < 0 or hi < 0 for lo, hi in padding):
      raise ConversionError(f"a convolution with negative padding {padding} has no ONNX "
                            f"translation here")
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    x = self.g.node("Transpose", [self.full(ins[0], eqn.invars[0].aval)], perm=list(lhs_spec))
    w = ins[1]
    if isinstance(w, _Const):  # weights: transposed once, here
      w = self.g.const(np.transpose(np.broadcast_to(w.value, eqn.invars[1].aval.shape),
                                    rhs_spec))
    else:
      w = self.g.node("Transpose", [self.full(w, eqn.invars[1].aval)], perm=list(rhs_spec))
    y = self.g.node("Conv", [x, w], strides=list(window_strides),
                    pads=[lo for lo, _ in padding] + [hi for _, hi in padding],
                    dilations=list(rhs_dilation), group=int(feature_group_count),
                    kernel_shape=[eqn.invars[1].aval.shape[d] for d in rhs_spec[2:]])
    back = list(np.argsort(out_spec))
    return self.tensor(self.g.node("Transpose", [y], perm=back), eqn.outvars[0].aval)

  def pool(self, eqn, ins, op, window_dimensions, window_strides, padding, base_dilation,
           window_dilation):
    if any(d != 1 for d in base_dilation) or any(d != 1 for d in window_dilation):
      raise ConversionError("a dilated pooling window has no ONNX translation here")
    pooled = [i for i, (k, s, p) in enumerate(zip(window_dimensions, window_strides, padding))
              if k != 1 or s != 1 or p != (0, 0)]
    rest = [i for i in range(len(window_dimensions)) if i not in pooled]
    if len(rest) != 2:
      raise ConversionError(f"a pooling window over dimensions {pooled} of a rank-"
                            f"{len(window_dimensions)} array has no ONNX translation here "
                            f"(ONNX pools all but two)")
    perm = rest + pooled
    x = self.g.node("Transpose", [self.full(ins[0], eqn.invars[0].aval)], perm=perm)
    attrs = dict(kernel_shape=[window_dimensions[i] for i in pooled],
                 strides=[window_strides[i] for i in pooled],
                 pads=[padding[i][0] for i in pooled] + [padding[i][1] for i in pooled])
    if op == "max":  # padding never wins a max, as the -inf that XLA pads with
      y = self.g.node("MaxPool", [x], **attrs)
    else:  # a sum is the average with the zero padding counted, times the window size
      y = self.g.node("AveragePool", [x], count_include_pad=1, **attrs)
      size = int(np.prod([window_dimensions[i] for i in pooled]))
      y = self.g.node("Mul", [y, self.g.const(np.asarray(size, eqn.invars[0].aval.dtype))])
    return self.tensor(self.g.node("Transpose", [y], perm=list(np.argsort(perm))),
                       eqn.outvars[0].aval)

  def p_reduce_window_sum(self, eqn, ins, **params):
    return self.pool(eqn, ins, "sum", **params)

  def p_reduce_window_max(self, eqn, ins, **params):
    return self.pool(eqn, ins, "max", **params)


def _prune(graph: _Graph) -> None:
  """Drops nodes and initializers that nothing downstream of the output reads (e.g. the
  Relu that a Clip replaced: left in, it runs, and it keeps ONNX Runtime from fusing the
  Clip into the Conv)."""
  needed, kept = {"logits"}, []
  for node in reversed(graph.nodes):
    if any(o in needed for o in node.output):
      kept.append(node)
      needed.update(node.input)
  graph.nodes = kept[::-1]
  graph.inits = [t for t in graph.inits if t.name in needed]


def to_onnx(fn: Callable, shape: Sequence[int], *, dtype=np.float32, name: str = "dnas",
            doc: str = ""):
  """The ONNX model (opset 18) of `fn(x)` for x: dtype[shape], input "images", output
  "logits" (fn's single array output). Closed-over arrays become initializers. The kernels
  are traced as on an accelerator (`dnas.kernels`: XLA's ops, no CPU loops), and stacks of
  identical layers as a loop (`dnas.layers.unrolled`: ONNX Runtime fuses across them)."""
  onnx = require_onnx()
  with kernels.local_platform("onnx"):
    closed = jax.make_jaxpr(layers.unrolled_fn(fn))(jax.ShapeDtypeStruct(tuple(shape), dtype))
  if len(closed.jaxpr.outvars) != 1:
    raise ConversionError(f"the function returns {len(closed.jaxpr.outvars)} arrays; the "
                          f"export takes one (the logits)")
  graph = _Graph(onnx)
  conv = _Converter(graph)
  x = _Tensor("images", tuple(shape), np.dtype(dtype))
  out, = conv.run(closed.jaxpr, [_Const(np.asarray(c)) for c in closed.consts], [x])
  aval = closed.jaxpr.outvars[0].aval
  graph.nodes.append(onnx.helper.make_node("Identity", [conv.full(out, aval)], ["logits"]))
  _prune(graph)
  elem = onnx.helper.np_dtype_to_tensor_dtype
  model = onnx.helper.make_model(
      onnx.helper.make_graph(
          graph.nodes, name,
          [onnx.helper.make_tensor_value_info("images", elem(np.dtype(dtype)), list(shape))],
          [onnx.helper.make_tensor_value_info("logits", elem(np.dtype(aval.dtype)),
                                              list(aval.shape))],
          initializer=graph.inits),
      opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="dnas",
      doc_string=doc)
  model.ir_version = min(model.ir_version, 10)  # what ONNX Runtime reads
  onnx.checker.check_model(model)
  return model
