"""Plots of a search: each edge's op weights over the epochs (any space)."""

import numpy as np


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend, imported on first use (importing it
  costs every entry point's start-up most of a second)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_alphas(history: dict[str, list[np.ndarray]], primitives, path: str) -> None:
  """One panel per row (edge, MixedOp) and group: the op weights against epoch.

  Args:
    history: {group: [f32[E, K] per epoch]} op weights, e.g. {"normal": ..., "reduce": ...}.
    primitives: the K op names, or {group: its op names} when groups differ.
    path: PNG file to write.
  """
  kinds = list(history)
  names = primitives if isinstance(primitives, dict) else {k: primitives for k in kinds}
  E = max(history[k][0].shape[0] for k in kinds)
  plt = pyplot()
  fig, axes = plt.subplots(len(kinds), E, figsize=(1.6 * E, 2.0 * len(kinds) + 0.8),
                           sharex=True, sharey=True, squeeze=False)
  for r, kind in enumerate(kinds):
    w = np.stack(history[kind])  # [epochs, E, K]
    epochs = np.arange(1, len(w) + 1)
    for e in range(E):
      ax = axes[r, e]
      if e >= w.shape[1]:
        ax.set_axis_off()
        continue
      for k, name in enumerate(names[kind]):
        ax.plot(epochs, w[:, e, k], label=name, lw=1)
      ax.set_title(f"{kind} e{e}" if w.shape[1] > 1 else kind, fontsize=7)
      ax.tick_params(labelsize=6)
  axes[0, 0].set_ylabel("op weight", fontsize=7)
  handles = {}
  for ax in axes[:, 0]:
    for h, l in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(l, h)
  fig.legend(list(handles.values()), list(handles), loc="lower center",
             ncol=min(len(handles), 8), fontsize=7)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
