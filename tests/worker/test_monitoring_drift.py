"""Drift engine: each statistic against scipy or a hand computation, the test choice, edge cases, storage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from worker.monitoring.drift import (
    ColumnTest,
    DriftOptions,
    ReferenceProfile,
    drift_report,
    prediction_columns,
    reference_profile,
)

TOL = 1e-9


def report_for(reference: dict, current: dict, kinds: dict, options: DriftOptions | None = None):
    return drift_report(reference_profile(reference, kinds), current, options)


def hand_shares(reference: np.ndarray, current: np.ndarray, numeric_bins: bool) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's binning written out with numpy: Sturges bins over both sides, or counts per value."""
    if numeric_bins:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        return np.histogram(reference, edges)[0] / reference.size, np.histogram(current, edges)[0] / current.size
    keys = sorted(set(reference.tolist()) | set(current.tolist()))
    return (
        np.array([np.sum(reference == key) for key in keys]) / reference.size,
        np.array([np.sum(current == key) for key in keys]) / current.size,
    )


def hand_psi(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    def fill(shares: np.ndarray) -> np.ndarray:
        smallest = shares[shares > 0].min()
        return np.where(shares == 0, smallest / 1e6 if smallest <= 1e-4 else 1e-4, shares)

    r, c = fill(reference_shares), fill(current_shares)
    return float(np.sum((r - c) * np.log(r / c)))


def test_small_reference_numeric_uses_ks_and_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=800), rng.normal(0.3, 1, size=1500)
    column = report_for({"x": ref}, {"x": cur}, {"x": "numeric"}).column("x")
    assert column.test == "ks"
    assert column.statistic == pytest.approx(stats.ks_2samp(ref, cur).pvalue, abs=TOL)
    assert column.threshold == 0.05
    assert column.drifted is True


def test_large_reference_numeric_uses_normed_wasserstein_and_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    # Rounded values give ties within and across the two sides.
    ref, cur = np.round(rng.normal(size=5000), 2), np.round(rng.normal(0.05, 1.2, size=3000), 2)
    column = report_for({"x": ref}, {"x": cur}, {"x": "numeric"}).column("x")
    assert column.test == "wasserstein"
    expected = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert column.statistic == pytest.approx(expected, abs=TOL)
    assert column.drifted is bool(expected >= 0.1)
    assert column.psi == pytest.approx(hand_psi(*hand_shares(ref, cur, numeric_bins=True)), abs=TOL)


def test_large_reference_categorical_uses_jensen_shannon_with_a_category_on_one_side_only() -> None:
    rng = np.random.default_rng(3)
    ref = rng.choice(["a", "b", "c"], size=4000, p=[0.5, 0.3, 0.2])
    cur = rng.choice(["a", "b", "d"], size=2000, p=[0.4, 0.4, 0.2])
    column = report_for({"c": ref}, {"c": cur}, {"c": "categorical"}).column("c")
    assert column.test == "jensenshannon"
    shares = hand_shares(ref, cur, numeric_bins=False)
    assert column.statistic == pytest.approx(distance.jensenshannon(*shares), abs=TOL)
    assert column.psi == pytest.approx(hand_psi(*shares), abs=TOL)
    assert np.isfinite(column.psi) and column.drifted is True
    assert column.n_unique == 4


def test_large_reference_numeric_with_few_unique_values_is_tested_as_categorical() -> None:
    rng = np.random.default_rng(4)
    ref, cur = rng.integers(0, 5, size=3000).astype(float), rng.integers(0, 5, size=3000).astype(float)
    column = report_for({"x": ref}, {"x": cur}, {"x": "numeric"}).column("x")
    assert column.test == "jensenshannon" and column.n_unique == 5
    shares = hand_shares(ref, cur, numeric_bins=False)
    assert column.statistic == pytest.approx(distance.jensenshannon(*shares), abs=TOL)
    assert column.drifted is False


def test_unique_values_are_counted_over_both_sides() -> None:
    ref = np.tile([0.0, 1.0, 2.0, 3.0], 250)  # 4 unique values in the reference alone
    cur = np.tile([2.0, 3.0, 4.0, 5.0], 100)  # 6 together: more than 5, so KS
    column = report_for({"x": ref}, {"x": cur}, {"x": "numeric"}).column("x")
    assert column.n_unique == 6 and column.test == "ks"


