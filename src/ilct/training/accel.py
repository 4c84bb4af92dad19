"""Speed switches that do not change the maths: backends and torch.compile.

`train.precision=bf16` (autocast, in train.py) and `train.compile=true` are the
two switches; the loss maths stay in fp32 either way (ilct.objectives.consistency.losses
casts to fp32). Compilation is regional: each block of the backbone (a DiT's
transformer blocks, a UNet's residual blocks: the classes that set
`compile_region = True`) is compiled on its own, so the compiled code is shared
by all blocks of one shape and the compile time does not grow with depth.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn


def setup_backends(device: torch.device) -> None:
    """TF32 for fp32 matrix products on GPUs (cuDNN already uses it), flash/efficient SDPA kernels, and
    subnormal floats computed as zero on the CPU (`flush_denormals`)."""
    flush_denormals(warn=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


_WARNED: list[bool] = []


def flush_denormals(warn: bool = False) -> bool:
    """Compute subnormal floats as zero on this CPU (x86 with SSE3, AArch64; elsewhere nothing happens), unless the
    environment says ILCT_FLUSH_DENORMAL=0. Returns whether every one of torch's CPU threads now flushes.

    Subnormals (|x| < 1.2e-38 in fp32) are computed in microcode on x86 CPUs, many times slower than normal
    floats. Late in a long `fmnist-ict` run on a CPU, subnormal attention gradients made a training step 2.6x
    slower, and flushing them gave the speed back with the same losses to the last bit
    (docs/performance.md). Values that small are below anything the training resolves.

    The mode is each thread's own, and torch's worker threads take the main thread's when they start: it must
    be set before torch's first parallel operation in the process. `ilct` does that when a command starts
    (ilct.cli.main); `ilct.training.loop.train` sets it again, and warns when torch work earlier in the process had
    started threads that now keep the old mode (`warn`; once a process).
    """
    if os.environ.get("ILCT_FLUSH_DENORMAL", "1").strip() == "0":
        torch.set_flush_denormal(False)  # (this thread; others keep the mode they started with)
        return False
    if not torch.set_flush_denormal(True):
        return False
    if flush_reaches_all_threads():
        return True
    if not warn or _WARNED:
        return False
    _WARNED.append(True)
    print("ilct: warning: subnormal floats are flushed in only some of torch's CPU threads (torch work earlier "
          "in this process started them); a fresh process (the ilct command) trains at full speed", file=sys.stderr)
    return False


def flush_reaches_all_threads() -> bool:
    """Whether every one of torch's CPU threads computes subnormals as zero: an elementwise product over a
    chunk per thread, of subnormals made from their bits (the int 2^20 is 1.5e-39 as fp32; a float
    converted to fp32 by a flushing thread would be 0 already)."""
    x = torch.full((torch.get_num_threads() * 65536,), 1 << 20, dtype=torch.int32).view(torch.float32)
    return bool(((x * 2.0) == 0).all())


def _dynamo_settings() -> None:
    # start-up time: importing torch._dynamo takes about a second, paid only by a run that compiles
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
