"""Multi-scale k-means for the GMP pseudo-labels: kmeans.py is pure math, pipeline.py the Ray jobs, labels.py reads labels back."""
