"""sweep.png: perplexity and KL divergence against bits per weight, one labelled point per type.

Top panel: PPL (the base as a dotted line), with the model size on a second x axis; bottom
panel: mean KL divergence from the base on a log scale (the base itself, 0, has no point there).
Point labels are placed one by one where they overlap no other label, point or axis edge.
"""

from __future__ import annotations

import math
from pathlib import Path

from llamatorch.core.atomic_file import AtomicFile

# label offsets tried in turn (points from the marker): right, above, below, left, then further out
_OFFSETS = [(7, 4, "left", "bottom"), (7, -4, "left", "top"), (0, 9, "center", "bottom"),
            (0, -9, "center", "top"), (-7, 4, "right", "bottom"), (-7, -4, "right", "top"),
            (14, 14, "left", "bottom"), (14, -14, "left", "top"), (-14, 14, "right", "bottom"),
            (-14, -14, "right", "top"), (0, 22, "center", "bottom"), (0, -22, "center", "top")]


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, xs, ys, texts, fontsize: float = 9) -> None:
    """Annotate each point with the first offset whose box hits nothing placed so far (markers,
    labels, the legend); where every offset hits something, the least overlapping one."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # positions in display units need a laid-out figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pts = ax.transData.transform(list(zip(xs, ys)))
    taken = [Bbox.from_extents(px - 5, py - 5, px + 5, py + 5) for px, py in pts]  # the markers
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    for (x, y), text in zip(zip(xs, ys), texts):
        best = None
        for dx, dy, ha, va in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize)
            ann.set_in_layout(False)  # labels must not move the axes they were placed in
            box = ann.get_window_extent(renderer).expanded(1.08, 1.15)
            outside = box.width * box.height - _overlap(box, frame)
            cost = sum(_overlap(box, t) for t in taken) + 4 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _fixed_ticks(axis, ticks) -> None:
    """Plain numbers at the given places, no minor ticks (log axes default to 6x10^0)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _nice(lo: float, hi: float) -> list[float]:
    """Round ticks for a log axis between lo and hi: the finest of a few mantissa sets that gives
    at most 8 (a narrow range gets 1, 1.5, 2, 3 ...; several decades only the powers of ten)."""
    for subs in ((1, 1.5, 2, 3, 4, 5, 6, 8), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        out, scale = [], 10.0 ** (math.floor(math.log10(lo)) - 1)
        while scale <= hi:
            out += [float(f"{m * scale:.3g}") for m in subs if lo <= m * scale <= hi]
            scale *= 10
        if len(out) <= 8:
            return out
    return out


def _log2_axis(ax, bpws) -> tuple[float, float]:
    ax.set_xscale("log", base=2)
    lo, hi = min(bpws) / 1.15, max(bpws) * 1.15
    ax.set_xlim(lo, hi)
    _fixed_ticks(ax.xaxis, [t for t in (1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32) if lo <= t <= hi])
    return lo, hi


def _log_y(ax, values) -> None:
    ax.set_yscale("log")
    _fixed_ticks(ax.yaxis, _nice(min(values) / 1.2, max(values) * 1.2))


def frontier(rows) -> list:
    """The rows no other row beats on both size and PPL (by bits per weight, ascending): the ones
    worth choosing among."""
    out, best = [], math.inf
    for r in sorted(rows, key=lambda r: r.bpw):
        if r.ppl < best:
            out.append(r)
            best = r.ppl
    return out


def plot(rows, path: Path, title: str, n_params: int) -> None:
    """Draw `rows` (sweep.Row) into the PNG at `path` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r.bpw)
    base = next((r for r in rows if r.source == "base"), None)
    quant = [r for r in rows if r.source != "base"]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 8), height_ratios=[3, 2],
                                      layout="constrained")
    bpw = [r.bpw for r in rows]
    xlo, xhi = _log2_axis(bottom, bpw)
    best = frontier(rows)
    top.plot([r.bpw for r in best], [r.ppl for r in best], color="0.6", ls="--", lw=1, zorder=1,
             label="lowest PPL for its size")
    top.scatter([r.bpw for r in quant], [r.ppl for r in quant], color="C0", zorder=3)
    if base is not None:
        top.scatter([base.bpw], [base.ppl], color="C3", marker="D", zorder=3)
        top.axhline(base.ppl, color="C3", ls=":", lw=1, zorder=0)  # the line to stay close to
    ppls = [r.ppl for r in rows]
    if max(ppls) / min(ppls) > 2:  # Q2_K can be far above the rest: a log scale keeps the top readable
        _log_y(top, ppls)
    top.margins(y=0.15)
    top.set_ylabel("perplexity on the text (lower is better)")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper right", fontsize=9)
    if n_params:  # size in MiB for a bits-per-weight figure: every row has the same weights
        mib = n_params / 8 / 2**20
        sec = top.secondary_xaxis("top", functions=(lambda b: b * mib, lambda m: m / mib))
        _fixed_ticks(sec.xaxis, _nice(xlo * mib, xhi * mib))
        sec.set_xlabel("size of the tensor data (MiB)")
    if quant:
        bottom.scatter([r.bpw for r in quant], [r.kld for r in quant], color="C1", zorder=3)
        klds = [r.kld for r in quant]
        if all(k > 0 for k in klds):
            _log_y(bottom, klds)
        bottom.margins(y=0.25)
    base_name = base.type if base else "the base"
    bottom.set_ylabel(f"mean KL divergence from {base_name}\n(nats, log scale)")
    bottom.set_xlabel("bits per weight (tensor data, log scale)")
    bottom.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    place_labels(top, bpw, ppls, [f"{r.type} (base)" if r is base else r.type for r in rows])
    if quant:
        place_labels(bottom, [r.bpw for r in quant], [r.kld for r in quant], [r.type for r in quant])
    with AtomicFile(path) as f:
        fig.savefig(f.file, format="png", dpi=120)
    plt.close(fig)
