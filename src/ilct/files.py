"""Atomic file writes and safetensors reads with one-line errors (used by every writer)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ilct.errors import IlctError


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary name, fsync, rename. Each tensor is copied on its own
    (views of one buffer, ilct.flat, or one tensor under several names are stored as separate tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        try:
            save_file({k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as e:  # safetensors reports I/O failures (a full disk) as its own error
            raise OSError(f"cannot write {path}: {e}") from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a dict; a missing or damaged file is an IlctError."""
    path = Path(path)
    if not path.is_file():
        raise IlctError(f"file missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise IlctError(f"cannot read {path}: {e}") from None


def write_text(path: str | Path, text: str) -> None:
    """Write text via a temporary name, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file; a missing, unreadable or non-UTF-8 one is an IlctError."""
    path = Path(path)
    if not path.is_file():
        raise IlctError(f"{what} not found: {path}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise IlctError(f"cannot read {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise IlctError(f"cannot read {path}: {e.strerror or e}") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_text(path, "file")
    try:
        return json.loads(text)
    except ValueError as e:
        raise IlctError(f"cannot read {path}: {e}") from None
