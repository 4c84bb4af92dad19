"""benchmarks/quality/video_seeds.py: several training seeds' video reports in one headline file (issue 36), on
reports written here (no model, no scorer: seconds)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds():
    spec = importlib.util.spec_from_file_location("video_seeds", ROOT / "benchmarks" / "quality" / "video_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(k: int, n: int) -> dict:
    return {"acc": k / n, "ci95": [0.0, 1.0], "k": k, "n": n}


def report(cls_k: int, motion_k: int, n: int = 40, *, finger: str = "clip-cls-x", nfe: int = 1) -> dict:
    """A video.py report with one seen and one held-out row at `nfe`, w = 1; classes 0 and 1, half the clips each."""
    half = n // 2
    strict = {"class": rate(cls_k, n), "motion": rate(motion_k, n), "garment": rate(motion_k, n),
              "per_class": {"0": rate(cls_k // 2, half), "1": rate(cls_k - cls_k // 2, half)}}
    rows = [{"split": s, "nfe": nfe, "guidance": 1.0, "strict": strict} for s in ("seen", "heldout")]
    real = {s: {"strict": {"class": rate(n - 2, n), "motion": rate(n, n), "garment": rate(n, n)},
                "frozen_strict": {"class": rate(n - 3, n), "motion": rate(0, n), "garment": rate(n, n)}}
            for s in ("seen", "heldout")}
    return {"command": "python benchmarks/quality/video.py ...", "machine": "test", "date": "2026-12-06",
            "data": "moving_fmnist-32x8s1", "per_prompt": 8, "seed": 0, "strict_reference": {"clips": 10, "k": 2},
            "clip_classifier": {"fingerprint": finger}, "rows": rows, "real": real}


def write(tmp_path: Path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_seeds_are_pooled_with_their_spread_and_controls(seeds, tmp_path):
    a, b = write(tmp_path, "a.json", report(10, 20)), write(tmp_path, "b.json", report(30, 36))
    out = tmp_path / "head.json"
    assert seeds.main(["--report", f"s0={a}", "--report", f"s1={b}", "--train-command", "s0=ilct train x",
                       "--recipe", "r", "--out", str(out)]) == 0
    head = json.loads(out.read_text())
    assert {k for k in ("command", "machine", "date") if head.get(k)} == {"command", "machine", "date"}
    seen = next(r for r in head["rows"] if r["split"] == "seen")
    assert seen["class"]["pooled"]["k"] == 40 and seen["class"]["pooled"]["n"] == 80
    assert seen["class"]["pooled"]["acc"] == pytest.approx(0.5)
    lo, hi = seen["class"]["pooled"]["ci95"]
    assert lo == pytest.approx(0.3923, abs=1e-3) and hi == pytest.approx(0.6077, abs=1e-3)  # Wilson, 40 of 80
    assert seen["class"]["spread"] == pytest.approx(0.5)  # 0.25 against 0.75
    assert seen["seeds"]["s0"]["class"]["k"] == 10 and seen["seeds"]["s1"]["motion"]["k"] == 36
    assert seen["real"]["class"]["k"] == 38 and seen["frozen_real"]["motion"]["k"] == 0
    classes = head["per_class"]["seen nfe1 w1"]
    assert classes["0"]["k"] == 5 + 15 and classes["1"]["k"] == 5 + 15 and classes["0"]["n"] == 40
    assert head["sources"]["s0"]["train_command"] == "ilct train x" and head["sources"]["s1"]["train_command"] is None


def test_a_bar_is_reached_only_when_every_seed_passes(seeds):
    good, weak = report(36, 38), report(20, 38)  # class 0.9 / 0.5, motion 0.95
    bars = {(b["split"], b["measure"]): b for b in seeds.combine({"a": good, "b": good})["bars"]}
    assert bars[("seen", "class")]["reached"] and bars[("seen", "motion")]["reached"]
    assert bars[("heldout", "class")]["reached"]
    bars = {(b["split"], b["measure"]): b for b in seeds.combine({"a": good, "b": weak})["bars"]}
    assert not bars[("seen", "class")]["reached"]  # pooled 0.7 would pass; seed b does not
    assert bars[("seen", "class")]["pooled"] == pytest.approx(0.7)
    assert bars[("seen", "class")]["worst_seed"] == pytest.approx(0.5)
    assert bars[("seen", "motion")]["reached"]
    unscored = seeds.combine({"a": report(36, 38, nfe=2)})["bars"]
    assert not any(b["scored"] for b in unscored)  # no 1-NFE rows: the bars are not judged, not failed


@pytest.mark.parametrize("second, message", [
    (report(10, 20, finger="clip-cls-other"), "different clip classifiers"),
    ({**report(10, 20), "per_prompt": 16}, "differ in 'per_prompt'"),
    ({**report(10, 20), "seed": 1}, "differ in 'seed'"),
    (report(10, 20, nfe=2), "share no (split, NFE, w) row"),
    ({"rows": [{"split": "seen"}], "real": {}}, "not a strict-scored video report"),
    ("{not json", "is not a JSON report"),
])
def test_reports_that_cannot_be_pooled_are_refused_without_writing(seeds, tmp_path, capsys, second, message):
    a, b = write(tmp_path, "a.json", report(10, 20)), write(tmp_path, "b.json", second)
    out = tmp_path / "head.json"
    out.write_text("previous result")
    assert seeds.main(["--report", f"s0={a}", "--report", f"s1={b}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert out.read_text() == "previous result"


@pytest.mark.parametrize("args, message", [
    (["--report", "a.json"], "LABEL=VALUE"),
    (["--report", "s0=missing.json"], "no report at"),
    ([], "at least one --report"),
])
def test_bad_arguments_give_one_line(seeds, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert seeds.main(args + ["--out", "head.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "head.json").exists()


def test_a_label_given_twice_or_a_stray_train_command_is_refused(seeds, tmp_path, capsys):
    a = write(tmp_path, "a.json", report(10, 20))
    assert seeds.main(["--report", f"s0={a}", "--report", f"s0={a}", "--out", str(tmp_path / "o.json")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert seeds.main(["--report", f"s0={a}", "--train-command", "s9=x", "--out", str(tmp_path / "o.json")]) == 2
    assert "unknown label" in capsys.readouterr().err
