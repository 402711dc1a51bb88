"""``gmptl run``, ``extract``, ``cluster``, ``label`` and ``train``: the pipeline's steps on a config."""

from __future__ import annotations

import click

from gmptl.cli.options import StepChoice, config_argument, load_for_steps, set_option
from gmptl.cli.output import format_folds, format_summary


@click.command()
@config_argument()
@click.option("--until", type=StepChoice(), default="evaluate", show_default=True,
              help="Stop after this step (and the steps it needs).")  # fmt: skip
@click.option("--ablations", is_flag=True,
              help="Also run every ablation of CONFIG_FILE.ablations.yaml (or --ablations-file) and print "
                   "one comparison table.")  # fmt: skip
@click.option("--ablations-file", type=click.Path(dir_okay=False), default=None,
              help="Ablations to run (implies --ablations).")  # fmt: skip
@click.option("--fold", "fold_sel", type=int, multiple=True,
              help="Run only this fold (0-based; repeatable); the report covers those folds.")  # fmt: skip
@set_option
def run(
    config_file: str,
    until: str,
    ablations: bool,
    ablations_file: str | None,
    fold_sel: tuple[int, ...],
    sets: tuple[str, ...],
) -> None:
    """Run the experiment of CONFIG_FILE: every step per fold, each cached by config hash (resumable)."""
    from gmptl.experiment import run_experiment

    if ablations or ablations_file:
        from gmptl.ablations import run_ablations

        if until != "evaluate":
            raise click.UsageError("--ablations compares test results: it cannot stop early (--until)")
        folder, text = run_ablations(config_file, list(sets), ablations_file)
        click.echo(
            f"ablations (test speakers, mean ± std over folds):\n{text}\n\ntable: {folder / 'ablations.md'}"
        )
        return
    cfg = load_for_steps(config_file, sets)
    out = run_experiment(cfg, until=until, only_folds=list(fold_sel) or None)
    click.echo(format_summary(out.summary))
    click.echo("")
    click.echo(format_folds(out.fold_rows))
    click.echo("")
    click.echo("steps: " + ", ".join(f"{k} ({v})" for k, v in out.steps.items()))
    click.echo(
        f"corpus:   {out.corpus_root}\nmanifest: {out.manifest}\nfolds:    {out.folds or 'none needed'}"
    )
    for res in out.extract:
        click.echo(f"features: {res.folder} ({res.n_utterances} utterances)")
    for stage, manifests in out.trained.items():
        for m in manifests:
            click.echo(
                f"{stage} fold {m['fold']}: best epoch {m['best_epoch']} {_best_line(m)} -> {m['model_dir']}"
            )
    if out.report is not None:
        from gmptl import paths
        from gmptl.evaluation.report import table
        from gmptl.tracking import resolve_uri, ui_url

        click.echo("\ntest speakers (speaker-independent folds):\n" + table(out.report))
        click.echo(f"\nreport:  {paths.run_dir(cfg) / 'report.md'}")
        if cfg.tracking.enabled:
            uri = resolve_uri(cfg)
            serve = (
                ""
                if uri.startswith(("http://", "https://"))
                else (f"\n  open:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n  then:")
            )
            click.echo(f"mlflow:  {uri}{serve} {ui_url(uri, cfg.tracking.experiment)}")


@click.command()
@config_argument()
@set_option
def extract(config_file: str, sets: tuple[str, ...]) -> None:
    """Frame features of every utterance (prepares the manifest first if needed); resumable per shard."""
    from gmptl.experiment import run_experiment

    out = run_experiment(load_for_steps(config_file, sets), until="extract")
    for res in out.extract:
        click.echo(
            f"features: {res.folder}\nshards: {res.n_shards} ({res.n_computed} computed, {res.n_cached} cached, "
            f"{res.n_recomputed} repaired)   utterances: {res.n_utterances}   audio: {res.audio_s / 60:.1f} min   "
            f"wall: {res.wall_s:.1f} s"
        )


