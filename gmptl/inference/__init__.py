"""Inference: ``gmptl predict`` (emotion of audio files, whole and frame by frame) and ``gmptl export``.

``predict.py`` (torch, no Ray) loads a model folder once and predicts waveforms;
``pipeline.py`` runs the same predictor as Ray Data batch inference into Parquet;
``export.py`` copies a run's stage-2 model of one fold into a self-contained
folder (safetensors weights, config, label map; no pickle anywhere).
"""
