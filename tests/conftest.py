import os
import shutil
import tempfile

from dnas import utils

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are tiny and each compiles once: LLVM's optimisation of the
# generated CPU code is most of their compile time and none of what the tests assert
# (values, gradients, equalities between runs), so the tests, and the entry points they
# run in subprocesses, compile at backend optimisation level 0 (BUILD_NOTES.md: the
# 8-device mesh worker 170 -> 111 CPU-seconds). The dnas commands and benchmarks keep
# XLA's default; DNAS_TEST_XLA_OPT=default runs the suite with it.
if os.environ.get("DNAS_TEST_XLA_OPT", "0") != "default":
  if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
utils.configure_xla()


def pytest_configure(config):
  # One compile cache for the entry points that tests run in subprocesses, new for each
  # session (never warm from an earlier run): a program that several CLI tests compile
  # (the same tiny search) compiles once. The xdist workers inherit it from the controller.
  if not hasattr(config, "workerinput") and "DNAS_TEST_JAX_CACHE" not in os.environ:
    path = tempfile.mkdtemp(prefix="dnas_test_jax_cache_")
    os.environ["DNAS_TEST_JAX_CACHE"] = path
    config._dnas_test_cache = path  # pylint: disable=protected-access


def pytest_unconfigure(config):
  path = getattr(config, "_dnas_test_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
