"""Models: the speech encoder backbone and the stage heads."""
