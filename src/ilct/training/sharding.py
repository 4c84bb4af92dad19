"""How a run's weights, EMA and optimizer moments lie over the ranks: `train.sharding`, one class per value in
SHARDINGS, chosen by name in ilct.training.build; the loop calls the same methods whichever it is.

none (`Replicated`): every rank holds the whole model, its EMA and the moments: one process, or DDP replicas under
torchrun whose gradients are all-reduced; flat buffers with train.fused_optimizer (ilct.training.flat).

fsdp (`FullyShard`): FSDP2 (`torch.distributed.fsdp.fully_shard`) on every block of the backbone (the modules
that set `compile_region`) and then on the whole model. Each rank keeps 1/W of every weight (a DTensor cut along
dim 0); a block's whole weights are all-gathered for its forward and again for its backward, and the gradients
are reduce-scattered, averaged over the ranks as DDP's all-reduce averages them, so W ranks compute the one-process
update of the same global batch. The EMA (and the power-function EMA's other profiles) are cut the same way:
modules whose parameters are DTensors laid out as the model's, so the EMA update stays elementwise on each rank's
shards and never gathers. RAdam is ilct.training.optim's update over the shards (flat buffers do not apply, so
train.fused_optimizer is ignored). The objectives call the model as they do unsharded; MeanFlow's JVP
(torch.func.jvp) runs through the sharded model as it is (the blocks' hooks gather their weights inside the
transform; tests/test_sharding.py compares it with one process).

Checkpoints stay readable by everything that reads a run: model.safetensors, ema.safetensors (and the profiles)
hold the whole tensors, gathered into rank 0's host memory one tensor at a time; the moments go through
torch.distributed.checkpoint into the checkpoint's optimizer/ folder, every rank writing its shards (a folder that
all ranks see), and are read back at any world size (resharded). They are written synchronously (no background
writes). A checkpoint of an unsharded run resumes sharded too (its moments cut on loading); the other way is
refused in one line. Sample grids, FID and EMA snapshots gather the EMA into one whole copy on rank 0. One
process without torchrun runs the same code on a process group of its own (ilct.training.distributed.init).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors
from ilct.models import make_ema
from ilct.runs import checkpoint as ckpt
from ilct.runs.folder import CHECKPOINTS_DIR
from ilct.schema import Config
from ilct.training import flat
from ilct.training.distributed import Dist
from ilct.training.optim import RAdam, local

Files = list[tuple[str, Any]]  # a checkpoint's training-state files, as ilct.runs.checkpoint.snapshot_files takes them
HYPER = ("lr", "betas", "eps", "weight_decay")  # an optimizer group's settings that a checkpoint records


def radam_settings(cfg: Config) -> dict[str, Any]:
    t = cfg.train
    return dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, weight_decay=t.weight_decay)


class Sharding(ckpt.StateIO):
    """What the loop asks of a layout over the ranks (one subclass per value of train.sharding, in SHARDINGS).
    Methods marked "a collective" must be called on every rank. Restoring: ilct.runs.checkpoint.StateIO's
    `load_module` and `load_optimizer`."""

    name = ""
    needs_group = False  # whether one process without torchrun needs a process group of its own
    background_writes = True  # whether train.async_checkpoint applies
    branches = True  # whether --branch-from applies

    def parts(self, model: nn.Module, cfg: Config, device: torch.device) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
        """(the model laid out for training, its EMA, the optimizer) from the whole model in host memory."""
        raise NotImplementedError

    def copy(self, ema: nn.Module) -> nn.Module:
        """Another EMA laid out as `ema` (train.ema=power's profiles)."""
        raise NotImplementedError

    def student(self, model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
        """The model as the steps call it."""
        raise NotImplementedError

    def full_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's whole state dict on rank 0 (a collective)."""
        raise NotImplementedError

    def full_parameters(self, model: nn.Module) -> Iterator[torch.Tensor]:
        """The whole parameters, in order, on every rank (a collective)."""
        raise NotImplementedError

    def sampler(self, ema: nn.Module) -> nn.Module | None:
        """A module that rank 0 runs alone (grids, FID); None on the other ranks (a collective)."""
        raise NotImplementedError

    def checkpoint_files(self, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                         profiles: Sequence[nn.Module], run_dir: Path, main: bool) -> Files | None:
        """The training state's files of step `step` on rank 0, None on the others (a collective)."""
        raise NotImplementedError


class Replicated(Sharding):
    """train.sharding=none: the whole model on every rank (DDP under torchrun)."""

    name = "none"

    def parts(self, model: nn.Module, cfg: Config, device: torch.device) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
        """(the model on the device, its EMA, RAdam): flat buffers with train.fused_optimizer, and with
        train.compile too the RAdam update is one compiled kernel."""
        model = model.to(device)
        if not cfg.train.fused_optimizer:
            return model, make_ema(model), RAdam(model.parameters(), **radam_settings(cfg))
        flat.flatten_(model)  # the speed path: weights, EMA and moments as flat buffers
        ema = make_ema(model)
        flat.flatten_(ema)
        return model, ema, flat.FlatRAdam(model.parameters(), compile=cfg.train.compile, **radam_settings(cfg))

    def copy(self, ema: nn.Module) -> nn.Module:
        """Another EMA, flat when `ema` is."""
        other = make_ema(ema)
        if flat.module_buffer(ema) is not None:
            flat.flatten_(other)
        return other

    def student(self, model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
        """The model as the steps call it: DDP-wrapped under torchrun."""
        if d.active:
            return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        return model

    def full_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return module.state_dict()

    def full_parameters(self, model: nn.Module) -> Iterator[torch.Tensor]:
        return (p.detach() for p in model.parameters())

    def sampler(self, ema: nn.Module) -> nn.Module | None:
        return ema

    def checkpoint_files(self, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                         profiles: Sequence[nn.Module], run_dir: Path, main: bool) -> Files | None:
        return ckpt.module_files(model, ema, opt, profiles) if main else None


class FullyShard(Sharding):
    """train.sharding=fsdp: FSDP2 over the ranks (the module docstring)."""

    name = "fsdp"
    needs_group = True
    background_writes = False
    branches = False

    def __init__(self) -> None:
        self.mesh = None
        self.device = torch.device("cpu")

    def parts(self, model: nn.Module, cfg: Config, device: torch.device) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
        """The model sharded (each block, then the whole), its EMA sharded alike, RAdam over the shards. The
        model comes whole in host memory, equal on every rank; fully_shard moves each block to the device as it
        cuts it."""
        self.device = device
        self.mesh = init_device_mesh(device.type, (tdist.get_world_size(),))
        ema = make_ema(model)  # (cut below, from the host copy)
        for block in [m for m in model.modules() if getattr(type(m), "compile_region", False)]:
            fully_shard(block, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        self._cut(ema)
        return model, ema, RAdam(model.parameters(), **radam_settings(cfg))

    def _cut(self, module: nn.Module) -> None:
        """Every parameter of `module` replaced by its DTensor cut along dim 0 as fully_shard cuts the model's (each
        rank keeps its own chunk of its equal copy: no communication); buffers moved to the device."""
        for sub in module.modules():
            for name, p in list(sub.named_parameters(recurse=False)):
                cut = distribute_tensor(p.detach().to(self.device), self.mesh, [Shard(0)], src_data_rank=None)
                sub.register_parameter(name, nn.Parameter(cut, requires_grad=False))
            for name, b in list(sub.named_buffers(recurse=False)):
                sub._buffers[name] = b.to(self.device)

    def copy(self, ema: nn.Module) -> nn.Module:
        return copy.deepcopy(ema)  # (the DTensors' local shards are copied)

    def student(self, model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
        return model  # (fully_shard changed the model in place)

    def full_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The whole tensors of `module`'s state dict in rank 0's host memory (a collective: every rank calls it;
        the others get {}), gathered one tensor at a time."""
        main, out = tdist.get_rank() == 0, {}
        for k, v in module.state_dict().items():
            whole = v.full_tensor() if isinstance(v, DTensor) else v
            if main:
                out[k] = whole.detach().to("cpu")
        return out

    def full_parameters(self, model: nn.Module) -> Iterator[torch.Tensor]:
        """The whole parameters, gathered on every rank one at a time (a collective)."""
        return (p.detach().full_tensor() for p in model.parameters())

    def sampler(self, ema: nn.Module) -> nn.Module | None:
        """A whole copy of the EMA on rank 0's device (a collective; None on the other ranks)."""
        state = self.full_state(ema)
        if tdist.get_rank() != 0:
            return None
        whole = copy.deepcopy(ema)
        for prefix, sub in whole.named_modules():
            for name, _ in list(sub.named_parameters(recurse=False)):
                key = f"{prefix}.{name}" if prefix else name
                sub.register_parameter(name, nn.Parameter(state[key].to(self.device), requires_grad=False))
        return whole

    def checkpoint_files(self, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                         profiles: Sequence[nn.Module], run_dir: Path, main: bool) -> Files | None:
        """Weights and EMA gathered whole (kept by rank 0), the moments written by every rank into a staging
        folder that rank 0's write_checkpoint moves into the checkpoint as optimizer/ (a collective)."""
        files: Files = [("model.safetensors", self.full_state(model)), ("ema.safetensors", self.full_state(ema))]
        if profiles:
            files.append((ckpt.PROFILES_FILE, {f"{i}.{k}": v for i, m in enumerate(profiles, start=1)
                                               for k, v in self.full_state(m).items()}))
        staging = run_dir / CHECKPOINTS_DIR / f"{ckpt.STAGING_PREFIX}{step:09d}"
        if main:  # (a crash mid-save leaves its staging folder behind)
            for stale in staging.parent.glob(f"{ckpt.STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging.parent.mkdir(parents=True, exist_ok=True)
        tdist.barrier()
        try:
            dcp.save(self.optimizer_state(model, opt), checkpoint_id=staging)
        except Exception as e:  # (torch.distributed.checkpoint gathers every rank's failure into one exception)
            raise IlctError(f"cannot write the sharded optimizer state into {staging}: {str(e).splitlines()[0][:300]}") from None
        meta = {"param_groups": [{k: g[k] for k in HYPER} for g in opt.param_groups],
                "layout": "torch.distributed.checkpoint in optimizer/: <parameter name>.<step|exp_avg|exp_avg_sq>"}
        return [*files, (ckpt.OPTIMIZER_DIR, staging), ("optimizer.json", json.dumps(meta))] if main else None

    @staticmethod
    def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """RAdam's state by parameter name (`<name>.step`, `.exp_avg`, `.exp_avg_sq`: DTensors, and the step count);
        zeros are made for a parameter without state yet, so that a load has tensors to fill in place."""
        names = {p: n for n, p in model.named_parameters()}
        out: dict[str, torch.Tensor] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state[p]
                if not st:
                    st.update(step=torch.zeros((), dtype=torch.float32, device=local(p).device),
                              exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    out[f"{names[p]}.{key}"] = st[key]
        return out

    # ------------------------------------------------------------------ restoring (ilct.runs.checkpoint.StateIO)

    @torch.no_grad()
    def load_module(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Whole tensors (read by every rank) into `module`: each rank keeps its own shard."""
        for k, own in module.state_dict(keep_vars=True).items():
            v = state[k].to(self.device)
            if isinstance(own, DTensor):
                local(own).copy_(distribute_tensor(v, own.device_mesh, own.placements, src_data_rank=None).to_local())
            else:
                own.copy_(v)

    def load_optimizer(self, opt: torch.optim.Optimizer, model: nn.Module, path: Path) -> None:
        """The moments from optimizer/ (resharded to this world size by torch.distributed.checkpoint), or from
        an unsharded run's optimizer.safetensors (cut here), and the groups' settings from optimizer.json."""
        if ckpt.sharded(path):
            meta = read_json(path / "optimizer.json")
            try:
                dcp.load(self.optimizer_state(model, opt), checkpoint_id=path / ckpt.OPTIMIZER_DIR)
            except Exception as e:
                raise ValueError(str(e).splitlines()[0][:300]) from None
        else:
            meta = self._load_whole_moments(opt, path)
        groups = meta.get("param_groups") if isinstance(meta, dict) else None
        if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
            raise ValueError("optimizer.json does not hold the optimizer's parameter groups")
        for group, saved in zip(opt.param_groups, groups):
            for k in HYPER:
                group[k] = tuple(saved[k]) if k == "betas" else saved[k]
        bad = torch.tensor([0.0 if all(torch.isfinite(local(t)).all() for st in opt.state.values()
                                       for t in st.values()) else 1.0], device=self.device)
        tdist.all_reduce(bad, op=tdist.ReduceOp.MAX)  # every rank agrees, so that none waits on one that stopped
        if bad.item():
            raise ValueError("the moments hold values that are not finite")

    def _load_whole_moments(self, opt: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
        """An unsharded run's optimizer.safetensors (parameters by their index in order) cut into this rank's shards;
        returns its optimizer.json's contents."""
        saved = ckpt.optimizer_from_files(read_tensors(path / "optimizer.safetensors"), read_json(path / "optimizer.json"))
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            st = saved["state"].get(i)
            if not st:
                continue
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                t = st[key]
                if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                    raise ValueError(f"'{key}' does not fit a parameter of shape {tuple(p.shape)}")
                moments[key] = distribute_tensor(t.to(self.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            step = torch.as_tensor(st["step"], dtype=torch.float32).to(local(p).device).reshape(())
            opt.state[p] = {"step": step, **moments}
        return saved


SHARDINGS: dict[str, type[Sharding]] = {"none": Replicated, "fsdp": FullyShard}  # schema.CHOICES["train.sharding"]


def make_sharding(name: str) -> Sharding:
    if name not in SHARDINGS:
        raise IlctError(f"config: train.sharding must be one of {', '.join(SHARDINGS)}, got {name!r}")
    return SHARDINGS[name]()
