"""The benchmarks' definitions and tiny CPU runs of the speed ones (the real runs: docs/results, docs/performance.md)."""

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from ilct.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# the benchmarks package sits at the repository root, outside src/: as each script does when run by path
sys.path.insert(0, str(ROOT))
from benchmarks.quality import ablation as ab  # noqa: E402
from benchmarks.quality import stability as st  # noqa: E402
from benchmarks.speed import throughput as tp  # noqa: E402


def test_rows_are_cumulative_and_end_at_the_full_method():
    assert ab.row_overrides("ict-baseline") == []
    assert ab.row_overrides("+cauchy") == ["method.metric=cauchy"]
    assert ab.row_overrides("+ot") == ["method.metric=cauchy", "method.diffusion_loss=true", "method.ot_coupling=true"]
    full = load_config("fmnist-ict", ab.row_overrides("ilct-full"))
    assert full.method == load_config("fmnist-ilct").method  # the last row is exactly the ilct preset
    assert ab.row_overrides("edm-diffusion") == ["train.objective=edm"]
    element = load_config("fmnist-ict", ab.row_overrides("ilct-full-cauchy-element"))
    assert element.method == replace(full.method, metric="cauchy_element")  # only the metric differs
    with pytest.raises(ValueError):
        ab.row_overrides("+magic")
    jobs = ab.jobs(ab.ROWS, [0])
    assert len(jobs) == 10 and ("ict-baseline", 1) in jobs and ("ilct-full", 1) in jobs


def test_dry_run_lists_the_commands(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "ablation.py"), "--latents", "taef2",
                           "--autoencoder", "weights", "--work", str(tmp_path), "--dry-run", "--steps", "10"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("10 runs of 10 steps") for line in lines)
    assert sum(" train " in line for line in lines) == 10
    assert any("--rgb" in line and "taesd:weights" in line for line in lines)


def test_dry_run_of_both_latent_spaces(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "ablation.py"), "--latents", "builtin,taef2",
                           "--autoencoder", "ae,weights", "--work", str(tmp_path), "--dry-run", "--steps", "10"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    trains = [line for line in lines if " train " in line]
    assert len(trains) == 20
    assert sum("model.in_channels=32" in line for line in trains) == 10  # the TAEF2 half
    assert any("train.objective=edm" in line and "/taef2/" in line for line in trains)
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "ablation.py"), "--latents", "builtin,taef2",
                          "--autoencoder", "ae", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode != 0 and "one --autoencoder per latent space" in bad.stderr


def test_throughput_modes_and_a_tiny_cpu_run(tmp_path):
    assert tp.parse_mode("ilct") == ("ilct", "blocks", None, [])
    assert tp.parse_mode("ilct[model:reduce-overhead]+train.fused_optimizer=false") == (
        "ilct", "model", "reduce-overhead", ["train.fused_optimizer=false"])
    for bad in ("reference+train.compile=true", "ilct[everything]", "fast"):
        with pytest.raises(SystemExit):
            tp.parse_mode(bad)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed" / "throughput.py"), "--device", "cpu", "--models",
                           "DiT-T/2", "--batches", "2", "--steps", "1", "--warmup", "1", "--latent", "8", "--no-compile",
                           "--no-sampling", "--modes", "reference,ilct,ilct+train.fused_optimizer=false",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "performance.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["reference", "ilct", "ilct+train.fused_optimizer=false"]
    assert all(r["img_per_s"] > 0 and 0 < r["mfu"] for r in rows), rows


def test_optimizer_step_benchmark_runs(tmp_path):
    out = tmp_path / "opt.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed" / "optimizer_step.py"), "--model", "DiT-T/2",
                           "--device", "cpu", "--reps", "1", "--ways", "lists,flat", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["way"] for r in rows] == ["lists", "flat"] and rows[0]["params"] == rows[1]["params"] > 0


def test_memory_traffic_counts_less_with_the_bf16_residual_stream(tmp_path):
    out = tmp_path / "traffic.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed" / "memory_traffic.py"), "--model", "DiT-T/2",
                           "--latent", "8", "--probe", "2", "4", "--batch", "16", "--out", str(out),
                           "--modes", "ilct,ilct+train.bf16_residual=true"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stderr) < 2000  # Inductor's metrics log is needed for the count, not on the terminal
    plain, stream = json.loads(out.read_text())["rows"]
    assert plain["fused_mb_per_sample"] > 0 and plain["extern_mb_per_sample"] > 0
    assert stream["fused_mb_per_step"] == plain["fused_mb_per_step"]  # the weights' casts: the same
    assert stream["extern_gb"] == plain["extern_gb"]  # the same matrix products
    assert stream["fused_mb_per_sample"] < 0.95 * plain["fused_mb_per_sample"]  # the stream moves 2 bytes, not 4


