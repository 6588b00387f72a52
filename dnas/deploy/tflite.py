"""JAX -> TFLite (LiteRT): the inference function lowered to StableHLO, converted by
LiteRT's own converter (`litert_converter`, the StableHLO -> TFLite passes that
ai-edge-torch uses), no TensorFlow.

Install: `pip install -e ".[tflite]"` (the interpreter) and `pip install --no-deps
"litert-converter==0.5.0"` (the converter; its xdsl dependency pins typing-extensions
below what chex needs, and the conversion does not use xdsl).
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np

from dnas import kernels, layers
from dnas.deploy.onnx import ConversionError

_EXTRA = ("the TFLite export needs LiteRT's converter and interpreter: pip install -e "
          "\".[tflite]\" && pip install --no-deps \"litert-converter==0.5.0\"")


def require_litert():
  """(converter_api_ext, mlir ir, passmanager, Interpreter), or a ConversionError saying
  how to install them."""
  # pylint: disable=import-outside-toplevel
  try:
    from ai_edge_litert.interpreter import Interpreter
    from litert_converter import converter_api_ext
    from litert_converter.mlir import ir, passmanager
  except ImportError:
    raise ConversionError(_EXTRA) from None
  return converter_api_ext, ir, passmanager, Interpreter


def to_tflite(fn: Callable, shape: Sequence[int], *, dtype=np.float32) -> bytes:
  """The TFLite flatbuffer of `fn(x)` for x: dtype[shape], signature "serving_default"
  with input "images" and output "logits" (fn's single array output). Closed-over arrays
  become constants. The kernels are traced with XLA's ops (`dnas.kernels`), and stacks of
  identical layers as a loop (`dnas.layers.unrolled`)."""
  cx, ir, passmanager, _ = require_litert()
  with kernels.local_platform("tflite"):
    lowered = jax.jit(layers.unrolled_fn(fn)).lower(jax.ShapeDtypeStruct(tuple(shape), dtype))
  if len(jax.tree.leaves(lowered.out_info)) != 1:
    raise ConversionError(f"the function returns {len(jax.tree.leaves(lowered.out_info))} "
                          f"arrays; the export takes one (the logits)")
  with ir.Context() as ctx, ir.Location.unknown():
    cx.prepare_mlir_context(ctx)
    module = ir.Module.parse(lowered.as_text())
    try:
      cx.run_convert_to_tfl_passes(module, passmanager.PassManager(), cx.ConvertToTFLConfig())
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise ConversionError(f"LiteRT's converter refused the network: {first}") from None
    main = next(op for op in module.body.operations
                if op.attributes["sym_name"].value == "main")
    cx.set_signature(main, "serving_default", ["images"], ["logits"])
    return bytes(cx.export_flatbuffer_to_bytes(module.operation))


def interpreter(model: bytes, threads: int | None = None):
  """A LiteRT interpreter of the flatbuffer `model`, tensors allocated (XNNPACK, LiteRT's
  default CPU delegate)."""
  *_, Interpreter = require_litert()  # pylint: disable=invalid-name
  it = Interpreter(model_content=bytes(model), num_threads=threads)
  it.allocate_tensors()
  return it
