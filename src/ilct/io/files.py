"""Atomic file writes and safetensors reads with one-line errors (used by every writer)."""

from __future__ import annotations

import json
import os
import re
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
    (views of one buffer, ilct.training.flat, or one tensor under several names are stored as separate tensors)."""
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


def read_text(path: str | Path, what: str = "file", max_bytes: int | None = None) -> str:
    """A UTF-8 text file; a missing, unreadable, non-UTF-8 one (or one over `max_bytes`) is an IlctError."""
    path = Path(path)
    if not path.is_file():
        raise IlctError(f"{what} not found: {path}")
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise IlctError(f"{path}: {path.stat().st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise IlctError(f"cannot read {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise IlctError(f"cannot read {path}: {e.strerror or e}") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a JSON object as a dict, refusing a key given twice (json keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800..\udfff: only an escape can give a surrogate


def _first_surrogate(value: Any) -> str | None:
    """Where in a parsed JSON value the first string (or key) holding a lone surrogate is, which no UTF-8
    file can hold (json.loads accepts "\\ud800"); None when none does. Iterative: json limits the depth."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return at or "the top level"
        elif isinstance(item, dict):
            inner = [((k, f"{at}[{k[:40]!a}] (the key)"), (v, f"{at}[{k[:40]!a}]")) for k, v in item.items()]
            stack.extend(reversed([pair for both in inner for pair in both]))
        elif isinstance(item, list):
            stack.extend(reversed([(v, f"{at}[{i}]") for i, v in enumerate(item)]))
    return None


def parse_json(text: str, where: str) -> Any:
    """JSON text as Python values; IlctError (one line naming `where`) for malformed JSON, a key given twice
    in one object, nesting too deep for the parser, or a string no UTF-8 file can hold (a lone surrogate)."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise IlctError(f"cannot read {where}: the key {str(e.args[0])[:60]!a} is given twice in one object") from None
    except RecursionError:
        raise IlctError(f"cannot read {where}: nested too deeply") from None
    except ValueError as e:
        raise IlctError(f"cannot read {where}: {e}") from None
    bad = _first_surrogate(value) if _SURROGATE_ESCAPE.search(text) else None
    if bad is not None:
        raise IlctError(f"cannot read {where}: the string at {bad} holds a lone surrogate (\\ud800-\\udfff), "
                        "not text")
    return value


MAX_JSON_BYTES = 1 << 30  # a JSON file of ilct's (caption lists included) stays far below 1 GiB


def read_json(path: str | Path) -> Any:
    """A JSON file (UTF-8), parsed and checked as `parse_json` does; every problem is an IlctError."""
    path = Path(path)
    return parse_json(read_text(path, "JSON file", MAX_JSON_BYTES), str(path))
