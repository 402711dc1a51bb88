"""The ``gmptl`` command line: one subcommand per pipeline step, each a thin wrapper.

Every subcommand that runs pipeline steps takes its config as a positional ``CONFIG``
file plus ``--set key=value`` overrides (the corpus tools ``prepare``, ``folds``,
``synth`` and ``predict`` take an optional ``--config``), configures logging once,
calls one library function and prints where its outputs went. Errors print one message naming the key, file or line
and exit non-zero (2 for config errors, 1 for bad input).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from gmptl.config import CORPUS_NAMES, Config, iter_keys, load_config, save_config
from gmptl.errors import GmptlError

log = logging.getLogger("gmptl")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _load(config: str | None, sets: tuple[str, ...], extra: list[str] | None = None) -> Config:
    return load_config(config, list(sets) + (extra or []))


class StepChoice(click.Choice):
    """Step names of :mod:`gmptl.steps`, read when the command runs: a step added to the graph is a choice."""

    def __init__(self, train_only: bool = False) -> None:
        self.train_only = train_only
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from gmptl import steps

        return tuple(steps.train_stages() if self.train_only else steps.names())

    @choices.setter
    def choices(self, value: object) -> None:  # click.Choice.__init__ assigns it; the graph decides
        pass


_config_option = click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML config file.")
_set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """gmptl: GMP-TL speech emotion recognition on Ray."""
    _setup_logging(verbose)


@cli.command()
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder to write the corpus into."
)
@click.option(
    "--n", "n_utterances", type=int, default=None, help="Utterances (default data.synth.n_utterances)."
)
@click.option("--seed", type=int, default=None, help="Seed (default data.synth.seed).")
@_config_option
@_set_option
def synth(
    out: str, n_utterances: int | None, seed: int | None, config: str | None, sets: tuple[str, ...]
) -> None:
    """Write the synthetic emotional-speech corpus in the IEMOCAP raw-release layout."""
    from gmptl.data.synth import synthesize_corpus

    extra = [f"data.synth.n_utterances={n_utterances}"] if n_utterances is not None else []
    extra += [f"data.synth.seed={seed}"] if seed is not None else []
    cfg = _load(config, sets, extra)
    res = synthesize_corpus(out, cfg.data.synth)
    click.echo(
        f"wrote {res.n_utterances} utterances ({res.hours * 60:.1f} min, {res.n_changing} change emotion "
        f"part-way) to {res.root}"
    )


@cli.command()
@click.option("--corpus", type=click.Choice(sorted(CORPUS_NAMES)), default=None,
              help="Corpus loader (data.corpus).")  # fmt: skip
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Corpus folder (data.root).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest Parquet file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON summary object on stdout.")
@click.option("--on-bad-audio", type=click.Choice(["error", "skip"]), default=None, help="data.on_bad_audio")
@click.option("--max-bad-fraction", type=float, default=None, help="data.max_bad_fraction")
@_config_option
@_set_option
def prepare(corpus, root, out, as_json, on_bad_audio, max_bad_fraction, config, sets) -> None:  # noqa: ANN001
    """Build the manifest (Parquet) of a corpus, checking every label line and audio file."""
    from gmptl.data.prepare import prepare_manifest

    extra = [f"data.corpus={corpus}"] if corpus else []
    extra += [f"data.root={root}"] if root else []
    extra += [f"data.on_bad_audio={on_bad_audio}"] if on_bad_audio else []
    extra += [f"data.max_bad_fraction={max_bad_fraction}"] if max_bad_fraction is not None else []
    cfg = _load(config, sets, extra)
    if not cfg.data.root:
        raise click.UsageError("--root is required (the corpus folder)")
    res = prepare_manifest(cfg.data, Path(cfg.data.root), Path(out), full_config=cfg)
    if as_json:
        click.echo(json.dumps(res.summary.as_dict()))
    else:
        click.echo(_format_summary(res.summary.as_dict()))
        click.echo(f"manifest: {res.manifest_path}\nreport:   {res.report_path}")


@cli.command()
@click.option(
    "--manifest", required=True, type=click.Path(dir_okay=False), help="Manifest from `gmptl prepare`."
)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write folds.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the fold table as JSON.")
@_config_option
@_set_option
def folds(manifest: str, out: str | None, as_json: bool, config: str | None, sets: tuple[str, ...]) -> None:
    """Build and check speaker-independent folds for a manifest (folds.* config keys)."""
    from gmptl.data.folds import fold_table, make_folds, write_folds
    from gmptl.data.manifest import read_manifest

    cfg = _load(config, sets)
    df = read_manifest(manifest)
    fl = make_folds(df, cfg.folds)
    rows = fold_table(df, fl)
    if out:
        write_folds(df, fl, cfg.folds, out)
    click.echo(json.dumps(rows) if as_json else _format_folds(rows))


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--until", type=StepChoice(), default="evaluate", show_default=True,
              help="Stop after this step (and the steps it needs).")  # fmt: skip
@click.option("--ablations", is_flag=True,
              help="Also run every ablation of CONFIG_FILE.ablations.yaml (or --ablations-file) and print "
                   "one comparison table.")  # fmt: skip
@click.option("--ablations-file", type=click.Path(dir_okay=False), default=None,
              help="Ablations to run (implies --ablations).")  # fmt: skip
@click.option("--fold", "fold_sel", type=int, multiple=True,
              help="Run only this fold (0-based; repeatable); the report covers those folds.")  # fmt: skip
@_set_option
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
    cfg = _load(config_file, sets)
    out = run_experiment(cfg, until=until, only_folds=list(fold_sel) or None)
    click.echo(_format_summary(out.summary))
    click.echo("")
    click.echo(_format_folds(out.fold_rows))
    click.echo("")
    click.echo("steps: " + ", ".join(f"{k} ({v})" for k, v in out.steps.items()))
    click.echo(f"corpus:   {out.corpus_root}\nmanifest: {out.manifest}\nfolds:    {out.folds}")
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
        from gmptl.tracking import resolve_uri

        click.echo("\ntest speakers (speaker-independent folds):\n" + table(out.report))
        click.echo(f"\nreport:  {paths.run_dir(cfg) / 'report.md'}")
        if cfg.tracking.enabled:
            uri = resolve_uri(cfg)
            click.echo(
                f"mlflow:  {uri}\n  open:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
            )


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@_set_option
def extract(config_file: str, sets: tuple[str, ...]) -> None:
    """Frame features of every utterance (prepares the manifest first if needed); resumable per shard."""
    from gmptl.experiment import run_experiment

    out = run_experiment(_load(config_file, sets), until="extract")
    for res in out.extract:
        click.echo(
            f"features: {res.folder}\nshards: {res.n_shards} ({res.n_computed} computed, {res.n_cached} cached, "
            f"{res.n_recomputed} repaired)   utterances: {res.n_utterances}   audio: {res.audio_s / 60:.1f} min   "
            f"wall: {res.wall_s:.1f} s"
        )


def _run_until(config_file: str, sets: tuple[str, ...], until: str) -> None:
    from gmptl import steps
    from gmptl.experiment import run_experiment

    cfg = _load(config_file, sets)
    out = run_experiment(cfg, until=until)
    click.echo("steps: " + ", ".join(f"{k} ({v})" for k, v in out.steps.items()))
    for i in range(len(out.fold_rows)):
        click.echo(f"{until} outputs, fold {i}: {steps.get(until).folder(cfg, i)}")


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@_set_option
def cluster(config_file: str, sets: tuple[str, ...]) -> None:
    """Multi-scale k-means per fold on the training speakers' frames (runs missing earlier steps)."""
    _run_until(config_file, sets, "cluster")


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@_set_option
def label(config_file: str, sets: tuple[str, ...]) -> None:
    """Frame pseudo-labels per fold for every K, with cluster-quality metrics (runs missing earlier steps)."""
    _run_until(config_file, sets, "label")


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--stage", required=True, type=StepChoice(train_only=True),
              help="mtl = stage 0, gmp = stage 1, utterance = stage 2.")  # fmt: skip
