"""gmptl."""
