"""``gmptl synth``: the built-in synthetic emotional-speech corpus, in the IEMOCAP raw-release layout.

No external binaries and no downloads: a source-filter synthesiser in NumPy/SciPy.
Each utterance is a sequence of syllables: an unvoiced noise burst (consonant)
followed by a voiced vowel (an impulse train at the running F0, shaped by a
glottal low-pass whose cut-off sets the voice quality, plus aspiration noise,
through three formant resonators scaled by the speaker's vocal-tract length).

Speakers: one female and one male per session, each with their own F0, formant
scale, speaking rate and level. Emotions are realised the way acted emotion
differs, *relative to each speaker's baseline*: F0 level and range, energy,
tempo and voice quality (breathy/dark for sad, pressed/bright for angry). With
``emotion_strength`` 0 every emotion uses the neutral profile: the labels are
then unlearnable from the audio, which is what the learnability test checks.

Some utterances change emotion part-way (``change_fraction``); every utterance's
frame-level truth is written to ``gmptl_segments.jsonl`` at the root, and the
utterance label is the emotion that covers most of its duration.

Outputs under ``out``::

    Session{n}/dialog/EmoEvaluation/<dialog>.txt
    Session{n}/sentences/wav/<dialog>/<utt_id>.wav      16 kHz mono PCM-16
    gmptl_segments.jsonl                                  {"utt_id", "segments": [{"start_s","end_s","emotion"}]}
    gmptl_synthetic.json                                  the settings (marks the folder as synthetic)

``out`` must be missing, empty, or hold the same corpus already (then nothing is written): the
file names are IEMOCAP's own, so a real copy is never written into. The corpus is written to a
temporary sibling folder and renamed into place at the end: a killed run leaves no half corpus
at ``out`` (its temporary folder is removed by the next run on the same machine).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, sosfilt

from gmptl.config import SynthConfig, to_dict
from gmptl.data.corpora.iemocap import SYNTHETIC_MARKER, read_synthetic_marker
from gmptl.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
EMOTIONS = ("neutral", "happy", "sad", "angry")
SEGMENTS_FILE = "gmptl_segments.jsonl"


@dataclass(frozen=True)
class Profile:
    """How an emotion shifts a speaker's baseline (neutral = identity)."""

    pitch: float  # F0 level multiplier
    range_st: float  # F0 excursion, semitones
    gain_db: float  # level change
    tempo: float  # syllable-rate multiplier
    breath: float  # aspiration noise relative to the voiced source
    tilt: float  # shift of the glottal low-pass pole: <0 brighter (pressed), >0 darker (breathy)
    jitter: float  # relative F0 perturbation
    stress: float  # syllable-to-syllable energy variation


PROFILES = {
    "neutral": Profile(1.00, 2.0, 0.0, 1.00, 0.03, 0.00, 0.005, 0.15),
    "happy": Profile(1.22, 5.5, 4.0, 1.12, 0.03, -0.10, 0.006, 0.30),
    "sad": Profile(0.87, 0.8, -6.0, 0.74, 0.20, 0.12, 0.004, 0.08),
    "angry": Profile(1.10, 3.5, 8.0, 1.18, 0.02, -0.25, 0.012, 0.45),
}

# Vowel formants (Hz) of an adult male vocal tract; scaled per speaker.
VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]], dtype=float
)
BANDWIDTHS = np.array([80.0, 100.0, 140.0])
IEMOCAP_CODE = {"neutral": "neu", "happy": "hap", "sad": "sad", "angry": "ang"}
VAD = {"neutral": (2.5, 2.5, 2.5), "happy": (4.0, 3.5, 3.0), "sad": (1.6, 2.0, 2.0), "angry": (1.6, 4.0, 4.0)}
# One constant for every file (never per-file normalisation): loudness differences are an emotion cue.
OUTPUT_SCALE = 0.035


@dataclass(frozen=True)
class Speaker:
    speaker_id: str  # "Ses01_F"
    gender: str
    session: int
    f0_hz: float
    formant_scale: float
    rate_syll_s: float
    tilt: float
    level_db: float


def make_speakers(cfg: SynthConfig) -> list[Speaker]:
    speakers = []
    for s in range(1, cfg.n_sessions + 1):
        for gender in ("F", "M"):
            rng = np.random.default_rng([cfg.seed, 1_000_000 + 2 * s + (gender == "M")])
            female = gender == "F"
            speakers.append(
                Speaker(
                    speaker_id=f"Ses{s:02d}_{gender}",
                    gender=gender,
                    session=s,
                    f0_hz=rng.uniform(175, 235) if female else rng.uniform(95, 135),
                    formant_scale=rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.03),
                    rate_syll_s=rng.uniform(3.8, 5.0),
                    tilt=rng.uniform(0.55, 0.75),
                    level_db=rng.uniform(-3, 3),
                )
            )
    return speakers


