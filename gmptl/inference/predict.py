"""``gmptl predict``: the emotion of audio files, for the whole file and frame by frame (no Ray, no MLflow).

Input: a stage-2 model folder (written by ``gmptl export`` or a training stage's
``best/``: ``backbone/`` safetensors + config, ``heads.safetensors``,
``model.json`` with the label map), loaded without pickle; audio files or folders.
Output, per file::

    {"path": ..., "emotion": "angry", "probabilities": {"neutral": 0.01, ...},
     "frames": [{"start_s": 0.0, "end_s": 2.74, "emotion": "sad"}, {"start_s": 2.74, ...}]}

The utterance decision is exactly what evaluation computes: the emotion head on
the pooled frame states of the whole file. The frame track reuses that head on
windows: the backbone runs once over the whole file (a transformer: every frame
state already carries the context of the whole utterance, so windows are cut
from those states rather than from the audio, and no frame is encoded twice),
windows of ``window_s`` (default: the model's training crop, else 1.5 s) every
``hop_s`` are pooled and classified, each frame gets the mean class
probabilities of the windows that cover it, and runs of frames with the same
arg-max become segments. A file shorter than one window is one window.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmptl.data.audio import AudioError, load_audio
from gmptl.data.batching import length_batches
from gmptl.errors import BadInputError, GmptlError
from gmptl.evaluation.evaluate import autocast, probabilities
from gmptl.features.extractor import chunk_spans, conv_geometry
from gmptl.models.factory import (
    BACKBONE_DIR,
    HEADS_FILE,
    MODEL_JSON,
    ModelFolderError,
    SERModel,
    load_model,
    read_model_json,
)
from gmptl.models.posconv import use_on_gpu
from gmptl.paths import safe_name

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 1.5  # the demo's training crop; a model folder that records its crop (window_s) wins
DEFAULT_HOP_S = 0.25
DEFAULT_MAX_CHUNK_S = 30.0
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".au")  # what soundfile decodes
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_WINDOWS_PER_PASS = 256  # windows pooled at once: bounds memory to 256 x window x D floats


class InferenceError(GmptlError):
    """The model folder or the prediction options cannot be used."""


# What a model folder may hold (save_model, export): model.json, heads.safetensors, backbone/ (config
# JSON and safetensors, sharded or not), and notes. Sizes are bounds on what gmptl writes, generous for
# HuBERT x-large in float32 (3.8 GB); anything else is refused by name, never loaded.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".md", ".txt")
MAX_MODEL_FILES = 256
MAX_JSON_BYTES = 16 * 1024**2
MAX_NOTE_BYTES = 1024**2
MAX_WEIGHTS_BYTES = 64 * 1024**3
_MAX_SAFETENSORS_HEADER = 100 * 1024**2  # the safetensors format's own limit


def _check_safetensors(path: Path, size: int, how: str) -> None:
    """The file is what safetensors writes: an 8-byte header length, a JSON header of tensors whose
    byte ranges end exactly at the end of the file (a truncated or foreign file fails here, by name)."""
    bad = f"{path}: not a complete safetensors file ({{}}); re-copy it, or {how}"
    if size < 8:
        raise InferenceError(bad.format(f"{size} bytes"))
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise InferenceError(bad.format(f"header length {n} does not fit a {size}-byte file"))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InferenceError(bad.format("its header is not JSON")) from None
    if not isinstance(header, dict):
        raise InferenceError(bad.format("its header is not a JSON object"))
    ends = [0]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):  # fmt: skip
            raise InferenceError(bad.format(f"tensor {name!r} has no valid data_offsets"))
        ends.append(offsets[1])
    if 8 + n + max(ends) != size:
        raise InferenceError(
            bad.format(
                f"its tensors end at byte {8 + n + max(ends)} of a {size}-byte file: truncated or padded"
            )
        )


def _check_entries(folder: Path, how: str) -> None:
    """Every entry of a model folder: no link, only backbone/ as a subfolder, known file types, sizes in bounds."""
    entries = sorted(folder.rglob("*"))
    if len(entries) > MAX_MODEL_FILES:
        raise InferenceError(f"model folder {folder}: {len(entries)} entries, more than a model folder holds "
                             f"({MAX_MODEL_FILES}); point --model at the folder `gmptl export` wrote")  # fmt: skip
    for p in entries:
        rel = p.relative_to(folder)
        if p.is_symlink():
            raise InferenceError(
                f"{p}: a symbolic link (to {os.readlink(p)}) inside model folder {folder}; a model folder holds "
                "plain files only (a link could point anywhere): replace it by the file it points to "
                f"(cp --dereference) or remove it"
            )
        if p.is_dir():
            if rel != Path(BACKBONE_DIR):
                raise InferenceError(
                    f"{p}: unexpected folder in model folder {folder} (only {BACKBONE_DIR}/ belongs there); "
                    f"remove it, or {how}"
                )
            continue
        if not p.is_file():
            raise InferenceError(f"{p}: not a regular file (a device, socket or pipe); remove it, or {how}")
        if p.suffix.lower() in PICKLE_SUFFIXES:
            continue  # reported together below, with what pickles are
        if p.suffix.lower() not in MODEL_FILE_SUFFIXES or p.name.startswith("."):
            raise InferenceError(
                f"{p}: unexpected file in model folder {folder} (a model folder holds only "
                f"{', '.join(MODEL_FILE_SUFFIXES)} files, not hidden ones); remove it, or {how}"
            )
        size = p.stat().st_size
        limit = {".json": MAX_JSON_BYTES, ".safetensors": MAX_WEIGHTS_BYTES}.get(
            p.suffix.lower(), MAX_NOTE_BYTES
        )
        if size > limit:
            raise InferenceError(f"{p}: {size} bytes, more than such a file plausibly holds ({limit}); "
                                 f"remove it, or {how}")  # fmt: skip
        if p.suffix.lower() == ".safetensors":
            _check_safetensors(p, size, how)


def check_model_folder(folder: str | Path) -> Path:
    """A model folder ``predict`` can load with safetensors and JSON only; an error says what is wrong.

    Checked: ``model.json``, ``heads.safetensors``, ``backbone/config.json`` and backbone safetensors
    weights are there; no symbolic link anywhere inside (the folder itself may be one); no folder but
    ``backbone/``; only JSON, safetensors and ``.md``/``.txt`` notes, none hidden, each within a
    plausible size (JSON 16 MiB, weights 64 GiB, notes 1 MiB) and every safetensors file complete;
    no pickle; ``model.json`` as :func:`gmptl.models.factory.validate_model_meta` expects.
    """
    folder = Path(folder)
    how = "export one with `gmptl export RUN_DIR --fold K --out MODEL`"
    if not folder.is_dir():
        raise InferenceError(f"--model {folder}: no such folder; {how}")
    if not (folder / MODEL_JSON).is_file() or not (folder / HEADS_FILE).is_file():
        raise InferenceError(
            f"--model {folder} is not a gmptl model folder ({MODEL_JSON} and {HEADS_FILE} are required); {how}"
        )
    backbone = folder / BACKBONE_DIR
    if not (backbone / "config.json").is_file() or not any(backbone.glob("*.safetensors")):
        raise InferenceError(
            f"--model {folder}: {backbone} has no config.json and safetensors weights; {how}"
        )
    _check_entries(folder, how)
    pickles = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise InferenceError(
            f"--model {folder} holds pickle files {pickles}; predict loads safetensors only (pickles can run "
            f"code when loaded): remove them or {how}"
        )
    try:
        read_model_json(folder)
    except ModelFolderError as e:
        raise InferenceError(str(e)) from None
    return folder


def window_starts(n_frames: int, window: int, hop: int) -> np.ndarray:
    """First frames of the windows: every ``hop`` frames, plus one ending on the last frame.

    A sequence no longer than ``window`` is one window starting at 0 (callers then use
    ``min(window, n_frames)`` as its length). Every frame is covered by at least one window.
    """
    if n_frames <= window:
        return np.zeros(1, np.int64)
    starts = list(range(0, n_frames - window + 1, hop))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return np.asarray(starts, np.int64)


def frame_average(window_probs: np.ndarray, starts: np.ndarray, window: int, n_frames: int) -> np.ndarray:
    """Per frame, the mean of the probabilities (n_windows, C) of the windows covering it -> (n_frames, C)."""
    c = window_probs.shape[1]
    acc = np.zeros((n_frames + 1, c))
    cnt = np.zeros(n_frames + 1)
    # Difference arrays: +p where a window starts, -p where it ends; a cumulative sum gives the coverage sums.
    np.add.at(acc, starts, window_probs)
    np.add.at(acc, starts + window, -window_probs)
    np.add.at(cnt, starts, 1.0)
    np.add.at(cnt, starts + window, -1.0)
    sums, counts = np.cumsum(acc, 0)[:n_frames], np.cumsum(cnt)[:n_frames]
    assert (counts > 0.5).all(), "a frame no window covers"
    return sums / counts[:, None]


def track_segments(
    frame_labels: np.ndarray, labels: Sequence[str], frame_hop_s: float, duration_s: float
) -> list[dict[str, Any]]:
    """Runs of equal per-frame decisions as {start_s, end_s, emotion}, tiling [0, duration_s].

    Frame i starts at ``i * frame_hop_s`` (the CNN hop: 20 ms for HuBERT); a segment runs from its
    first frame's start to the next segment's first frame's start, the last one to the end of the file.
    """
    n = len(frame_labels)
    bounds = [0, *(np.flatnonzero(np.diff(frame_labels)) + 1).tolist(), n]
    return [
        {
            "start_s": round(a * frame_hop_s, 3),
            "end_s": round(duration_s if b == n else b * frame_hop_s, 3),
            "emotion": labels[int(frame_labels[a])],
        }
        for a, b in zip(bounds[:-1], bounds[1:], strict=False)
    ]


@dataclass
class Prediction:
    path: str
    emotion: str
    probabilities: dict[str, float]
    frames: list[dict[str, Any]]  # segments {start_s, end_s, emotion}
    duration_s: float
    frame_hop_s: float
    frame_probabilities: np.ndarray = field(repr=False)  # (n_frames, C) float64

    def as_dict(self) -> dict[str, Any]:
        """The JSON line of ``gmptl predict``."""
        return {
            "path": self.path,
            "emotion": self.emotion,
            "probabilities": self.probabilities,
            "frames": self.frames,
        }


@dataclass(frozen=True)
class AudioInput:
    path: Path
    explicit: bool  # named on the command line (bad audio is an error) or found in a folder (skipped)
    name: str  # unique among the inputs, a safe file-name component: the file name of its timeline PNG


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class Predictor:
    """Loads a model folder once; ``predict(waves)`` gives each waveform's decision and frame track.

    Args:
        model_dir: a folder that :func:`check_model_folder` accepts, with an ``emotion`` utterance head.
        window_s: frame-track window; None = ``window_s`` of model.json (the training crop recorded by
            ``gmptl export``), else 1.5 s.
        hop_s: step between windows (rounded to whole frames, at least one).
        max_chunk_s: files longer than this are encoded in chunks whose frames line up exactly with a
            whole pass (attention memory grows with the square of the length); None = always whole.
        max_batch_audio_s: padded audio seconds per forward batch.
        device: torch device; None = CUDA when available.
    """

    def __init__(
        self,
        model_dir: str | Path,
        window_s: float | None = None,
        hop_s: float = DEFAULT_HOP_S,
        max_chunk_s: float | None = DEFAULT_MAX_CHUNK_S,
        max_batch_audio_s: float = 120.0,
        device: str | None = None,
    ):
        self.model_dir = check_model_folder(model_dir)
        model, meta = load_model(self.model_dir)
        head = meta.get("spec", {}).get("utterance_heads", {}).get("emotion")
        if head is None or "labels" not in meta:
            raise InferenceError(
                f"--model {model_dir}: the model has no emotion head and label map (model.json); predict needs "
                "a stage-2 (utterance) model"
            )
        self.labels: list[str] = list(meta["labels"])
        if len(self.labels) != int(head["n_classes"]):
            raise InferenceError(
                f"--model {model_dir}: model.json names {len(self.labels)} labels for a {head['n_classes']}-class head"
            )
        for name, value in (("window_s", window_s), ("hop_s", hop_s), ("max_chunk_s", max_chunk_s)):
            if value is not None and value <= 0:
                raise InferenceError(f"{name}={value}: must be > 0")
        self.meta = meta
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model: SERModel = model.to(self.device)
        use_on_gpu(self.model.backbone, self.device)
        self.sample_rate_hz = int(meta.get("sample_rate_hz", 16000))
        self.geometry = conv_geometry(model.backbone)
        self.frame_hop_s = self.geometry.hop / self.sample_rate_hz
        self.window_s = float(window_s or meta.get("window_s") or DEFAULT_WINDOW_S)
        # A window holds as many frames as a training crop of window_s seconds gave.
        self.window_frames = self.geometry.n_frames(round(self.window_s * self.sample_rate_hz))
        if self.window_frames < 1:
            raise InferenceError(f"window_s={self.window_s}: shorter than one frame of the backbone")
        self.hop_frames = max(1, round(hop_s * self.sample_rate_hz / self.geometry.hop))
        self.max_chunk_samples = round(max_chunk_s * self.sample_rate_hz) if max_chunk_s else None
        self.max_batch_samples = round(max_batch_audio_s * self.sample_rate_hz)

    def load(self, path: str | Path) -> np.ndarray:
        """Decode and resample a file; :class:`AudioError` (naming the file) when it is unusable."""
        wave = load_audio(path, self.sample_rate_hz)
        if self.geometry.n_frames(len(wave)) < 1:
            raise AudioError(
                path,
                f"too short: {len(wave)} samples, fewer than one frame ({self.geometry.receptive_field})",
            )
        return wave

    @torch.inference_mode()
    def encode(self, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Last hidden states (n_frames, D) float32 per waveform, on ``self.device``."""
        pieces: list[tuple[int, np.ndarray]] = []  # (waveform index, samples of one chunk)
        for i, w in enumerate(waves):
            if self.geometry.n_frames(len(w)) < 1:
                raise ValueError(f"waveform {i} has {len(w)} samples, fewer than one frame")
            pieces += [
                (i, w[s0:s1]) for s0, s1, _ in chunk_spans(len(w), self.geometry, self.max_chunk_samples)
            ]
        lengths = [len(p) for _, p in pieces]
        # Padded batches only where padding is exact (layer-norm CNN + attention mask). A group-norm CNN
        # (HuBERT base) sees the zero padding, so each piece runs alone: a file's track never depends on
        # which other files shared its batch.
        if self.model.use_mask:
            groups = length_batches(lengths, self.max_batch_samples)
        else:
            groups = [[k] for k in range(len(pieces))]
        states: list[torch.Tensor | None] = [None] * len(pieces)
        for group in groups:
            x = torch.zeros(len(group), max(lengths[k] for k in group))  # (B, T) zero-padded
            for row, k in enumerate(group):
                x[row, : lengths[k]] = torch.from_numpy(np.asarray(pieces[k][1], np.float32))
            n = torch.tensor([lengths[k] for k in group])
            with autocast(self.device):
                h, _ = self.model.frames(x.to(self.device), n.to(self.device))  # (B, F, D)
            for row, k in enumerate(group):
                states[k] = h[row, : self.geometry.n_frames(lengths[k])].float()
        out: list[list[torch.Tensor]] = [[] for _ in waves]
        for (i, _), s in zip(pieces, states, strict=True):
            out[i].append(s)  # type: ignore[arg-type]
        return [torch.cat(parts) for parts in out]

    @torch.inference_mode()
    def _scores(self, h: torch.Tensor) -> np.ndarray:
        """Class probabilities (B, C) float64 of pooled frame states h (B, F, D), every frame valid."""
        valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)  # (B, F)
        pooled = self.model.pooling(h, valid)  # (B, D)
        scores = self.model.utterance_heads["emotion"](pooled)  # (B, C)
        return probabilities(scores, self.meta).double().cpu().numpy()

    def classify(self, h: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(utterance probabilities (C,), frame probabilities (n_frames, C)) of one file's states h (F, D)."""
        n = h.shape[0]
        utterance = self._scores(h[None])[0]
        window = min(self.window_frames, n)
        starts = window_starts(n, window, self.hop_frames)
        offsets = torch.arange(window, device=h.device)
        parts = []
        for k in range(0, len(starts), _WINDOWS_PER_PASS):
            idx = (
                torch.from_numpy(starts[k : k + _WINDOWS_PER_PASS]).to(h.device)[:, None] + offsets
            )  # (W, L)
            parts.append(self._scores(h[idx]))  # h[idx]: (W, L, D)
        return utterance, frame_average(np.concatenate(parts), starts, window, n)

    def predict(self, waves: Sequence[np.ndarray], paths: Sequence[str]) -> list[Prediction]:
        """One :class:`Prediction` per waveform (mono float32 at ``self.sample_rate_hz``)."""
        out = []
        for wave, path, h in zip(waves, paths, self.encode(waves), strict=True):
            utt, frames = self.classify(h)
            out.append(
                Prediction(
                    path=str(path),
                    emotion=self.labels[int(utt.argmax())],
                    probabilities={lab: float(p) for lab, p in zip(self.labels, utt, strict=True)},
                    frames=track_segments(
                        frames.argmax(1), self.labels, self.frame_hop_s, len(wave) / self.sample_rate_hz
                    ),
                    duration_s=len(wave) / self.sample_rate_hz,
                    frame_hop_s=self.frame_hop_s,
                    frame_probabilities=frames,
                )
            )
        return out

    def plot(self, wave: np.ndarray, pred: Prediction, path: str | Path) -> Path:
        """The timeline PNG: the waveform with the frame track (and per-class probabilities) under it."""
        from gmptl.plots import frame_track_png

        return frame_track_png(
            wave, self.sample_rate_hz, pred.frames, self.labels, path, title=Path(pred.path).name,
            frame_probabilities=pred.frame_probabilities, frame_hop_s=pred.frame_hop_s,
        )  # fmt: skip


def list_inputs(inputs: Sequence[str | Path]) -> list[AudioInput]:
    """Files named on the command line, and the audio files (by suffix, recursively, sorted) of folders.

    Raises:
        BadInputError: a path that does not exist, or a folder without audio files.
    """
    found: list[tuple[Path, bool]] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise BadInputError(f"{p}: the folder holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
            found += [(f, False) for f in files]
        elif p.exists():
            found.append((p, True))
        else:
            raise BadInputError(f"{p}: no such file or folder")
    if not found:
        raise BadInputError("no input files: give audio files or folders")
    used: set[str] = set()
    out = []
    for path, explicit in found:
        # The PNG name: a file-name component (paths.safe_name), unique among the inputs.
        stem = safe_name(path.stem)
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name)
        out.append(AudioInput(path.absolute(), explicit, name))
    return out


def skip_or_raise(inp: AudioInput, err: AudioError) -> Skipped:
    """A named file that cannot be read is an error; a file found in a folder is skipped and counted."""
    if inp.explicit:
        raise BadInputError(f"{err.path}: {err.reason}") from None
    log.warning("skipped %s: %s", err.path, err.reason)
    return Skipped(str(inp.path), err.reason)


def predict_files(
    predictor: Predictor,
    inputs: Sequence[AudioInput],
    png_dir: str | Path | None = None,
    group_size: int = 16,
) -> Iterator[Prediction | Skipped]:
    """Predict files in input order, ``group_size`` files per batched pass; yields skipped files too.

    Raises:
        BadInputError: a named file is unusable, or no file at all could be read.
    """
    n_predicted = 0
    for g in range(0, len(inputs), group_size):
        waves, ok = [], []
        for inp in inputs[g : g + group_size]:
            try:
                waves.append(predictor.load(inp.path))
                ok.append(inp)
            except AudioError as e:
                yield skip_or_raise(inp, e)
        for inp, wave, pred in zip(
            ok, waves, predictor.predict(waves, [str(i.path) for i in ok]), strict=True
        ):
            if png_dir is not None:
                predictor.plot(wave, pred, Path(png_dir) / f"{inp.name}.png")
            n_predicted += 1
            yield pred
    if inputs and n_predicted == 0:
        raise BadInputError(f"none of the {len(inputs)} files could be read (see the warnings above)")
