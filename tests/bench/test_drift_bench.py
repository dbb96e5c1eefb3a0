"""Drift benchmark against Evidently 0.7.x on the same frames, in the same run. Run with `make bench`.

Evidently lives in its own virtualenv (`EVIDENTLY_VENV`, default var/bench/evidently-venv), created and
filled here on first use, never in requirements.txt. Its pin carries `pandas<3`: Evidently 0.7.23 imports a
pandas name that pandas 3 removed.

Frames: 25 columns (12 normal numeric, two with missing values; 2 numeric with 5 values; 1 integer with 100
values; 7 categorical; 3 binary), drift in some of each kind. Each side runs in its own subprocess so its
peak RSS is its own (data, imports and work). Evidently's time is `Report.run` with `DataDriftPreset()`;
ours is `reference_profile` (once per reference, stored in the console) plus `drift_report` (per window),
both shown. Compared values: every column's drift value. None of the default tests here is a chi-square
(the reference has more than 1,000 rows), the one place where our values differ from Evidently's by design.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
EVIDENTLY_VENV = Path(os.environ.get("EVIDENTLY_VENV", ROOT / "var" / "bench" / "evidently-venv"))
EVIDENTLY_REQUIREMENTS = ["evidently>=0.7,<0.8", "pandas<3"]
ROWS = 100_000
BIG_ROWS = 1_000_000
VALUE_TOLERANCE = 1e-9
MIN_SPEEDUP = 20
MAX_MEMORY_SHARE = 1 / 3
BIG_TARGET_SECONDS = 10.0

# The high-water mark of this process's own memory map. Not ru_maxrss: Linux carries that over exec from
# the forking parent (pytest, with Django and the frames loaded), which would count the parent's memory.
PEAK_RSS = r"""
def peak_rss():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
"""

EVIDENTLY = r"""
import json, sys, time
import numpy as np, pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

data = np.load(sys.argv[1])
kinds = json.loads(sys.argv[2])
frames = {side: pd.DataFrame({name: data[f"{side}:{name}"] for name in kinds}) for side in ("reference", "current")}
definition = DataDefinition(
    numerical_columns=[name for name, kind in kinds.items() if kind == "numeric"],
    categorical_columns=[name for name, kind in kinds.items() if kind == "categorical"],
)
reference, current = (
    Dataset.from_pandas(frames[side], data_definition=definition) for side in ("reference", "current")
)
started = time.perf_counter()
snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
seconds = time.perf_counter() - started
values, share = {}, None
for metric in snapshot.dict()["metrics"]:
    config = metric["config"]
    if config["type"].endswith("ValueDrift"):
        values[config["column"]] = metric["value"]
    elif config["type"].endswith("DriftedColumnsCount"):
        share = metric["value"]["share"]
peak = peak_rss()
print(json.dumps({"seconds": seconds, "peak_rss": peak, "values": values, "share": share}))
"""

OURS = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
from worker.monitoring.drift import drift_report, reference_profile

data = np.load(sys.argv[1])
kinds = json.loads(sys.argv[2])
reference = {name: data[f"reference:{name}"] for name in kinds}
current = {name: data[f"current:{name}"] for name in kinds}
started = time.perf_counter()
profile = reference_profile(reference, kinds)
profiled = time.perf_counter()
report = drift_report(profile, current)
finished = time.perf_counter()
peak = peak_rss()
print(json.dumps({
    "profile_seconds": profiled - started,
    "report_seconds": finished - profiled,
    "peak_rss": peak,
    "values": {c.column: c.statistic for c in report.columns},
    "tests": {c.column: c.test for c in report.columns},
    "share": report.drift_share,
}))
"""


def make_frames(rows: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for side, drifting in (("reference", False), ("current", True)):
        for i in range(12):
            shift = 0.1 * (i + 1) if drifting and i < 5 else 0.0
            values = rng.normal(shift, 1.0 + (0.5 if drifting and i == 5 else 0.0), size=rows)
            if i >= 10:
                values[rng.random(rows) < 0.01] = np.nan
            arrays[f"{side}:num{i}"], kinds[f"num{i}"] = values, "numeric"
        for i in range(2):
            probabilities = [0.3, 0.3, 0.2, 0.1, 0.1] if drifting and i == 0 else [0.2] * 5
            arrays[f"{side}:few{i}"], kinds[f"few{i}"] = rng.choice(5, size=rows, p=probabilities), "numeric"
        arrays[f"{side}:int0"], kinds["int0"] = rng.integers(0, 100 + (20 if drifting else 0), size=rows), "numeric"
        for i in range(7):
            categories = np.array([f"c{j:02d}" for j in range(3 + 4 * i + (1 if drifting and i == 2 else 0))])
            weights = np.arange(1, categories.size + 1, dtype=float)
            if drifting and i < 2:
                weights = weights[::-1]
            arrays[f"{side}:cat{i}"], kinds[f"cat{i}"] = (
                rng.choice(categories, size=rows, p=weights / weights.sum()),
                ("categorical"),
            )
        for i in range(3):
            p_yes = 0.45 if drifting and i == 0 else 0.3
            arrays[f"{side}:bin{i}"], kinds[f"bin{i}"] = np.where(rng.random(rows) < p_yes, "yes", "no"), "categorical"
    return arrays, kinds


def run_json(command: list[str]) -> dict:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def evidently_python() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *EVIDENTLY_REQUIREMENTS], check=True)
    return python


