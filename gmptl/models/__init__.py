"""Models: the speech encoder backbone and (issue 4) the stage heads."""