def _run_until(config_file: str, sets: tuple[str, ...], until: str) -> None:
    from gmptl import steps
    from gmptl.experiment import run_experiment

    cfg = load_for_steps(config_file, sets)
    out = run_experiment(cfg, until=until)
    click.echo("steps: " + ", ".join(f"{k} ({v})" for k, v in out.steps.items()))
    for i in range(len(out.fold_rows)):
        click.echo(f"{until} outputs, fold {i}: {steps.get(until).folder(cfg, i)}")


@click.command()
@config_argument()
@set_option
def cluster(config_file: str, sets: tuple[str, ...]) -> None:
    """Multi-scale k-means per fold on the training speakers' frames (runs missing earlier steps)."""
    _run_until(config_file, sets, "cluster")


@click.command()
@config_argument()
@set_option
def label(config_file: str, sets: tuple[str, ...]) -> None:
    """Frame pseudo-labels per fold for every K, with cluster-quality metrics (runs missing earlier steps)."""
    _run_until(config_file, sets, "label")


@click.command()
@config_argument()
@click.option("--stage", required=True, type=StepChoice(train_only=True),
              help="mtl = stage 0, gmp = stage 1, utterance = stage 2.")  # fmt: skip
@click.option("--fold", "fold_sel", default="all", show_default=True, help="Fold index (0-based) or `all`.")
@set_option
def train(config_file: str, stage: str, fold_sel: str, sets: tuple[str, ...]) -> None:
    """Train one stage per fold on Ray Train (resumes an interrupted run; skips a finished one)."""
    from gmptl.experiment import train_folds

    cfg = load_for_steps(config_file, sets)
    for m in train_folds(cfg, stage, fold_sel):
        click.echo(
            f"{stage} fold {m['fold']} ({m['fold_name']}): best epoch {m['best_epoch']}: {_best_line(m)}"
        )
        click.echo(f"  model: {m['model_dir']}")


def _best_line(m: dict) -> str:
    bm = m["best_metrics"]
    return ", ".join(f"{k}={bm[k]:.3f}" for k in ("val_war", "val_uar", "val_loss") if k in bm)


@click.command()
@config_argument()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also copy the pre-trained model folder here (replacing what is there).")  # fmt: skip
@set_option
def pretrain(config_file: str, out_dir: str | None, sets: tuple[str, ...]) -> None:
    """Self-supervised pre-training (HuBERT iterations) on the audio of CONFIG_FILE's corpus; resumable.

    The result is a model folder: set model.backbone to it in any job.
    """
    from gmptl import files, paths
    from gmptl.experiment import run_experiment

    cfg = load_for_steps(config_file, sets)
    out = run_experiment(cfg, until="pretrain")
    report = files.read_marker(paths.pretrain_dir(cfg) / paths.PRETRAIN_JSON)
    assert report is not None, "the pretrain step returned without its report"
    click.echo("steps: " + ", ".join(f"{k} ({v})" for k, v in out.steps.items()))
    click.echo(f"audio: {report['audio_hours']:.2f} h, {report['n_utterances']} utterances")
    for r in report["iterations"]:
        t = r["train"]
        acc = ", ".join(f"K={k} {v:.3f}" for k, v in t["masked_acc"].items() if v is not None)
        click.echo(
            f"iteration {r['iteration']} ({r['targets']}): masked accuracy {acc} (best epoch {t['best_epoch']})"
        )
        cost = [f"frames {r['extract']['wall_s']:.0f} s", f"k-means {r['kmeans']['wall_s'] or 0:.0f} s"]
        if t.get("wall_s"):
            cost.append(f"training {t['wall_s']:.0f} s")
        if t.get("audio_s_per_s"):
            cost.append(f"{t['audio_s_per_s']:.0f} audio-s/s in training")
        click.echo("  wall time when computed: " + ", ".join(cost))
    model = report["model_dir"]
    if out_dir:
        from gmptl.pretraining.pipeline import copy_model

        model = str(copy_model(model, out_dir))
    click.echo(f"model: {model}\n  use it: --set model.backbone={model}")
