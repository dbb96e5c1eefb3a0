"""The small datasets scikit-learn ships, as CSV files with their target column named `target`."""

from __future__ import annotations

import io
from collections.abc import Callable

import pandas as pd
from sklearn import datasets as sklearn_datasets

# Classification targets become class names, so they read as categories, not numbers.
DEMO_DATASETS: dict[str, tuple[Callable[..., object], bool, str]] = {
    "iris": (sklearn_datasets.load_iris, True, "Iris flowers: four measurements and the species (3 classes)."),
    "wine": (sklearn_datasets.load_wine, True, "Chemical analysis of wines from three cultivars."),
    "breast_cancer": (
        sklearn_datasets.load_breast_cancer,
        True,
        "Breast cancer diagnosis (malignant or benign) from 30 cell-nucleus features.",
    ),
    "diabetes": (sklearn_datasets.load_diabetes, False, "Diabetes progression after one year (regression)."),
    "digits": (sklearn_datasets.load_digits, False, "8×8 images of handwritten digits; target is the digit 0–9."),
}


def demo_frame(name: str) -> pd.DataFrame:
    loader, class_names, _ = DEMO_DATASETS[name]
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    if "target" not in frame.columns:
        frame["target"] = bunch.target
    if class_names:
        frame["target"] = [str(bunch.target_names[code]) for code in frame["target"]]
    return frame


def demo_csv_bytes(name: str) -> bytes:
    """The dataset as CSV with a stable layout, so loading it twice gives the same bytes and hash."""
    buffer = io.StringIO()
    demo_frame(name).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode("utf-8")
