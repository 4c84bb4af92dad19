"""The benchmark scripts, as a package: `python -m benchmarks.quality.ablation ...` from the repository root, or
`python benchmarks/quality/ablation.py ...`; what several scripts share is in `benchmarks.common` (README.md)."""
