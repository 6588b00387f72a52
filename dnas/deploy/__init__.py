"""Deployment: a final network in the runtime that ships it.

  inference.py  the network as images -> logits, weights closed over (`inference_fn`)
  onnx.py       JAX -> ONNX, primitive by primitive (`to_onnx`)
  tflite.py     JAX -> TFLite through StableHLO and LiteRT's converter (`to_tflite`)
  runtimes.py   jax | onnxruntime | litert behind one interface (compile for a shape,
                call, stamp)
"""

from dnas.deploy.inference import inference_fn
from dnas.deploy.onnx import ConversionError, to_onnx
from dnas.deploy.tflite import to_tflite
from dnas.deploy.runtimes import RUNTIMES, Compiled, compile_fn, stamp
