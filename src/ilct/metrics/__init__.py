"""Evaluation: feature extractors, Frechet distance, precision/recall, and `ilct eval`."""
