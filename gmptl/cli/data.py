"""``gmptl synth``, ``prepare``, ``folds`` and ``config``: the corpus tools and the config itself."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gmptl.cli.options import config_argument, config_option, load, set_option
from gmptl.cli.output import format_folds, format_summary
from gmptl.config import CORPUS_NAMES, iter_keys, save_config


@click.command()
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder to write the corpus into."
)
@click.option(
    "--n", "n_utterances", type=int, default=None, help="Utterances (default data.synth.n_utterances)."
)
@click.option("--seed", type=int, default=None, help="Seed (default data.synth.seed).")
@config_option()
@set_option
def synth(
    out: str, n_utterances: int | None, seed: int | None, config: str | None, sets: tuple[str, ...]
) -> None:
    """Write the synthetic emotional-speech corpus in the IEMOCAP raw-release layout."""
    from gmptl.data.synth import synthesize_corpus

    cfg = load(config, sets, {"data.synth.n_utterances": n_utterances, "data.synth.seed": seed})
    res = synthesize_corpus(out, cfg.data.synth)
    verb = "already holds" if res.cached else "wrote"
    click.echo(
        f"{verb} {res.n_utterances} utterances ({res.hours * 60:.1f} min, {res.n_changing} change emotion "
        f"part-way) {'in' if res.cached else 'to'} {res.root}"
    )


@click.command()
@click.option("--corpus", type=click.Choice(sorted(CORPUS_NAMES)), default=None,
              help="Corpus loader (data.corpus).")  # fmt: skip
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Corpus folder (data.root).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest Parquet file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON summary object on stdout.")
@click.option("--on-bad-audio", type=click.Choice(["error", "skip"]), default=None, help="data.on_bad_audio")
@click.option("--max-bad-fraction", type=float, default=None, help="data.max_bad_fraction")
@config_option()
@set_option
def prepare(corpus, root, out, as_json, on_bad_audio, max_bad_fraction, config, sets) -> None:  # noqa: ANN001
    """Build the manifest (Parquet) of a corpus, checking every label line and audio file."""
    from gmptl.data.prepare import prepare_manifest

    cfg = load(config, sets, {"data.corpus": corpus, "data.root": root, "data.on_bad_audio": on_bad_audio,
                              "data.max_bad_fraction": max_bad_fraction})  # fmt: skip
    if not cfg.data.root:
        raise click.UsageError("--root is required (the corpus folder)")
    res = prepare_manifest(cfg.data, Path(cfg.data.root), Path(out), full_config=cfg)
    if as_json:
        click.echo(json.dumps(res.summary.as_dict()))
    else:
        click.echo(format_summary(res.summary.as_dict()))
        click.echo(f"manifest: {res.manifest_path}\nreport:   {res.report_path}")


@click.command()
@click.option(
    "--manifest", required=True, type=click.Path(dir_okay=False), help="Manifest from `gmptl prepare`."
)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write folds.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the fold table as JSON.")
@config_option()
@set_option
def folds(manifest: str, out: str | None, as_json: bool, config: str | None, sets: tuple[str, ...]) -> None:
    """Build and check speaker-independent folds for a manifest (folds.* config keys)."""
    from gmptl.data.folds import fold_table, make_folds, write_folds
    from gmptl.data.manifest import read_manifest

    cfg = load(config, sets)
    df = read_manifest(manifest)
    fl = make_folds(df, cfg.folds)
    rows = fold_table(df, fl)
    if out:
        write_folds(df, fl, cfg.folds, out)
    click.echo(json.dumps(rows) if as_json else format_folds(rows))


@click.command("config")
@config_argument(required=False)
@set_option
@click.option("--keys", is_flag=True, help="Print every config key with its type, default and meaning.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the resolved YAML here.")
def config_cmd(config_file: str | None, sets: tuple[str, ...], keys: bool, out: str | None) -> None:
    """Validate a config and print it resolved (or list every key with --keys)."""
    if keys:
        click.echo("| key | type | default | meaning |\n|---|---|---|---|")
        for key, typ, default, desc in iter_keys():
            click.echo(f"| `{key}` | {typ} | `{default}` | {desc} |")
        return
    cfg = load(config_file, sets)
    if out:
        save_config(cfg, out)
    import yaml

    from gmptl.config import to_dict

    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False), nl=False)
