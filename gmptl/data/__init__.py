"""Data: corpus loaders -> one manifest schema -> speaker-independent folds. Pure: no ray, no mlflow."""
