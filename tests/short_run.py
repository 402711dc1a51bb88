"""The demo config shortened for the integration tests: 40 utterances, 2 folds, 1 epoch per stage but stage 0.

Stage 0 trains 3 epochs with settings it learns with in that time (a frozen CNN, a higher learning rate,
short crops, no dropout): fold 0's stage 0 is also the uninterrupted reference of test_train's recovery
test, which stops a run after epoch 1 and loses a worker after epoch 2. Features are extracted one
utterance per forward, so a test can recompute an utterance's features exactly.
"""

SHORT_RUN = ["data.synth.n_utterances=40", "folds.scheme=speaker_kfold", "folds.n_folds=2",
             "clustering.k=[4,8]", "clustering.max_frames=20000", "clustering.n_iter=3",
             "stages.mtl.epochs=3", "stages.gmp.epochs=1", "stages.utterance.epochs=1",
             "stages.mtl.crop_s=1.0", "stages.mtl.batch_size=8", "stages.mtl.lr=2e-3",
             "stages.mtl.dropout=0.0", "stages.mtl.freeze_cnn=true",
             "features.batch_max_audio_s=0.5"]  # one utterance per forward: mini's group-norm CNN sees no padding  # fmt: skip