@click.option("--fold", "fold_sel", default="all", show_default=True, help="Fold index (0-based) or `all`.")
@_set_option
def train(config_file: str, stage: str, fold_sel: str, sets: tuple[str, ...]) -> None:
    """Train one stage per fold on Ray Train (resumes an interrupted run; skips a finished one)."""
    from gmptl.experiment import train_folds

    cfg = _load(config_file, sets)
    for m in train_folds(cfg, stage, fold_sel):
        click.echo(
            f"{stage} fold {m['fold']} ({m['fold_name']}): best epoch {m['best_epoch']}: {_best_line(m)}"
        )
        click.echo(f"  model: {m['model_dir']}")


def _best_line(m: dict) -> str:
    bm = m["best_metrics"]
    return ", ".join(f"{k}={bm[k]:.3f}" for k in ("val_war", "val_uar", "val_loss") if k in bm)


@cli.command("config")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@_set_option
@click.option("--keys", is_flag=True, help="Print every config key with its type, default and meaning.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the resolved YAML here.")
def config_cmd(config_file: str | None, sets: tuple[str, ...], keys: bool, out: str | None) -> None:
    """Validate a config and print it resolved (or list every key with --keys)."""
    if keys:
        click.echo("| key | type | default | meaning |\n|---|---|---|---|")
        for key, typ, default, desc in iter_keys():
            click.echo(f"| `{key}` | {typ} | `{default}` | {desc} |")
        return
    cfg = _load(config_file, sets)
    if out:
        save_config(cfg, out)
    import yaml

    from gmptl.config import to_dict

    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False), nl=False)


def _format_summary(s: dict) -> str:
    lines = [
        f"utterances: {s['n_utterances']}   hours: {s['hours']:.3f}   speakers: {len(s['speakers'])}   "
        f"genders: F {s['genders'].get('F', 0)} / M {s['genders'].get('M', 0)}   bad (left out): {len(s['bad'])}",
        "per class:   " + "  ".join(f"{k} {v}" for k, v in s["per_class"].items()),
        "per session: " + "  ".join(f"{k} {v}" for k, v in s["per_session"].items()),
    ]
    return "\n".join(lines)


def _format_folds(rows: list[dict]) -> str:
    head = f"{'fold':>4}  {'name':<12} {'test speakers':<24} {'validation':<18} {'n_train':>7} {'n_val':>6} {'n_test':>6}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['fold']:>4}  {r['name']:<12} {','.join(r['test_speakers'])[:24]:<24} "
            f"{','.join(r['validation_speakers'])[:18]:<18} {r['n_train']:>7} {r['n_validation']:>6} {r['n_test']:>6}"
        )
    return "\n".join(out)


# Subcommands that live in their own modules (each imports its heavy dependencies lazily).
from gmptl.inference.commands import export_command, predict_command  # noqa: E402
from gmptl.submit import jobs_group, submit_command  # noqa: E402
from gmptl.tuning.cli import tune  # noqa: E402

for _command in (tune, submit_command, jobs_group, predict_command, export_command):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point (console script ``gmptl``); returns the exit code so tests can call it."""
    try:
        cli.main(args=argv, prog_name="gmptl", standalone_mode=False)
    except GmptlError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
