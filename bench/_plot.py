"""What the bench scripts' figures share: a headless pyplot, the one way a figure is saved, and the
HTTP benches' figure (throughput and latency against concurrent clients, one colour per server)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out, write ``path`` and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_by_concurrency(
    series: Mapping[str, Sequence[tuple[int, float, float, float]]],
    path: Path,
    title: str,
    *,
    log_latency: bool = False,
) -> Path:
    """Queries/s (left) and p99 (solid) / p50 (dashed) latency (right) against concurrent clients
    (log 2 axis); ``series``: server name -> [(concurrency, qps, p50_ms, p99_ms)] in order."""
    import matplotlib.ticker

    plt = pyplot()
    fig, (ax_qps, ax_latency) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, points) in enumerate(series.items()):
        xs = [p[0] for p in points]
        color = f"C{i}"
        ax_qps.plot(xs, [p[1] for p in points], marker="o", color=color, label=name)
        ax_latency.plot(xs, [p[3] for p in points], marker="o", color=color, label=f"{name} p99")
        ax_latency.plot(xs, [p[2] for p in points], marker=".", linestyle="--", color=color, label=f"{name} p50")
    for ax, ylabel in ((ax_qps, "queries/s"), (ax_latency, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p[0] for points in series.values() for p in points}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if log_latency:
        ax_latency.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
