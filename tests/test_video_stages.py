"""benchmarks/quality/video_stages.py: issue 36's "no collapse" criterion over every checkpoint of a recipe's
seeds, on reports written here (no model, no scorer: seconds)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages():
    spec = importlib.util.spec_from_file_location("video_stages", ROOT / "benchmarks" / "quality" / "video_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(k: int, n: int, half: float) -> dict:
    acc = k / n
    return {"acc": acc, "ci95": [acc - half, acc + half], "k": k, "n": n}


def report(cls_k: int, garment_k: int, n: int = 100, *, half: float = 0.05, finger: str = "clip-cls-x",
           guided_k: int = 0) -> dict:
    """A video.py report with one seen row at 1 NFE, w = 1 (and a w = 2 row that the criterion must ignore)."""
    strict = {"class": rate(cls_k, n, half), "motion": rate(garment_k, n, half), "garment": rate(garment_k, n, half)}
    guided = {m: rate(guided_k, n, half) for m in ("class", "motion", "garment")}
    rows = [{"split": "seen", "nfe": 1, "guidance": 1.0, "strict": strict},
            {"split": "seen", "nfe": 1, "guidance": 2.0, "strict": guided}]
    return {"command": "python benchmarks/quality/video.py ...", "machine": "test", "date": "2026-12-06",
            "data": "moving_fmnist-32x8s1", "per_prompt": 8, "seed": 0, "strict_reference": {"clips": 10, "k": 2},
            "clip_classifier": {"fingerprint": finger}, "rows": rows, "real": {"seen": {}}}


def run(stages, tmp_path: Path, runs: dict[str, dict[int, dict]], *extra: str) -> tuple[int, Path]:
    args = []
    for label, by_step in runs.items():
        for step, data in by_step.items():
            path = tmp_path / f"{label}_{step}.json"
            path.write_text(json.dumps(data) if not isinstance(data, str) else data)
            args += ["--report", f"{label}:{step}={path}"]
    out = tmp_path / "stages.json"
    return stages.main(args + ["--out", str(out), *extra]), out


def test_a_steady_rise_does_not_collapse_and_the_table_has_every_checkpoint(stages, tmp_path):
    rc, out = run(stages, tmp_path, {"s0": {600: report(10, 50), 1200: report(20, 60), 1800: report(18, 58)},
                                      "s1": {600: report(12, 50), 1200: report(22, 62)}})
    assert rc == 0
    head = json.loads(out.read_text())
    assert head["collapsed"] == []
    assert [(e["seed"], e["step"]) for e in head["stages"]] == [("s0", 600), ("s0", 1200), ("s0", 1800),
                                                                ("s1", 600), ("s1", 1200)]
    last = head["stages"][2]
    assert last["class_drop"] == pytest.approx(0.02) and last["garment_drop"] == pytest.approx(0.02)
    assert last["class_allowed"] == pytest.approx(0.05)  # the interval; the spread at 1200 is also 0.02
    assert set(head["reports"]) == {"s0:600", "s0:1200", "s0:1800", "s1:600", "s1:1200"}


def test_a_drop_beyond_the_interval_is_a_collapse_and_the_w2_row_is_not_the_criterion(stages, tmp_path):
    rc, out = run(stages, tmp_path, {"s0": {600: report(30, 80, guided_k=90), 1200: report(30, 20)}})
    assert rc == 0
    collapsed = json.loads(out.read_text())["collapsed"]
    assert collapsed == [{"seed": "s0", "step": 1200, "measure": "garment", "from_step": 600,
                          "drop": pytest.approx(0.6), "allowed": pytest.approx(0.05)}]


def test_the_seed_spread_widens_the_allowance_when_it_is_larger(stages, tmp_path):
    # at step 600 the seeds differ by 0.20 in class; a drop of 0.10 is inside that, though outside the interval
    rc, out = run(stages, tmp_path, {"s0": {600: report(40, 50), 1200: report(30, 50)},
                                      "s1": {600: report(20, 50), 1200: report(20, 50)}})
    assert rc == 0
    head = json.loads(out.read_text())
    assert head["collapsed"] == []
    assert head["stages"][1]["class_allowed"] == pytest.approx(0.20)
    rc, out = run(stages, tmp_path, {"s0": {600: report(40, 50), 1200: report(30, 50)}})
    assert json.loads(out.read_text())["collapsed"][0]["measure"] == "class"  # one seed: the interval only


@pytest.mark.parametrize("runs, message", [
    ({"s0": {600: "{not json"}}, "not a JSON report"),
    ({"s0": {600: report(1, 1), 1200: report(1, 1, finger="other")}}, "different clip classifiers"),
    ({"s0": {600: {**report(1, 1), "rows": [{"split": "seen", "nfe": 2, "guidance": 1.0,
                                             "strict": report(1, 1)["rows"][0]["strict"]}]}}}, "no seen row at 1 NFE"),
])
def test_bad_reports_are_refused_in_one_line_and_nothing_is_written(stages, tmp_path, capsys, runs, message):
    rc, out = run(stages, tmp_path, runs)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("arg", ["s0=x.json", "s0:abc=x.json", ":600=x.json", "s0:600="])
def test_malformed_report_arguments_are_refused(stages, tmp_path, capsys, arg):
    out = tmp_path / "stages.json"
    assert stages.main(["--report", arg, "--out", str(out)]) == 2 and not out.exists()
    assert "LABEL:STEP=PATH" in capsys.readouterr().err


def test_a_step_given_twice_and_a_missing_prereg_are_refused(stages, tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(report(1, 1)))
    out = tmp_path / "stages.json"
    assert stages.main(["--report", f"s0:600={path}", "--report", f"s0:600={path}", "--out", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err
    assert stages.main(["--report", f"s0:600={path}", "--prereg", str(tmp_path / "none.md"), "--out", str(out)]) == 2
    assert "--prereg" in capsys.readouterr().err and not out.exists()
