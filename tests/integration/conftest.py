import contextlib
import io
import json
from types import SimpleNamespace

import pytest
from short_run import SHORT_RUN


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for every integration test (a few seconds to start)."""
    import ray

    from gmptl.runtime import bind_embedded_ray_to_loopback

    bind_embedded_ray_to_loopback()  # the tests turn token authentication off: loopback only, then
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def short_run(ray_session, tmp_path_factory):
    """One whole `gmptl run` of the shortened demo through the CLI (every step, both folds), shared by the
    tests that read its outputs (the end-to-end checks, the restart-after-kill test)."""
    from gmptl import paths
    from gmptl.cli import main
    from gmptl.config import load_config

    out_dir = tmp_path_factory.mktemp("short_run")
    sets = [f"output_dir={out_dir}", *SHORT_RUN]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["run", "jobs/demo.yaml", *[a for item in sets for a in ("--set", item)]])
    assert rc == 0, printed.getvalue()[-3000:]
    cfg = load_config("jobs/demo.yaml", sets)
    report = json.loads((paths.run_dir(cfg) / "report.json").read_text())
    return SimpleNamespace(out_dir=out_dir, sets=sets, cfg=cfg, stdout=printed.getvalue(), report=report)
