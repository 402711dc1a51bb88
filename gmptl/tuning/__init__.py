"""Hyperparameter searches (``gmptl tune``).

``space.py`` reads and validates a search-space YAML (pure: no Ray, no MLflow);
``search.py`` runs it on Ray Tune (ASHA, a model-based searcher, a real Ray Train
run per trial) and writes the summary and the best configuration; ``locks.py``
keeps two concurrent trials from computing the same cached step at once.
"""
