"""Evaluation: plots and reports."""
