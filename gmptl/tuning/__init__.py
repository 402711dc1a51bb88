"""Hyperparameter searches (``gmptl tune``).

``space.py`` reads and validates a search-space YAML (pure: no Ray, no MLflow);
``search.py`` is the driver that runs it on Ray Tune (ASHA, a model-based searcher);
``trial.py`` is what runs inside a Tune actor (a real Ray Train run per fold);
``summary.py`` writes the summary and its figure; ``trials.py`` holds the pure
bookkeeping (fold means, concurrency). Two concurrent trials never compute the
same cached step at once: they hold ``gmptl.locks`` on its folder.
"""
