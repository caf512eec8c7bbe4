"""Plots of ``m2det-bench`` results (matplotlib, Agg backend; each figure as PNG and SVG).

- :func:`plot_fps_ap`: FPS (log x) vs AP through the input sizes, one curve per backend/precision,
  over the M2Det paper's Table 1 points (M2Det and its peers). The paper's AP is COCO test-dev
  (left axis); ours is the AP of the evaluation set given to the benchmark (right axis, usually the
  synthetic shapes val set). The two AP axes are different datasets and are not comparable; the
  FPS axis is, up to the hardware named in the title. Rows without AP (speed only) are drawn as
  vertical lines at their FPS.
- :func:`plot_latency`: a stacked bar per row: preprocess / network / NMS milliseconds per image.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from m2det.io import atomic_path  # noqa: E402

#: M2Det paper (Zhao et al., AAAI 2019), Table 1: COCO test-dev, batch 1, Titan X (Pascal), FPS
#: including NMS; single-scale rows. (method, backbone, input, FPS, AP).
PAPER_M2DET = (
    ("M2Det", "VGG-16", 320, 33.4, 33.5),
    ("M2Det", "VGG-16", 512, 18.0, 37.6),
    ("M2Det", "VGG-16", 800, 11.8, 41.0),
    ("M2Det", "ResNet-101", 320, 21.7, 34.3),
    ("M2Det", "ResNet-101", 512, 15.8, 38.8),
)
PAPER_PEERS = (
    ("SSD300*", "VGG-16", 300, 43.0, 25.1),
    ("SSD512*", "VGG-16", 512, 22.0, 28.8),
    ("RefineDet320", "VGG-16", 320, 38.7, 29.4),
    ("RefineDet512", "VGG-16", 512, 22.3, 33.0),
    ("YOLOv3", "DarkNet-53", 608, 19.8, 33.0),
    ("RetinaNet500", "ResNet-101", 500, 11.1, 34.4),
    ("RetinaNet800", "Res101-FPN", 800, 5.0, 39.1),
    ("CornerNet", "Hourglass", 512, 4.4, 40.5),
)
PAPER_DEVICE = "Titan X (Pascal)"
#: Label offsets (points) of peers whose labels would collide with a neighbour's.
_LABEL_OFFSETS = {"YOLOv3": (-38, 6), "RefineDet512": (5, -11)}
_STAGE_COLORS = {"preprocess": "#8da0cb", "network": "#fc8d62", "nms": "#66c2a5"}


def save_figure(fig: Any, png: Path) -> list[Path]:
    """Write ``fig`` as ``png`` and the same name with ``.svg`` (atomically); close it."""
    paths = [png, png.with_suffix(".svg")]
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _curves(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Batch-1 rows grouped by backend/precision/device (+ weights), sorted by input size."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["batch"] == 1:
            key = f"{r.get('label', r['backend'] + ' ' + r['precision'])} ({r['device']}"
            key += ", random weights)" if r["weights"] == "random" else ")"
            groups[key].append(r)
    return {k: sorted(v, key=lambda r: r["input_size"]) for k, v in groups.items()}


def _fps(row: dict[str, Any]) -> float:
    """The paper's FPS definition: batch 1, network + NMS time (end to end when not split)."""
    return float(row["fps_network_nms"] or row["fps"])


def _plot_paper(ax: Any) -> None:
    for backbone, style in (("VGG-16", "-"), ("ResNet-101", "--")):
        pts = [p for p in PAPER_M2DET if p[1] == backbone]
        ax.plot([p[3] for p in pts], [p[4] for p in pts], style, color="black", marker="s",
                markersize=6, label=f"M2Det {backbone} (paper)")  # fmt: skip
        for _, _, size, fps, ap in pts:
            ax.annotate(f"M2Det-{size}" + ("" if backbone == "VGG-16" else " R101"), (fps, ap),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)  # fmt: skip
    ax.scatter([p[3] for p in PAPER_PEERS], [p[4] for p in PAPER_PEERS], color="grey",
               marker="o", s=30, label="peers (paper Table 1)")  # fmt: skip
    for name, _, _, fps, ap in PAPER_PEERS:
        ax.annotate(name, (fps, ap), textcoords="offset points",
                    xytext=_LABEL_OFFSETS.get(name, (5, -10)), fontsize=8, color="dimgrey")


