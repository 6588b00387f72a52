"""Checkpoint cost: how long `Checkpointer.save` holds the loop's thread, per save.

python scripts/bench_checkpoint.py                       # the default search's state
python scripts/bench_checkpoint.py --config=dnas/configs/cifar10_darts.py --saves=4

Builds the search state of `--config` (supernet, both optimiser states, RNG key; nothing
compiled but the stacking) and saves it `--saves` times, `--interval` seconds apart (an
epoch's steps, during which the previous save finishes in the background), as the
search loop does. One JSON line: the state's leaves and the arrays a checkpoint writes,
the first save (it compiles the stacking), the median of the others, the wait for the
last write at close, and the bytes of one checkpoint's directory.
"""

import json
import os
import statistics
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from dnas import bilevel, search_lib, utils
from dnas.checkpoint import Checkpointer
from dnas.configs import digits
from dnas.data.pipeline import get_dataset

_CONFIG = config_flags.DEFINE_config_file("config", None, "Search config (default: digits).")
_SAVES = flags.DEFINE_integer("saves", 7, "Checkpoints saved.")
_INTERVAL = flags.DEFINE_float("interval", 6.0, "Seconds between saves.")


def main(argv):
  del argv
  utils.configure_xla()
  config = _CONFIG.value or digits.get_config()
  info, _ = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  net = search_lib.make_supernet(config, info.num_classes, info.image_shape[-1])
  _, w_tx, a_tx = search_lib.optimizers(config, 1)
  _, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  with tempfile.TemporaryDirectory() as d:
    ckpt = Checkpointer(d, keep=2)
    times = []
    for step in range(1, _SAVES.value + 1):
      t0 = time.perf_counter()
      ckpt.save(step, state, {"epoch": step})
      times.append(time.perf_counter() - t0)
      if step < _SAVES.value:
        time.sleep(_INTERVAL.value)
    t0 = time.perf_counter()
    ckpt.close()
    close_s = time.perf_counter() - t0
    last = os.path.join(d, str(_SAVES.value))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(last) for f in fs)
    # `state`: the one item of a checkpoint written before the stacking (an older dnas).
    item = "packed" if os.path.isdir(os.path.join(last, "packed")) else "state"
    with ocp.PyTreeCheckpointer() as c:
      arrays = len(jax.tree.leaves(c.metadata(os.path.join(last, item)).item_metadata.tree))
  print(json.dumps(dict(
      leaves=len(jax.tree.leaves(state)), arrays=arrays, saves=len(times),
      first_save_s=round(times[0], 3),
      save_s=round(statistics.median(times[1:]), 3) if len(times) > 1 else None,
      close_s=round(close_s, 3), checkpoint_bytes=size, device=jax.devices()[0].device_kind)))


if __name__ == "__main__":
  app.run(main)
