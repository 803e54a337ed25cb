"""Charts written as PNG files (matplotlib's Agg canvas; no display and no global backend change)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ddetr.fileio import atomic_write_bytes

_SMALL, _MEDIUM = 32, 96  # COCO's area ranges, as box sides: sqrt(area) < 32 small, < 96 medium
_SIDE_TICKS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 256, 512, 1024, 2048, 4096, 8192)


def plot_dataset_summary(
    class_names: Mapping[int, str],
    per_split_counts: Mapping[str, Mapping[int, int]],
    per_split_sides: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Two panels: boxes per class for each split (grouped bars), and a histogram of box sizes per split.

    Args:
        class_names: category id -> name, for the bar labels (ids without a name show as the id).
        per_split_counts: split name -> {category id: number of boxes}.
        per_split_sides: split name -> sqrt(box area) in pixels of every box, for the histogram
            (log-spaced bins; dashed lines at COCO's small/medium/large limits 32 and 96).
        path: the PNG to write (atomically).
        title: figure title.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ids = sorted({cid for counts in per_split_counts.values() for cid in counts} | set(class_names))
    splits = list(per_split_counts)
    fig = Figure(figsize=(max(8.0, 4.0 + 0.6 * len(ids) * max(len(splits), 1)), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    bars, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(len(ids), 2), 3]})

    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(ids))]
        heights = [per_split_counts[split].get(cid, 0) for cid in ids]
        drawn = bars.bar(xs, heights, width=width, label=split)
        bars.bar_label(drawn, fontsize=7, padding=1)
    bars.set_xticks(
        range(len(ids)), [class_names.get(cid) or str(cid) for cid in ids], rotation=30, ha="right"
    )
    bars.set_ylabel("boxes")
    bars.set_title("boxes per class")
    if splits:
        bars.legend(fontsize=8)

    sides = [v for split in per_split_sides for v in per_split_sides[split] if v > 0]
    if sides:
        low, high = math.log10(max(min(sides), 1.0)), math.log10(max(max(sides), 2.0))
        edges = [10 ** (low + (high - low) * i / 30) for i in range(31)]
        for split, values in per_split_sides.items():
            kept = [v for v in values if v > 0]
            if kept:
                hist.hist(kept, bins=edges, histtype="step", linewidth=1.5, label=f"{split} ({len(kept)})")
        hist.set_xscale("log")
        ticks = [t for t in _SIDE_TICKS if 10**low <= t <= 10**high] or [_SMALL, _MEDIUM]
        hist.set_xticks(ticks, [str(t) for t in ticks])
        hist.xaxis.set_minor_formatter(NullFormatter())
        for limit, name in ((_SMALL, "small | medium"), (_MEDIUM, "medium | large")):
            hist.axvline(limit, color="grey", linestyle="--", linewidth=0.8)
            hist.text(limit, 1.0, f" {name}", transform=hist.get_xaxis_transform(), fontsize=7, va="top")
        hist.legend(fontsize=8)
    else:
        hist.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=hist.transAxes)
    hist.set_xlabel("box size: sqrt(w * h), pixels")
    hist.set_ylabel("boxes")
    hist.set_title("box sizes")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