def plot_fps_ap(results: dict[str, Any], png: str | Path) -> list[Path]:
    """FPS-vs-AP figure of ``results`` (the ``m2det-bench`` JSON document) -> [PNG, SVG]."""
    fig, ax = plt.subplots(figsize=(13, 6.5))
    _plot_paper(ax)
    ax.set_xscale("log")
    ax.set_xlabel("FPS at batch 1 (network + NMS, the paper's definition; log scale)")
    ax.set_ylabel("paper: COCO test-dev AP (%)")
    ax2 = ax.twinx()
    ax2.set_ylabel("ours: AP (%) on the benchmark's evaluation set", color="tab:blue")
    ax2.tick_params(axis="y", colors="tab:blue")
    xs = [p[3] for p in (*PAPER_M2DET, *PAPER_PEERS)]
    cmap = plt.get_cmap("tab10")
    handles, labels = ax.get_legend_handles_labels()
    with_ap = False
    for i, (name, rows) in enumerate(_curves(results["rows"]).items()):
        color = cmap(i % 10)
        fps = [_fps(r) for r in rows]
        xs += fps
        if all(r["accuracy"] is not None for r in rows):
            aps = [100.0 * r["accuracy"]["AP"] for r in rows]
            with_ap = True
            (line,) = ax2.plot(fps, aps, "-o", color=color, linewidth=2, markersize=7)
            for r, x, y in zip(rows, fps, aps, strict=True):
                ax2.annotate(f"{r['input_size']}", (x, y), textcoords="offset points",
                             xytext=(4, 5 + 10 * (i % 4)), fontsize=8, color=color)  # fmt: skip
            handles.append(line)
            labels.append(f"ours: {name}")
            continue
        for r, x in zip(rows, fps, strict=True):  # speed only: a vertical line at the FPS
            line = ax.axvline(x, color=color, linestyle=":", linewidth=1.8)
            ax.annotate(f"{r.get('label', r['backend'] + ' ' + r['precision'])} {r['input_size']}: "
                        f"{x:.3g} FPS",
                        (x, 0.98), xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", textcoords="offset points", xytext=(-2, 0), fontsize=8,
                        color=color)  # fmt: skip
        handles.append(line)
        labels.append(f"ours: {name} (FPS only, no AP)")
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25"
                                               else ""))  # fmt: skip
    if with_ap:
        top = max(100 * r["accuracy"]["AP"] for r in results["rows"] if r["accuracy"])
        ax2.set_ylim(0, max(1.0, top * 1.15))
    else:
        ax2.set_yticks([])
        ax2.set_ylabel("")
    ours = (f"ours = AP on {_eval_set(results)} (right axis, colour)" if with_ap
            else "ours: FPS only, no AP measured (dotted lines)")  # fmt: skip
    note = ("Paper AP = COCO test-dev (left axis, black/grey); " + ours + ".\nDifferent datasets: "
            "the AP values are NOT comparable. FPS: ours on " + results["device"] +
            f", paper on {PAPER_DEVICE}.")  # fmt: skip
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.09 if with_ap else 1.01, 1.0),
              fontsize=8, title=f"AP: paper = COCO test-dev;\nours = {_eval_set(results)}",
              title_fontsize=8)  # fmt: skip
    ax.set_title(f"M2Det FPS vs AP: ours on {results['device']} ({_threads(results)}) vs the "
                 f"paper ({PAPER_DEVICE})", fontsize=11)  # fmt: skip
    fig.text(0.01, -0.01, note, fontsize=8.5, va="top", ha="left")
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, Path(png))


def _threads(results: dict[str, Any]) -> str:
    n = int(results["threads"])
    return f"{n} thread" + ("" if n == 1 else "s")


def _eval_set(results: dict[str, Any]) -> str:
    return str(results["settings"].get("eval_set") or "no AP measured")


def plot_latency(results: dict[str, Any], png: str | Path) -> list[Path]:
    """Stacked bars of mean preprocess / network / NMS ms per image for every row -> [PNG, SVG]."""
    rows = results["rows"]
    labels = [f"{r.get('label', r['backend'] + ' ' + r['precision'])} {r['input_size']} "
              f"b{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * max(1, len(rows))))
    left = [0.0] * len(rows)
    for stage, color in _STAGE_COLORS.items():
        ms = [r["latency_ms"][stage]["mean"] / r["batch"] for r in rows]
        ax.barh(labels, ms, left=left, color=color, label=stage, edgecolor="white")
        left = [a + b for a, b in zip(left, ms, strict=True)]
    for y, total in enumerate(left):
        ax.annotate(f"{total:.1f} ms", (total, y), textcoords="offset points", xytext=(4, -3),
                    fontsize=8)  # fmt: skip
    ax.set_xlim(0, max(left + [1.0]) * 1.15)
    ax.invert_yaxis()
    ax.set_xlabel("mean latency per image (ms) = per-call time / batch")
    ax.set_title(f"Latency breakdown on {results['device']}, {_threads(results)}", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, Path(png))


def plot_all(results: dict[str, Any], png: str | Path) -> list[Path]:
    """``png`` (+ .svg): FPS vs AP; ``<stem>_latency.png`` (+ .svg): the latency breakdown."""
    png = Path(png)
    return [*plot_fps_ap(results, png),
            *plot_latency(results, png.with_name(png.stem + "_latency.png"))]  # fmt: skip