def test_small_reference_categorical_chi_square_is_the_contingency_test() -> None:
    rng = np.random.default_rng(5)
    ref = rng.choice(["a", "b", "c"], size=600, p=[0.5, 0.3, 0.2])
    cur = rng.choice(["a", "b", "c"], size=5000, p=[0.45, 0.35, 0.2])
    column = report_for({"c": ref}, {"c": cur}, {"c": "categorical"}).column("c")
    assert column.test == "chisquare"
    table = np.array([[np.sum(ref == k) for k in "abc"], [np.sum(cur == k) for k in "abc"]])
    assert column.statistic == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue, abs=TOL)


def test_small_reference_with_a_category_on_one_side_only_gets_a_finite_chi_square() -> None:
    ref = np.repeat(["a", "b", "c"], [300, 200, 100])
    cur = np.repeat(["a", "b", "d"], [300, 200, 100])
    column = report_for({"c": ref}, {"c": cur}, {"c": "categorical"}).column("c")
    table = [[300, 200, 100, 0], [300, 200, 0, 100]]
    assert column.test == "chisquare" and column.n_unique == 4
    assert column.statistic == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue, abs=TOL)
    assert column.drifted is True and np.isfinite(column.psi)


def test_boolean_and_integer_categories() -> None:
    rng = np.random.default_rng(14)
    reference = {"flag": rng.random(500) < 0.3, "code": rng.integers(0, 4, size=500)}
    current = {"flag": rng.random(400) < 0.3, "code": rng.integers(0, 4, size=400)}
    report = report_for(reference, current, dict.fromkeys(reference, "categorical"))
    assert report.column("flag").test == "z" and report.column("code").test == "chisquare"
    assert report.column("flag").drifted is False and report.column("code").drifted is False


def test_goodness_of_fit_would_flag_what_the_contingency_test_does_not() -> None:
    """The reference's own noise: a current window that matches the population, not the small reference."""
    ref = np.repeat(["a", "b", "c"], [350, 330, 320])  # population is 1/3 each; reference drew unevenly
    cur = np.repeat(["a", "b", "c"], [10000, 10000, 10000])
    column = report_for({"c": ref}, {"c": cur}, {"c": "categorical"}).column("c")
    goodness_of_fit = stats.chisquare([10000, 10000, 10000], np.array([350, 330, 320]) * 30).pvalue
    assert goodness_of_fit < 1e-6  # Evidently's test: "drift"
    assert column.drifted is False and column.statistic > 0.01


def test_binary_column_uses_the_z_test_equal_to_the_uncorrected_2x2_chi_square() -> None:
    rng = np.random.default_rng(6)
    ref, cur = rng.choice(["no", "yes"], size=700, p=[0.7, 0.3]), rng.choice(["no", "yes"], size=900, p=[0.6, 0.4])
    column = report_for({"b": ref}, {"b": cur}, {"b": "categorical"}).column("b")
    assert column.test == "z"
    n1, n2 = ref.size, cur.size
    p1, p2 = np.mean(ref == "yes"), np.mean(cur == "yes")
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert column.statistic == pytest.approx(2 * stats.norm.sf(abs(z)), abs=TOL)
    table = [[np.sum(ref == "no"), np.sum(ref == "yes")], [np.sum(cur == "no"), np.sum(cur == "yes")]]
    assert column.statistic == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue, abs=TOL)
    assert column.drifted is True


def test_integer_columns_use_numpys_integer_bin_rule() -> None:
    """21 integer values over 1.2M rows: Sturges asks for bins under 1 wide, numpy widens them to 1."""
    rng = np.random.default_rng(7)
    ref, cur = rng.integers(0, 21, size=600_000), rng.integers(0, 21, size=600_000)
    assert np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges").size == 21  # 20 bins, not 22
    column = report_for({"n": ref}, {"n": cur}, {"n": "numeric"}).column("n")
    assert column.psi == pytest.approx(hand_psi(*hand_shares(ref, cur, numeric_bins=True)), abs=TOL)
    as_floats = report_for({"n": ref.astype(float)}, {"n": cur.astype(float)}, {"n": "numeric"}).column("n")
    assert as_floats.psi == pytest.approx(
        hand_psi(*hand_shares(ref.astype(float), cur.astype(float), numeric_bins=True)), abs=TOL
    )
    assert as_floats.psi != column.psi


