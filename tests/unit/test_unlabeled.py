"""The `unlabeled` corpus: audio without labels for `gmptl pretrain` (a folder walk or a list file), the same
bad-input policy as labelled corpora, no folds, and a clear refusal from the commands that need labels."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gmptl.cli import main
from gmptl.config import load_config
from gmptl.data.manifest import is_labelled, read_manifest
from gmptl.data.prepare import prepare_folds, prepare_manifest
from gmptl.errors import BadInputError
from gmptl.experiment import plan

SR = 16000


def _clip(path: Path, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)  # format from the extension
    return path


def _tree(root: Path) -> Path:
    for rel in ("spk1/ch1/a.wav", "spk1/ch1/a.flac", "spk2/b.flac", "top.wav"):
        _clip(root / rel)
    (root / "notes.txt").write_text("not audio")
    return root


def _data(root: Path, *sets: str):
    return load_config(None, ["data.corpus=unlabeled", f"data.root={root}", *sets]).data


def _prepare(tmp_path: Path, root: Path, *sets: str):
    return prepare_manifest(_data(root, *sets), root, tmp_path / "out" / "m.parquet")


def _report(res) -> dict:
    return json.loads(res.report_path.read_text())


def test_folder_walk_finds_nested_audio_with_safe_unique_ids_and_no_labels(tmp_path):
    root = _tree(tmp_path / "corpus")
    res = _prepare(tmp_path, root)
    df = read_manifest(res.manifest_path)
    by_path = dict(zip(df.path.map(lambda p: str(Path(p).relative_to(root))), df.utt_id, strict=True))
    assert set(by_path) == {"spk1/ch1/a.wav", "spk1/ch1/a.flac", "spk2/b.flac", "top.wav"}
    assert by_path["spk2/b.flac"] == "spk2__b" and by_path["top.wav"] == "top"
    # a.wav and a.flac would both be spk1__ch1__a: each gets its path's hash
    assert by_path["spk1/ch1/a.wav"] != by_path["spk1/ch1/a.flac"]
    assert all(by_path[f"spk1/ch1/a.{e}"].startswith("spk1__ch1__a-") for e in ("wav", "flac"))
    assert all("/" not in u for u in df.utt_id)
    # speaker: the first folder level; files at the root share one pseudo-speaker
    assert dict(zip(df.utt_id, df.speaker, strict=True))["top"] == "(root)"
    assert sorted(df.speaker.unique()) == ["(root)", "spk1", "spk2"]
    assert df.emotion.isna().all() and df.gender.isna().all() and not is_labelled(df)
    assert _report(res)["excluded"] == {"not an audio file (.txt)": 1}  # counted, not dropped silently


def test_list_file_with_comments_bom_crlf_and_absolute_paths(tmp_path):
    root = _tree(tmp_path / "corpus")
    lines = ["# my audio", "", "spk2/b.flac", f"  {root / 'top.wav'}  ", "spk1/ch1/../ch1/a.wav"]
    (root / "list.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    df = read_manifest(_prepare(tmp_path, root, "data.metadata_file=list.txt").manifest_path)
    assert sorted(df.utt_id) == ["spk1__ch1__a", "spk2__b", "top"]
    assert sorted(df.path) == [str(root / p) for p in ("spk1/ch1/a.wav", "spk2/b.flac", "top.wav")]


def test_list_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    root = _tree(tmp_path / "corpus")
    (root / "list.txt").write_bytes("spk2/b.flac\n# \xe9t\xe9\nt\xe9.wav\n".encode("latin-1"))
    with pytest.raises(BadInputError, match=r"list\.txt:3: not UTF-8: byte 0xe9 at column 2"):
        _prepare(tmp_path, root, "data.metadata_file=list.txt")
    (root / "list.txt").write_bytes("spk2/b.flac\n".encode("utf-16"))
    with pytest.raises(BadInputError, match=r"list\.txt: UTF-16 text, not UTF-8"):
        _prepare(tmp_path, root, "data.metadata_file=list.txt")


@pytest.mark.parametrize("entry", ["../outside.wav", "{outside}", "spk2/escape.wav"])
def test_a_listed_path_outside_the_root_is_bad_input(tmp_path, entry):
    root = _tree(tmp_path / "corpus")
    outside = _clip(tmp_path / "outside.wav")
    os.symlink(outside, root / "spk2" / "escape.wav")  # a link leaving the root is caught too
    (root / "list.txt").write_text(f"spk2/b.flac\n{entry.format(outside=outside)}\n")
    with pytest.raises(BadInputError, match=r"list\.txt:2: path .* is outside the corpus root"):
        _prepare(tmp_path, root, "data.metadata_file=list.txt")


def test_a_folder_named_like_audio_and_a_looping_symlink_are_bad_items_not_crashes(tmp_path):
    root = _tree(tmp_path / "corpus")
    _clip(root / "x.wav" / "inside.wav")  # a folder named x.wav: reported, and its files still walked
    os.symlink("loop.wav", root / "loop.wav")
    os.symlink("..", root / "spk2" / "up")  # a folder link back to an ancestor
    with pytest.raises(BadInputError, match=r"spk2/up: folder link to .*corpus, which is walked already"):
        _prepare(tmp_path, root)
    res = _prepare(tmp_path, root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.5")
    reasons = {Path(b["path"]).name: b["reason"] for b in res.summary.bad}
    assert reasons["x.wav"] == "is a folder, not an audio file"
    assert "symlink loop" in reasons["loop.wav"] and "walked already" in reasons["up"]
    assert "x.wav__inside" in set(read_manifest(res.manifest_path).utt_id)
    assert res.summary.n_utterances == 5 and _report(res)["n_candidates"] == 8


def test_a_too_short_clip_is_skipped_and_counted(tmp_path):
    root = _tree(tmp_path / "corpus")
    _clip(root / "spk2" / "blip.wav", seconds=0.05)
    with pytest.raises(BadInputError, match=r"blip\.wav: too short"):
        _prepare(tmp_path, root)
    res = _prepare(tmp_path, root, "data.on_bad_audio=skip", "data.max_bad_fraction=0.5")
    assert res.summary.n_utterances == 4
    assert [(Path(b["path"]).name, b["reason"][:9]) for b in res.summary.bad] == [("blip.wav", "too short")]
    assert _report(res)["n_candidates"] == 5


def test_a_path_listed_twice_is_a_duplicated_id_naming_both_lines(tmp_path):
    root = _tree(tmp_path / "corpus")
    (root / "list.txt").write_text("spk2/b.flac\ntop.wav\nspk2/./b.flac\n")
    with pytest.raises(
        BadInputError, match=r"list\.txt:1: duplicated utterance id spk2__b \(also at .*list\.txt:3\)"
    ):
        _prepare(tmp_path, root, "data.metadata_file=list.txt")


def test_labels_cannot_be_mapped_on_an_unlabeled_corpus(tmp_path):
    from gmptl.errors import ConfigError

    root = _tree(tmp_path / "corpus")
    with pytest.raises(ConfigError, match="has no labels to map"):
        _prepare(tmp_path, root, "data.label_map={a: happy}")


@pytest.mark.parametrize("command", ["run", "train", "tune"])
def test_commands_that_need_labels_refuse_it_in_one_line(tmp_path, capsys, command):
    root = _tree(tmp_path / "corpus")
    extra = {"run": [], "train": ["--stage", "mtl"], "tune": ["--space", "tune_spaces/utterance.yaml"]}[
        command
    ]
    sets = ["data.corpus=unlabeled", f"data.root={root}", f"output_dir={tmp_path / 'out'}"]
    rc = main([command, "jobs/demo.yaml", *extra, *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: data.corpus=unlabeled has no emotion or gender labels: it is only for")
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out" / "data").exists()  # refused before any audio was read


def test_folds_of_an_unlabeled_manifest_are_refused(tmp_path, capsys):
    res = _prepare(tmp_path, _tree(tmp_path / "corpus"))
    assert main(["folds", "--manifest", str(res.manifest_path)]) == 1
    assert "no emotion labels (data.corpus=unlabeled)" in capsys.readouterr().err


def test_pretraining_plans_no_folds_and_splits_the_unlabeled_manifest(tmp_path, monkeypatch):
    from gmptl import experiment, paths
    from gmptl.pretraining import pipeline
    from gmptl.training.pipeline import class_names, items_of

    root = _tree(tmp_path / "corpus")
    cfg = load_config("jobs/pretrain_demo.yaml", ["data.corpus=unlabeled", f"data.root={root}",
                                                  f"output_dir={tmp_path / 'out'}"])  # fmt: skip
    assert plan(cfg, "pretrain") == ["pretrain"]
    prep = prepare_folds(cfg, with_folds=False)
    assert prep.folds == [] and prep.folds_path is None and not paths.folds_path(cfg).exists()
    parts = pipeline.split_utterances(prep.df.utt_id.tolist(), 0.25, seed=0)
    assert sorted(parts.index) == sorted(prep.df.utt_id) and parts.value_counts().to_dict() == {
        "train": 3, "validation": 1,
    }  # fmt: skip
    assert parts.equals(pipeline.split_utterances(prep.df.utt_id.tolist(), 0.25, seed=0))  # seeded
    # what the training workers get: no classes, and -1 for the absent emotion and gender
    assert class_names(prep.df) == []
    assert {(it.emotion, it.gender) for it in items_of(prep.df, [], SR)} == {(-1, -1)}
    # `gmptl pretrain`'s run: the step runs once, with the manifest and no fold (Ray and the body stubbed)
    seen = []
    monkeypatch.setattr(experiment, "start_ray", lambda cfg: None)
    monkeypatch.setattr(pipeline, "pretrain_step", lambda ctx: seen.append(ctx) or {})
    out = experiment.run_experiment(cfg, until="pretrain")
    assert [(c.fold, len(c.df)) for c in seen] == [(None, 4)] and out.folds is None
    assert out.steps == {"prepare": "cached", "pretrain": "ran"}


def test_a_backbone_pretrained_on_unlabeled_audio_passes_the_leakage_check_and_names_its_audio(
    tmp_path, caplog
):
    from gmptl.pretraining.provenance import check_speaker_independent

    model = tmp_path / "backbone"
    model.mkdir()
    record = {"corpus": "unlabeled", "root": str(tmp_path.resolve()), "speakers": ["Ses01_F"]}
    spec = {"frame_heads": {"k8": {"type": "frame", "hidden": 8, "n_classes": 8}}}
    (model / "model.json").write_text(json.dumps({"spec": spec, "pretrain": record}))
    for root, level in ((tmp_path / "iemocap", logging.WARNING), (Path("/elsewhere/iemocap"), logging.INFO)):
        cfg = load_config(
            "jobs/demo.yaml", [f"model.backbone={model}", "data.corpus=iemocap", f"data.root={root}"]
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gmptl.pretraining.provenance"):
            check_speaker_independent(cfg, ["Ses01_F"])  # same speaker name, another corpus: cannot compare
        assert [r.levelno for r in caplog.records] == [level]
        assert f"pre-trained on unlabeled audio in {tmp_path.resolve()}" in caplog.text
