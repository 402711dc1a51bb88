"""Every job in jobs/ is a valid config, and every ablations file validates against its job."""

from pathlib import Path

import pytest

from gmptl.ablations import ablations_path_for, load_ablations
from gmptl.config import load_config

JOBS = sorted(p for p in Path("jobs").glob("*.yaml") if not p.name.endswith(".ablations.yaml"))


def _sets(job: Path) -> list[str]:
    # Licensed corpora have no default root: the user passes one, as the job's header says.
    return [] if job.name == "demo.yaml" else ["data.root=/data/corpus"]


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_job_loads(job):
    cfg = load_config(job, _sets(job))
    assert cfg.output_dir.startswith("out/")
    abl = ablations_path_for(job)
    if abl.is_file():
        assert load_ablations(abl, cfg)


def test_expected_jobs_exist():
    names = {p.name for p in JOBS}
    assert {"demo.yaml", "iemocap_loso.yaml", "cremad_kfold.yaml"} <= names
    paper = load_config("jobs/iemocap_loso.yaml", ["data.root=/x"])
    assert paper.clustering.k == [64, 512, 4096] and paper.features.layers == [10]
    assert paper.folds.scheme == "loso" and paper.stages.utterance.loss == "amsoftmax"