def test_constant_columns_give_no_drift_at_both_sizes() -> None:
    for size in (500, 5000):
        column = report_for({"k": np.full(size, 3.0)}, {"k": np.full(200, 3.0)}, {"k": "numeric"}).column("k")
        assert column.reason is None and column.drifted is False
        assert column.statistic == (1.0 if size == 500 else 0.0)
        assert column.psi == 0.0
    wasserstein = report_for(
        {"k": np.full(5000, 3.0)},
        {"k": np.full(200, 4.0)},
        {"k": "numeric"},
        DriftOptions(columns={"k": ColumnTest(test="wasserstein")}),
    ).column("k")
    assert wasserstein.statistic == pytest.approx(1 / 0.001)  # reference std 0 is floored


def test_missing_values_are_dropped_and_reported() -> None:
    rng = np.random.default_rng(8)
    ref, cur = rng.normal(size=2000), rng.normal(size=1000)
    ref[:200] = np.nan
    cur[:100] = np.inf
    cur[100:150] = np.nan
    column = report_for({"x": ref}, {"x": cur}, {"x": "numeric"}).column("x")
    assert column.missing_share_reference == pytest.approx(0.1)
    assert column.missing_share_current == pytest.approx(0.15)
    assert column.n_reference == 1800 and column.n_current == 850
    expected = stats.wasserstein_distance(ref[200:], cur[150:]) / np.std(ref[200:])
    assert column.statistic == pytest.approx(expected, abs=TOL)
    cats = report_for(
        {"c": np.array(["a", None, "b", float("nan")] * 50, dtype=object)},
        {"c": np.array(["a", "b", None, "b"] * 10, dtype=object)},
        {"c": "categorical"},
    ).column("c")
    assert cats.missing_share_reference == 0.5 and cats.missing_share_current == 0.25 and cats.n_unique == 2


def test_columns_that_cannot_be_tested_are_reported_and_left_out_of_the_share() -> None:
    rng = np.random.default_rng(9)
    reference = {"a": rng.normal(size=300), "b": rng.normal(size=300), "c": np.full(300, np.nan), "d": np.ones(300)}
    current = {"a": rng.normal(3, 1, size=100), "b": np.full(100, np.nan), "c": rng.normal(size=100)}
    kinds = dict.fromkeys(reference, "numeric")
    report = report_for(reference, current, kinds)
    assert report.column("b").reason == "the current window has only missing values in this column"
    assert report.column("b").missing_share_current == 1.0
    assert report.column("c").reason == "the reference has no values in this column"
    assert report.column("d").reason == "the column is absent from the current window"
    assert report.n_tested == 1 and report.n_drifted == 1 and report.drift_share == 1.0 and report.dataset_drift
    empty = report_for(reference, {name: np.array([]) for name in reference}, kinds)
    assert empty.column("a").reason == "the current window is empty"
    assert empty.column("a").missing_share_current is None
    assert empty.n_tested == 0 and empty.drift_share is None and empty.dataset_drift is None


def test_dataset_drift_uses_the_configured_share() -> None:
    rng = np.random.default_rng(10)
    reference = {name: rng.normal(size=2000) for name in "abcd"}
    current = {name: rng.normal(1.0 if name == "a" else 0.0, 1, size=2000) for name in "abcd"}
    kinds = dict.fromkeys(reference, "numeric")
    default = report_for(reference, current, kinds)
    assert default.n_drifted == 1 and default.drift_share == 0.25 and default.dataset_drift is False
    assert report_for(reference, current, kinds, DriftOptions(drift_share=0.25)).dataset_drift is True


