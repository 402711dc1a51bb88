import hashlib
import json

import numpy as np
import pytest

from gmptl.config import SynthConfig, load_config
from gmptl.data.manifest import read_manifest
from gmptl.data.prepare import prepare_manifest
from gmptl.data.synth import EMOTIONS, make_speakers, read_segments, synthesize_corpus, synthesize_utterance


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    res = synthesize_corpus(root, SynthConfig(n_utterances=80, seed=3))
    return root, res


def test_deterministic_from_seed(corpus, tmp_path):
    root, _ = corpus
    synthesize_corpus(tmp_path / "again", SynthConfig(n_utterances=80, seed=3))
    synthesize_corpus(tmp_path / "other", SynthConfig(n_utterances=80, seed=4))
    assert _digest(tmp_path / "again") == _digest(root)
    assert _digest(tmp_path / "other") != _digest(root)


def test_written_in_iemocap_layout_and_read_by_its_loader(corpus, tmp_path):
    root, res = corpus
    cfg = load_config(None, ["data.corpus=iemocap", f"data.root={root}"])
    out = prepare_manifest(cfg.data, root, tmp_path / "m.parquet")
    df = read_manifest(out.manifest_path)
    assert len(df) == 80 == res.n_utterances and (df.corpus == "synthetic").all()
    assert out.summary.per_class == {e: 20 for e in sorted(EMOTIONS)}
    assert len(out.summary.speakers) == 10 and out.summary.genders == {"F": 40, "M": 40}
    assert len(out.summary.per_session) == 5
    assert not out.notes  # the synthetic marker switches the 5,531-utterance check off
    labels = "".join(p.read_text() for p in root.glob("Session*/dialog/EmoEvaluation/*.txt"))
    assert "\texc\t" in labels and "C-E1:" in labels  # exc merged by the loader; annotator lines skipped
    assert (df.sample_rate == 16000).all() and df.duration_s.between(1.0, 8.0).all()


def test_segments_cover_each_utterance_and_some_change(corpus, tmp_path):
    root, res = corpus
    segs = read_segments(root)
    cfg = load_config(None, ["data.corpus=iemocap", f"data.root={root}"])
    df = read_manifest(prepare_manifest(cfg.data, root, tmp_path / "m.parquet").manifest_path).set_index(
        "utt_id"
    )
    assert set(segs) == set(df.index)
    n_changing = 0
    for utt, s in segs.items():
        assert s[0][0] == 0.0 and s[-1][1] == pytest.approx(df.loc[utt, "duration_s"], abs=1e-3)
        longest = max(s, key=lambda seg: seg[1] - seg[0])[2]
        assert longest == df.loc[utt, "emotion"]  # the label is the emotion covering most of the utterance
        n_changing += len(s) > 1
    assert n_changing == res.n_changing > 0


def test_speakers_and_emotions_differ_the_way_acted_speech_does():
    spk = make_speakers(SynthConfig())
    assert len(spk) >= 8 and sum(s.gender == "F" for s in spk) == len(spk) // 2
    assert min(s.f0_hz for s in spk if s.gender == "F") > max(s.f0_hz for s in spk if s.gender == "M")
    f = spk[0]
    rms, dur = {}, {}
    for e in EMOTIONS:
        waves = [
            synthesize_utterance(f, [e], 1.0, np.random.default_rng(i), n_syllables=10)[0] for i in range(6)
        ]
        rms[e] = np.median([np.sqrt(np.mean(w**2)) for w in waves])
        dur[e] = np.median([len(w) for w in waves])
    assert rms["angry"] > rms["happy"] > rms["neutral"] > rms["sad"]
    assert dur["sad"] > dur["neutral"] > dur["angry"]


def test_marker_records_settings(corpus):
    root, _ = corpus
    marker = json.loads((root / "gmptl_synthetic.json").read_text())
    assert marker["n_utterances"] == 80 and marker["seed"] == 3
