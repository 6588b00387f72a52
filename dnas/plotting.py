"""Plots of a search: each edge's op weights over the epochs."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_alphas(history: dict[str, list[np.ndarray]], primitives, path: str) -> None:
  """One panel per edge and cell type: softmax(alpha) of every op against epoch.

  Args:
    history: {"normal": [f32[E, K] per epoch], "reduce": [...]} op weights.
    primitives: the K op names.
    path: PNG file to write.
  """
  kinds = list(history)
  E = history[kinds[0]][0].shape[0]
  fig, axes = plt.subplots(len(kinds), E, figsize=(1.6 * E, 2.0 * len(kinds) + 0.8),
                           sharex=True, sharey=True, squeeze=False)
  for r, kind in enumerate(kinds):
    w = np.stack(history[kind])  # [epochs, E, K]
    epochs = np.arange(1, len(w) + 1)
    for e in range(E):
      ax = axes[r, e]
      for k, name in enumerate(primitives):
        ax.plot(epochs, w[:, e, k], label=name, lw=1)
      ax.set_title(f"{kind} e{e}", fontsize=7)
      ax.tick_params(labelsize=6)
  axes[0, 0].set_ylabel("op weight", fontsize=7)
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(primitives), fontsize=7)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
