"""The bf16 rounding noise in r, next to c: what the fp32 final layer changes (CPU).

At N = 641 the adaptive c is 2.5e-4, so the Cauchy metric log(1 + r / (2 c^2)) starts
to grow at r ~ 2c^2 = 1.3e-7. Rounding the network's output F to bf16 (unit roundoff
2^-9 = 2e-3) puts an error of about 1e-3 |F| on every element of f = c_skip x + c_out F:
r of order 1e-7 from rounding alone, the size of 2c^2. This benchmark measures it.

For each N, a batch of levels i is drawn as training draws them, and f is evaluated at
(x + sigma_i z, sigma_i) three ways with the same weights:

    fp32                 no autocast (the reference)
    bf16, bf16 output    bf16 autocast, the final layer under autocast too (ilct before the fix)
    bf16, fp32 output    bf16 autocast, the final layer and c_skip x + c_out F in fp32 (the default)

Rounding noise: r_round = mean over elements of (f_setting - f_fp32)^2 on identical inputs,
i.e. what r would be if student and teacher agreed exactly up to rounding; its Cauchy value
log(1 + r_round / (2c^2)) is the loss that rounding alone would produce (the noise floor).
Also the temporal-difference loss mean_b lambda_i d(f(x + sigma_i z), f(x + sigma_{i+1} z))
per setting, relative to fp32's. The network is an untrained DiT with its adaLN-Zero gates
opened at random and its final layer scaled so that F has unit RMS, the scale of a trained
F; its TD residuals are not a trained model's, its rounding is representative.

    python benchmarks/quality/bf16_noise_floor.py --out docs/results/bf16_noise_floor.json
    python benchmarks/quality/bf16_noise_floor.py --arch DiT-T/4 --latent 8 --batch 4 --levels 11,641 --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ilct.objectives.consistency.losses import cauchy, squared_residual
from ilct.objectives.consistency.precond import ConsistencyModel
from ilct.objectives.consistency.schedule import karras_sigmas, lambda_weight, level_probabilities, sample_levels, scaling_c
from ilct.nets.dit import build_dit

SETTINGS = {"fp32": (False, True), "bf16, bf16 output": (True, False), "bf16, fp32 output": (True, True)}


def make_models(arch: str, latent: int, channels: int, seed: int, probe: torch.Tensor) -> dict[str, ConsistencyModel]:
    """The same random weights as an fp32-final-layer and a bf16-final-layer model; F at unit RMS."""
    torch.manual_seed(seed)
    fixed = build_dit(arch, latent, channels, fp32_final_layer=True)
    for m in [b.adaLN_modulation[-1] for b in fixed.blocks] + [fixed.final_layer.adaLN_modulation[-1]]:
        torch.nn.init.normal_(m.weight, std=0.02)  # open the adaLN-Zero gates
    torch.nn.init.xavier_uniform_(fixed.final_layer.linear.weight)
    with torch.no_grad():
        F = fixed(probe, torch.zeros(len(probe)))
        fixed.final_layer.linear.weight /= F.pow(2).mean().sqrt()
    before = build_dit(arch, latent, channels, fp32_final_layer=False)
    before.load_state_dict(fixed.state_dict())
    return {"fixed": ConsistencyModel(fixed).eval(), "before": ConsistencyModel(before).eval()}


@torch.no_grad()
def evaluate(models: dict, x: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """f(x, sigma) in each setting (fp32 results)."""
    out = {}
    for name, (bf16, fp32_output) in SETTINGS.items():
        model = models["fixed" if fp32_output else "before"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out[name] = model(x, sigma).float()
    return out


def one_level_count(models: dict, N: int, D: int, batch: int, shape: tuple[int, ...], seed: int) -> list[dict]:
    """The rows of one N: rounding noise and TD loss per setting."""
    g = torch.Generator().manual_seed(seed + N)
    sigmas = karras_sigmas(N).float()
    i = sample_levels(level_probabilities(sigmas), batch, g)
    x = 0.5 * torch.randn((batch, *shape), generator=g)  # normalized latents have std sigma_d = 0.5
    z = torch.randn((batch, *shape), generator=g)
    s_i, s_next = sigmas[i], sigmas[i + 1]
    view = (-1,) + (1,) * len(shape)
    student = evaluate(models, x + s_i.view(view) * z, s_i)
    teacher = evaluate(models, x + s_next.view(view) * z, s_next)
    c = scaling_c(N, D, s0=10, adaptive=True)
    lam = lambda_weight(s_i.double(), s_next.double())
    td_ref = (lam * cauchy(squared_residual(student["fp32"], teacher["fp32"]).double(), c)).mean()
    rows = []
    for name in SETTINGS:
        r_round = squared_residual(student[name], student["fp32"]).double()
        d_round = cauchy(r_round, c)
        td = (lam * cauchy(squared_residual(student[name], teacher[name]).double(), c)).mean()
        rows.append({
            "N": N, "c": c, "two_c2": 2 * c * c, "setting": name,
            "r_round_mean": float(r_round.mean()), "r_round_median": float(r_round.median()),
            "r_round_over_two_c2_median": float(r_round.median() / (2 * c * c)),
            "cauchy_round_mean": float(d_round.mean()), "lambda_cauchy_round_mean": float((lam * d_round).mean()),
            "td_loss": float(td), "td_loss_rel_diff_vs_fp32": float(td / td_ref - 1),
        })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="DiT-T/2")
    p.add_argument("--latent", type=int, default=32, help="latent side (the paper's SD-VAE latents: 32)")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--levels", default="11,161,641", help="N values, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/bf16_noise_floor.json")
    args = p.parse_args()
    t0 = time.perf_counter()
    shape = (args.channels, args.latent, args.latent)
    D = args.channels * args.latent**2
    probe = 0.5 * torch.randn((8, *shape), generator=torch.Generator().manual_seed(args.seed))
    models = make_models(args.arch, args.latent, args.channels, args.seed, probe)
    rows = []
    for N in (int(v) for v in args.levels.split(",") if v.strip()):
        rows += one_level_count(models, N, D, args.batch, shape, args.seed)
    print(f"{'N':>5} {'c':>9} {'2c^2':>9} {'setting':>18} {'median r_round':>15} {'/2c^2':>7} {'d_round':>8} "
          f"{'TD loss vs fp32':>16}")
    for r in rows:
        print(f"{r['N']:>5} {r['c']:>9.3g} {r['two_c2']:>9.3g} {r['setting']:>18} {r['r_round_median']:>15.3g} "
              f"{r['r_round_over_two_c2_median']:>7.3g} {r['cauchy_round_mean']:>8.4f} {r['td_loss_rel_diff_vs_fp32']:>+16.2e}")
    report = {
        "what": "bf16 rounding noise of r (identical inputs, bf16 autocast vs fp32) and its Cauchy value, "
                "with the final layer's output in bf16 (before) and in fp32 (the fix); random DiT, F at unit RMS",
        "command": "python " + " ".join(sys.argv),
        "machine": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}",
        "arch": args.arch, "latent_shape": list(shape), "batch": args.batch, "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