def test_per_column_overrides_choose_the_test_and_threshold() -> None:
    rng = np.random.default_rng(11)
    ref, cur = rng.normal(size=3000), rng.normal(0.05, 1, size=3000)
    options = DriftOptions(
        columns={"x": ColumnTest(test="ks", threshold=0.01), "y": ColumnTest(threshold=0.01), "z": ColumnTest("psi")}
    )
    report = report_for(
        {"x": ref, "y": ref, "z": ref}, {"x": cur, "y": cur, "z": cur}, dict.fromkeys("xyz", "numeric"), options
    )
    assert report.column("x").test == "ks" and report.column("x").threshold == 0.01
    assert report.column("x").statistic == pytest.approx(stats.ks_2samp(ref, cur).pvalue, abs=TOL)
    assert report.column("y").test == "wasserstein" and report.column("y").threshold == 0.01
    assert report.column("y").drifted is True
    assert report.column("z").test == "psi" and report.column("z").statistic == report.column("z").psi


def test_bad_overrides_are_refused_naming_the_column() -> None:
    with pytest.raises(ValueError, match="test must be one of"):
        ColumnTest(test="t-test")
    with pytest.raises(ValueError, match="threshold"):
        ColumnTest(threshold=float("nan"))
    with pytest.raises(ValueError, match="drift_share"):
        DriftOptions(drift_share=0)
    ref = {"c": np.array(["a", "b"] * 10), "x": np.arange(100.0)}
    kinds = {"c": "categorical", "x": "numeric"}
    with pytest.raises(ValueError, match="c: the ks test needs a numeric column"):
        report_for(ref, ref, kinds, DriftOptions(columns={"c": ColumnTest(test="ks")}))
    with pytest.raises(ValueError, match="x: the chisquare test"):
        report_for(ref, ref, kinds, DriftOptions(columns={"x": ColumnTest(test="chisquare")}))
    with pytest.raises(ValueError, match="columns the reference does not have: nope"):
        report_for(ref, ref, kinds, DriftOptions(columns={"nope": ColumnTest()}))
    with pytest.raises(ValueError, match="kind must be one of"):
        reference_profile({"x": np.arange(3.0)}, {"x": "text"})


def test_the_profile_round_trips_through_bytes_and_reports_are_deterministic() -> None:
    rng = np.random.default_rng(12)
    reference = {
        "x": rng.normal(size=3000),
        "n": rng.integers(0, 3, size=3000),
        "c": rng.choice(["a", "b", "c"], size=3000),
        "o": np.array(["u", None, "v"] * 1000, dtype=object),
    }
    current = {name: values[::-1][:1000] for name, values in reference.items()}
    kinds = {"x": "numeric", "n": "numeric", "c": "categorical", "o": "categorical"}
    profile = reference_profile(reference, kinds)
    restored = ReferenceProfile.from_bytes(profile.to_bytes())
    first = drift_report(profile, current).to_dict()
    assert drift_report(restored, current).to_dict() == first == drift_report(profile, current).to_dict()
    assert np.array_equal(restored.columns["x"].values, np.sort(reference["x"]))


def test_prediction_and_probability_drift_use_the_same_engine() -> None:
    rng = np.random.default_rng(13)
    classes = ("setosa", "versicolor")
    proba_ref = rng.beta(2, 2, size=2000)
    proba_cur = rng.beta(4, 2, size=2000)
    ref_cols, kinds = prediction_columns(
        y_pred=np.where(proba_ref > 0.5, *classes[::-1]),
        proba=np.column_stack([1 - proba_ref, proba_ref]),
        classes=classes,
        task="classification",
    )
    cur_cols, _ = prediction_columns(
        y_pred=np.where(proba_cur > 0.5, *classes[::-1]),
        proba=np.column_stack([1 - proba_cur, proba_cur]),
        classes=classes,
        task="classification",
    )
    report = drift_report(reference_profile(ref_cols, kinds), cur_cols)
    assert kinds == {"prediction": "categorical", "proba:setosa": "numeric", "proba:versicolor": "numeric"}
    assert report.column("prediction").test == "jensenshannon"
    assert report.column("proba:versicolor").test == "wasserstein" and report.column("proba:versicolor").drifted
