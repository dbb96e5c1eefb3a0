"""Plotly figures of A/B tests, built in Python and drawn by the local plotly.js (as the deployment page)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from apps.abtests.models import ABTest, ABTestReadout
from apps.deployments.charts import figure_json

__all__ = ["figure_json", "lift_figure"]

LAYOUT = {"margin": {"l": 50, "r": 10, "t": 10, "b": 30}, "height": 280, "template": "plotly_white"}
COLOURS = ("#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9")


def lift_figure(abtest: ABTest, history: Sequence[ABTestReadout]) -> go.Figure:
    """Per treatment, the cumulative effect at each readout with its confidence sequence (or, for a
    fixed-horizon test, its confidence interval) as a band, against 0 and ±MDE. The relative lift when the MDE
    is relative, else the difference in the metric's units."""
    relative = abtest.mde_relative
    keys = ("lift", "lift_cs_low", "lift_cs_high") if relative else ("difference", "cs_low", "cs_high")
    fixed_keys = ("lift_ci_low", "lift_ci_high") if relative else ("ci_low", "ci_high")
    figure = go.Figure()
    arms = [c["arm"] for c in (history[-1].result["engine"]["comparisons"] if history else [])]
    for index, arm in enumerate(arms):
        x, y, low, high = [], [], [], []
        for readout in history:
            comparison = next((c for c in readout.result["engine"]["comparisons"] if c["arm"] == arm), None)
            if comparison is None or comparison["fixed"][keys[0]] is None:
                continue
            if abtest.sequential:
                band = (comparison["sequential"][keys[1]], comparison["sequential"][keys[2]])
            else:
                band = (comparison["fixed"][fixed_keys[0]], comparison["fixed"][fixed_keys[1]])
            if band[0] is None or band[1] is None:
                continue
            x.append(readout.as_of)
            y.append(comparison["fixed"][keys[0]])
            low.append(band[0])
            high.append(band[1])
        colour = COLOURS[index % len(COLOURS)]
        figure.add_scatter(x=x, y=high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
        figure.add_scatter(
            x=x,
            y=low,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor="rgba(31,111,235,0.15)" if index == 0 else "rgba(232,89,12,0.15)",
            name=f"{arm}: {'confidence sequence' if abtest.sequential else 'confidence interval'}",
        )
        figure.add_scatter(x=x, y=y, mode="lines+markers", line={"color": colour}, name=f"{arm} vs control")
    figure.add_hline(y=0, line={"color": "#868e96"})
    for sign in (1, -1):
        figure.add_hline(y=sign * abtest.mde, line={"dash": "dot", "color": "#e03131"})
    figure.update_layout(
        xaxis={"type": "date"},
        yaxis={"title": "relative lift" if relative else "difference", "tickformat": ".1%" if relative else ""},
        legend={"orientation": "h"},
        **LAYOUT,
    )
    return figure
