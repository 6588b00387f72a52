"""The runtimes a network ships in, behind one interface: compile an inference function
for one input shape, call it on NumPy arrays, say what and where it runs.

  jax          XLA through `jax.jit` (what the search trains with)
  onnxruntime  the function converted to ONNX (`dnas.deploy.onnx`), run by ONNX Runtime's
               CPU execution provider (extra `dnas[onnx]`)
  litert       the function converted to TFLite (`dnas.deploy.tflite`), run by the LiteRT
               interpreter with XNNPACK (extra `dnas[tflite]` and litert-converter)

Latency tables (`python -m dnas.latency profile --runtime=...`) and `dnas.export` time
networks through these, so that a search can optimise the latency of the shipped file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from dnas import layers
from dnas.deploy import onnx as onnx_lib, tflite as tflite_lib

RUNTIMES = ("jax", "onnxruntime", "litert")
SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite"}  # of a runtime's model file


class RuntimeError_(ValueError):  # pylint: disable=invalid-name
  """A runtime that is unknown or not installed; the message says which and how."""


@dataclasses.dataclass(frozen=True)
class Compiled:
  """`fn(x)` compiled in a runtime for one input shape: call it with a NumPy array."""
  call: Callable[[np.ndarray], np.ndarray]
  runtime: str
  model: object = None  # the runtime's file in memory (onnx.ModelProto, TFLite bytes)

  def file_bytes(self) -> bytes | None:
    """The runtime's model file as written to disk (None for jax)."""
    if self.model is None:
      return None
    return self.model if isinstance(self.model, bytes) else self.model.SerializeToString()


def check(name: str) -> str:
  if name not in RUNTIMES:
    raise RuntimeError_(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
  if name == "onnxruntime":
    try:
      import onnx  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      import onnxruntime  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise RuntimeError_("runtime onnxruntime needs the onnx extra: pip install "
                          "'dnas[onnx]'") from None
  if name == "litert":
    try:
      tflite_lib.require_litert()
    except onnx_lib.ConversionError as e:
      raise RuntimeError_(f"runtime litert: {e}") from None
  return name


def stamp(name: str) -> dict:
  """What a table measured in runtime `name` records of it (meta.runtime...)."""
  if check(name) == "jax":
    return dict(runtime="jax", runtime_version=jax.__version__)
  if name == "litert":
    import ai_edge_litert  # pylint: disable=import-outside-toplevel
    return dict(runtime="litert", runtime_version=ai_edge_litert.__version__,
                runtime_threads=ort_threads())
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  return dict(runtime="onnxruntime", runtime_version=ort.__version__,
              runtime_threads=ort_threads())


def ort_threads() -> int:
  """The threads ONNX Runtime and LiteRT run on: $DNAS_ORT_THREADS, else one per core."""
  return int(os.environ.get("DNAS_ORT_THREADS", "0") or 0) or os.cpu_count() or 1


def ort_session(model):
  """An ONNX Runtime CPU session of `model` (an onnx.ModelProto or its bytes), all graph
  optimisations on."""
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.intra_op_num_threads = ort_threads()
  options.log_severity_level = 3
  data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
  return ort.InferenceSession(bytes(data), options, providers=["CPUExecutionProvider"])


def compile_fn(name: str, fn: Callable, shape: Sequence[int], dtype=np.float32) -> Compiled:
  """`fn` (jnp in -> jnp out, weights closed over) compiled in runtime `name` for
  dtype[shape] inputs; stacks of identical layers traced as a loop in every runtime
  (`dnas.layers.unrolled`: what latency tables time)."""
  if check(name) == "jax":
    compiled = jax.jit(layers.unrolled_fn(fn)).lower(jax.ShapeDtypeStruct(tuple(shape), dtype)).compile()
    return Compiled(compiled, "jax")
  if name == "litert":
    model = tflite_lib.to_tflite(fn, shape, dtype=dtype)
    return Compiled(litert_call(model), "litert", model)
  model = onnx_lib.to_onnx(fn, shape, dtype=dtype)
  session = ort_session(model)
  feed = session.get_inputs()[0].name

  def call(x):
    return session.run(None, {feed: np.asarray(x, dtype)})[0]
  return Compiled(call, "onnxruntime", model)


def litert_call(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
  """call(x) -> logits of a TFLite flatbuffer in the LiteRT interpreter."""
  it = tflite_lib.interpreter(model, ort_threads())
  i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

  def call(x):
    it.set_tensor(i, np.asarray(x, np.float32))
    it.invoke()
    return it.get_tensor(o)
  return call
