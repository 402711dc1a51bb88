"""Every corpus loader on a fixture written in that corpus's exact layout."""

import pytest
from corpus_fixtures import (
    small_iemocap,
    write_cremad,
    write_emobox,
    write_emodb,
    write_generic,
    write_msp,
    write_ravdess,
)

from gmptl.config import load_config
from gmptl.data.corpora.iemocap import REFERENCE_PER_CLASS, REFERENCE_PER_SESSION, compare_to_reference
from gmptl.data.manifest import Utterance, read_manifest
from gmptl.data.prepare import prepare_manifest
from gmptl.errors import ConfigError


def prep(tmp_path, corpus, root, *sets):
    cfg = load_config(None, [f"data.corpus={corpus}", f"data.root={root}", *sets])
    res = prepare_manifest(cfg.data, root, tmp_path / "m.parquet", full_config=cfg)
    return res, read_manifest(res.manifest_path)


def test_iemocap_standard_map(tmp_path):
    res, df = prep(tmp_path, "iemocap", small_iemocap(tmp_path / "IEMOCAP"))
    # 11 lines: fru and xxx excluded, exc merged into happy; Categorical/, ._* files ignored.
    assert len(df) == 9 and not res.summary.bad
    assert res.summary.per_class == {"angry": 2, "happy": 3, "neutral": 2, "sad": 2}
    assert res.excluded == {"label fru (not in label map)": 1, "label xxx (not in label map)": 1}
    row = df.set_index("utt_id").loc["Ses01F_impro01_M000"]
    # The speaker is the male actor of session 1, although the dialog prefix is Ses01F.
    assert (row.speaker, row.gender, row.session, row.emotion) == ("Ses01_M", "M", "Session1", "angry")
    assert row.path.endswith("Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav")
    assert (row.valence, row.arousal, row.dominance) == (2.5, 3.0, 2.0)
    assert row.duration_s == pytest.approx(0.25) and row.sample_rate == 16000
    assert list(df.utt_id) == sorted(df.utt_id)  # stable sort
    assert res.summary.speakers == ["Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"]
    assert not res.notes  # not a full release: no reference-count comparison


def test_iemocap_custom_label_map(tmp_path):
    root = small_iemocap(tmp_path / "IEMOCAP")
    res, df = prep(tmp_path, "iemocap", root, "data.label_map={neu: neutral, fru: frustrated, ang: angry}")
    assert res.summary.per_class == {"angry": 2, "frustrated": 1, "neutral": 2}
    with pytest.raises(ConfigError, match=r"data.label_map: \['joy'\] are not labels of corpus 'iemocap'"):
        prep(tmp_path, "iemocap", root, "data.label_map={joy: happy}")


def test_iemocap_reference_count_comparison():
    recs = [Utterance(f"u{i}", "p", "s", "F", "neutral", "iemocap", session="Session1") for i in range(3)]
    (note,) = compare_to_reference(recs)
    assert "found 3 utterances" in note and "expected 5531" in note and "Session2: 0 (expected 1023)" in note
    full = [
        Utterance("u", "p", "s", "F", e, "iemocap", session=s)
        for e, s in zip(
            [e for e, n in REFERENCE_PER_CLASS.items() for _ in range(n)],
            [s for s, n in REFERENCE_PER_SESSION.items() for _ in range(n)],
            strict=True,
        )
    ]
    assert compare_to_reference(full) == []


def test_ravdess(tmp_path):
    res, df = prep(tmp_path, "ravdess", write_ravdess(tmp_path / "RAVDESS"), "folds.scheme=lospk")
    assert len(df) == 16  # 4 actors x {neutral, happy, sad, angry}; calm/fearful and song excluded
    assert res.excluded["song (vocal channel 02)"] == 4
    assert dict(zip(df.speaker, df.gender, strict=True)) == {
        "Actor_01": "M", "Actor_02": "F", "Actor_03": "M", "Actor_04": "F",
    }  # fmt: skip
    assert df.session.isna().all()


def test_cremad(tmp_path):
    res, df = prep(tmp_path, "cremad", write_cremad(tmp_path / "CREMA-D"), "folds.scheme=lospk")
    assert len(df) == 12 and res.summary.genders == {"F": 8, "M": 4}
    assert set(df.emotion) == {"neutral", "happy", "sad", "angry"}


def test_emodb(tmp_path):
    res, df = prep(tmp_path, "emodb", write_emodb(tmp_path / "emodb"), "folds.scheme=lospk")
    assert len(df) == 16
    assert dict(zip(df.speaker, df.gender, strict=True)) == {
        "emodb_03": "M", "emodb_08": "F", "emodb_09": "F", "emodb_10": "M",
    }  # fmt: skip
    assert df.set_index("utt_id").loc["emodb_03a01Wa", "emotion"] == "angry"


def test_msp_podcast(tmp_path):
    res, df = prep(tmp_path, "msp_podcast", write_msp(tmp_path / "MSP"), "folds.scheme=official")
    assert len(df) == 8  # X (no agreement) excluded; unknown speaker excluded
    assert res.excluded == {"label no_agreement (not in label map)": 1, "unknown speaker or gender": 1}
    assert sorted(df.split.unique()) == ["Development", "Test1", "Train"]
    assert df.set_index("utt_id").loc["MSP-PODCAST_0001_0008", "valence"] == 4.0


@pytest.mark.parametrize("in_lines", [True, False])
def test_emobox_jsonl(tmp_path, in_lines):
    root = write_emobox(tmp_path / "emobox", with_speakers_in_lines=in_lines)
    extra = [] if in_lines else ["data.speaker_table=speakers.csv"]
    res, df = prep(tmp_path, "emobox", root, "folds.scheme=lospk", "data.drop_labels=[fear]", *extra)
    assert len(df) == 12 and set(df.speaker) == {"s1", "s2", "s3"}
    assert (df.sample_rate == 22050).all()  # native rate recorded; audio is resampled on read


def test_emobox_unknown_label_is_bad(tmp_path):
    root = write_emobox(tmp_path / "emobox")
    with pytest.raises(Exception, match=r"toy.jsonl:\d+: unknown label 'fear'"):
        prep(tmp_path, "emobox", root, "folds.scheme=lospk")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_generic(tmp_path, fmt):
    root = write_generic(tmp_path / "mine", fmt)
    res, df = prep(tmp_path, "generic", root, f"data.metadata_file=meta.{fmt}")
    assert len(df) == 16 and res.summary.genders == {"F": 8, "M": 8}
    assert res.summary.per_session == {"1": 8, "2": 8}
    assert (df.sample_rate == 8000).all() and df.valence.isna().all()
