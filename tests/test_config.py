"""Typed configs: presets, YAML round trip, overrides, validation."""

import pytest
import yaml

from ilct.config import Config, config_from_yaml_file, dump_config, from_dict, load_config, preset_names
from ilct.errors import IlctError


def test_presets_load():
    assert {"ict", "ilct", "fmnist-ict", "fmnist-ilct"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name), Config)


@pytest.mark.parametrize("base,full", [("ict", "ilct"), ("fmnist-ict", "fmnist-ilct"), ("emoji-ict", "emoji-ilct"),
                                       ("fmnist-video-ict", "fmnist-video-ilct")])
def test_ict_and_ilct_differ_only_in_the_method_switches(base, full):
    a, b = load_config(base).to_dict(), load_config(full).to_dict()
    assert {s for s in a if a[s] != b[s]} == {"method"}
    assert a["method"] == {"metric": "pseudo_huber", "diffusion_loss": False, "lambda_diff": 5.0,
                           "diffusion_fraction": 0.75, "ot_coupling": False, "adaptive_c": False, "nsln": False}
    assert b["method"] == {"metric": "cauchy", "diffusion_loss": True, "lambda_diff": 5.0,
                           "diffusion_fraction": 0.75, "ot_coupling": True, "adaptive_c": True, "nsln": True}


def test_paper_shape():
    cfg = load_config("ilct")
    assert (cfg.model.arch, cfg.model.in_channels, cfg.model.input_size) == ("DiT-B/2", 4, 32)
    assert (cfg.train.batch_size, cfg.consistency.s0, cfg.consistency.s1) == (128, 10, 640)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.adam_eps, cfg.train.ema_decay) == (1e-4, 1e-4, 1e-4, 0.9999)


def test_overrides_are_typed():
    cfg = load_config("fmnist-ict", ["train.lr=3e-4", "method.ot_coupling=true", "train.total_steps=1_000",
                                     "model.in_channels=null"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.method.ot_coupling is True
    assert cfg.train.total_steps == 1000
    assert cfg.model.in_channels is None


def test_yaml_round_trip(tmp_path):
    cfg = load_config("fmnist-ilct", ["train.seed=7"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert config_from_yaml_file(tmp_path / "c.yaml") == cfg
    # a YAML file can name a preset as its base
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"base": "fmnist-ict", "train": {"batch_size": 32}}))
    mine = load_config(str(tmp_path / "mine.yaml"))
    assert mine.train.batch_size == 32 and mine.model.arch == load_config("fmnist-ict").model.arch == "ADM-T"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lr=-1e-4", "train.lr"),
        ("consistency.s1=5", "consistency.s1"),
        ("method.metric=huber", "method.metric"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.ema_decay=1.0", "train.ema_decay"),
        ("model.arch=DiT-Q/2", "model.arch"),
        ("model.arch=ADM-Q", "model.arch"),
        ("model.mlp_act=swish", "model.mlp_act"),
        ("model.norm_eps=0", "model.norm_eps"),
        ("model.qkv_bias=sometimes", "model.qkv_bias"),
        ("model.depth=-1", "model.depth"),
        ("model.depth=100000", "model.depth"),
        ("model.depth=two", "model.depth"),
        ("train.bogus=1", "train.bogus"),
        ("nosuch.key=1", "nosuch"),
        ("method.nsln=maybe", "method.nsln"),
        ("consistency.sigma_max=0.001", "consistency.sigma_max"),
        ("train.device=tpu", "train.device"),
        ("train.lr=nan", "train.lr"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("train.lr_decay=step", "train.lr_decay"),
        ("train.lr_final=1.5", "train.lr_final"),
        ("consistency.lr_last_stage=0", "consistency.lr_last_stage"),
        ("consistency.lr_last_stage=1.5", "consistency.lr_last_stage"),
    ],
)
def test_invalid_values_name_the_field(override, needle):
    with pytest.raises(IlctError, match=needle.replace(".", r"\.")):
        load_config("fmnist-ilct", [override])


def test_per_element_cauchy_is_a_metric_choice():
    assert load_config("fmnist-ilct", ["method.metric=cauchy_element"]).method.metric == "cauchy_element"
    with pytest.raises(IlctError, match="cauchy_element"):  # the message lists the choices
        load_config("fmnist-ilct", ["method.metric=cauchy-element"])


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(IlctError, match="unknown preset"):
        load_config("nope")
    with pytest.raises(IlctError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(IlctError, match="not valid YAML"):
        load_config(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(IlctError, match="circular"):
        load_config(str(loop))
    with pytest.raises(IlctError, match="section.key=value"):
        load_config("ict", ["lr=1"])
    with pytest.raises(IlctError):
        from_dict({"train": 5})


def test_a_renamed_key_of_an_older_run_still_loads():
    """method.diffusion_weight (lambda_diff's old name, also the name of w(sigma)) loads as method.lambda_diff."""
    from ilct.config import from_dict

    cfg = from_dict({"method": {"diffusion_weight": 2.5}})
    assert cfg.method.lambda_diff == 2.5 and "diffusion_weight" not in cfg.to_dict()["method"]


def test_the_video_meanflow_preset_is_the_recipe_its_runs_were_trained_with():
    """docs/video.md's MeanFlow clip runs were trained as fmnist-video-ict with these --set flags; the preset
    must stay that recipe (only checkpoint bookkeeping may differ)."""
    sets = ["train.objective=meanflow", "meanflow.metric=cauchy", "method.ot_coupling=true",
            "meanflow.guidance_w=1", "meanflow.guidance_kappa=0.5", "train.beta2=0.99", "train.total_steps=1750",
            "train.ckpt_every=250"]
    preset, trained = load_config("fmnist-video-meanflow").to_dict(), load_config("fmnist-video-ict", sets).to_dict()
    for cfg in (preset, trained):
        cfg["train"].pop("keep_checkpoints")
    assert preset == trained
    assert preset["train"]["objective"] == "meanflow" and preset["meanflow"]["guidance_kappa"] == 0.5