def _blend(emotion: str, strength: float) -> Profile:
    n, e = PROFILES["neutral"], PROFILES[emotion]
    mix = {
        f: getattr(n, f) + strength * (getattr(e, f) - getattr(n, f)) for f in Profile.__dataclass_fields__
    }
    mix["pitch"] = math.exp(math.log(n.pitch) + strength * (math.log(e.pitch) - math.log(n.pitch)))
    return Profile(**mix)


def _resonator_sos(freqs: np.ndarray, sr: int) -> np.ndarray:
    sos = []
    for f, bw in zip(freqs, BANDWIDTHS, strict=True):
        f = min(f, 0.45 * sr)
        r = math.exp(-math.pi * bw / sr)
        c = 2 * r * math.cos(2 * math.pi * f / sr)
        gain = 1 - c + r * r  # unity gain at DC
        sos.append([gain, 0.0, 0.0, 1.0, -c, r * r])
    return np.array(sos)


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    if a:
        env[:a] = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, a))
    if r:
        env[n - r :] = 0.5 + 0.5 * np.cos(np.linspace(0, math.pi, r))
    return env


def synthesize_utterance(
    speaker: Speaker,
    emotions: list[str],
    strength: float,
    rng: np.random.Generator,
    n_syllables: int | None = None,
    change_at: float = 0.5,
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """One utterance of one or two emotions (the second starts at syllable ``change_at`` * n).

    Returns:
        (wave (T,) float32 at 16 kHz, segments [(start_s, end_s, emotion)] covering [0, T/sr]).
    """
    sr = SAMPLE_RATE_HZ
    n_syl = n_syllables or int(rng.integers(6, 15))
    k_change = n_syl if len(emotions) == 1 else max(1, min(n_syl - 1, round(change_at * n_syl)))
    # Per-utterance variation, so classes overlap the way real speech does.
    u_pitch = math.exp(rng.normal(0, 0.06))
    u_gain = rng.normal(0, 2.0)
    u_tempo = math.exp(rng.normal(0, 0.07))

    # --- timeline: (start sample, consonant samples, vowel samples, profile, syllable params)
    plan = []
    t = int(rng.uniform(0.08, 0.2) * sr)
    change_sample = None
    for i in range(n_syl):
        emotion = emotions[0] if i < k_change else emotions[-1]
        if i == k_change:
            change_sample = t
        prof = _blend(emotion, strength)
        syl_s = 1.0 / (speaker.rate_syll_s * prof.tempo * u_tempo)
        cons = int(rng.uniform(0.2, 0.35) * syl_s * sr)
        vow = int(syl_s * rng.uniform(0.75, 1.25) * sr) - cons
        plan.append(
            (t, cons, max(vow, int(0.04 * sr)), prof, rng.uniform(-1, 1), int(rng.integers(len(VOWELS))))
        )
        t += cons + plan[-1][2]
        if rng.random() < 0.15:  # phrase pause; sad speech pauses longer
            t += int(rng.uniform(0.05, 0.2) / (prof.tempo**2) * sr)
    total = t + int(rng.uniform(0.08, 0.2) * sr)

    # --- F0 contour: syllable targets interpolated across the utterance, with jitter.
    centres = np.array([p[0] + p[1] + p[2] // 2 for p in plan], dtype=float)
    targets = np.array(
        [
            speaker.f0_hz * u_pitch * p[3].pitch * 2 ** ((p[3].range_st * (p[4] - 0.6 * i / n_syl)) / 12)
            for i, p in enumerate(plan)
        ]
    )
    f0 = np.interp(np.arange(total), centres, targets)
    jit = lfilter([0.02], [1, -0.98], rng.normal(0, 1, total))
    jit_amt = np.interp(np.arange(total), centres, [p[3].jitter for p in plan])
    f0 = f0 * (1 + jit_amt * jit / (np.std(jit) + 1e-9))
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # 1 at each glottal closure

    out = np.zeros(total)
    for start, cons, vow, prof, accent, vowel in plan:
        gain = 10 ** ((speaker.level_db + prof.gain_db + u_gain) / 20) * (1 + prof.stress * accent)
        # Consonant: band-limited noise burst.
        if cons > 0:
            centre = rng.uniform(2000, 6000) * speaker.formant_scale
            sos = _resonator_sos(np.array([centre, centre * 1.2, centre * 1.4]), sr)
            burst = sosfilt(sos, rng.normal(0, 1, cons)) * _envelope(cons, cons // 4, cons // 3)
            out[start : start + cons] += 0.25 * gain * burst / (np.std(burst) + 1e-9)
        # Vowel: glottal pulses -> glottal low-pass (voice quality) -> + aspiration -> formants.
        v0 = start + cons
        src = pulses[v0 : v0 + vow]
        pole = float(np.clip(speaker.tilt + prof.tilt, 0.2, 0.95))
        src = lfilter([1 - pole], [1, -pole], lfilter([1 - pole], [1, -pole], src))
        src = np.diff(src, prepend=0.0)  # lip radiation
        src = src / (np.std(src) + 1e-9) + prof.breath * 3.0 * rng.normal(0, 1, vow)
        formants = VOWELS[vowel] * speaker.formant_scale * rng.uniform(0.95, 1.05, 3)
        voiced = sosfilt(_resonator_sos(formants, sr), src)
        voiced = voiced / (np.std(voiced) + 1e-9) * _envelope(vow, int(0.015 * sr), int(0.03 * sr))
        out[v0 : v0 + vow] += gain * voiced
    wave = (OUTPUT_SCALE * out + rng.normal(0, 1e-4, total)).astype(np.float32)  # faint room noise

    dur = total / sr
    if change_sample is None:
        segments = [(0.0, dur, emotions[0])]
    else:
        tc = change_sample / sr
        segments = [(0.0, tc, emotions[0]), (tc, dur, emotions[-1])]
    return wave, segments


@dataclass
class SynthResult:
    root: Path
    n_utterances: int
    n_changing: int
    n_clipped: int | None  # None when the corpus was there already
    hours: float
    cached: bool = False  # True: ``root`` already held this corpus and nothing was written


def holds_synthetic_corpus(
    root: Path, cfg: SynthConfig, name: str = "--out", hint: str | None = None
) -> bool:
    """Whether ``root`` already holds the corpus ``cfg`` describes (False: it is missing or empty).

    Raises:
        ConfigError: ``root`` holds a synthetic corpus with other settings, anything else (a real
            IEMOCAP copy has the same file names), or is a file. ``name`` is what the user set
            (``--out``, ``data.root``), ``hint`` how to fix a settings mismatch.
    """
    label = f"{name} {root}" if name.startswith("-") else f"{name}={root}"
    try:
        marker = read_synthetic_marker(root)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{label}: its {SYNTHETIC_MARKER} is unreadable ({e}); delete the folder or choose another"
        ) from None
    wanted = to_dict(cfg)
    if marker is not None:
        found = {k: marker.get(k) for k in wanted}
        if found == wanted:
            return True
        raise ConfigError(
            f"{label} holds a synthetic corpus made with {found}, but data.synth is {wanted}; "
            f"{hint or f'write it to another folder ({name})'}"
        )
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{label} is a file, not a folder; choose a new or empty folder")
    if root.is_dir() and any(root.iterdir()):
        raise ConfigError(
            f"{label} is not empty and holds no synthetic corpus (no {SYNTHETIC_MARKER}); refusing to write "
            f"into it: choose a new or empty folder"
        )
    return False


def _existing(root: Path, cfg: SynthConfig) -> SynthResult:
    """The counts of a corpus already written (from its segments file, when that is intact)."""
    try:
        segments = read_segments(root)
    except (OSError, ValueError, KeyError, TypeError):
        segments = {}
    hours = sum(s[-1][1] for s in segments.values() if s) / 3600
    n_changing = sum(len(s) > 1 for s in segments.values())
    return SynthResult(root, cfg.n_utterances, n_changing, None, hours, cached=True)


_PARTIAL = ".partial-"


def _partial_prefix(root: Path) -> str:
    return f".{root.name}{_PARTIAL}{socket.gethostname()}-"


def _remove_dead_partials(root: Path) -> None:
    """Temporary folders of this corpus that a killed run on this machine left beside ``root``."""
    prefix = _partial_prefix(root)
    for p in root.parent.glob(f"{prefix}*"):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing %s, left by a synthesis that did not finish", p)
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # alive (another user's process)


def synthesize_corpus(
    out: str | Path, cfg: SynthConfig, name: str = "--out", hint: str | None = None
) -> SynthResult:
    """Write the corpus described in the module docstring; deterministic in ``cfg``.

    Nothing is written when ``out`` holds this corpus already (``cached`` is then True); a folder
    holding anything else is refused (:func:`holds_synthetic_corpus`, whose ``name`` and ``hint``
    word the error).
    """
    root = Path(out).absolute()
    if holds_synthetic_corpus(root, cfg, name, hint):
        log.info("%s already holds this synthetic corpus; nothing written", root)
        return replace(_existing(root, cfg), root=Path(out))
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(root)
    tmp = root.parent / f"{_partial_prefix(root)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        res = _write_corpus(tmp, cfg)
        try:
            os.replace(tmp, root)  # atomic; replaces an empty folder
        except OSError:
            if not holds_synthetic_corpus(root, cfg, name, hint):  # raises unless a concurrent run won
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return replace(_existing(root, cfg), root=Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(res, root=Path(out))


def _write_corpus(root: Path, cfg: SynthConfig) -> SynthResult:
    speakers = make_speakers(cfg)
    n_spk = len(speakers)
    # Balanced emotions per speaker, shuffled with the seed.
    per_speaker = [cfg.n_utterances // n_spk + (i < cfg.n_utterances % n_spk) for i in range(n_spk)]
    label_lines: dict[tuple[int, str], list[str]] = {}
    segments_out = []
    n_changing = n_clipped = 0
    total_s = 0.0
    utt_index = 0
    for spk, n_utt in zip(speakers, per_speaker, strict=True):
        rng_plan = np.random.default_rng([cfg.seed, 2_000_000 + utt_index])
        labels = [EMOTIONS[i % 4] for i in range(n_utt)]
        rng_plan.shuffle(labels)
        for j, label in enumerate(labels):
            rng = np.random.default_rng([cfg.seed, utt_index])
            utt_index += 1
            emotions = [label]
            if rng.random() < cfg.change_fraction:
                other = [e for e in EMOTIONS if e != label][int(rng.integers(3))]
                # The labelled emotion covers most of the utterance (change at 35% or 65%).
                first_is_label = rng.random() < 0.5
                emotions = [label, other] if first_is_label else [other, label]
                change_at = 0.65 if first_is_label else 0.35
                n_changing += 1
            else:
                change_at = 0.5
            wave, segs = synthesize_utterance(spk, emotions, cfg.emotion_strength, rng, change_at=change_at)
            peak = float(np.abs(wave).max())
            if peak > 0.99:
                wave *= 0.99 / peak
                n_clipped += 1
            # Dialogs of 10 turns per speaker; ids follow IEMOCAP: <dialog>_<speaker gender><NNN>.
            d = j // 10
            kind = f"impro{d + 1:02d}" if d % 2 == 0 else f"script{d + 1:02d}_1"
            dialog = f"Ses{spk.session:02d}{'F' if d % 2 == 0 else 'M'}_{kind}"
            utt_id = f"{dialog}_{spk.gender}{j % 10:03d}"
            wav_path = root / f"Session{spk.session}" / "sentences" / "wav" / dialog / f"{utt_id}.wav"
            wav_path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(wav_path, wave, SAMPLE_RATE_HZ, subtype="PCM_16")
            dur = len(wave) / SAMPLE_RATE_HZ
            total_s += dur
            code = IEMOCAP_CODE[label]
            if label == "happy" and rng.random() < 1 / 3:
                code = "exc"  # exercised by the default map (exc merged into happy)
            v, a, dd = (x + rng.normal(0, 0.3) for x in VAD[label])
            lines = label_lines.setdefault((spk.session, dialog), [])
            start = 1.0 + 4.0 * len(lines)
            lines.append(
                f"[{start:.4f} - {start + dur:.4f}]\t{utt_id}\t{code}\t[{v:.4f}, {a:.4f}, {dd:.4f}]\n"
                f"C-E1:\t{label.capitalize()};\t()\nC-E2:\t{label.capitalize()};\t()\n"
                f"A-E1:\tval {round(v)}; act {round(a)}; dom  {round(dd)};\t()\n"
            )
            segments_out.append(
                {
                    "utt_id": utt_id,
                    "segments": [
                        {"start_s": round(s, 4), "end_s": round(e, 4), "emotion": em} for s, e, em in segs
                    ],
                }
            )
    for (session, dialog), lines in sorted(label_lines.items()):
        f = root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "\n".join(lines))
    segments_out.sort(key=lambda r: r["utt_id"])
    (root / SEGMENTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in segments_out))
    (root / SYNTHETIC_MARKER).write_text(
        json.dumps({"generator": "gmptl synth", **to_dict(cfg)}, indent=2) + "\n"
    )
    return SynthResult(root, utt_index, n_changing, n_clipped, total_s / 3600)


def read_segments(root: str | Path) -> dict[str, list[tuple[float, float, str]]]:
    """Frame-level truth of a synthetic corpus: utt_id -> [(start_s, end_s, emotion)]."""
    p = Path(root) / SEGMENTS_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: only corpora written by `gmptl synth` have frame-level truth"
        )
    out = {}
    for line in p.read_text().splitlines():
        r = json.loads(line)
        out[r["utt_id"]] = [(s["start_s"], s["end_s"], s["emotion"]) for s in r["segments"]]
    return out
