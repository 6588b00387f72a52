import os
import shutil
import tempfile

from dnas import utils

os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
