"""Self-supervised pre-training (HuBERT iterations) with the pipeline's own extraction, k-means and training."""
