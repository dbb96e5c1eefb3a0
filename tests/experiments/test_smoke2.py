from __future__ import annotations

from apps.experiments import services
from apps.experiments.models import Study

CFG = """
experiment_id: bc
data_config: {dataset: breast_cancer, split: 0.75}
model_config:
  algorithm: xgboost
  n_estimators: 10
  search:
    n_trials: 5
    metric: roc_auc
    space: {max_depth: {type: int, low: 2, high: 4}, learning_rate: {type: float, low: 0.05, high: 0.3, log: true}, n_estimators: {type: int, low: 5, high: 15}}
"""


def test_hpo(project, owner, dataset_version, django_capture_on_commit_callbacks):
    dataset_version(project, "breast_cancer")
    with django_capture_on_commit_callbacks(execute=True):
        pr = services.pipeline_run_create(project=project, actor=owner, config_text=CFG)
    pr.refresh_from_db()
    for s in pr.stages.all():
        print(s.name, s.status, s.error, s.outputs)
        print(s.log)
    st = Study.objects.get()
    print(st.status, st.best_value, st.best_params, st.importances, st.finished_slots)
    print(pr.status, pr.error, pr.run.metrics, pr.candidate_run_id)
    assert pr.status == "succeeded"
