"""benchmarks/quality/video_probes.py: several runs' checkpoints side by side, on reports written here (no model,
no scorer: seconds)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probes():
    spec = importlib.util.spec_from_file_location("video_probes", ROOT / "benchmarks" / "quality" / "video_probes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(k: int, n: int = 100) -> dict:
    return {"acc": k / n, "ci95": [k / n - 0.05, k / n + 0.05], "k": k, "n": n}


def report(motion: float, *, finger: str = "clip-cls-x", splits=("seen", "heldout"), nfe: int = 1) -> dict:
    """A video.py report with one row per split at `nfe`, w = 1, and a w = 2 row that must not be tabulated."""
    def row(split, w, m):
        return {"split": split, "nfe": nfe, "guidance": w, "n": 100, "class_acc": 0.2, "class_chance": 0.1,
                "motion_acc": m, "motion_chance": 0.27, "frame_fid": 300.0,
                "strict": {"class": rate(5), "motion": rate(int(100 * m) // 2), "garment": rate(60)}}
    rows = [row(s, 1.0, motion) for s in splits] + [row("seen", 2.0, 0.99)]
    return {"command": "python benchmarks/quality/video.py ...", "machine": "test", "data": "moving_fmnist-32x8s1",
            "per_prompt": 8, "seed": 0, "strict_reference": {"clips": 10, "k": 2},
            "clip_classifier": {"fingerprint": finger}, "rows": rows, "real": {"seen": {}}}


def run(probes, tmp_path: Path, reports: dict[str, dict | str], *extra: str) -> tuple[int, Path]:
    args = []
    for name, data in reports.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
        args += ["--probe", f"{name}={path}"]
    out = tmp_path / "probes.json"
    return probes.main(args + ["--out", str(out), *extra]), out


def test_each_probe_gets_its_w1_rows_of_both_splits_its_switches_and_the_prereg(probes, tmp_path):
    prereg = tmp_path / "p.md"
    prereg.write_text("A reaches 0.5")
    rc, out = run(probes, tmp_path, {"ict": report(0.25), "A": report(0.75)},
                  "--switches", "A=--set method.metric=cauchy", "--prereg", str(prereg))
    assert rc == 0
    head = json.loads(out.read_text())
    assert [p["probe"] for p in head["probes"]] == ["ict", "A"]
    a = head["probes"][1]
    assert a["switches"] == "--set method.metric=cauchy" and head["probes"][0]["switches"] == ""
    assert [r["split"] for r in a["rows"]] == ["seen", "heldout"]
    assert a["rows"][0]["loose_motion"] == 0.75  # the w = 1 row, not the w = 2 one (0.99)
    assert a["rows"][0]["motion"]["k"] == 37 and a["rows"][0]["motion_chance"] == 0.27
    assert head["prereg"] == {str(prereg): "A reaches 0.5"} and set(head["reports"]) == {"ict", "A"}


def test_pools_count_their_probes_clips_together_and_every_pair_gets_a_difference_interval(probes, tmp_path):
    rc, out = run(probes, tmp_path, {"a0": report(0.9), "a1": report(0.7), "b0": report(0.3)},
                  "--pool", "A=a0,a1", "--pool", "B=b0")
    assert rc == 0
    head = json.loads(out.read_text())
    seen = head["pools"]["A"]["rows"][0]
    assert head["pools"]["A"]["probes"] == ["a0", "a1"] and seen["split"] == "seen"
    assert seen["motion"]["k"] == 45 + 35 and seen["motion"]["n"] == 200  # 90 // 2 and 70 // 2 of 100 each
    diff = [d for d in head["differences"] if d["split"] == "seen" and d["measure"] == "motion"]
    assert len(diff) == 1 and (diff[0]["a"], diff[0]["b"]) == ("A", "B")
    assert diff[0]["difference"] == pytest.approx(0.40 - 0.15)
    lo, hi = diff[0]["ci95"]
    assert 0 < lo < 0.25 < hi  # A's pooled motion is above B's: the interval excludes 0
    same = [d for d in head["differences"] if d["split"] == "seen" and d["measure"] == "class"][0]
    assert same["difference"] == 0 and same["ci95"][0] < 0 < same["ci95"][1]


@pytest.mark.parametrize("reports, extra, message", [
    ({"a": "{not json"}, (), "not a JSON report"),
    ({"a": report(0.3), "b": report(0.3, finger="other")}, (), "different clip classifiers"),
    ({"a": report(0.3, splits=("seen",))}, (), "no heldout row at 1 NFE"),
    ({"a": report(0.3, nfe=2)}, (), "no seen row at 1 NFE"),
    ({"a": report(0.3)}, ("--switches", "b=x"), "names no probe: b"),
    ({"a": report(0.3)}, ("--prereg", "/nonexistent/p.md"), "--prereg"),
    ({}, (), "at least one --probe"),
    ({"a": report(0.3)}, ("--pool", "A=a,b"), "--pool A names no probe: b"),
    ({"a": report(0.3)}, ("--pool", "A=a,a"), "--pool A names a probe twice"),
    ({"a": report(0.3)}, ("--pool", "A"), "--pool must look like LABEL=VALUE"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(probes, tmp_path, capsys, reports, extra, message):
    rc, out = run(probes, tmp_path, reports, *extra)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("arg", ["a", "=x.json", "a="])
def test_malformed_probe_arguments_are_refused(probes, tmp_path, capsys, arg):
    out = tmp_path / "probes.json"
    assert probes.main(["--probe", arg, "--out", str(out)]) == 2 and not out.exists()
    assert "--probe must look like LABEL=VALUE" in capsys.readouterr().err


def test_a_probe_name_given_twice_is_refused(probes, tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(report(0.3)))
    out = tmp_path / "probes.json"
    assert probes.main(["--probe", f"a={path}", "--probe", f"a={path}", "--out", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err and not out.exists()


def seeds_file(tmp_path: Path, *, finger: str = "clip-cls-x", nfe: int = 1, name: str = "seeds.json") -> Path:
    """A video_seeds.py file (the pooled headline's shape): two seeds' strict counts per split at `nfe`, w = 1."""
    def row(split):
        return {"split": split, "nfe": nfe, "guidance": 1.0,
                "seeds": {"seed0": {"class": rate(4), "motion": rate(10), "garment": rate(50)},
                          "seed1": {"class": rate(6), "motion": rate(20), "garment": rate(70)}}}
    data = {"sources": {"seed0": {}, "seed1": {}}, "data": "moving_fmnist-32x8s1", "per_prompt": 8, "seed": 0,
            "strict_reference": {"clips": 10, "k": 2}, "clip_classifier": {"fingerprint": finger},
            "rows": [row("seen"), row("heldout")]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_a_file_of_pooled_seeds_is_one_more_pool_and_comes_last_in_the_differences(probes, tmp_path):
    rc, out = run(probes, tmp_path, {"a0": report(0.9)}, "--pool", "A=a0", "--seeds", f"H={seeds_file(tmp_path)}")
    assert rc == 0
    head = json.loads(out.read_text())
    h = head["pools"]["H"]
    assert h["seeds"] == ["seed0", "seed1"] and h["probes"] == [] and h["seeds_file"].endswith("seeds.json")
    seen = h["rows"][0]
    assert seen["split"] == "seen" and (seen["motion"]["k"], seen["motion"]["n"]) == (30, 200)
    assert (seen["class"]["k"], seen["garment"]["k"]) == (10, 120)
    diff = [d for d in head["differences"] if d["split"] == "seen" and d["measure"] == "motion"]
    assert len(diff) == 1 and (diff[0]["a"], diff[0]["b"]) == ("A", "H")
    assert diff[0]["difference"] == pytest.approx(0.45 - 0.15) and diff[0]["ci95"][0] > 0


@pytest.mark.parametrize("kind, extra, message", [
    ("finger", (), "different clip classifiers"),
    ("nfe", (), "has no seen row at 1 NFE"),
    ("garbage", (), "is not a JSON file of pooled seeds"),
    ("report", (), "is not a file of pooled seeds"),
    ("ok", ("--pool", "H=a"), "--seeds H is also a --pool name"),
])
def test_a_bad_file_of_pooled_seeds_is_refused_in_one_line(probes, tmp_path, capsys, kind, extra, message):
    if kind == "garbage":
        path = tmp_path / "seeds.json"
        path.write_text("{nope")
    elif kind == "report":
        path = tmp_path / "seeds.json"
        path.write_text(json.dumps(report(0.3)))
    else:
        path = seeds_file(tmp_path, finger="other" if kind == "finger" else "clip-cls-x", nfe=2 if kind == "nfe" else 1)
    rc, out = run(probes, tmp_path, {"a": report(0.3)}, "--seeds", f"H={path}", *extra)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
