"""Multi-scale k-means for the GMP pseudo-labels (METHOD.md step 2): kmeans.py is pure math; the Ray job comes later."""
