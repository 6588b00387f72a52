import os
import shutil
import tempfile

from dnas import utils

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are tiny and each compiles once: LLVM's optimisation of the
# generated CPU code is most of their compile time and none of what the tests assert
# (values, gradients, equalities between runs), so the tests, and the entry points they
# run in subprocesses, compile at backend optimisation level 0 (BUILD_NOTES.md, "Design
# decisions": the 8-device mesh worker 170 -> 111 CPU-seconds), and with XLA:CPU's
# classic elemental emitters instead of its MLIR fusion emitters, which at level 0 take
# up to 40 % less compile time for the same losses in the cases compared (at XLA's
# default level they save no compile time and run slower). The dnas commands and
# benchmarks keep XLA's default; DNAS_TEST_XLA_OPT=default runs the suite with it.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("DNAS_TEST_XLA_OPT", "0") != "default":
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags:
    _flags += f" {TEST_XLA_FLAGS[0]}"
  if TEST_XLA_FLAGS[0] in _flags.split() and "fusion_emitters" not in _flags:  # at level 0
    _flags += f" {TEST_XLA_FLAGS[1]}"
  os.environ["XLA_FLAGS"] = _flags.strip()
utils.configure_xla()


# The longest test files first (their times: BUILD_NOTES.md, "Test-suite time"). With
# `-n 2 --dist loadfile`, xdist hands whole files to the workers in queue order; by
# default it queues files with more tests first, which left the one-test, 2.5-minute
# device check for last while the other worker idled to the end of the run. Longest
# first keeps both workers busy to the end; files not listed keep collection order.
_LONGEST_FIRST = ("tests/test_methods.py", "tests/test_parallel.py", "tests/test_cli.py",
                  "tests/test_device_check.py", "tests/test_bilevel.py",
                  "tests/test_resume.py", "tests/test_scripts.py", "tests/test_scan.py",
                  "tests/test_evaluate.py", "tests/test_own_model.py", "tests/test_deploy.py",
                  "tests/spaces/darts/test_networks.py", "tests/spaces/nb201/test_nb201.py",
                  "tests/test_notebook.py", "tests/test_plot_export.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {f: i for i, f in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


def pytest_configure(config):
  if getattr(config.option, "loadscopereorder", False):
    config.option.loadscopereorder = False  # keep the order above (xdist's loadfile)
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
