"""The demo config shortened for the integration tests: 40 utterances, 2 folds, 1 epoch per stage."""

SHORT_RUN = ["data.synth.n_utterances=40", "folds.scheme=speaker_kfold", "folds.n_folds=2",
             "clustering.k=[4,8]", "clustering.max_frames=20000", "clustering.n_iter=3",
             "stages.mtl.epochs=1", "stages.gmp.epochs=1", "stages.utterance.epochs=1"]  # fmt: skip
