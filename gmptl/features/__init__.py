"""Frame features (METHOD.md step 1): extractor.py is pure (no ray); pipeline.py runs it on Ray Data."""
