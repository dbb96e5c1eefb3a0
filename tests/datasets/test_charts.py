from __future__ import annotations

import json

from apps.datasets.charts import column_chart, compare_chart

NUMBERS = {"type": "numeric", "histogram": {"edges": [0.0, 1.0, 3.0], "counts": [10, 30]}}
CATEGORIES = {
    "type": "categorical",
    "top": [{"value": "a", "count": 6}, {"value": "</script>", "count": 3}],
    "other_count": 1,
}


def figure(chart: object) -> dict:
    return json.loads(str(chart.json))


def test_numbers_get_a_histogram_on_the_profile_bins() -> None:
    bars = figure(column_chart("x", NUMBERS))["data"][0]
    assert bars["type"] == "bar" and bars["x"] == [0.5, 2.0] and bars["width"] == [1.0, 2.0] and bars["y"] == [10, 30]


def test_categories_get_bars_with_other() -> None:
    chart = column_chart("c", CATEGORIES)
    bars = figure(chart)["data"][0]
    assert bars["x"] == ["a", "</script>", "(other)"] and bars["y"] == [6, 3, 1]
    assert "</script>" not in str(chart.json) and "<" not in str(chart.json)


def test_columns_without_a_chart() -> None:
    assert column_chart("t", {"type": "text"}) is None
    assert column_chart("d", {"type": "datetime", "min": "2024-01-01"}) is None
    assert column_chart("n", {"type": "numeric", "histogram": {"edges": [], "counts": []}}) is None


def test_compare_uses_densities_and_shares() -> None:
    other = {"type": "integer", "histogram": {"edges": [0.0, 2.0, 4.0], "counts": [5, 5]}}
    a, b = figure(compare_chart("x", NUMBERS, other, ("v1", "v2")))["data"]
    assert a["y"] == [0.25, 0.375] and b["y"] == [0.25, 0.25], "count / total / bin width"
    assert (a["name"], b["name"]) == ("v1", "v2")
    shares = figure(
        compare_chart("c", CATEGORIES, {"type": "categorical", "top": [{"value": "b", "count": 2}]}, ("v1", "v2"))
    )
    assert shares["data"][0]["x"] == ["a", "</script>", "(other)", "b"]
    assert shares["data"][1]["y"] == [0, 0, 0, 1.0]
    assert compare_chart("x", NUMBERS, CATEGORIES, ("v1", "v2")) is None, "a type change has no overlay"
