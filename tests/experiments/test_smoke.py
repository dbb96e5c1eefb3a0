from __future__ import annotations

from apps.experiments import services
from tests.experiments.conftest import IRIS_CONFIG


def test_iris_inline(project, owner, iris, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        pr = services.pipeline_run_create(project=project, actor=owner, config_text=IRIS_CONFIG, executor="inline")
    pr = services.pipeline_run_execute_inline(pipeline_run=pr)
    for s in pr.stages.all():
        print(s.name, s.status, s.error, s.duration_seconds, s.cpu_seconds, s.peak_rss_bytes, s.outputs)
        print(s.log)
    print(pr.status, pr.error, pr.run.metrics)
    assert pr.status == "succeeded"


def test_iris_worker(project, owner, iris, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        pr = services.pipeline_run_create(project=project, actor=owner, config_text=IRIS_CONFIG)
    pr.refresh_from_db()
    print(pr.status, pr.error, pr.run.metrics)
    assert pr.status == "succeeded"
