"""Fixtures for the training tests: small splits of iris (classification) and diabetes (regression).

No Django, no database. The repository root goes on sys.path because the test folders are not packages
here (a `tests/worker` package would shadow the real `worker`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sklearn.datasets import load_diabetes, load_iris  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


@pytest.fixture(scope="session")
def iris_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_iris(as_frame=True).frame
    frame["species"] = load_iris().target_names[frame.pop("target")]
    return train_test_split(frame, test_size=0.3, random_state=0, stratify=frame["species"])


@pytest.fixture(scope="session")
def diabetes_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_diabetes(as_frame=True).frame
    return train_test_split(frame, test_size=0.3, random_state=0)
