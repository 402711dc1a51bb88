"""``gmptl predict`` and ``gmptl export``: emotion of audio files with a trained model, and the model folder."""

from __future__ import annotations

import json

import click

from gmptl.cli.options import config_option, load, set_option

_positive = click.FloatRange(min=0, min_open=True)


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(), metavar="FILES_OR_DIR...")
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Model folder from `gmptl export` (or a training stage's best/).")  # fmt: skip
@click.option("--window-s", type=_positive, default=None,
              help="Frame-track window in seconds (default: the model's training crop, else 1.5).")  # fmt: skip
@click.option(
    "--hop-s", type=_positive, default=0.25, show_default=True, help="Step between frame-track windows."
)
@click.option("--max-chunk-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Encode longer files in chunks whose frames line up with a whole pass; 0 = always whole.")  # fmt: skip
@click.option("--png-dir", type=click.Path(file_okay=False), default=None,
              help="Write each file's timeline (waveform + frame track) as <name>.png here.")  # fmt: skip
@click.option("--out", type=click.Path(), default=None,
              help="Run as Ray Data batch inference and write this Parquet dataset instead of JSON lines.")  # fmt: skip
@click.option("--device", default=None, help="Torch device without --out (default: cuda if available).")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="--out: prediction actors; 0 = as many as the cluster's CPUs (or GPUs) allow.")  # fmt: skip
@click.option(
    "--num-cpus-per-worker", type=_positive, default=1.0, show_default=True, help="--out: CPUs per actor."
)
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="--out: GPUs per actor (0 = CPU).")  # fmt: skip
@config_option("YAML config (runtime.* for --out).")
@set_option
def predict_command(inputs, model_dir, window_s, hop_s, max_chunk_s, png_dir, out, device, num_workers,  # noqa: ANN001
                    num_cpus_per_worker, num_gpus_per_worker, config, sets) -> None:  # fmt: skip
    """Emotion of audio files (whole file and frame track): one JSON line per file, or Parquet with --out.

    Files named on the command line must be readable; bad audio in folders is skipped and counted.
    """
    from gmptl.inference.predict import Predictor, Skipped, list_inputs, predict_files

    options = {"window_s": window_s, "hop_s": hop_s, "max_chunk_s": max_chunk_s or None}
    files = list_inputs(inputs)
    skipped: list[Skipped] = []
    if out is not None:
        from gmptl.inference.pipeline import predict_to_parquet

        res = predict_to_parquet(
            model_dir, files, out, load(config, sets).runtime, options, png_dir,
            num_workers, num_cpus_per_worker, num_gpus_per_worker,
        )  # fmt: skip
        skipped = res.skipped
        click.echo(
            f"predictions: {res.out} ({res.n_predicted} files, {res.wall_s:.1f} s)\nreport:      {res.report}"
        )
    else:
        predictor = Predictor(model_dir, device=device, **options)
        for item in predict_files(predictor, files, png_dir):
            if isinstance(item, Skipped):
                skipped.append(item)
            else:
                click.echo(json.dumps(item.as_dict()))
    if skipped:
        listing = "".join(f"\n  {s.path}: {s.reason}" for s in skipped)
        click.echo(f"skipped {len(skipped)} of {len(files)} files (bad audio):{listing}", err=True)
    if png_dir:
        click.echo(f"timelines: {png_dir}", err=True)


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--fold", type=click.IntRange(min=0), required=True, help="Fold index (0-based) of the run.")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="New folder to write the model into."
)
def export_command(run_dir: str, fold: int, out: str) -> None:
    """Write fold K's stage-2 model of RUN_DIR (<output_dir>/runs/<hash>) as a self-contained folder."""
    from gmptl.inference.export import export_model

    folder = export_model(run_dir, fold, out)
    click.echo(f"model: {folder}\n  use: gmptl predict --model {folder} FILES_OR_DIR")
