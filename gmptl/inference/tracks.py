"""Frame-level emotion tracks of a few test utterances, drawn for the run report (no Ray, no MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gmptl import paths
from gmptl.config import Config


def frame_track_pngs(cfg: Config, df: Any, fold: Any, folder: Path, n: int = 3) -> list[str]:
    """The frame-level emotion track under the waveform for ``n`` test utterances of ``fold``.

    On the synthetic corpus the utterances whose emotion changes part-way are drawn first (their
    true segments are known); the stage-2 model's windows are the training crop length.
    Returns the PNG file names, written into ``folder`` (``track_fold<i>_<utt id>.png``, the id through
    :func:`gmptl.paths.safe_name`).
    """
    from gmptl.data.synth import SEGMENTS_FILE, read_segments
    from gmptl.inference.predict import Predictor

    test = fold.select(df, "test")
    root = paths.corpus_root(cfg)
    order = list(test.utt_id)
    if (root / SEGMENTS_FILE).is_file():
        segments = read_segments(root)
        order.sort(key=lambda u: len({seg[2] for seg in segments.get(u, [])}) < 2)  # changing ones first
    predictor = Predictor(
        paths.best_model_dir(cfg, fold.index, "utterance"),
        window_s=cfg.stages.utterance.crop_s,
        device="cpu",
    )
    by_id = test.set_index("utt_id")
    names = []
    for utt in order[:n]:
        path = str(by_id.loc[utt, "path"])
        wave = predictor.load(path)
        pred = predictor.predict([wave], [path])[0]
        name = f"track_fold{fold.index}_{paths.safe_name(utt)}.png"  # an id may hold `/` or `..`
        predictor.plot(wave, pred, folder / name)
        names.append(name)
    return names
