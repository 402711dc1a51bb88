"""Training stages 0-2: losses, metrics, the shared loop, and the Ray Train glue."""
