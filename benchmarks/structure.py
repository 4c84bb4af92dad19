"""The package's structure, measured from the code: modules, import cycles, upward imports, imports made inside
functions, and the path of one training step through the files.

    python benchmarks/structure.py                      # prints a report; --json FILE writes it
    python benchmarks/structure.py --no-trace           # the import measures only (no training run)

Imports are read with `ast` (every `import ilct...` and `from ilct... import ...`, at module level or inside a
function; one per statement and module imported). A cycle is a strongly connected set of two or more modules.
An upward import is one whose target sits on a higher floor than its importer, the floors given by LAYERS below
(the tree's layers, from the ground up; a module's floor is that of the longest prefix listed; LAYERS_BEFORE
names the same floors in the tree before issue 35). The trace runs a three-step `ilct train` on tiny synthetic
data in this process under `sys.setprofile` (s1 = s0: N constant, as within a curriculum stage) and follows one
iteration of the loop (from the second call of `training_step` to the third) through the ilct files, the backbone's own `ilct/nets/` files left out: the files
it enters, and its returns to a file already left (A -> B -> A counts one return to A); the same for the whole
command beside it.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ilct"

# Floors from the ground up: a module may import from its own floor and below.
LAYERS: list[tuple[str, ...]] = [
    ("ilct.errors", "ilct.schema", "ilct.limits", "ilct.seeds"),
    ("ilct.io", "ilct.runs.faults"),
    ("ilct.nets", "ilct.data"),
    ("ilct.autoencoders",),
    ("ilct.latents",),
    ("ilct.objectives",),
    ("ilct.config", "ilct.models"),
    ("ilct.runs",),
    ("ilct.generate", "ilct.metrics"),
    ("ilct.training",),
    ("ilct.demo", "ilct.sharing"),
    ("ilct.cli", "ilct.__main__", "ilct"),  # the package root: `ilct.load` (ilct.sharing), imported when called
]
# The same floors under the names the modules had before issue 35's restructuring (for measuring that tree).
LAYERS_BEFORE: list[tuple[str, ...]] = [
    ("ilct.errors", "ilct.limits", "ilct.faults"),
    ("ilct.files", "ilct.grid", "ilct.animation", "ilct.accel", "ilct.distributed", "ilct.preempt"),
    ("ilct.nets", "ilct.data", "ilct.text", "ilct.optim", "ilct.flat", "ilct.nonfinite"),
    ("ilct.autoencoders",),
    ("ilct.latents",),
    ("ilct.objectives", "ilct.consistency", "ilct.flowmap", "ilct.edm", "ilct.sampling"),
    ("ilct.config",),
    ("ilct.runfolder", "ilct.checkpoint", "ilct.outputs", "ilct.run"),
    ("ilct.metrics", "ilct.analysis"),
    ("ilct.train", "ilct.step", "ilct.build", "ilct.batches", "ilct.warmstart", "ilct.branch"),
    ("ilct.demo", "ilct.sharing"),
    ("ilct.cli", "ilct.__main__", "ilct"),  # the package root: `ilct.load` (ilct.sharing), imported when called
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported name belongs to: the longest known prefix."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(known: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported module, made inside a function) for every internal import."""
    out = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text())
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            targets = {_target(name, known) for name in names if name.startswith("ilct")}
            for target in sorted(t for t in targets if t):  # one per statement and module imported
                if target != mod and not mod.startswith(target + "."):
                    out.append((mod, target, id(node) in inside))
    return out


