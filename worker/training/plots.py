"""PNG figures for the evaluation report: operating points and curves, rates, the erasing montage.

matplotlib is an optional extra (`scanguard[eval]`), imported only when a figure is
drawn. Figures are built on the Agg canvas directly rather than through pyplot, so
drawing one neither opens a window nor changes the process's backend or figure registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.training.metrics import Rate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# 110 dpi keeps a two-panel chart near 1300 px wide and under 100 KB. A montage stays
# lossless (colour encodes material), so it costs about 40 KB a tile at scale 2.
_DPI = 110
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")
FA_LABEL = "false-alarm rate (benign frames not cleared)"

Interval = tuple[float, float]
OperatingPoint = tuple[float, float, Interval, Interval]  # fa, recall, fa interval, recall interval


def _new_figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: install scanguard[eval] for plots") from exc
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _percent_axes(ax: Axes, x: bool = True, y: bool = True) -> None:
    from matplotlib.ticker import PercentFormatter

    if x:
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    if y:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    ax.grid(True, alpha=0.35)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=_DPI, format="png")


def _error(value: float, interval: Interval) -> list[list[float]]:
    """matplotlib's asymmetric error (below, above) of one point; never negative."""
    low, high = interval
    return [[max(0.0, value - low)], [max(0.0, high - value)]]


def montage(path: Path, rows: Sequence[dict], labels: Sequence[str], scale: int = 2) -> None:
    """Original → each erasing step, with the class probabilities under every image.

    Each row dict: title (str), images (list of (H, W, 3) uint8 RGB, original first),
    probs (list of probability vectors, one per image). Tiles are `scale` times the image
    size; nothing is written when there are no rows.
    """
    if not rows:
        return
    for row in rows:
        if len(row["images"]) != len(row["probs"]):
            raise ValueError(
                f"montage row {row['title']!r} has {len(row['images'])} images but "
                f"{len(row['probs'])} probability vectors"
            )
    height, width = rows[0]["images"][0].shape[:2]
    columns = max(len(r["images"]) for r in rows)
    tile_w, tile_h = width * scale / _DPI, height * scale / _DPI  # inches
    text_h = 0.2 * len(labels) + 0.45  # probabilities under a tile, and its step title
    figure = _new_figure(
        figsize=(columns * tile_w + 0.3, len(rows) * (tile_h + text_h + 0.35)),
        layout="constrained",
    )
    subfigures = figure.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for subfigure, row in zip(subfigures, rows, strict=True):
        subfigure.suptitle(row["title"], x=0.01, ha="left", fontsize=9)
        axes = subfigure.subplots(1, columns, squeeze=False)[0]
        for col, ax in enumerate(axes):
            if col >= len(row["images"]):
                ax.axis("off")
                continue
            image, probs = row["images"][col], row["probs"][col]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            ax.set_title("original" if col == 0 else f"step {col}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(
                "\n".join(f"P({name}) = {probs[k]:.3f}" for k, name in enumerate(labels)),
                fontsize=8,
            )
    _save(figure, path)


def plot_operating_curves(
    path: Path,
    curves: Mapping[str, Sequence[tuple[float, float]]],
    points: Mapping[str, OperatingPoint],
    title: str,
    fa_max: float | None = None,
) -> None:
    """Swept curves as steps and single operating points with 2-D interval bars, recall vs false alarms.

    Args:
        path: where the PNG goes.
        curves: name → (false-alarm rate, recall) points, e.g. from `operating_curve`;
            drawn as steps, since between two thresholds the classifier stays at the
            lower point.
        points: name → (false-alarm rate, recall, its interval, recall's interval).
        title: the figure's title.
        fa_max: right end of the false-alarm axis; by default a little beyond the
            widest point interval (at least 5 %), or all of [0, 1] without points.
    """
    if fa_max is None:
        widest = max((fa_iv[1] for _, _, fa_iv, _ in points.values()), default=None)
        fa_max = 1.0 if widest is None else min(1.0, max(0.05, 1.2 * widest))
    figure = _new_figure(figsize=(7.0, 5.4), layout="constrained")
    ax = figure.subplots()
    for k, (name, curve) in enumerate(curves.items()):
        fas, recalls = zip(*sorted(curve), strict=True) if curve else ((), ())
        ax.step(fas, recalls, where="post", color=f"C{k % 10}", linewidth=1.5, label=name)
    for k, (name, (fa, recall, fa_iv, recall_iv)) in enumerate(points.items()):
        ax.errorbar(
            fa,
            recall,
            xerr=_error(fa, fa_iv),
            yerr=_error(recall, recall_iv),
            marker=_MARKERS[k % len(_MARKERS)],
            markersize=8,
            color=f"C{(len(curves) + k) % 10}",
            capsize=3,
            linestyle="none",
            label=name,
            zorder=3,
        )
    ax.set_xlim(0.0, fa_max)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.set_xlabel(FA_LABEL)
    ax.set_ylabel("threat recall (threat frames not cleared)")
    _percent_axes(ax)
    if curves or points:
        ax.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def plot_rates(
    path: Path, groups: Mapping[str, Mapping[str, Rate]], title: str, ylabel: str
) -> None:
    """Grouped bars of rates with their Wilson intervals, e.g. per domain: vanilla vs erasing recall.

    Each group (outer key) is one cluster on the x axis, each series (inner key) one bar
    colour; a series missing from a group, or a rate without trials, leaves a gap.
    """
    series = list(dict.fromkeys(name for rates in groups.values() for name in rates))
    figure = _new_figure(
        figsize=(max(5.0, 1.2 + 0.9 * len(groups) * max(len(series), 1)), 4.6),
        layout="constrained",
    )
    ax = figure.subplots()
    width = 0.8 / max(len(series), 1)
    for j, name in enumerate(series):
        xs, rates = [], []
        for i, rates_of_group in enumerate(groups.values()):
            rate = rates_of_group.get(name)
            x = i + (j - (len(series) - 1) / 2) * width
            if rate is not None and rate.trials:
                xs.append(x)
                rates.append(rate)
            elif rate is not None:
                ax.text(x, 0.015, "no data", ha="center", rotation=90, fontsize=7)
        ax.bar(
            xs,
            [r.value for r in rates],
            width * 0.92,
            yerr=[[r.value - r.low for r in rates], [r.high - r.value for r in rates]],
            capsize=3,
            color=f"C{j % 10}",
            label=name,
        )
        for x, rate in zip(xs, rates, strict=True):
            ax.text(x, rate.high + 0.015, f"{100 * rate.value:.0f}%", ha="center", fontsize=7)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylim(0.0, 1.12)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _percent_axes(ax, x=False)
    ax.grid(False, axis="x")
    if series:
        ax.legend(loc="upper left", fontsize=8, ncols=min(len(series), 4))
    _save(figure, path)
