"""Figures from result JSONs and run logs."""
