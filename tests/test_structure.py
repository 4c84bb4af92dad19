"""The layout keeps its shape (issue 35): no import cycle, no import from a lower floor to a higher one, and the
tree names its layers (few modules at the top of src/ilct). Measured as benchmarks/structure.py does."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import structure  # noqa: E402


def test_no_cycle_no_upward_import_and_few_top_level_modules():
    report = structure.import_report()
    assert report["cycles"] == [], report["cycles"]
    assert report["upward_imports"] == [], report["upward_imports"]
    assert report["top_level_modules"] <= 10, report["top_level"]
    every = {m for m in structure.modules() if m != "ilct"}
    unplaced = [m for m in every if not any(m == p or m.startswith(p + ".") for floor in structure.LAYERS for p in floor)]
    assert not unplaced, f"modules on no floor of benchmarks/structure.py's LAYERS: {unplaced}"


def test_imports_inside_functions_say_why():
    """Outside the CLI (start-up time) an import inside a function is an optional dependency with its reason."""
    # the package root too: `ilct.load` imports the model stack when called, so that `import ilct` stays light
    inside = [(a, b) for a, b, lazy in structure.imports(structure.modules())
              if lazy and not a.startswith("ilct.cli") and a != "ilct"]
    assert inside == []
