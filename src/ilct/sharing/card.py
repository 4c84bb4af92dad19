"""The model card (README.md) of an exported model: what it is, how it was trained, how good it measured, how to
sample it. Only facts the export holds: the run's config, its step, and the `ilct eval` JSON files given to
`ilct export --eval` (checked to be of the exported checkpoint); without one the card says "not evaluated"."""

from __future__ import annotations

from typing import Any

from ilct.schema import Config

TECHNIQUES = (("Cauchy loss", "metric", "cauchy"), ("early-timestep diffusion loss", "diffusion_loss", True),
              ("optimal-transport coupling", "ot_coupling", True), ("adaptive scaling c", "adaptive_c", True),
              ("Non-scaling LayerNorm", "nsln", True))


def _what(cfg: Config) -> str:
    m, d = cfg.model, cfg.data
    kind = f"{m.frames}-latent-frame clips" if m.frames else "images"
    cond = ("text-conditional (captions)" if m.text_dim else f"class-conditional ({m.num_classes} classes)"
            if m.num_classes > 0 else "unconditional")
    return (f"A {cond} generator of {d.resolution}x{d.resolution} {kind}, trained from scratch in the latent space "
            f"of the autoencoder below with ilct's `{cfg.train.objective}` objective; network {m.arch}.")


def _objective(cfg: Config) -> str:
    if cfg.train.objective != "consistency":
        return f"Objective: `{cfg.train.objective}` (docs/objectives.md of ilct)."
    on = [name for name, key, value in TECHNIQUES if getattr(cfg.method, key) == value]
    if not on:
        return "Objective: consistency training, the iCT recipe (pseudo-Huber loss, no technique of the paper)."
    return ("Objective: consistency training (iCT) with the techniques of \"Improved Training Technique for Latent "
            f"Consistency Models\" (ICLR 2025) that were on: {', '.join(on)}.")


def _evaluation(evals: list[dict[str, Any]]) -> list[str]:
    if not evals:
        return ["Not evaluated: no `ilct eval` result was given to `ilct export --eval`."]
    lines = ["| sampler | FID | precision | recall | n | reference | features |", "|---|---|---|---|---|---|---|"]
    for e in evals:
        for row in e.get("rows", []):
            lines.append(f"| {row.get('key')} | {row.get('fid', float('nan')):.2f} | {row.get('precision', float('nan')):.3f} "
                         f"| {row.get('recall', float('nan')):.3f} | {e.get('n')} | {e.get('reference')}, split "
                         f"{e.get('split')} | {e.get('features')} ({e.get('features_fingerprint')}) |")
    lines.append("")
    lines.append("Measured by `ilct eval` on the exported checkpoint (sample seed "
                 f"{', '.join(str(e.get('seed')) for e in evals)}); FIDs in other feature spaces or at other n are "
                 "not comparable with these.")
    return lines


def _sampling(cfg: Config, name: str) -> list[str]:
    m = cfg.model
    cond = ' --prompt "a caption"' if m.text_dim else " --class 0" if m.num_classes > 0 else ""
    kw = 'prompt="a caption", ' if m.text_dim else "class_label=0, " if m.num_classes > 0 else ""
    pipe_kw = kw.replace("class_label=", "class_labels=")
    out = "--out samples.gif" if m.frames else "--out samples.png"
    return ["```bash", f"ilct sample --model {name} --steps 1{cond} --n 16 {out}", "```", "", "```python",
            "import ilct", "", f'model = ilct.load("{name}")', f"images = model.generate({kw}n=16, steps=1, seed=0)",
            "```", "", "With diffusers (`pip install \"ilct[diffusers]\"`):", "", "```python",
            "from ilct.sharing.pipeline import ILCTPipeline", "",
            f'pipe = ILCTPipeline.from_pretrained("{name}")',
            f"images = pipe({pipe_kw}num_images=16, num_inference_steps=1, seed=0).images", "```"]


def model_card(cfg: Config, meta: dict[str, Any], evals: list[dict[str, Any]], name: str) -> str:
    """The card's Markdown."""
    t, ae = cfg.train, meta["autoencoder"]
    text = meta.get("text_encoder")
    lines = [f"# {name}", "", _what(cfg), "", _objective(cfg), "",
             "## Training", "",
             f"- Data: `{cfg.data.dataset}` from `{cfg.data.root}` (split {cfg.data.split}), {cfg.data.resolution} px.",
             f"- Steps: {meta['step']} of {t.total_steps}, batch {t.batch_size}, lr {t.lr:g}, "
             f"EMA: {meta['ema']['description']}, seed {t.seed}, precision {t.precision}.",
             f"- Autoencoder: {ae['description']}." + (f" Licence: `{ae['licence']}`." if ae.get("licence") else ""),
             ]
    if text:
        lines.append(f"- Text encoder: {text['description']}.")
    lines += [f"- Exported from run `{meta['source']['run']}`, checkpoint `{meta['source']['checkpoint']}`.",
              "- The whole configuration is `training_config.yaml`; the same training again (on the same data and "
              "autoencoder paths):", "", "```bash", "ilct train --config training_config.yaml --out RUN", "```", "",
              "## Evaluation", "", *_evaluation(evals), "", "## Sampling", "",
              f"Defaults: {meta['sampler']['description']}.", "", *_sampling(cfg, name), ""]
    return "\n".join(lines)
