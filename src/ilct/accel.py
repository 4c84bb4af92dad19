"""Speed switches that do not change the maths: backends and torch.compile.

`train.precision=bf16` (autocast, in train.py) and `train.compile=true` are the
two switches; the loss maths stay in fp32 either way (ilct.consistency.losses
casts to fp32). Compilation is regional: each block of the backbone (a DiT's
transformer blocks, a UNet's residual blocks: the classes that set
`compile_region = True`) is compiled on its own, so the compiled code is shared
by all blocks of one shape and the compile time does not grow with depth.
"""

from __future__ import annotations

import torch
from torch import nn


def setup_backends(device: torch.device, flush_denormal: bool = True) -> None:
    """TF32 for fp32 matrix products on GPUs (cuDNN already uses it), flash/efficient SDPA kernels, and
    subnormal floats flushed to zero on the CPU (`train.flush_denormal`, on by default).

    Subnormals (|x| < 1.2e-38 in fp32) are computed in microcode on x86 CPUs, tens of times slower than
    normal floats. Late in a long `fmnist-ict` run enough of them appeared in the training step that a
    step took 2.4x longer (0.14 s at step 8,000, 0.31 s at 14,000, state that survived a resume) and
    flushing them gave the speed back with the same losses (docs/performance.md). Their values are below
    anything the training can resolve, so flushing them does not change the maths.
    """
    torch.set_flush_denormal(flush_denormal)  # x86 with SSE3; a no-op (returns False) elsewhere
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _dynamo_settings() -> None:
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    # one graph per (shape, grad mode): several model sizes and batch sizes in one process (the
    # throughput benchmark) must not run past the recompile limit into silent eager fallback, and a
    # new batch size gets its own static graph rather than a slower dynamic one
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
    dynamo_config.automatic_dynamic_shapes = False


def compile_model(model: nn.Module, scope: str = "blocks", mode: str | None = None) -> nn.Module:
    """torch.compile the network in place: `blocks` (each transformer block, one shared graph) or
    `model` (the whole forward: embedders, blocks, final layer, one graph per grad mode); `mode` is
    torch.compile's (None, "max-autotune-no-cudagraphs", "reduce-overhead")."""
    if scope == "blocks":
        return compile_blocks(model, mode)
    if scope != "model":
        raise ValueError(f"compile scope must be blocks or model, not {scope!r}")
    _dynamo_settings()
    model.compile(mode=mode)
    return model


def compile_blocks(model: nn.Module, mode: str | None = None) -> nn.Module:
    """torch.compile every block of the model in place (state-dict keys do not change).

    With dropout, Inductor's own random numbers would differ from eager ones and
    between the student's and the teacher's graphs; `fallback_random` keeps
    eager's, so both passes still share their masks (METHOD.md section 3).
    """
    _dynamo_settings()
    blocks = [m for m in model.modules() if getattr(type(m), "compile_region", False)]
    if not blocks:
        raise ValueError("compile: no blocks to compile found in the model (no module sets compile_region)")
    for block in blocks:
        block.compile(mode=mode)
    return model