def frames_file(tmp_path: Path, rows: int) -> tuple[Path, dict[str, str]]:
    arrays, kinds = make_frames(rows, seed=0)
    path = tmp_path / f"frames-{rows}.npz"
    np.savez(path, **arrays)
    return path, kinds


def ours(path: Path, kinds: dict[str, str]) -> dict:
    return run_json([sys.executable, "-c", PEAK_RSS + OURS, str(path), json.dumps(kinds), str(ROOT)])


def test_drift_against_evidently_at_100k(evidently_python: Path, tmp_path: Path) -> None:
    path, kinds = frames_file(tmp_path, ROWS)
    theirs = run_json([str(evidently_python), "-c", PEAK_RSS + EVIDENTLY, str(path), json.dumps(kinds)])
    mine = ours(path, kinds)
    print(f"\n{ROWS:,} × {len(kinds)} columns, load average {os.getloadavg()}")
    print(f"{'column':8} {'test':14} {'ours':>22} {'Evidently':>22} {'|difference|':>13}")
    differences = {}
    for name in kinds:
        differences[name] = abs(mine["values"][name] - theirs["values"][name])
        print(
            f"{name:8} {mine['tests'][name]:14} {mine['values'][name]:22.15g} {theirs['values'][name]:22.15g}"
            f" {differences[name]:13.3g}"
        )
    ours_seconds = mine["profile_seconds"] + mine["report_seconds"]
    print(f"drift share: ours {mine['share']}, Evidently {theirs['share']}")
    print(
        f"time: Evidently {theirs['seconds']:.2f} s; ours {ours_seconds:.3f} s (profile {mine['profile_seconds']:.3f}"
        f" + report {mine['report_seconds']:.3f}); speed-up {theirs['seconds'] / ours_seconds:.0f}× "
        f"({theirs['seconds'] / mine['report_seconds']:.0f}× per window with a stored profile)"
    )
    print(
        f"peak RSS: Evidently {theirs['peak_rss'] / 2**20:.0f} MiB; ours {mine['peak_rss'] / 2**20:.0f} MiB "
        f"({mine['peak_rss'] / theirs['peak_rss']:.2f} of Evidently's)"
    )
    assert max(differences.values()) <= VALUE_TOLERANCE, differences
    assert mine["share"] == pytest.approx(theirs["share"])
    assert theirs["seconds"] / ours_seconds >= MIN_SPEEDUP
    assert mine["peak_rss"] <= MAX_MEMORY_SHARE * theirs["peak_rss"]


def test_drift_at_1m_rows_under_ten_seconds(evidently_python: Path, tmp_path: Path) -> None:
    """Ours under 10 s; Evidently on the same frames in the same run (its 2.6 GB and ~150 s, for the table)."""
    path, kinds = frames_file(tmp_path, BIG_ROWS)
    mine = ours(path, kinds)
    theirs = run_json([str(evidently_python), "-c", PEAK_RSS + EVIDENTLY, str(path), json.dumps(kinds)])
    seconds = mine["profile_seconds"] + mine["report_seconds"]
    print(f"\n{BIG_ROWS:,} × {len(kinds)} columns, load average {os.getloadavg()}")
    print(
        f"time: Evidently {theirs['seconds']:.1f} s; ours {seconds:.2f} s (profile {mine['profile_seconds']:.2f}"
        f" + report {mine['report_seconds']:.2f}); speed-up {theirs['seconds'] / seconds:.0f}×"
    )
    print(
        f"peak RSS: Evidently {theirs['peak_rss'] / 2**20:.0f} MiB; ours {mine['peak_rss'] / 2**20:.0f} MiB "
        f"({mine['peak_rss'] / theirs['peak_rss']:.2f} of Evidently's)"
    )
    largest = max(abs(mine["values"][name] - theirs["values"][name]) for name in kinds)
    print(f"largest |difference| of a column's value: {largest:.3g}")
    assert seconds < BIG_TARGET_SECONDS
