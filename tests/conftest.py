import os

from dnas import utils

os.environ.setdefault("JAX_PLATFORMS", "cpu")
utils.configure_xla()
