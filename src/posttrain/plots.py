"""PNG plots a person can look at, one function per plot (matplotlib, no display needed)."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@contextmanager
def _figure(path: str | Path, size: tuple[float, float], ncols: int = 1, top: float = 1.0):
    """Yield axes (a row of `ncols` sharing y when more than one); on exit lay out below `top` (room for a figure
    legend), save as PNG (creating the folder) and close."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, ncols, figsize=size, sharey=ncols > 1)
    try:
        yield ax
        fig.tight_layout(rect=(0, 0, 1, top))
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def world_popularity(bios_counts: dict[str, int], splits: dict[str, str], path: str | Path) -> Path:
    """How many biographies each person has, per split (log scale): the heavy tail at a glance."""
    by_split: dict[str, Counter] = {}
    for pid, k in bios_counts.items():
        by_split.setdefault(splits.get(pid, "?"), Counter())[k] += 1
    with _figure(path, (7, 4)) as ax:
        _popularity_bars(ax, by_split)
    return Path(path)


def _popularity_bars(ax, by_split: dict[str, Counter]) -> None:
    width = 0.8 / max(1, len(by_split))
    for i, (split, counter) in enumerate(sorted(by_split.items())):
        ks = sorted(counter)
        offset = (i - (len(by_split) - 1) / 2) * width  # bars of one count side by side, centred on it
        ax.bar([k + offset for k in ks], [counter[k] for k in ks], width=width, label=split)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_yscale("log")
    ax.set_xlabel("biographies per person")
    ax.set_ylabel("people (log)")
    ax.set_title("World popularity: a few people with many biographies, many with one")
    ax.legend()


def loss_curves(records: list[dict], path: str | Path, title: str) -> Path:
    """Training and validation loss against tokens seen."""
    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    with _figure(path, (7, 4)) as ax:
        if train:
            ax.plot(*zip(*train), label="train loss")
        if val:
            ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss (nats/token)")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    return Path(path)


def reliability_diagram(bins: list[dict], path: str | Path, title: str, confidence: str) -> Path:
    """Accuracy against confidence per bin (`confidence` names what was binned); the diagonal is perfect
    calibration."""
    used = [b for b in bins if b["n"]]
    with _figure(path, (5, 5)) as ax:
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
        centres = [(b["lo"] + b["hi"]) / 2 for b in used]
        ax.bar(centres, [b["acc"] for b in used], width=0.09, alpha=0.7, label="accuracy")
        for c, b in zip(centres, used):
            ax.annotate(str(b["n"]), (c, b["acc"]), ha="center", va="bottom", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(f"confidence ({confidence})")
        ax.set_ylabel("accuracy of attempted answers")
        ax.set_title(title)
        ax.legend(loc="upper left")
    return Path(path)


def reward_curves(steps: list[int], series: dict[str, list[float]], path: str | Path, title: str) -> Path:
    """Rewards against training steps, one line per reward: the gold (factuality graded against the world) beside a
    learned proxy shows at a glance when the policy starts gaming the reward model (proxy up, gold flat or down).
    Series in different units get their own axis: the first on the left, the others on the right."""
    with _figure(path, (7, 4)) as ax:
        names = list(series)
        axes = [ax] + ([ax.twinx()] if len(names) > 1 else [])
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        lines = []
        for i, name in enumerate(names):
            target = axes[0] if i == 0 else axes[1]
            xs = [s for s, v in zip(steps, series[name]) if v is not None]
            ys = [v for v in series[name] if v is not None]
            color = colors[i % len(colors)]
            target.plot(xs, ys, marker=".", linewidth=0.8, alpha=0.35, color=color)  # each logged step
            lines += target.plot(xs, _running_mean(ys, 5), linewidth=2, color=color, label=f"{name} (mean of 5)")
        axes[0].set_ylabel(names[0] if names else "reward")
        if len(axes) > 1:
            axes[1].set_ylabel(", ".join(names[1:]))
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(lines, [line.get_label() for line in lines], loc="best", framealpha=0.8)
        ax.grid(alpha=0.3)
    return Path(path)


def _running_mean(ys: list[float], k: int) -> list[float]:
    """The mean of the last k values at each point (fewer at the start): a noisy per-step reward made readable."""
    return [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]


def factuality_bars(results: dict[str, dict], path: str | Path, buckets=("known", "rare", "never_seen")) -> Path:
    """Correct / incorrect / not attempted per stage, one panel per bucket (stacked bars, stages in pipeline order):
    refusal training shows as red turning grey on `never_seen` while green holds on `known`."""
    stages = list(results)
    with _figure(path, (3.2 * len(buckets) + 1, 3.8), ncols=len(buckets), top=0.93) as axes:
        for ax, bucket in zip(axes, buckets):
            bottom = [0.0] * len(stages)
            for key, label, colour in (("correct", "correct", "tab:green"), ("incorrect", "incorrect", "tab:red"),
                                       ("not_attempted", "not attempted", "lightgrey")):  # fmt: skip
                vals = [results[s].get(bucket, {}).get(key, 0.0) for s in stages]
                ax.bar(stages, vals, bottom=bottom, color=colour, label=label)
                bottom = [b + v for b, v in zip(bottom, vals)]
            ax.set_title(bucket)
            ax.set_ylim(0, 1)
            ax.tick_params(axis="x", labelrotation=45)
        axes[0].set_ylabel("share of questions")
        axes[0].figure.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=9,
                              frameon=False)  # fmt: skip
    return Path(path)
