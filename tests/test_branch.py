"""`ilct train --branch-from` (ilct.training.branch): a new run from another run's checkpoint with one setting changed.

A 6-step source run with checkpoints at 3 and 6; branches from step 3. Covers: no change reproduces the
source's step 6 bit for bit; a method change and a halved lr differ, reach the loop and the optimizer, and are
recorded in the new config.yaml; a branch resumes; the source is never written; bad inputs are one line and
exit 2 with nothing written. Also `ilct analyze --run --checkpoint`, which the stability study calls per checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import crashed_copy, module_dir, second_autoencoder
from ilct.runs.checkpoint import list_checkpoints, read_tensors
from ilct.cli import main
from ilct.latents import LatentStats


@pytest.fixture(scope="module")
def source(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "branch")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct",
        "model": {"arch": "DiT-T/4", "dropout": 0.1},
        "train": {"total_steps": 6, "batch_size": 8, "ckpt_every": 3, "sample_every": 0, "log_every": 1,
                  "num_sample_images": 2, "device": "cpu"},
    }))
    out = tmp / "source"
    assert main(["train", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder), "--data-dir", str(fake_fmnist),
                 "--out", str(out), "--set", f"data.cache_dir={tmp / 'cache'}", "--no-progress"]) == 0
    return {"tmp": tmp, "run": out, "ae": tiny_autoencoder, "data": fake_fmnist}


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def tensors(run: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return read_tensors(run / "checkpoints" / f"step_{step:09d}" / f"{name}.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ckpt(run: Path, step: int) -> str:
    return str(run / "checkpoints" / f"step_{step:09d}")


def test_branch_without_a_change_reproduces_the_source(source, tmp_path, capsys):
    before = digest(source["run"])
    new = tmp_path / "same"
    assert main(["train", "--branch-from", ckpt(source["run"], 3), "--out", str(new), "--no-progress"]) == 0
    assert "branched from" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(new)] == ["step_000000003", "step_000000006"]
    for step in (3, 6):
        for name in ("model", "ema", "optimizer"):
            assert same(tensors(new, step, name), tensors(source["run"], step, name)), (step, name)
    record = yaml.safe_load((new / "config.yaml").read_text())["branch"]
    assert record == {"run": str(source["run"].resolve()), "step": 3, "changes": ""}
    a, b = (LatentStats.load(r / "latent_stats.safetensors") for r in (new, source["run"]))  # the source's statistics
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std) and (a.fingerprint, a.latent_set) == (b.fingerprint, b.latent_set)
    log = [json.loads(line) for line in (new / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 5, 6]  # the branch's log starts after the branch point
    assert digest(source["run"]) == before
    # a branched run resumes like any run (its record is kept; finished: nothing to do)
    assert main(["train", "--out", str(new), "--resume", "--no-progress"]) == 0
    assert yaml.safe_load((new / "config.yaml").read_text())["branch"] == record


def test_branch_with_a_method_change_differs_and_records_it(source, tmp_path):
    before = digest(source["run"])
    new = tmp_path / "fixed_c"
    assert main(["train", "--branch-from", ckpt(source["run"], 3), "--out", str(new), "--no-progress",
                 "--set", "method.adaptive_c=false", "--set", "train.lr=5e-4", "--set", "train.ema_decay=0.99"]) == 0
    cfg = yaml.safe_load((new / "config.yaml").read_text())
    assert cfg["method"]["adaptive_c"] is False and cfg["method"]["metric"] == "cauchy"  # the rest is the source's
    assert cfg["branch"]["step"] == 3
    assert cfg["branch"]["changes"] == "method.adaptive_c=false; train.lr=0.0005; train.ema_decay=0.99"
    assert same(tensors(new, 3, "model"), tensors(source["run"], 3, "model"))
    assert not same(tensors(new, 6, "model"), tensors(source["run"], 6, "model"))
    groups = json.loads((new / "checkpoints" / "step_000000003" / "optimizer.json").read_text())["param_groups"]
    assert all(g["lr"] == 5e-4 for g in groups)  # the restored optimizer takes the branch's lr
    src_log = {r["step"]: r for r in map(json.loads, (source["run"] / "log.jsonl").read_text().splitlines())}
    new_log = {r["step"]: r for r in map(json.loads, (new / "log.jsonl").read_text().splitlines())}
    assert new_log[4]["N"] == src_log[4]["N"] and new_log[4]["c"] != src_log[4]["c"]  # same stage, the fixed c
    assert digest(source["run"]) == before
    # a branch stopped after its branch point resumes from it with its own settings (the lr in its optimizer)
    resumed = crashed_copy(new, tmp_path / "resumed", 6, 3)
    assert main(["train", "--out", str(resumed), "--resume", "--no-progress"]) == 0
    assert same(tensors(resumed, 6, "model"), tensors(new, 6, "model"))
    # and a branch of the branch, from its run folder (its latest checkpoint, step 6) with a longer budget
    again = tmp_path / "longer"
    assert main(["train", "--branch-from", str(new), "--out", str(again), "--no-progress",
                 "--set", "train.total_steps=7"]) == 0
    record = yaml.safe_load((again / "config.yaml").read_text())["branch"]
    assert record == {"run": str(new.resolve()), "step": 6, "changes": "train.total_steps=7"}
    assert [p.name for p in list_checkpoints(again)] == ["step_000000006", "step_000000007"]


def test_the_last_stage_lr_rule_is_a_branch_with_half_the_lr_at_the_stage_change(source, tmp_path):
    """consistency.lr_last_stage = 0.5 from step 0 changes nothing before the last stage (N = 161 from step 4 of
    6 here) and then trains as a branch of the plain run at step 4 with train.lr halved: the equivalence the
    clip runs of docs/stability.md finding 15 rely on."""
    common = ["--autoencoder", str(source["ae"]), "--data-dir", str(source["data"]), "--no-progress",
              "--set", f"data.cache_dir={source['tmp'] / 'cache'}", "--set", "train.ckpt_every=2"]
    config = str(source["tmp"] / "tiny.yaml")
    plain, rule, branch = tmp_path / "plain", tmp_path / "rule", tmp_path / "branch"
    assert main(["train", "--config", config, "--out", str(plain), *common, "--set", "consistency.lr_last_stage=1"]) == 0
    assert main(["train", "--config", config, "--out", str(rule), *common, "--set", "consistency.lr_last_stage=0.5"]) == 0
    assert main(["train", "--branch-from", ckpt(plain, 4), "--out", str(branch), "--no-progress",
                 "--set", "train.lr=5e-4"]) == 0
    log = {r["step"]: r for r in map(json.loads, (rule / "log.jsonl").read_text().splitlines())}
    assert [log[s]["N"] for s in (4, 5)] == [81, 161]  # step 5 (k = 4) is the first of the last stage
    assert same(tensors(rule, 4, "model"), tensors(plain, 4, "model"))
    assert not same(tensors(rule, 6, "model"), tensors(plain, 6, "model"))
    a, b = tensors(rule, 6, "model"), tensors(branch, 6, "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


def expect_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ilct: error:"), err
    assert needle in err[0], err[0]


def test_bad_branches_write_nothing(source, tmp_path, capsys):
    run, before = source["run"], digest(source["run"])
    new = tmp_path / "new"
    base = ["train", "--out", str(new), "--no-progress"]
    expect_error(capsys, base + ["--branch-from", str(tmp_path / "missing")], "no such run or checkpoint")
    expect_error(capsys, base + ["--branch-from", str(run / "checkpoints" / "step_000000009")], "no such run")
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoints" / "step_000000003" / "ema.safetensors").unlink()
    expect_error(capsys, base + ["--branch-from", ckpt(broken, 3)], "not a whole checkpoint")
    expect_error(capsys, base + ["--branch-from", str(source["data"])], "neither a run folder")
    expect_error(capsys, base + ["--branch-from", str(run)], "nothing to train")  # latest = step 6 = total_steps
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--set", "model.arch=DiT-T/2"],
                 "does not fit this config's (changed: model.arch)")
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--set", "method.nsln=false"], "method.nsln")
    other = second_autoencoder(tmp_path / "other_ae", source["data"], seed=7)
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--autoencoder", str(other)], "another autoencoder")
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--resume"], "give one of them")
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--config", "fmnist-ilct"], "not --config")
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--set", "branch.step=1"], "written by --branch-from")
    expect_error(capsys, base + ["--branch-from", ckpt(run, 3), "--allow-other-autoencoder"], "latent space")
    expect_error(capsys, ["train", "--out", str(run), "--force", "--branch-from", ckpt(run, 3), "--no-progress"],
                 "overlap")
    expect_error(capsys, ["train", "--out", str(run / "samples" / "b"), "--branch-from", ckpt(run, 3), "--no-progress"],
                 "overlap")
    assert not new.exists() and not (run / "samples" / "b").exists()
    # a fresh run from a branched run's config.yaml would claim a branch that did not happen
    claimed = yaml.safe_load((run / "config.yaml").read_text())
    claimed["branch"] = {"run": str(run), "step": 3, "changes": ""}
    (tmp_path / "claimed.yaml").write_text(yaml.safe_dump(claimed))
    expect_error(capsys, base + ["--config", str(tmp_path / "claimed.yaml")], "branch.run is set")
    assert not new.exists()
    assert digest(run) == before


def test_analyze_measures_the_residuals_of_a_chosen_checkpoint(source, tmp_path, capsys):
    """`ilct analyze --run R --checkpoint C` (what the stability study calls per checkpoint)."""
    from conftest import encode_fake

    lat = encode_fake(tmp_path / "lat", source["ae"], source["data"])
    medians = []
    for step in (3, 6):
        name = f"s{step}"
        assert main(["analyze", "--run", str(source["run"]), "--checkpoint", ckpt(source["run"], step), "--latents",
                     str(lat), "--levels", "21", "--n", "16", "--no-pixels", "--out", str(tmp_path / "a"),
                     "--name", name, "--device", "cpu"]) == 0
        td = json.loads((tmp_path / "a" / f"{name}.json").read_text())["td"][0]
        rms = td["rms_per_sample"]
        assert td["N"] == 21 and 0 < rms["q1"] <= rms["median"] <= rms["q3"]
        medians.append(rms["median"])
    assert medians[0] != medians[1]
    expect_error(capsys, ["analyze", "--latents", str(lat), "--checkpoint", ckpt(source["run"], 3), "--out",
                          str(tmp_path / "b")], "give the run too")
