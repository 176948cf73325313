"""The interactive explorer: ipywidgets sliders for δ and the pruning factor, with instant feedback.

No paper item of its own: it walks Figure 4 live. The computation is ``explore_session.Session``
(usable without widgets); ``Explorer`` drives it from its controls and draws four views: dense and
pruned accuracy, per-layer sparsity, the mask of one layer, and where the current point sits on
the Figure 4 curve (accuracy vs δ at the current p). Every displayed number is also in
``Explorer.state``, so the widget logic is tested without a kernel; ``render_static`` writes the
same views as PNG + SVG for papermill runs, and ``explore_report.report`` the section of REPORT.md.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..masks import SCOPES
from ..scores import METHODS, check_delta
from ..workbook.outputs import save_figure, save_table
from .explore_report import BUDGET_S, within_budget
from .explore_session import MAX_PRUNING_FACTOR, Session, check_p
from .style import PALETTE

log = logging.getLogger(__name__)

CONTROLS = ("delta", "pruning_factor", "method", "scope", "inference", "layer")
FIGURE_DPI = 110  # the 12-inch figure as a 1320 px PNG: the width of the page's column, drawn at its own size
POINT_COLUMNS = (
    "inference",
    "method",
    "scope",
    "delta",
    "pruning_factor",
    "dense_accuracy",
    "pruned_accuracy",
    "sparsity",
    "mask_checksum",
)


def _slider(w, value: float, maximum: float, step: float, description: str, style: dict, layout):
    """A float slider from 0 to ``maximum`` that reports a value only when released."""
    return w.FloatSlider(
        value=value,
        min=0.0,
        max=maximum,
        step=step,
        continuous_update=False,
        description=description,
        readout_format=".2f",
        style=style,
        layout=layout,
    )


class Explorer:
    """ipywidgets explorer of FlexRel's s = (1 - δ) M_norm + δ R_norm at pruning factor p.

    Drives a ``Session``. Controls (ipywidgets, all attributes): ``delta`` and ``pruning_factor``
    sliders (``continuous_update=False``), ``method`` and ``scope`` toggles, ``inference`` and
    ``layer`` dropdowns. Changing any of them calls ``refresh``; ``update(**values)`` sets several
    at once with validation. ``state`` holds every number shown; ``widget`` is the box to display.
    """

    def __init__(
        self,
        session: Session,
        *,
        delta: float = 0.5,
        pruning_factor: float = 0.8,
        method: str = "flexrel",
        scope: str = "global",
        layer: str | None = None,
        compact: bool = False,
    ) -> None:
        import ipywidgets as w

        self.session = session
        self._hold = False
        self._fig = None
        self.state: dict = {}
        self.masks: dict = {}

        names = list(session.dense)
        style = {"description_width": "110px"}
        wide = w.Layout(width="460px")
        self.delta = _slider(w, check_delta(delta), 1.0, 0.05, "δ (relevance)", style, wide)
        self.pruning_factor = _slider(
            w, check_p(pruning_factor), MAX_PRUNING_FACTOR, 0.01, "pruning factor p", style, wide
        )
        buttons = {"description_width": "110px", "button_width": "100px"}
        self.method = w.ToggleButtons(options=list(METHODS), value=method, description="method", style=buttons)
        scopes = [s for s in SCOPES if s != "output"]  # per output neuron: Wanda's grouping, for the baselines
        self.scope = w.ToggleButtons(options=scopes, value=scope, description="scope", style=buttons)
        self.inference = w.Dropdown(options=list(session.choices), description="inference data", style=style)
        self.layer = w.Dropdown(options=names, value=layer or names[-2 if len(names) > 1 else 0], description="mask of")
        self.layer.style.description_width = style["description_width"]
        self.status = w.HTML()
        self.out = w.Output()
        for name in CONTROLS:
            control = getattr(self, name)
            control.add_class(f"flexrel-{name.replace('_', '-')}")
            control.observe(self._on_change, names="value")
        self.status.add_class("flexrel-status")
        self.out.add_class("flexrel-figure")
        self.out.layout = w.Layout(width="100%")  # the figure takes the page's width (the page's CSS scales it)
        left, right = [self.delta, self.pruning_factor], [self.method]
        if not compact:
            left.append(self.layer)
            right += [self.scope, self.inference]
        self.widget = w.VBox([w.HBox([w.VBox(left), w.VBox(right)]), self.status, self.out])
        self.widget.add_class("flexrel-explorer")
        self.refresh()

    @classmethod
    def from_params(cls, params: Mapping, *, compact: bool = False) -> Explorer:
        """An explorer from a notebook's parameters (``Session.from_params``; the compact one
        offers no shifted inference data)."""
        get = params.get
        return cls(
            Session.from_params(params, shifted=not compact),
            delta=get("delta", 0.5),
            pruning_factor=get("pruning_factor", 0.8),
            method=get("method", "flexrel"),
            scope=get("scope", "global"),
            compact=compact,
        )

    # -- computing --------------------------------------------------------------------------------

    def update(self, **values) -> dict:
        """Set several controls at once (names in ``CONTROLS``), refusing invalid values, then
        refresh once; returns ``state``."""
        unknown = sorted(set(values) - set(CONTROLS))
        if unknown:
            raise TypeError(f"unknown explorer controls {unknown}; expected some of {list(CONTROLS)}")
        if "delta" in values:
            values["delta"] = check_delta(values["delta"])
        if "pruning_factor" in values:
            values["pruning_factor"] = check_p(values["pruning_factor"])
        for name in ("method", "scope", "inference", "layer"):
            options = tuple(getattr(self, name).options)
            if name in values and values[name] not in options:
                raise ValueError(f"{name} must be one of {list(options)}, got {values[name]!r}")
        self._hold = True
        try:
            for name, value in values.items():
                getattr(self, name).value = value
        finally:
            self._hold = False
        return self.refresh()

    def _on_change(self, change) -> None:
        if self._hold:
            return
        try:
            self.refresh()
        except Exception as err:  # a widget callback has nowhere to raise to: show it
            log.exception("explorer update failed")
            self.status.value = f'<div class="flexrel-error">update failed: {html.escape(str(err))}</div>'

    def refresh(self) -> dict:
        """Recompute at the controls' current values, redraw, and return ``state``.

        The new setting's numbers, sparsity and mask are drawn first; when the Figure 4 curve at
        this p is not known yet (after a p, scope or inference move: one evaluation per δ of the
        grid), it is computed next and the figure drawn again. So every move shows its result as
        fast as a δ move does (``state["feedback_seconds"]``); ``update_seconds`` includes the curve.
        """
        start = time.perf_counter()
        self.delta.disabled = self.method.value != "flexrel"
        where = {"p": float(self.pruning_factor.value), "scope": self.scope.value, "inference": self.inference.value}
        self.state, self.masks = self.session.state_at(
            delta=float(self.delta.value),
            method=self.method.value,
            layer=self.layer.value,
            with_curve=False,
            **where,
        )
        self.state["compute_seconds"] = time.perf_counter() - start
        self._render()
        self.state["feedback_seconds"] = time.perf_counter() - start
        if self.state["curve"] is None:
            self.state["curve"] = self.session.curve(**where)
            self._render()
        self.state["update_seconds"] = time.perf_counter() - start
        return self.state

    # -- drawing ----------------------------------------------------------------------------------

    def figure(self):
        """The three views of ``state``: per-layer sparsity, the chosen layer's mask, and the
        current point on the Figure 4 curve (accuracy vs delta at this p). One matplotlib figure,
        built once with a fixed layout and updated in place (redrawing costs ~50 ms, not ~200)."""
        if self._fig is None:
            self._fig = self._build_figure()
        fig, a = self._fig, self._artists
        s = self.state
        for bar, name in zip(a["bars"], s["layer_sparsity"], strict=True):
            bar.set_width(s["layer_sparsity"][name])
        a["overall"].set_xdata([s["sparsity"]])
        a["ax_sp"].set_title(f"per-layer sparsity (overall {s['sparsity']:.3f})", fontsize=10)
        mask = self.masks[s["layer"]].cpu()
        mask = mask.reshape(mask.shape[0], -1).numpy()
        a["mask"].set_data(mask)
        a["mask"].set_extent((-0.5, mask.shape[1] - 0.5, mask.shape[0] - 0.5, -0.5))
        a["ax_mask"].set_title(f"mask of {s['layer']}: black = kept ({mask.mean():.0%})", fontsize=10)
        a["curve"].set_data(*((s["curve_deltas"], s["curve"]) if s["curve"] is not None else ([], [])))
        a["dense"].set_ydata([s["dense_accuracy"]] * 2)
        a["point"].set_data([s["effective_delta"]], [s["pruned_accuracy"]])
        now = "★ = now" if s["curve"] is not None else "computing the curve…"
        a["ax_curve"].set_title(f"Figure 4 at p = {s['pruning_factor']:.2f}: {now} ({s['method']})", fontsize=10)
        fig.suptitle(
            f"{s['inference']} inference data · {s['scope']} threshold · pruned accuracy {s['pruned_accuracy']:.3f}"
            f" vs dense {s['dense_accuracy']:.3f}",
            fontsize=10,
        )
        return fig

    def _build_figure(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 3.4))
        ax_sp, ax_mask, ax_curve = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.2])
        fig.subplots_adjust(left=0.09, right=0.87, bottom=0.16, top=0.8, wspace=0.3)
        names = list(self.session.dense)
        bars = ax_sp.barh(range(len(names)), [0.0] * len(names), color="#4c72b0")
        overall = ax_sp.axvline(0.0, color="k", ls="--", lw=1)
        ax_sp.set(yticks=range(len(names)), xlim=(0, 1), xlabel="fraction pruned")
        ax_sp.set_yticklabels([n.removesuffix(".weight") for n in names], fontsize=8)
        ax_sp.invert_yaxis()
        mask = ax_mask.imshow(
            [[0, 1]], cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest"
        )  # black = kept
        ax_mask.set(xlabel="input (× kernel taps)", ylabel="output")
        (curve,) = ax_curve.plot([], [], "o-", color=PALETTE["flexrel"], ms=3, label="FlexRel\nat this p")
        (dense,) = ax_curve.plot([-0.03, 1.03], [0, 0], color="grey", ls=":", lw=1, label="dense")
        (point,) = ax_curve.plot([], [], "*", color="#c44e52", ms=14, label="now")
        ax_curve.set(xlim=(-0.03, 1.03), ylim=(0, 1.02), xlabel="δ (0 = magnitude, 1 = relevance)", ylabel="accuracy")
        ax_curve.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        self._artists = {
            "ax_sp": ax_sp, "bars": list(bars), "overall": overall, "ax_mask": ax_mask, "mask": mask,
            "ax_curve": ax_curve, "curve": curve, "dense": dense, "point": point,
        }  # fmt: skip
        return fig

    def status_html(self) -> str:
        """The numbers, as text with stable CSS classes, and the mask checksum as ``data-mask`` (read by
        the browser test)."""
        s = self.state
        items = [
            ("δ", "delta-value", f"{s['delta']:.2f}"),
            ("p", "p-value", f"{s['pruning_factor']:.2f}"),
            ("dense accuracy", "dense-accuracy", f"{s['dense_accuracy']:.4f}"),
            ("pruned accuracy", "pruned-accuracy", f"{s['pruned_accuracy']:.4f}"),
            ("sparsity", "sparsity", f"{s['sparsity']:.4f}"),
            ("weights kept", "kept", f"{s['kept']} / {s['total']}"),
        ]
        body = " · ".join(f'{label}: <b class="flexrel-{cls}">{value}</b>' for label, cls, value in items)
        # The mask's checksum is for tests and scripts (it tells masks apart), not for readers: an attribute.
        return f'<div class="flexrel-status-text" data-mask="{s["mask_checksum"]}">{body}</div>'

    def _render(self) -> None:
        t0 = time.perf_counter()
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=FIGURE_DPI)
        png = base64.b64encode(buf.getvalue()).decode("ascii")
        # Set the Output's outputs directly: the same in a kernel and without one (tests).
        self.out.outputs = (
            {
                "output_type": "display_data",
                "data": {"image/png": png, "text/plain": "<explorer figure>"},
                "metadata": {},
            },
        )
        # The numbers last: once they show a setting, its figure has been sent too.
        self.status.value = self.status_html()
        self.state["render_seconds"] = time.perf_counter() - t0


def compact_explorer(params: Mapping):
    """The compact explorer (delta, p, method; inference data as trained) for the end of the fig4
    notebook: ``compact_explorer(globals())`` displays it as the cell's value."""
    return Explorer.from_params(params, compact=True).widget


