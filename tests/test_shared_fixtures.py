"""The session's shared fixtures (conftest: `study`, `reproduced`, `replicated`) are read-only: every test that
changes a project works on its own copy. Run last (conftest orders it so): each shared folder still
holds, byte for byte, what it held when it was built."""

from __future__ import annotations

import pytest
from conftest import SHARED, copy_project, digest


def test_the_shared_fixtures_are_unchanged():
    """Those this session built (none in the fast tier, whose tests build none)."""
    if not SHARED:
        pytest.skip("no test of this session built a shared fixture")
    for name, (root, built) in SHARED.items():
        now = digest(root)
        changed = sorted(path for path in built.keys() | now.keys() if built.get(path) != now.get(path))
        assert changed == [], f"the shared fixture {name!r} was changed by a test: {changed[:10]}"


@pytest.mark.slow
def test_a_copy_shares_no_file_or_artifact_with_its_source(study, tmp_path):
    """What a test changes in its copy, the store's artifacts included, cannot reach the shared one."""
    import mlflow

    copy = copy_project(study.root, tmp_path / "copy")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    experiments = client.search_experiments()
    assert experiments and all(str(copy) in e.artifact_location or e.name == "Default" for e in experiments)
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert runs and all(run.info.artifact_uri.startswith((copy / "mlartifacts").as_uri()) for run in runs)
    store = "mlflow.db"  # the same rows, with the copy's artifact locations
    assert {path: hashed for path, hashed in digest(copy).items() if path != store} == {
        path: hashed for path, hashed in digest(study.root).items() if path != store}