def test_precision_losses_compares_settings_with_the_first(tmp_path, tiny_autoencoder, fake_fmnist):
    script = str(ROOT / "benchmarks" / "quality" / "precision_losses.py")
    common = ["--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist), "--steps", "4",
              "--log-every", "2", "--work", str(tmp_path / "work")]
    one = subprocess.run([sys.executable, script, *common, "--settings", "train.precision=fp32"],
                         capture_output=True, text=True)
    assert one.returncode != 0 and "at least two settings" in one.stderr
    bad = subprocess.run([sys.executable, script, *common, "--settings", "train.precision=fp32;train.bf16_residual=true"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "train.bf16_residual needs train.precision=bf16" in bad.stderr
    out = tmp_path / "losses.json"
    proc = subprocess.run([sys.executable, script, *common, "--out", str(out),
                           "--settings", "train.precision=fp32;train.precision=bf16 train.bf16_residual=true"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = json.loads(out.read_text())["rows"]
    assert list(first["losses"]) == ["2", "4"] and first["vs_first"]["max_abs_rel_diff"] == 0
    # within bf16 tolerance of fp32. Whether the difference is above 0 depends on how the CPU's bf16 kernels
    # round (it is about 1e-7 after 4 steps with the fp32 final layer): that bf16 really computed in bf16 is
    # tested by construction, on the layers' dtypes, in test_speed_switches.
    assert 0 <= second["vs_first"]["max_abs_rel_diff"] < 0.05 and second["vs_first"]["logged_steps"] == 2
    assert second["setting"] == "train.precision=bf16 train.bf16_residual=true" and len(second["losses"]) == 2


def test_bf16_noise_floor_tiny_run(tmp_path):
    out = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "bf16_noise_floor.py"), "--arch", "DiT-T/4",
                           "--latent", "8", "--batch", "4", "--levels", "11,641", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {(r["N"], r["setting"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6 and rows[(641, "fp32")]["r_round_mean"] == 0.0
    assert rows[(641, "fp32")]["c"] == pytest.approx(2.53e-4, rel=1e-2)  # the adaptive c(641)
    for N in (11, 641):  # the fp32 output removes the last rounding: less noise in r
        assert 0 < rows[(N, "bf16, fp32 output")]["r_round_mean"] < rows[(N, "bf16, bf16 output")]["r_round_mean"]


def test_unet_vs_dit_tiny_run(tmp_path, tiny_autoencoder, fake_fmnist):
    out = tmp_path / "cmp.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "unet_vs_dit.py"), "--tiny",
                           "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
                           "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dit, unet = json.loads(out.read_text())["rows"]
    assert (dit["arch"], dit["family"], unet["arch"], unet["family"]) == ("DiT-T/4", "DiT", "ADM-T", "UNet")
    assert unet["parameters"] == 828_068 - 1_472 and dit["parameters"] > 0  # fmnist-ilct has NsLN: no GroupNorm gains
    for row in (dit, unet):
        assert list(row["losses"]) == ["2", "4"] and all(np.isfinite(v) for v in row["losses"].values())
        assert row["seconds"] > 0 and (Path(row["run"]) / "checkpoints").is_dir()


def objectives_script() -> str:
    return str(ROOT / "benchmarks" / "quality" / "objectives.py")


def test_objectives_dry_run_lists_each_rows_settings_seeds_and_the_halved_warm_start(tmp_path):
    proc = subprocess.run([sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae",
                           "--work", str(tmp_path), "--dry-run", "--steps", "11"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    trains = [line.split() for line in proc.stdout.splitlines() if " train " in line]
    by_run = {Path(c[c.index("--out") + 1]).name: c for c in trains}
    sets = {run: [c[i + 1] for i, a in enumerate(c) if a == "--set"] for run, c in by_run.items()}
    preset = {run: c[c.index("--config") + 1] for run, c in by_run.items()}
    expected = {"ict": ("fmnist-ict", []), "ilct": ("fmnist-ilct", []), "meanflow": ("fmnist-meanflow", []),
                "meanflow+cauchy+ot": ("fmnist-meanflow", ["meanflow.metric=cauchy", "method.ot_coupling=true"]),
                "meanflow+cauchy+ot+nsln": ("fmnist-meanflow", ["meanflow.metric=cauchy", "method.ot_coupling=true",
                                                                "method.nsln=true"]),
                "edm-heun": ("fmnist-ilct", ["train.objective=edm"]),
                "alphaflow": ("fmnist-meanflow", ["meanflow.alpha_curriculum=true"])}
    assert sorted(by_run) == sorted(["ict_s0", "ict_s1", "ilct_s0", "ilct_s1", "meanflow_s0", "meanflow_s1",
                                     "meanflow+cauchy+ot_s0", "meanflow+cauchy+ot+nsln_s0", "alphaflow_s0", "edm-heun_s0",
                                     "edm-then-ilct.edm_s0", "edm-then-ilct_s0"])
    common = {"train.sample_every=0", "train.ckpt_every=11", "train.log_every=1", "train.total_steps=11"}
    from benchmarks.quality.objectives import PINNED

    for run, c in sets.items():
        row, seed = run.rsplit("_s", 1)
        assert f"train.seed={seed}" in c
        # the presets' settings of 2026-11-30 come first on every command, so that a later preset change does not
        # change what the documented commands train; the row's own changes come after them
        assert c[6:6 + len(PINNED)] == PINNED and "model.arch=ADM-T" in PINNED and "train.beta2=0.99" in PINNED
        if row in expected:
            assert preset[run] == expected[row][0] and set(c) - common - {f"train.seed={seed}"} - set(PINNED) == {
                f"data.latents={tmp_path / 'builtin' / 'latents'}", *expected[row][1]}, (run, c)
    # the warm start: 5 EDM steps on fmnist-ilct, then 6 steps of fmnist-ilct from that run: 11 in all
    edm, then = sets["edm-then-ilct.edm_s0"], sets["edm-then-ilct_s0"]
    assert preset["edm-then-ilct.edm_s0"] == preset["edm-then-ilct_s0"] == "fmnist-ilct"
    assert "train.objective=edm" in edm and "train.total_steps=5" in edm
    assert "train.total_steps=6" in then and not any(s.startswith("train.objective") for s in then)
    assert f"train.init_from={tmp_path / 'builtin' / 'runs' / 'edm-then-ilct.edm_s0'}" in then
    lines = proc.stdout.splitlines()
    assert lines.index(" ".join(by_run["edm-then-ilct_s0"])) > lines.index(" ".join(by_run["edm-then-ilct.edm_s0"]))
    evals = [line for line in lines if " eval " in line]
    assert len(evals) == 11 and all("--steps 1,2" in e for e in evals if "edm-heun" not in e)
    assert all("--split test" in e for e in evals)  # final numbers: the test split
    assert any("edm-heun_s0" in e and "--steps 18" in e for e in evals)
    pinned = subprocess.run([sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae", "--rows",
                             "ict,meanflow", "--seeds", "1", "--work", str(tmp_path), "--dry-run", "--steps", "11",
                             "--set", "train.beta2=0.999"], capture_output=True, text=True)
    trains = [line.split() for line in pinned.stdout.splitlines() if " train " in line]
    assert pinned.returncode == 0 and len(trains) == 2 and all("train.beta2=0.999" in c for c in trains)
    # --set comes after the pinned settings (it wins); --no-pin trains the presets as they are today
    assert all(c.index("train.beta2=0.999") > c.index("train.beta2=0.99") for c in trains)
    unpinned = subprocess.run([sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae",
                               "--rows", "ict", "--seeds", "0", "--work", str(tmp_path / "unpinned"), "--dry-run",
                               "--no-pin"], capture_output=True, text=True)
    trains = [line for line in unpinned.stdout.splitlines() if " train " in line]
    assert unpinned.returncode == 0 and len(trains) == 1 and not any(p in trains[0].split() for p in PINNED)
    # without --steps: the demo's budget, the fmnist-ilct preset's train.total_steps
    from ilct.demo import preset_steps

    assert f"train.total_steps={preset_steps()} " in trains[0]
    timed = subprocess.run([sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae", "--rows",
                            "edm-then-ilct", "--work", str(tmp_path), "--dry-run", "--seconds", "60", "--probe", "7"],
                           capture_output=True, text=True)
    assert timed.returncode == 0, timed.stderr
    probes = [line for line in timed.stdout.splitlines() if "/calibration/" in line]
    assert len(probes) == 2 and all("train.total_steps=7" in p and "init_from" not in p for p in probes)
    # an equal-wall-clock budget has its own run and eval folders, apart from the --steps runs
    runs = [line for line in timed.stdout.splitlines() if " train " in line and "/calibration/" not in line]
    assert len(runs) == 2 and all(f"{tmp_path / 'builtin' / 'runs-60s'}/" in r for r in runs)
    assert f"train.init_from={tmp_path / 'builtin' / 'runs-60s' / 'edm-then-ilct.edm_s0'}" in runs[1]
    assert f"--json {tmp_path / 'builtin' / 'eval-60s' / 'edm-then-ilct_s0.json'}" in timed.stdout


def test_objectives_refuses_a_work_folder_trained_for_another_step_budget(tmp_path):
    run = tmp_path / "builtin" / "runs" / "ict_s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  total_steps: 1000\n")
    (run / "keep").write_text("x")
    cmd = [sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae", "--rows", "ict",
           "--seeds", "0", "--work", str(tmp_path), "--dry-run"]
    proc = subprocess.run(cmd + ["--steps", "500"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"error: {run} holds a run of 1000 steps and --steps 500 gives it 500: give another "
                                   "--work (a run folder is resumed, never retrained)")
    assert (run / "keep").read_text() == "x"
    same = subprocess.run(cmd + ["--steps", "1000"], capture_output=True, text=True)  # the same budget resumes
    assert same.returncode == 0 and f"--out {run} " in same.stdout and "--resume" in same.stdout


def test_objectives_replot_draws_a_merged_results_file_and_refuses_another_file(tmp_path):
    row = {"latents": "builtin", "seed": 0, "features": "f (x)"}
    rows = [{**row, "name": "ict", "seconds": s, "fid": {"1": f, "2": f}} for s, f in ((240, 900.0), (900, 500.0))]
    rows.append({**row, "name": "edm-heun", "seconds": 240, "fid": {"35": 700.0}})
    out = tmp_path / "objectives.json"
    out.write_text(json.dumps({"command": "python objectives.py", "rows": rows}))
    cmd = [sys.executable, objectives_script(), "--replot"]
    proc = subprocess.run(cmd + ["--out", str(out), "--figure", str(tmp_path / "fig.png")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "fig.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = subprocess.run(cmd + ["--out", str(tmp_path / "bad.json"), "--figure", str(tmp_path / "no.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a results file of this benchmark" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.png").exists()



def test_objectives_merge_keeps_the_other_latent_spaces_rows_with_their_commands(tmp_path):
    """--merge: a second invocation (another latent space) adds its rows, floors and rates to the results file and
    keeps the first's, each row naming the command, machine and date that measured it; a space measured again is
    replaced, never doubled."""
    from benchmarks.quality.objectives import merged

    def report(space: str, command: str, fid: float) -> dict:
        return {"command": command, "machine": "m", "date": "d", "wall_seconds": 1.0, "missing": {}, "failed": [],
                "floors": {space: {"fid": 200.0}}, "rates": {space: {"ratio": {}}},
                "rows": [{"name": "ict", "latents": space, "seed": 0, "seconds": 1.0, "fid": {"1": fid}}]}

    path = tmp_path / "objectives.json"
    path.write_text(json.dumps(report("builtin", "first", 900.0)))
    both = merged(path, {**report("taef2", "second", 800.0), "rows": [
        {**report("taef2", "second", 800.0)["rows"][0], "command": "second"}]}, ["taef2"])
    assert [(r["latents"], r["command"]) for r in both["rows"]] == [("builtin", "first"), ("taef2", "second")]
    assert set(both["floors"]) == set(both["rates"]) == {"builtin", "taef2"} and both["commands"] == ["first", "second"]
    assert both["earlier_runs"][0]["command"] == "first"
    path.write_text(json.dumps(both))
    again = merged(path, {**report("builtin", "third", 700.0), "rows": [
        {**report("builtin", "third", 700.0)["rows"][0], "command": "third"}]}, ["builtin"])
    assert sorted((r["latents"], r["command"]) for r in again["rows"]) == [("builtin", "third"), ("taef2", "second")]
    assert [e["command"] for e in again["earlier_runs"]] == ["second"]


def test_objectives_merge_of_a_longer_budget_keeps_the_demo_budgets_rows_and_rates(tmp_path):
    """--merge --multiples 4: the 4x rows join the 1x rows of the same latent space (which stay, with their floor
    and rates); the 4x invocation's rates go under "<space>_x4", and running it again replaces only its own rows."""
    from benchmarks.quality.objectives import merged

    def report(command: str, multiple: int, names: list[str], floors: dict) -> dict:
        return {"command": command, "machine": "m", "date": "d", "floors": floors,
                "rates": {"builtin": {"ratio": {"meanflow": 0.5 + multiple}}},
                "rows": [{"name": n, "latents": "builtin", "seed": 0, "multiple": multiple, "fid": {"1": 9.0},
                          "command": command} for n in names]}

    path = tmp_path / "objectives.json"
    path.write_text(json.dumps(report("short", 1, ["ict", "ilct", "meanflow"], {"builtin": {"fid": 200.0}})))
    long = merged(path, report("long", 4, ["ilct", "meanflow"], {}), ["builtin"], [4])
    assert [(r["name"], r["multiple"], r["command"]) for r in long["rows"]] == [
        ("ict", 1, "short"), ("ilct", 1, "short"), ("meanflow", 1, "short"), ("ilct", 4, "long"), ("meanflow", 4, "long")]
    assert long["floors"] == {"builtin": {"fid": 200.0}}
    assert long["rates"] == {"builtin": {"ratio": {"meanflow": 1.5}}, "builtin_x4": {"ratio": {"meanflow": 4.5}}}
    assert long["earlier_runs"][0]["command"] == "short" and long["commands"] == ["short", "long"]
    path.write_text(json.dumps(long))
    again = merged(path, report("long again", 4, ["ilct"], {}), ["builtin"], [4])
    assert [(r["name"], r["multiple"], r["command"]) for r in again["rows"]] == [
        ("ict", 1, "short"), ("ilct", 1, "short"), ("meanflow", 1, "short"), ("ilct", 4, "long again")]
    assert again["rates"]["builtin_x4"] == {"ratio": {"meanflow": 4.5}} and set(again["rates"]) == {"builtin", "builtin_x4"}

def test_objectives_tiny_run_trains_evaluates_and_reports(tmp_path, tiny_autoencoder, fake_fmnist):
    from test_eval import PoolDetector

    import torch

    detector = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    out = tmp_path / "objectives.json"
    proc = subprocess.run([sys.executable, objectives_script(), "--tiny", "--latents", "builtin", "--autoencoder",
                           str(tiny_autoencoder), "--data-dir", str(fake_fmnist), "--rows", "meanflow,edm-then-ilct",
                           "--seeds", "0", "--features", "inception", "--inception-weights", str(detector),
                           "--cache-dir", str(tmp_path / "cache"), "--work", str(tmp_path / "work"), "--out", str(out),
                           "--figure", str(tmp_path / "fig.png")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "objectives.py" in report["command"] and report["machine"]
    meanflow, warm = report["rows"]
    assert (meanflow["name"], meanflow["seed"], meanflow["steps"]) == ("meanflow", 0, 4)
    assert warm["name"] == "edm-then-ilct" and warm["phase_steps"] == {"edm-then-ilct.edm_s0": 2, "edm-then-ilct_s0": 2}
    for row in (meanflow, warm):
        assert row["latents"] == "builtin" and row["seconds"] > 0 and row["budget"] == "steps 4"
        assert set(row["fid"]) == set(row["recall"]) == {"1", "2"} and all(np.isfinite(list(row["fid"].values())))
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "fig.png").stat().st_size > 0



def test_objectives_longer_budgets_reuse_meanflows_longer_run_and_checkpoint_it_for_the_wall_clock_rows(tmp_path):
    """--multiples 1,4: each row of --long-rows also at 4x the steps (seed 0); a MeanFlow row's 1x seed-0 row is the
    step-N checkpoint of its 4x run (no run of its own), whose checkpoints are kept every --ckpt-grid steps; a
    consistency row trains a run of its own at each budget (its curriculum is fitted to the run's length)."""
    cmd = [sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae", "--rows", "ict,meanflow",
           "--seeds", "0,1", "--multiples", "1,4", "--equal-wall-clock", "--steps", "10", "--ckpt-grid", "5",
           "--work", str(tmp_path), "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    trains = {Path(c[c.index("--out") + 1]).name: c for c in
              (line.split() for line in proc.stdout.splitlines() if " train " in line)}
    assert sorted(trains) == ["ict_s0", "ict_s0_x4", "ict_s1", "meanflow_s0_x4", "meanflow_s1"]
    assert "train.total_steps=40" in trains["ict_s0_x4"] and "train.ckpt_every=40" in trains["ict_s0_x4"]
    assert "train.total_steps=10" in trains["ict_s0"] and "train.ckpt_every=10" in trains["ict_s0"]
    for run, steps in (("meanflow_s0_x4", 40), ("meanflow_s1", 10)):  # every checkpoint kept for the wall-clock rows
        assert {f"train.total_steps={steps}", "train.ckpt_every=5", f"train.keep_checkpoints={steps // 5 + 2}"} <= set(
            trains[run])
    evals = {Path(e[e.index("--json") + 1]).stem: e for e in
             (line.split() for line in proc.stdout.splitlines() if " eval " in line)}
    assert sorted(evals) == ["ict_s0", "ict_s0_x4", "ict_s1", "meanflow_s0", "meanflow_s0_x4", "meanflow_s1"]
    mf = evals["meanflow_s0"]
    assert mf[mf.index("--run") + 1] == str(tmp_path / "builtin" / "runs" / "meanflow_s0_x4")
    assert mf[mf.index("--checkpoint") + 1] == str(tmp_path / "builtin" / "runs" / "meanflow_s0_x4" / "checkpoints" /
                                                   "step_000000010")
    assert "--checkpoint" not in evals["ict_s0_x4"]
    assert "at the checkpoint of the consistency rows' wall-clock" in proc.stdout
    # --no-prefix: MeanFlow's 1x seed-0 row gets a run of its own
    own = subprocess.run(cmd + ["--no-prefix"], capture_output=True, text=True)
    assert own.returncode == 0 and f"--out {tmp_path / 'builtin' / 'runs' / 'meanflow_s0'} " in own.stdout
    bad = subprocess.run([sys.executable, objectives_script(), "--latents", "builtin", "--autoencoder", "ae",
                          "--multiples", "1,4", "--seconds", "60", "--work", str(tmp_path), "--dry-run"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "go with --steps" in bad.stderr


def test_meanflow_run_prefix_is_the_shorter_run(tmp_path, tiny_autoencoder, fake_fmnist):
    """What --prefix relies on: MeanFlow has no schedule that depends on train.total_steps (constant lr, no
    curriculum), and each step's batch and noise come from (seed, step), so the step-k checkpoint of a longer run
    holds the weights of a k-step run (bit for bit on the CPU), with Cauchy and OT coupling on too."""
    import torch
    from safetensors.torch import load_file

    from ilct.cli import main
    from test_end_to_end import train_args

    cfg = tmp_path / "meanflow.yaml"  # the fmnist-meanflow row of objectives.py with Cauchy and OT, at a tiny size
    cfg.write_text(yaml.safe_dump({"base": "fmnist-meanflow", "model": {"arch": "DiT-T/4", "dropout": 0.1},
                                   "meanflow": {"metric": "cauchy"}, "method": {"ot_coupling": True},
                                   "train": {"batch_size": 8, "ckpt_every": 2, "keep_checkpoints": 5, "sample_every": 0,
                                             "log_every": 1, "num_sample_images": 4, "device": "cpu"}}))
    ckpt = {}
    for steps in (2, 4):
        assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, tmp_path / f"r{steps}", tmp_path / "cache",
                               "--set", f"train.total_steps={steps}")) == 0
        ckpt[steps] = tmp_path / f"r{steps}" / "checkpoints" / "step_000000002"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(ckpt[2] / name), load_file(ckpt[4] / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_objectives_tiny_longer_budget_wall_clock_rows_and_floor(tmp_path, tiny_autoencoder, fake_fmnist):
    """--tiny with --multiples 1,2 --equal-wall-clock --floor: each row records its steps, seconds, seconds per step,
    the settings it trained with and the classifier's fingerprint; MeanFlow is also scored at the consistency rows'
    wall-clock (a checkpoint of its own run); the autoencoder's floor is scored like the samples."""
    from test_eval import PoolDetector

    import torch

    detector = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    out = tmp_path / "objectives.json"
    proc = subprocess.run([sys.executable, objectives_script(), "--tiny", "--latents", "builtin", "--autoencoder",
                           str(tiny_autoencoder), "--data-dir", str(fake_fmnist), "--rows", "ict,meanflow",
                           "--long-rows", "meanflow", "--seeds", "0", "--multiples", "1,2", "--equal-wall-clock",
                           "--floor", "--parallel", "2", "--features", "inception", "--inception-weights", str(detector),
                           "--cache-dir", str(tmp_path / "cache"), "--work", str(tmp_path / "work"), "--out", str(out),
                           "--figure", str(tmp_path / "fig.png"), "--note", "a note"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["notes"] == ["a note"] and not report["missing"] and not report["failed"]
    rows = {(r["name"], r["multiple"], r["kind"]): r for r in report["rows"]}
    assert sorted(rows) == [("ict", 1, "steps"), ("meanflow", 1, "steps"), ("meanflow", 1, "wall-clock"),
                            ("meanflow", 2, "steps"), ("meanflow", 2, "wall-clock")]
    assert (rows["meanflow", 1, "steps"]["run"], rows["meanflow", 1, "steps"]["steps"]) == ("meanflow_s0_x2", 4)
    assert rows["meanflow", 2, "steps"]["steps"] == 8 and rows["ict", 1, "steps"]["steps"] == 4
    fingerprint = rows["ict", 1, "steps"]["features_fingerprint"]
    for r in report["rows"]:
        assert r["features_fingerprint"] == fingerprint and r["complete"] and r["split"] == "test"
        assert r["seconds"] > 0 and r["s_per_step"] > 0 and set(r["fid"]) == set(r["recall"]) == {"1", "2"}
        assert r["settings"]["train.beta2"] == 0.99 and r["settings"]["model.arch"] == "DiT-T/4"  # --tiny's network
    ratio = report["rates"]["builtin"]["ratio"]["meanflow"]
    assert ratio > 0 and rows["meanflow", 1, "wall-clock"]["planned_steps"] == round(4 * ratio)
    assert 1 <= rows["meanflow", 1, "wall-clock"]["steps"] <= 8
    floor = report["floors"]["builtin"]
    assert floor["n"] == 10 and floor["split"] == "test" and np.isfinite(floor["fid"])
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "fig.png").stat().st_size > 0

def test_faithful_tiny_run_reports_rows_and_the_tau_sweep(tmp_path, tiny_autoencoder, fake_fmnist):
    from test_eval import PoolDetector

    import torch

    detector = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "faithful.py"), "--tiny",
                           "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist), "--rows",
                           "mean,sample,cauchy-element", "--steps", "4", "--taus", "0.5,1.0", "--features", "inception",
                           "--inception-weights", str(detector), "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "faithful.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["mean", "sample", "cauchy-element"] and report["split"] == "test"
    assert all(r["steps"] == 4 and set(r["fid"]) == {"1", "2"} for r in report["rows"])
    assert len({r["fid"]["1"] for r in report["rows"]}) == 3  # three different models
    meta = json.loads((tmp_path / "work" / "latents" / "sample" / "meta.json").read_text())
    assert meta["posterior"] == "sample"
    sweep = json.loads((tmp_path / "out" / "tau_sweep.json").read_text())
    assert [(r["tau"], r["nfe"], r["latents"]) for r in sweep["rows"]] == [(0.5, 2, "builtin"), (1.0, 2, "builtin")]


def stability_script() -> str:
    return str(ROOT / "benchmarks" / "quality" / "stability.py")


def test_stability_branches_are_one_switch_each_against_the_preset(tmp_path):
    ilct = load_config("fmnist-ilct", st.STUDY_SETS)  # the study's source: the preset as it was (s1 160, beta2 0.999)
    values = {name: change.split("=") for name, (change, _) in st.BRANCHES.items()}
    assert all(len(v) == 2 for v in values.values())
    assert values["fixed-c"] == ["method.adaptive_c", "false"] and ilct.method.adaptive_c
    assert float(values["lr-half"][1]) == ilct.train.lr / 2
    assert float(values["lambda-diff-half"][1]) == ilct.method.lambda_diff / 2
    assert int(values["s1-double"][1]) == 2 * ilct.consistency.s1 and int(values["s1-half"][1]) == ilct.consistency.s1 // 2
    assert float(values["ema-0.999"][1]) == 0.999 != ilct.train.ema_decay
    assert values["pseudo-huber"][1] != ilct.method.metric
    assert float(values["beta2-0.99"][1]) == 0.99 != ilct.train.beta2
    for key, value in values.values():  # each a valid change of the source's config
        load_config("fmnist-ilct", [f"{key}={value}"])
    proc = subprocess.run([sys.executable, stability_script(), "--autoencoder", "ae", "--work", str(tmp_path), "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    trains = [line.split() for line in proc.stdout.splitlines() if " train " in line]
    assert [c[c.index("--config") + 1] for c in trains[:8]] == ["fmnist-ict"] + ["fmnist-ilct"] * 4 + ["fmnist-ict"] * 3
    assert all("train.total_steps=8000" in c and "train.ckpt_every=1000" in c and "train.keep_checkpoints=9" in c
               for c in trains[:8])
    assert "consistency.c_floor=0" in trains[1] and "consistency.c_floor=1" in trains[2]  # the paper's c, the floor
    assert {"consistency.c_floor=0", "train.beta2=0.99"} <= set(trains[3])
    assert {"consistency.c_floor=0", "train.beta2=0.99", "train.seed=1"} <= set(trains[4])  # the second seed
    assert "train.beta2=0.99" in trains[5] and not any("c_floor" in a for a in trains[5])  # iCT, same optimizer
    assert {"train.beta2=0.99", "train.seed=1"} <= set(trains[6]) and "train.seed=1" in trains[7]
    assert [a for a in trains[7] if "beta2" in a] == ["train.beta2=0.999"]  # iCT's second seed, the study's setting
    for c in trains[:8]:  # the study's setting first, so that a base's own changes override it
        sets = [c[i + 1] for i, a in enumerate(c) if a == "--set"]
        assert sets.index("model.arch=DiT-T/2") < sets.index("consistency.s1=160") < sets.index("train.beta2=0.999")
        assert all(sets.index("train.beta2=0.999") < sets.index(x) for x in sets if x == "train.beta2=0.99")
    source = str(tmp_path / "runs" / "ilct" / "checkpoints" / "step_000004000")
    branches = trains[8:]
    assert len(branches) == len(st.BRANCHES) and all(c[c.index("--branch-from") + 1] == source for c in branches)
    assert [c[c.index("--set") + 1] for c in branches] == [change for change, _ in st.BRANCHES.values()]
    assert "96000 training steps" in proc.stdout and "CPU hours" in proc.stdout
    bad = subprocess.run([sys.executable, stability_script(), "--autoencoder", "ae", "--dry-run", "--branch-step", "4500"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--branch-step" in bad.stderr
    bad = subprocess.run([sys.executable, stability_script(), "--autoencoder", "ae", "--dry-run", "--bases", "ict"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--bases" in bad.stderr  # branches need the ilct run


def test_stability_tiny_run_curves_branches_and_residuals(tmp_path, tiny_autoencoder, fake_fmnist):
    from test_eval import PoolDetector

    import torch

    detector = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    out = tmp_path / "stability.json"
    argv = [sys.executable, stability_script(), "--tiny", "--autoencoder", str(tiny_autoencoder), "--data-dir",
            str(fake_fmnist), "--bases", "ict,ilct", "--branches", "fixed-c", "--features", "inception", "--inception-weights", str(detector),
            "--cache-dir", str(tmp_path / "cache"), "--work", str(tmp_path / "work"), "--out", str(out),
            "--figure", str(tmp_path / "fig.png")]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "stability.py" in report["command"] and report["machine"]
    points = {(p["run"], p["step"]): p for p in report["curves"]}
    assert sorted(points) == [("ict", 2), ("ict", 4), ("ilct", 2), ("ilct", 4), ("ilct@2+fixed-c", 4)]
    for p in points.values():
        assert set(p["fid"]) == set(p["recall"]) == {"1", "2"} and all(np.isfinite(list(p["fid"].values())))
        assert p["residual_scale"]["N"] == p["N"] and p["residual_scale"]["rms_median"] > 0
    fixed, adaptive = points[("ilct@2+fixed-c", 4)], points[("ilct", 4)]
    assert fixed["branch"] == {"from_step": 2, "change": "method.adaptive_c=false", "name": "fixed-c"}
    assert adaptive["branch"] is None and fixed["N"] == adaptive["N"] == 81  # the tiny curriculum's stage at step 4
    assert adaptive["c"] == pytest.approx(adaptive["c_adaptive"]) and fixed["c"] == pytest.approx(points[("ict", 4)]["c"])
    assert fixed["fid"] != adaptive["fid"]
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "fig.png").stat().st_size > 0
    again = subprocess.run(argv, capture_output=True, text=True)  # run again: everything is there, nothing redone
    assert again.returncode == 0 and json.loads(out.read_text())["curves"] == report["curves"]


def test_level_gradients_tiny_run(tmp_path, tiny_autoencoder, fake_fmnist):
    from ilct.cli import main
    from test_end_to_end import tiny_config, train_args

    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, total_steps=2, ckpt_every=2, sample_every=0)
    assert main(train_args(cfg, tiny_autoencoder, fake_fmnist, run, tmp_path / "cache")) == 0
    out, fig = tmp_path / "lg.json", tmp_path / "lg.png"
    script = str(ROOT / "benchmarks" / "quality" / "level_gradients.py")
    proc = subprocess.run([sys.executable, script, "--run", f"tiny={run}", "--steps", "2", "--levels", "5,9",
                           "--metrics", "cauchy,pseudo_huber", "--n", "4", "--out", str(out), "--plot", str(fig)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["N"], r["metric"]) for r in rows] == [(5, "cauchy"), (5, "pseudo_huber"), (9, "cauchy"), (9, "pseudo_huber")]
    for r in rows:
        assert len(r["levels"]) == r["N"] - 1 and 0 <= r["finest_share_of_consistency"] <= 1
        assert r["expected_grad"]["consistency"] > 0 and r["c"] > 0
    assert rows[0]["c"] == rows[1]["c"]  # the run's c(N) for both metrics unless --c-of-metric
    if importlib.util.find_spec("matplotlib"):
        assert fig.stat().st_size > 0
    bad = subprocess.run([sys.executable, script, "--run", str(run), "--steps", "2", "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "NAME=RUN_DIR" in bad.stderr


def test_demo_sweep_tiny_run_scores_on_val_and_reports_the_winner_on_test(tmp_path, tiny_autoencoder, fake_fmnist):
    from test_eval import PoolDetector

    import torch

    detector = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    out = tmp_path / "sweep.json"
    argv = [sys.executable, str(ROOT / "benchmarks" / "quality" / "demo_sweep.py"), "--tiny", "--autoencoder",
            str(tiny_autoencoder), "--data-dir", str(fake_fmnist), "--configs", "base,lr-2e-3,ae-2000", "--features",
            "inception", "--inception-weights", str(detector), "--cache-dir", str(tmp_path / "cache"), "--work",
            str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "demo_sweep.py" in report["command"] and report["machine"] and report["select_split"] == "val"
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["base", "lr-2e-3", "ae-2000"] and rows["lr-2e-3"]["settings"] == {"train.lr": "2.0e-3"}
    assert rows["base"]["steps"] == 4 and rows["ae-2000"]["autoencoder_steps"] == 2000
    # a learning rate does not change a step's work: base's steps, without a probe of its own
    assert rows["lr-2e-3"]["steps"] == 4 and rows["lr-2e-3"]["rate_from"].startswith("base")
    assert rows["base"]["rate_from"] == "probe" and not (tmp_path / "work" / "probes" / "lr-2e-3").exists()
    for r in rows.values():
        assert set(r["val_fid"]) == set(r["val_recall"]) == {"1", "2"} and np.isfinite(list(r["val_fid"].values())).all()
    winner = report["winner"]
    assert winner == min(rows, key=lambda c: rows[c]["val_fid"]["1"])
    assert "test_fid" in rows["base"] and "test_fid" in rows[winner]
    assert [row["tau"] for row in rows[winner]["val_tau_sweep"]] == [0.2, 0.5, 1.0, 1.382, 2.0]
    latents = json.loads((tmp_path / "work" / "latents-ae1000" / "meta.json").read_text())
    assert latents["dataset"] == "fashion_mnist/fit@32" and latents["count"] == 256 - 256 // 12  # never the val images
    again = subprocess.run(argv, capture_output=True, text=True)  # run again: everything is there, nothing redone
    assert again.returncode == 0 and json.loads(out.read_text())["rows"] == report["rows"]


def test_demo_sweep_probes_only_the_configurations_whose_step_costs_differ(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "demo_sweep.py"), "--autoencoder", "ae",
                           "--configs", "base,dit-t4,batch-32,lr-2e-3,s1-80,ema-0.999,ae-2000,beta2-0.99+s1-80,"
                           "beta2-0.99+s1-80+cosine,adm-t+beta2-0.99+s1-80+lr-2e-3", "--work", str(tmp_path),
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    probed = sorted(line.split(" --out ")[1].split()[0].rsplit("/", 1)[1] for line in proc.stdout.splitlines()
                    if f"{tmp_path / 'probes'}/" in line)
    # the UNet at 2e-3 is timed by the UNet's own probe: they differ only in the learning rate
    assert probed == ["adm-t+beta2-0.99+s1-80", "base", "batch-32", "dit-t4"]
    for line in (x for x in proc.stdout.splitlines() if " train " in x):  # the sweep's base: the preset as it was
        sets = [a for a in line.split() if "=" in a and not a.startswith("--")]
        assert sets.index("model.arch=DiT-T/2") < min(i for i, a in enumerate(sets) if a.startswith("consistency."))
        assert all(sets.index("model.arch=DiT-T/2") < i for i, a in enumerate(sets) if a == "model.arch=ADM-T")
        assert sets.index("consistency.s1=160") < sets.index("train.beta2=0.999")
        assert all(sets.index("train.beta2=0.999") < i for i, a in enumerate(sets) if a == "train.beta2=0.99")
        assert all(sets.index("consistency.s1=160") < i for i, a in enumerate(sets) if a == "consistency.s1=80")


def test_budgets_tiny_run_trains_each_budget_as_its_own_run_and_scores_its_quarters(tmp_path, tiny_autoencoder, fake_fmnist):
    from test_eval import PoolDetector

    import torch

    detector = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    out = tmp_path / "budgets.json"
    argv = [sys.executable, str(ROOT / "benchmarks" / "quality" / "budgets.py"), "--tiny", "--autoencoder",
            str(tiny_autoencoder), "--data-dir", str(fake_fmnist), "--presets", "fmnist-ilct", "--multiples", "1,2",
            "--features", "inception", "--inception-weights", str(detector), "--cache-dir", str(tmp_path / "cache"),
            "--work", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "budgets.py" in report["command"] and report["machine"] and report["split"] == "test" and report["missing"] == []
    assert [(r["preset"], r["multiple"], r["steps"]) for r in report["rows"]] == [("fmnist-ilct", 1, 4), ("fmnist-ilct", 2, 8)]
    for r in report["rows"]:  # its own run (its curriculum over its own steps), scored at each quarter
        cfg = yaml.safe_load((Path(r["run"]) / "config.yaml").read_text())
        assert cfg["train"]["total_steps"] == r["steps"]
        assert [p["step"] for p in r["curve"]] == [r["steps"] // 4 * (i + 1) for i in range(4)]
        assert r["fid"] == r["curve"][-1]["fid"] and np.isfinite(list(r["fid"].values())).all() and r["seconds"] > 0
    again = subprocess.run(argv, capture_output=True, text=True)  # run again: everything is there, nothing redone
    assert again.returncode == 0 and json.loads(out.read_text())["rows"] == report["rows"]
    scored = subprocess.run([a if a != "1,2" else "1,2,3" for a in argv] + ["--score-only", "--note", "1x, 2x: above"],
                            capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr[-2000:]  # --score-only: the 3x budget is listed, not trained
    only = json.loads(out.read_text())
    assert only["rows"][:2] == report["rows"] and only["missing"] == ["fmnist-ilct at 3x (12 steps)"]
    assert report["notes"] == [] and only["notes"] == ["1x, 2x: above"]
    assert only["rows"][2]["curve"] == [] and not (tmp_path / "work" / "runs" / "fmnist-ilct-3x").exists()
    other = subprocess.run(argv + ["--set", "train.batch_size=4"], capture_output=True, text=True)
    assert other.returncode == 2 and "another --work" in other.stderr.strip().splitlines()[-1]  # not those runs
    assert json.loads(out.read_text())["rows"] == only["rows"]  # and nothing written
    bad = subprocess.run(argv[:2] + ["--autoencoder", "x", "--multiples", "4,x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--multiples" in bad.stderr.strip().splitlines()[-1]


def test_demo_report_gathers_the_demo_the_budgets_and_says_what_is_missing(tmp_path):
    summary = {"preset": "fmnist-ilct", "seconds": {"train": 300.0},
               "quality": {"split": "test", "n": 2000, "features": "f", "fid": {"1": 1.5, "2": 2.5},
                           "recall": {"1": 0.3, "2": 0.2}, "autoencoder_floor_fid": 0.5}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    row = lambda p, k, fid: {"preset": p, "multiple": k, "steps": 2000 * k, "run": f"r/{p}-{k}x", "sets": [],  # noqa: E731
                             "seconds": 200.0 * k if fid else None, "fid": fid and {"1": fid, "2": fid + 1},
                             "recall": fid and {"1": 0.1, "2": 0.2},
                             "curve": [{"step": 2000 * k, "features": "f"}] if fid else []}
    (tmp_path / "budgets.json").write_text(json.dumps({  # budgets.py's report: ilct at 16x not trained yet
        "split": "test", "n": 2000, "parallel": 1, "rows": [row("fmnist-ilct", 1, 9.0), row("fmnist-ilct", 4, 4.0),
                                                             row("fmnist-ilct", 16, None), row("fmnist-ict", 1, 8.0)],
        "missing": ["fmnist-ilct at 16x (32000 steps)"]}))  # and iCT's 4x and 16x never asked for
    script = [sys.executable, str(ROOT / "benchmarks" / "quality" / "demo_report.py")]
    out = tmp_path / "demo.json"
    args = ["--summary", str(tmp_path / "summary.json"), "--make-demo-seconds", "700", "--machine", "m",
            "--budgets", str(tmp_path / "budgets.json"), "--out", str(out)]
    proc = subprocess.run(script + args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["fid"] == {"1": 1.5, "2": 2.5} and report["train_seconds"] == 300.0 and report["split"] == "test"
    assert [(b["preset"], b["steps"], b["seconds"], b["fid"]["1"]) for b in report["budgets"]] == [
        ("fmnist-ilct", 2000, 200.0, 9.0), ("fmnist-ilct", 8000, 800.0, 4.0), ("fmnist-ict", 2000, 200.0, 8.0)]
    assert report["sweep"] == [] and report["missing"] == ["the sweep (benchmarks/quality/demo_sweep.py)",
                                                           "fmnist-ilct at 16x (32000 steps)", "fmnist-ict at 4x (8000 steps)",
                                                           "fmnist-ict at 16x (32000 steps)"]
    curves = [{"run": r, "step": k, "n": 2000, "fid": {"1": f, "2": f}, "recall": {"1": 0.4, "2": 0.4}}
              for r, k, f in (("ilct", 2000, 7.0), ("ilct", 8000, 3.0), ("ict", 8000, 5.0), ("other", 2000, 1.0))]
    (tmp_path / "stability.json").write_text(json.dumps({"machine": "m2", "curves": curves}))
    proc = subprocess.run(script + args[:-4] + ["--stability", str(tmp_path / "stability.json"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = [(b["preset"], b["changes"], b["steps"], b["seconds"], b["fid"]["1"]) for b in report["budgets"]]
    old = {"model.arch": "DiT-T/2", "consistency.s1": "160", "train.beta2": "0.999"}  # as changes to today's presets
    # only each run's last checkpoint: its step 2,000 is not the 1x model (the curriculum scales with the run)
    assert rows == [("fmnist-ict", old, 8000, 1200.0, 5.0), ("fmnist-ilct", old, 8000, 1200.0, 3.0)]
    assert all(b["seconds_estimated"] and "m2" in b["features"] for b in report["budgets"])  # 300 s / 2000 steps
    from ilct.config import load_config

    steps = load_config("fmnist-ilct", []).train.total_steps  # no --budgets: all six of today's budgets missing
    assert f"fmnist-ict at 4x ({4 * steps} steps)" in report["missing"] and len(report["missing"]) == 1 + 6  # and the sweep
    # --budgets again: an earlier preset's report adds its rows (its sets are their changes), not its missing
    old_rows = [dict(row("fmnist-ilct", 4, 5.0), sets=["model.arch=DiT-T/2"])]
    (tmp_path / "old.json").write_text(json.dumps({"split": "test", "n": 2000, "parallel": 2, "demo_steps": 2000,
                                                   "rows": old_rows, "missing": ["fmnist-ict at 16x (32000 steps)"]}))
    proc = subprocess.run(script + args[:-2] + ["--budgets", str(tmp_path / "old.json"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(b["steps"], b["changes"]) for b in report["budgets"]][-1] == (8000, {"model.arch": "DiT-T/2"})
    assert len(report["budgets"]) == 4 and "fmnist-ict at 16x (32000 steps)" in report["missing"]
    assert "fmnist-ict at 4x (8000 steps)" in report["missing"]  # the first file's: its 2,000-step unit, no demo_steps
    summary["seconds"]["train"] = 0.0  # an `ilct demo` that reused its run measured no training
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    bad = subprocess.run(script + args, capture_output=True, text=True)
    assert bad.returncode == 2 and "no training seconds" in bad.stderr.strip().splitlines()[-1]


def test_demo_report_joins_sweep_parts_and_takes_the_last_parts_winner(tmp_path):
    summary = {"preset": "fmnist-ilct", "seconds": {"train": 300.0},
               "quality": {"split": "test", "n": 2000, "features": "f", "fid": {"1": 1.5, "2": 2.5}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    row = lambda name, fid: {"name": name, "settings": {}, "autoencoder_steps": 1000, "steps": 2000,  # noqa: E731
                             "val_fid": {"1": fid, "2": fid}}
    parts = [("a.json", [row("base", 5.0), row("lr", 1.0)], "lr"), ("b.json", [row("base", 9.0), row("beta2", 3.0)], "beta2")]
    for name, rows, winner in parts:
        (tmp_path / name).write_text(json.dumps({"rows": rows, "winner": winner}))
    out = tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "demo_report.py"), "--summary",
                           str(tmp_path / "summary.json"), "--make-demo-seconds", "700", "--machine", "m", "--sweep",
                           str(tmp_path / "a.json"), "--sweep", str(tmp_path / "b.json"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(r["name"], Path(r["sweep"]).name) for r in report["sweep"]] == [
        ("base", "a.json"), ("lr", "a.json"), ("base", "b.json"), ("beta2", "b.json")]
    assert report["sweep_winner"] == "beta2"  # not part a's lr: its val FID was measured against another base


def test_denormals_resumes_copies_with_and_without_the_flush_and_leaves_the_run_alone(tmp_path, tiny_autoencoder, fake_fmnist):
    cfg = {"base": "fmnist-ilct", "model": {"arch": "DiT-T/4"},
           "train": {"total_steps": 12, "batch_size": 8, "ckpt_every": 2, "keep_checkpoints": 100, "sample_every": 0,
                     "log_every": 1, "num_sample_images": 2, "device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    from ilct.cli import main

    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--autoencoder", str(tiny_autoencoder), "--data-dir",
                 str(fake_fmnist), "--out", str(run), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--no-progress"]) == 0
    (run / "checkpoints" / "latest").write_text("step_000000004")  # as if the run had stopped at step 4
    before = sorted(p.name for p in run.rglob("*")), (run / "log.jsonl").read_text()
    out = tmp_path / "denormals.json"
    script = [sys.executable, str(ROOT / "benchmarks" / "speed" / "denormals.py")]
    proc = subprocess.run(script + ["--run", str(run), "--seconds", "120", "--log-every", "1", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["from_step"] == 4 and "denormals.py" in report["command"] and report["machine"]
    for mode in ("flush", "keep"):  # each copy resumed from step 4 and trained to the end (step 12)
        assert report["modes"][mode]["steps"] == [5, 12] and report["modes"][mode]["img_per_s_median"] > 0
    assert report["common_steps"] == 8 and report["same_losses"] is True and report["speedup"] > 0
    census = report["census"]  # one step's gradients from step 4, counted (a tiny run has next to no subnormals)
    assert census["step"] == 4 and census["weight_grads_of"] > 0 and 0 <= census["weight_grads"] <= census["weight_grads_of"]
    assert census["output_grads"] >= 0 and all(v > 0 for v in census["weight_grads_worst"].values())
    assert (sorted(p.name for p in run.rglob("*")), (run / "log.jsonl").read_text()) == before  # the run is untouched
    for bad in (["--run", str(tmp_path / "nothing")], ["--run", str(run), "--seconds", "0"], ["--run", str(run), "--step", "7"]):
        proc = subprocess.run(script + bad, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("denormals: ")


def test_scale_tiny_run_measures_each_wrapping_of_each_model_and_the_jvp(tmp_path):
    """benchmarks/device/scale.py --tiny: DDP and FSDP2 (world size 1, gloo) beside the plain loop for the image,
    clip and MeanFlow models, and the JVP alone; then --deadline 0 records every row as not run."""
    script = [sys.executable, str(ROOT / "benchmarks" / "device" / "scale.py")]
    proc = subprocess.run(script + ["--tiny", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "scale.json").read_text())
    assert report["world_size"] == 1 and "--tiny" in report["command"] and report["torch"] and report["date"]
    rows = report["rows"]
    assert {(r["kind"], r["wrapping"]) for r in rows} == {
        (kind, w) for kind in ("image", "clip", "meanflow") for w in ("plain", "ddp", "fsdp2")} | {("meanflow", "jvp")}
    assert not any(r["compiled"] for r in rows)  # --tiny does not compile
    for r in rows:
        if r["kind"] == "meanflow" and r["wrapping"] == "fsdp2" and "error" in r:
            continue  # JVP through FSDP2 may be refused: the exception is the result
        assert "error" not in r, r
        numbers = ("forward_ms", "forward_math_ms", "jvp_ms") if r["wrapping"] == "jvp" else (
            "per_s", "ms_per_step", "tflop_per_step", "mfu")
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in numbers), r
        assert r["wrapping"] == "jvp" or r["fp32_final_layer"]
    assert [r["fused_optimizer"] for r in rows if r["kind"] == "image" and r["wrapping"] == "plain"] == [True, False]
    assert all(r["over_consistency_step"] > 0 for r in rows if r["kind"] == "meanflow" and "ms_per_step" in r
               and r["wrapping"] != "jvp")
    md = (tmp_path / "scale.md").read_text()
    assert "world size 1" in md and "fsdp2" in md and "JVP / forward" in md
    late = subprocess.run(script + ["--tiny", "--deadline", "0", "--out", str(tmp_path / "late")], capture_output=True,
                          text=True)
    assert late.returncode == 0, late.stderr[-2000:]
    late_rows = json.loads((tmp_path / "late" / "scale.json").read_text())["rows"]
    assert len(late_rows) == len(rows) and all(r["error"] == "not run (deadline)" for r in late_rows)


def test_meanflow_check_tiny_run_trains_every_combination(tmp_path):
    """benchmarks/device/meanflow_check.py --tiny: precision x derivative rows of MeanFlow's training step and the
    consistency control all train on the CPU (on CUDA, bf16 + JVP needed ilct.nets.attention.forward_mode)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device" / "meanflow_check.py"), "--tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((tmp_path / "meanflow_check.json").read_text())["rows"]
    steps = [r for r in rows if "preset" in r]
    assert {(r["precision"], r["derivative"]) for r in steps if r["preset"] == "meanflow"} == {
        (p, d) for p in ("fp32", "bf16") for d in ("jvp", "finite_difference")}
    assert all(r["ok"] and math.isfinite(r["ms_per_step"]) and r["ms_per_step"] > 0 for r in steps), steps


def test_fid_anchors_tiny_run_scores_each_anchor_over_its_seeds(tmp_path, tiny_autoencoder, fake_fmnist):
    """benchmarks/quality/fid_anchors.py --tiny: data vs data, the autoencoder floors (built-in, and TAEF2 where its
    weights are), the broken controls and a trained run's samples, each at two n over two seeds, in the protocol of
    `ilct eval --split test`; the report names its command, machine, date and the classifier's fingerprint."""
    from conftest import SHARED_WEIGHTS
    from ilct.cli import main
    from ilct.metrics.features import load_fashion_features
    from test_end_to_end import tiny_config, train_args

    run = tmp_path / "run"
    assert main(train_args(tiny_config(tmp_path, total_steps=2, ckpt_every=2, sample_every=0), tiny_autoencoder,
                           fake_fmnist, run, tmp_path / "cache")) == 0
    out = tmp_path / "anchors.json"
    taef2 = ["--taef2", str(SHARED_WEIGHTS)] if (SHARED_WEIGHTS / "taef2_encoder.pth").is_file() else []
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "fid_anchors.py"), "--tiny",
                           "--autoencoder", str(tiny_autoencoder), *taef2, "--run", str(run), "--data-dir",
                           str(fake_fmnist), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "fid_anchors.py" in report["command"] and "cores" in report["machine"] and report["date"] and report["complete"]
    assert report["features_fingerprint"] == load_fashion_features().fingerprint()
    names = ["data vs data", "builtin autoencoder floor"] + (["TAEF2 floor"] if taef2 else []) + [
        "shuffled pixels", "uniform noise", "trained run, 1 step"]
    assert sorted({r["name"] for r in report["rows"]}) == sorted(names)
    assert sorted((r["name"], r["n"]) for r in report["rows"]) == sorted((k, n) for k in names for n in (16, 32))
    for r in report["rows"]:
        fid = r["fid"]
        assert r["seeds"] == [0, 1] and len(fid["values"]) == 2 and np.isfinite(fid["values"]).all()
        assert fid["min"] <= fid["mean"] <= fid["max"] and fid["std"] >= 0 and 0 <= r["recall"]["mean"] <= 1
    data = {r["n"]: r["fid"]["mean"] for r in report["rows"] if r["name"] == "data vs data"}
    noise = {r["n"]: r["fid"]["mean"] for r in report["rows"] if r["name"] == "uniform noise"}
    assert all(data[n] < noise[n] for n in data)  # real images sit below noise even on the fake data
    assert report["model"]["step"] == 2
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "fid_anchors.py"), "--autoencoder",
                          str(tiny_autoencoder), "--seeds", "3", "--data-dir", str(fake_fmnist), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "two distinct seeds" in bad.stderr


def test_caption_embedding_variance_shares_and_nearest_golden_values():
    spec = importlib.util.spec_from_file_location("caption_embeddings",
                                                  ROOT / "benchmarks" / "quality" / "caption_embeddings.py")
    cap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cap)
    garment, direction = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    e = (2.0 * garment + 1.0 * direction)[:, None]  # 0, 1, 2, 3: garment effects +-1, direction +-0.5
    assert cap.variance_shares(e, garment, direction) == {"garment": 0.8, "direction": 0.2, "rest": 0.0}
    e2 = np.stack([e[:, 0], np.array([0.0, 0.0, 0.0, 1.0])], 1)  # an interaction in the second coordinate
    shares = cap.variance_shares(e2, garment, direction)
    assert shares["rest"] == pytest.approx(0.25 / 5.75, abs=1e-4)
    near = cap.nearest_shares(np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), garment, direction)
    assert near == {"same_garment": 1.0, "same_direction": 0.0}
    sim = cap.garment_similarity(np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.2, 1.0]]), garment)
    assert sim.shape == (2, 2) and sim[0, 0] == pytest.approx(1.0) and sim[0, 1] == pytest.approx(-1.0)