def render_static(
    explorer: Explorer, folder: str | Path, points: Sequence[Sequence[float]], *, name: str = "explore"
) -> pd.DataFrame:
    """The explorer's views at each (delta, p) in ``points``, for every inference choice, as PNG +
    SVG in ``folder`` (``<name>_<inference>_d<delta>_p<p>``), and ``<name>_points.csv`` with the
    numbers shown; returns that table. The explorer's controls are restored afterwards."""
    before = {k: getattr(explorer, k).value for k in CONTROLS}
    rows = []
    for inference in explorer.session.choices:
        for delta, p in points:
            s = explorer.update(delta=float(delta), pruning_factor=float(p), inference=inference, method="flexrel")
            fig_name = f"{name}_{inference.replace(' ', '-')}_d{delta:.2f}_p{p:.2f}"
            save_figure(explorer.figure(), folder, fig_name)
            rows.append({k: s[k] for k in POINT_COLUMNS} | {"figure": fig_name})
    explorer.update(**before)
    table = pd.DataFrame(rows)
    save_table(table, folder, f"{name}_points")
    return table


def timing(explorer: Explorer, moves: int = 20) -> dict:
    """Median / max seconds of an update driven through the sliders' callbacks: ``moves`` delta
    moves at a fixed p (the Figure 4 curve cached) and ``moves`` p moves (each new p computes its
    curve), until the new setting shows (``feedback``) and until the update is complete (``update``,
    the curve included). Restores the explorer's previous values afterwards."""
    if moves < 1:
        raise ValueError(f"moves must be >= 1, got {moves}")
    before = {k: getattr(explorer, k).value for k in CONTROLS}
    out: dict = {"moves": moves}
    plan = (
        ("delta", explorer.delta, {"delta": 0.0}, [round(0.05 * (1 + i % 20), 2) for i in range(moves)]),
        (
            "p",
            explorer.pruning_factor,
            {"pruning_factor": 0.5},
            [round(0.51 + 0.02 * (i % 25), 2) for i in range(moves)],
        ),
    )
    for label, slider, start, values in plan:
        explorer.update(method="flexrel", **start)
        feedback, total, compute, render = [], [], [], []
        for value in values:  # consecutive values differ, so every assignment is a move
            slider.value = value
            feedback.append(explorer.state["feedback_seconds"])
            total.append(explorer.state["update_seconds"])
            compute.append(explorer.state["compute_seconds"])
            render.append(explorer.state["render_seconds"])
        out[f"{label}_feedback_median_s"] = statistics.median(feedback)
        out[f"{label}_update_median_s"] = statistics.median(total)
        out[f"{label}_update_max_s"] = max(total)
        out[f"{label}_compute_median_s"] = statistics.median(compute)
        out[f"{label}_render_median_s"] = statistics.median(render)
    explorer.update(**before)
    return out


def bench(profile: str = "default", moves: int = 20) -> dict:
    """``make bench``: the explorer's update time on ``profile``'s model, driven through the
    sliders (see ``timing``); budget: a move shows its setting within 0.5 s."""
    from ..workbook.profiles import read_profile

    data = read_profile(profile)
    params = {**(data.get("common") or {}), **(data.get("explore") or {})}
    result = timing(Explorer.from_params(params), moves)
    result.update(profile=profile, model=params.get("model"), budget_s=BUDGET_S)
    result["within_budget"] = within_budget(result)
    return result
