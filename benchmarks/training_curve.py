"""Loss curves of ``m2det-train`` runs from their ``metrics.jsonl`` (PNG + SVG).

    python -m m2det.benchmarks.training_curve A/metrics.jsonl [B/metrics.jsonl ...] [--label A ...]
        --out benchmarks/results/training/runs.png

Plots the classification (solid) and localization (dashed) loss terms of each run against
images seen (a moving mean over ``--window`` logged points), with each run's minutes, images/s
and last COCO evaluation in the legend.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from m2det.benchmarks.plots import plt, save_figure
from m2det.errors import M2DetError


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """metrics.jsonl -> (training records with loss terms, the last evaluation or None)."""
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise M2DetError(f"cannot read {path}: {err}") from None
    train = [r for r in rows if "loss_l" in r]
    evals = [r["eval"] for r in rows if "eval" in r]
    if not train:
        raise M2DetError(f"{path} has no training records (loss_l / loss_c)")
    return train, (evals[-1] if evals else None)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_training(runs: list[tuple[str, list[dict[str, Any]], dict[str, Any] | None]],
                  batch: int, png: Path, title: str, window: int = 10) -> list[Path]:
    """Loss terms vs images seen for (label, records, last eval) runs; returns PNG and SVG."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = ("#d95f02", "#1b9e77", "#7570b3", "#e7298a")
    for (label, train, last_eval), color in zip(runs, colors, strict=False):
        steps = np.array([r["step"] for r in train], dtype=float)
        seen = _smooth(steps * batch, window) / 1000
        rate = float(np.median([r["images_per_s"] for r in train]))
        summary = f"{train[-1]['elapsed_s'] / 60:.1f} min, {rate:.0f} img/s"
        if last_eval is not None:
            summary += f"; val AP {last_eval['AP']:.3f}, AP50 {last_eval['AP50']:.3f}"
        ax.plot(seen, _smooth(np.array([r["loss_c"] for r in train]), window), color=color,
                label=f"{label}: classification ({summary})")
        ax.plot(seen, _smooth(np.array([r["loss_l"] for r in train]), window), color=color,
                linestyle="--", label=f"{label}: localization")
    ax.set_xlabel("thousand training images seen")
    ax.set_ylabel("loss per positive prior")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return save_figure(fig, png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m m2det.benchmarks.training_curve",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", type=Path, nargs="+", help="metrics.jsonl of m2det-train runs")
    p.add_argument("--label", action="append", default=[], help="one per metrics file")
    p.add_argument("--out", type=Path, required=True, help="PNG path (an SVG is written beside)")
    p.add_argument("--batch", type=int, default=16, help="global batch of the run")
    p.add_argument("--title", default="m2det-train")
    p.add_argument("--window", type=int, default=10, help="moving mean over logged points")
    args = p.parse_args(argv)
    try:
        labels = args.label or [m.parent.name for m in args.metrics]
        if len(labels) != len(args.metrics):
            raise M2DetError(f"{len(labels)} --label for {len(args.metrics)} metrics files")
        runs = [(label, *read_metrics(m)) for label, m in zip(labels, args.metrics, strict=True)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for path in plot_training(runs, args.batch, args.out, args.title, args.window):
            print(path)
    except M2DetError as err:
        print(f"training_curve: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
