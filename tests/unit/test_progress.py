"""Terminal output: progress lines from the training workers reach stderr; every worker line reaches the log."""

import logging
import os
import subprocess
import sys
import threading

from gmptl import progress


class FakeDispatcher:
    """The shape of Ray's driver-side dispatcher of worker output."""

    def __init__(self):
        self.handlers = [("ray_print_logs", lambda data: print("RAY:", *data["lines"]))]

    def add_handler(self, name, handler):
        self.handlers.append((name, handler))

    def remove_handler(self, name):
        self.handlers = [h for h in self.handlers if h[0] != name]

    def emit(self, data):
        for _, h in self.handlers:
            h(data)


def test_worker_output_goes_to_the_log_and_progress_to_stderr(tmp_path, capsys):
    log = tmp_path / "run" / "gmptl.log"
    progress.capture_worker_output(log, echo_all=False)
    d = FakeDispatcher()
    threads = [threading.Thread(target=progress.install_on, args=(d,)) for _ in range(4)]  # fold threads race
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [name for name, _ in d.handlers] == ["gmptl_worker_output"]  # Ray's printer replaced, once
    line = progress.epoch_line("mtl", 1, 4, {"epoch": 2, "train_loss": 1.25, "val_uar": 0.5, "best_score": 0.5,
                                              "best_epoch": 2}, "val_uar")  # fmt: skip
    d.emit({"pid": 7, "actor_name": "RayTrainWorker", "is_err": False,
            "lines": ["Reporting training result 2: TrainingReport(...)", line]})  # fmt: skip
    out = capsys.readouterr()
    assert (
        out.err.strip()
        == "mtl       fold 1  epoch   2/4  train_loss 1.2500  val_uar 0.500  (best 0.500 @ epoch 2)"
    )
    assert "TrainingReport" not in out.out + out.err
    text = log.read_text()
    assert "(RayTrainWorker pid=7) Reporting training result 2" in text and progress.PREFIX in text


def test_verbose_echoes_every_worker_line(tmp_path, capsys):
    progress.capture_worker_output(tmp_path / "v.log", echo_all=True)
    d = FakeDispatcher()
    progress.install_on(d)
    d.emit({"pid": 8, "task_name": "evaluate_model", "is_err": True, "lines": ["Loading weights"]})
    assert "(evaluate_model pid=8) Loading weights" in capsys.readouterr().err


def test_a_line_the_stream_carries_twice_is_shown_and_logged_once(tmp_path, capsys):
    log = tmp_path / "d.log"
    progress.capture_worker_output(log, echo_all=False)
    d = FakeDispatcher()
    progress.install_on(d)
    line = progress.epoch_line("gmp", 1, 3, {"epoch": 2, "val_loss": 11.86}, "val_loss")
    batch = {"pid": 9, "actor_name": "RayTrainWorker", "is_err": False, "lines": [line]}
    d.emit(batch)
    d.emit(dict(batch))  # Ray delivered the same line again
    d.emit({**batch, "pid": 10})  # another process printing the same text is not a duplicate
    assert capsys.readouterr().err.count("gmp       fold 1  epoch   2/3") == 2
    assert log.read_text().count(progress.PREFIX) == 2


def test_without_verbose_mlflow_imported_later_keeps_to_warnings():
    # MLflow configures its logger when first imported, after the CLI set up logging: the CLI's setting
    # must survive that (no "Creating initial MLflow database tables" on the terminal).
    code = ("import logging; from gmptl.cli.options import setup_logging; setup_logging(False); import mlflow; "
            "print(logging.getLogger('mlflow').getEffectiveLevel())")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    level = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert int(level.stdout.strip()) >= logging.WARNING