def floor(mod: str, layers: list[tuple[str, ...]]) -> int:
    best, level = -1, 0
    for i, names in enumerate(layers):
        for prefix in names:
            if (mod == prefix or mod.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    return level


def cycles(edges: list[tuple[str, str, bool]]) -> list[list[str]]:
    """Strongly connected sets of two or more modules (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_report() -> dict:
    known = modules()
    edges = imports(known)
    top = sorted(m for m, p in known.items() if p.parent == SRC and p.name not in ("__init__.py", "__main__.py"))
    packages = sorted(module_name(p.parent) for p in SRC.glob("*/__init__.py"))
    layers = LAYERS if (SRC / "schema.py").is_file() else LAYERS_BEFORE  # the tree before issue 35 had no schema
    upward = sorted({(a, b) for a, b, _ in edges if floor(b, layers) > floor(a, layers)})
    return {"modules": len(known), "top_level_modules": len(top), "top_level": top, "packages": packages,
            "internal_imports": len(edges), "inside_functions": sum(1 for *_, f in edges if f),
            "cycles": cycles(edges), "upward_imports": [f"{a} -> {b}" for a, b in upward]}


def trace_report() -> dict:
    """The ilct files one training step passes through: a three-step `ilct train` on tiny synthetic data, traced
    from the second call of `training_step` to the third (one whole iteration of the loop: the schedule state, the
    batch, the update, the non-finite policy, the log line), and the whole command for comparison."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_fake_fmnist  # the tests' synthetic Fashion-MNIST files

    from ilct.cli import main

    root = Path(tempfile.mkdtemp())
    data = make_fake_fmnist(root / "fmnist")
    assert main(["autoencoder", "--out", str(root / "ae"), "--data-dir", str(data), "--steps", "1",
                 "--no-progress", "--device", "cpu"]) == 0
    argv = ["train", "--config", "fmnist-ilct", "--autoencoder", str(root / "ae"), "--data-dir", str(data),
            "--no-progress", "--set", f"data.cache_dir={root / 'cache'}", "--set", "train.total_steps=3",
            "--set", "train.batch_size=8", "--set", "train.sample_every=0", "--set", "train.log_every=1",
            "--set", "model.arch=DiT-T/4", "--set", "train.device=cpu",
            "--set", "consistency.s1=10"]  # N constant (s0 = s1), as within a stage of a long run
    assert main(argv + ["--out", str(root / "warm")]) == 0  # imports, caches: the traced run is the second
    calls: list[tuple[str, str]] = []

    def profile(frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(str(SRC)):
            calls.append((str(Path(frame.f_code.co_filename).relative_to(SRC.parent)), frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        rc = main(argv + ["--out", str(root / "run")])
    finally:
        sys.setprofile(None)
    assert rc == 0
    starts = [i for i, (f, name) in enumerate(calls) if name == "training_step" and f.endswith("step.py")]
    one_step = [f for f, _ in calls[starts[1]:starts[2]]]
    return {"one_step": _walk(_files(one_step, keep_nets=False)), "command": _walk(_files([f for f, _ in calls], False))}


def _files(path: list[str], keep_nets: bool) -> list[str]:
    """Consecutive calls in one file as one visit; the backbone's own files (ilct/nets/) left out unless kept."""
    kept = [f for f in path if keep_nets or not f.startswith("ilct/nets/")]
    return [f for i, f in enumerate(kept) if i == 0 or kept[i - 1] != f]


def _walk(path: list[str]) -> dict:
    left, returns = set(), 0
    for a, b in zip(path, path[1:]):
        left.add(a)
        returns += b in left
    return {"files": len(set(path)), "file_changes": len(path) - 1, "returns": returns, "path": path,
            "entries_per_file": {f: path.count(f) for f in sorted(set(path), key=path.count, reverse=True)[:8]}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the report here")
    p.add_argument("--no-trace", action="store_true", help="skip the training trace")
    args = p.parse_args()
    report = import_report()
    if not args.no_trace:
        report["trace"] = trace_report()
    print(f"{report['modules']} modules, {report['top_level_modules']} at the top of ilct/, "
          f"{len(report['packages'])} packages; {report['internal_imports']} internal imports, "
          f"{report['inside_functions']} inside functions; {len(report['cycles'])} cycle(s) "
          f"{[len(c) for c in report['cycles']]}; {len(report['upward_imports'])} upward import(s)")
    for c in report["cycles"]:
        print("  cycle:", " ".join(c))
    for u in report["upward_imports"]:
        print("  upward:", u)
    for key, t in report.get("trace", {}).items():
        print(f"{'one training step' if key == 'one_step' else 'the whole train command'}: {t['files']} files "
              f"entered, {t['file_changes']} changes of file, {t['returns']} returns to a file already left; "
              f"most entered: {t['entries_per_file']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
