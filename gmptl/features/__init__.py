"""Frame features for the GMP k-means: extractor.py is pure (no ray); pipeline.py runs it on Ray Data."""
