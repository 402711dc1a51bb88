import pytest

from gmptl.config import load_config
from gmptl.data.folds import Fold, check_fold, make_folds, read_folds, write_folds
from gmptl.data.manifest import Utterance, to_frame
from gmptl.errors import FoldError


def iemocap_like(n_sessions=5, per_speaker=4):
    recs = []
    for s in range(1, n_sessions + 1):
        for g in "FM":
            for i in range(per_speaker):
                recs.append(Utterance(f"Ses{s:02d}F_x_{g}{i:03d}", "/p", f"Ses{s:02d}_{g}", g, "neutral",
                                      "iemocap", session=f"Session{s}"))  # fmt: skip
    return to_frame(recs)


def folds_for(df, *sets):
    return make_folds(df, load_config(None, list(sets)).folds)


def parts_disjoint(df, fold):
    part = fold.part_of(df)
    for spk, parts in df.assign(part=part).groupby("speaker")["part"]:
        assert parts.nunique() == 1, f"{spk} in {set(parts)}"
    return part


def test_loso_five_folds_one_validation_speaker():
    df = iemocap_like()
    folds = folds_for(df)
    assert [f.name for f in folds] == [f"Session{i}" for i in range(1, 6)]
    for f in folds:
        n = f.index + 1
        assert f.test_speakers == (f"Ses{n:02d}_F", f"Ses{n:02d}_M")
        assert len(f.validation_speakers) == 1 and not set(f.validation_speakers) & set(f.test_speakers)
        assert len(f.train_speakers) == 7
        part = parts_disjoint(df, f)
        assert (part == "test").sum() == 8 and (part == "validation").sum() == 4 and (part == "").sum() == 0
    # deterministic in folds.seed, and the seed matters
    assert folds == folds_for(df)
    assert [f.validation_speakers for f in folds] != [
        f.validation_speakers for f in folds_for(df, "folds.seed=7")
    ]


def test_lospk_ten_folds():
    df = iemocap_like()
    folds = folds_for(df, "folds.scheme=lospk", "folds.n_validation_speakers=2")
    assert len(folds) == 10
    for f in folds:
        assert len(f.test_speakers) == 1 and len(f.validation_speakers) == 2 and len(f.train_speakers) == 7
        parts_disjoint(df, f)


def test_speaker_kfold_covers_every_speaker_once_as_test():
    df = iemocap_like()
    folds = folds_for(df, "folds.scheme=speaker_kfold", "folds.n_folds=3")
    tested = [s for f in folds for s in f.test_speakers]
    assert sorted(tested) == sorted(df.speaker.unique()) and len(folds) == 3
    for f in folds:
        parts_disjoint(df, f)
    with pytest.raises(FoldError, match=r"folds.n_folds=11 exceeds the 10 speakers"):
        folds_for(df, "folds.scheme=speaker_kfold", "folds.n_folds=11")


def test_official_split_with_its_own_validation_or_held_out_speakers():
    recs = []
    for spk, split in (("a", "Train"), ("b", "Train"), ("c", "Train"), ("d", "Development"), ("e", "Test1")):
        for i in range(3):
            recs.append(Utterance(f"{spk}{i}", "/p", spk, "F", "sad", "msp_podcast", split=split))
    df = to_frame(recs)
    base = ["data.corpus=msp_podcast", "data.root=/x", "folds.scheme=official"]
    (f,) = folds_for(df, *base, "folds.validation=official")
    assert (f.train_speakers, f.validation_speakers, f.test_speakers) == (("a", "b", "c"), ("d",), ("e",))
    assert list(f.part_of(df).value_counts().sort_index().items()) == [
        ("test", 3),
        ("train", 9),
        ("validation", 3),
    ]
    (g,) = folds_for(df, *base)  # validation = one held-out training speaker; Development unused
    assert len(g.validation_speakers) == 1 and g.validation_speakers[0] in "abc"
    assert (g.part_of(df) == "").sum() == 3


def test_official_split_leak_is_an_error_naming_speakers():
    recs = [Utterance("a0", "/p", "a", "F", "sad", "msp", split="Train"),
            Utterance("a1", "/p", "a", "F", "sad", "msp", split="Test1"),
            Utterance("b0", "/p", "b", "F", "sad", "msp", split="Train"),
            Utterance("c0", "/p", "c", "F", "sad", "msp", split="Development")]  # fmt: skip
    with pytest.raises(FoldError, match=r"speakers \['a'\] are in both train and test"):
        folds_for(to_frame(recs), "data.corpus=msp_podcast", "data.root=/x", "folds.scheme=official",
                  "folds.validation=official")  # fmt: skip


def test_leakage_check_names_speakers():
    with pytest.raises(FoldError, match=r"fold x: speakers \['s2'\] are in both validation and test"):
        check_fold(Fold(0, "x", ("s1",), ("s2",), ("s2", "s3")))
    with pytest.raises(FoldError, match=r"speakers \['s1'\] are in both train and validation"):
        check_fold(Fold(0, "x", ("s1",), ("s1",), ("s3",)))


def test_speaker_in_two_sessions_breaks_loso():
    df = iemocap_like(3)
    df.loc[df.index[0], "session"] = "Session3"
    with pytest.raises(FoldError, match=r"speaker Ses01_F appears in sessions Session1 and Session3"):
        folds_for(df)


def test_loso_without_sessions_says_which_scheme_to_use():
    df = iemocap_like(2)
    df["session"] = None
    with pytest.raises(FoldError, match=r"use folds.scheme=lospk or speaker_kfold"):
        folds_for(df)


def test_too_few_training_speakers_for_validation():
    df = iemocap_like(2)
    with pytest.raises(FoldError, match=r"2 training speakers cannot give 2 validation speakers"):
        folds_for(df, "folds.n_validation_speakers=2")


def test_folds_file_round_trip(tmp_path):
    df = iemocap_like()
    cfg = load_config().folds
    folds = make_folds(df, cfg)
    p = write_folds(df, folds, cfg, tmp_path / "folds.json")
    assert read_folds(p) == folds
