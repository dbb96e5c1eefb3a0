"""In Chromium: sign in, create a dataset by uploading a CSV, watch the worker profile it, see its charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.datasets.models import DatasetVersion
from tests.e2e.conftest import CeleryWorker, browser_login, draw_all_plots, screenshot

pytestmark = pytest.mark.e2e

SEGMENTS = ["retail", "smb", "enterprise", "public"]
CSV = b"age,income,segment,churned\n" + b"".join(
    f"{20 + i % 50},{30000 + (i * 7919) % 90000},{SEGMENTS[i % 4]},{i % 3 == 0}\n".encode() for i in range(400)
)


def test_upload_a_csv_and_see_its_histograms(
    live_server: object,
    page: object,
    js_errors: list[str],
    celery_worker: CeleryWorker,
    project: object,
    member: object,
    tmp_path: Path,
) -> None:
    upload = tmp_path / "customers.csv"
    upload.write_bytes(CSV)
    browser_login(page, live_server, member)

    page.goto(f"{live_server.url}/datasets/")
    page.select_option("#id_project", str(project.pk))
    page.fill("#id_name", "Customers")
    page.fill("#id_description", "Who churned last quarter.")
    page.set_input_files("#id_file", str(upload))
    page.click("[data-testid=dataset-create-form] button[type=submit]")
    page.wait_for_url("**/datasets/*/?version=1")

    # htmx polls the job card and reloads the page when the worker is done; then the charts are drawn.
    page.wait_for_selector("[data-testid=charts] .plot .plot-container svg", timeout=60_000)
    assert DatasetVersion.objects.get().status == "ready"
    assert page.locator("[data-testid=validation-badge]").inner_text() in {"validation: pass", "validation: warn"}
    # Charts are drawn as they scroll into view: one per column once the last is on screen.
    draw_all_plots(page)
    assert page.locator(".plot > .plot-container").count() == 4
    assert page.locator("[data-testid=schema-table] tbody tr").count() == 4

    laptop = screenshot(page, "dataset-detail", width=1366, height=800)
    phone = screenshot(page, "dataset-detail", width=390, height=844)
    page.goto(f"{live_server.url}/datasets/")
    screenshot(page, "dataset-list", width=1366, height=800)
    screenshot(page, "dataset-list", width=390, height=844)
    assert laptop.stat().st_size > 10_000 and phone.stat().st_size > 10_000
    assert js_errors == []


def test_compare_page_draws_overlays(
    live_server: object,
    page: object,
    js_errors: list[str],
    dataset: object,
    member: object,
    make_dataset_version: object,
) -> None:
    make_dataset_version(dataset, CSV)
    make_dataset_version(dataset, CSV.replace(b"retail", b"online").replace(b",True\n", b",False\n", 40))
    browser_login(page, live_server, member)
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/compare/")
    page.wait_for_selector("[data-testid=charts] .plot .plot-container svg")
    assert page.locator("[data-testid=schema-diff] tbody tr").count() == 4
    screenshot(page, "dataset-compare", width=1366, height=800)
    screenshot(page, "dataset-compare", width=390, height=844)
    assert js_errors == []
