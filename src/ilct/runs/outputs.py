"""Output paths never land on inputs.

Every file a command writes (`sample --out/--npz/--gif`, `eval --json`, `analyze --out/--name`, `clips --out`)
is checked before anything is computed: it must carry its own suffix, must not be a folder, and must not lie
anywhere inside a run (its config, statistics, log, checkpoints, samples/), a checkpoint, an autoencoder, a
latent directory or an exported model: the ones the command reads or any other ilct made. An existing file that passes is
replaced atomically.
"""

from __future__ import annotations

from pathlib import Path

from ilct.errors import IlctError
from ilct.runs.folder import CHECKPOINTS_DIR, CONFIG_FILE, STATS_FILE

# Folders ilct makes, recognized by the files they hold.
_MARKERS = {
    "run": (CONFIG_FILE, STATS_FILE),
    "checkpoint": ("state.json",),
    "autoencoder": ("config.json", "model.safetensors"),
    "latent directory": ("meta.json",),
    "exported model": ("config.json", "model_index.json"),  # ilct.runs.exported
}


def made_by_ilct(folder: Path) -> str | None:
    """What ilct folder this is (a run, a checkpoint, an autoencoder, a latent directory, an export), or None."""
    for what, names in _MARKERS.items():
        if all((folder / n).is_file() for n in names) and (what != "latent directory" or _latent_meta(folder)):
            return what
    if folder.name == CHECKPOINTS_DIR and (folder / "latest").exists():
        return "checkpoint folder"
    return None


def _latent_meta(folder: Path) -> bool:
    """Whether folder/meta.json is a latent directory's (it names the autoencoder's fingerprint), not any meta.json."""
    try:
        with open(folder / "meta.json", "rb") as f:
            return b'"autoencoder_fingerprint"' in f.read(1 << 16)
    except OSError:
        return False


def check_file_name(name: str, flag: str) -> str:
    """A bare file name (no folder part, not . or ..)."""
    if not name or Path(name).name != name or name in (".", "..") or "\x00" in name:
        raise IlctError(f"{flag} must be a plain file name without folders, got {name!r}")
    return name


def check_output(path: str | Path, suffixes: tuple[str, ...], flag: str, protected: tuple[Path, ...] = ()) -> Path:
    """An output file that may be written: the right suffix, not a folder, not inside `protected`
    (the folders the command reads) and not a file of a run, checkpoint, autoencoder or latent directory."""
    text = str(path)
    if not text.strip():
        raise IlctError(f"{flag} is empty: name a file")
    path = Path(text)
    if not path.name.lower().endswith(suffixes):
        raise IlctError(f"{flag} must end with {' or '.join(suffixes)}, got {text}")
    if path.is_dir():
        raise IlctError(f"{flag} {text} is a folder")
    target = path.resolve()
    for root in protected:
        root = Path(root).resolve()
        if target == root or root in target.parents:
            raise IlctError(f"{flag} {text} lies inside {root}, which this command reads: write it elsewhere")
    for folder in target.parents:
        what = made_by_ilct(folder)
        if what is not None:
            raise IlctError(f"{flag} {text} lies inside the {what} {folder}, which belongs to ilct: write it elsewhere")
    return path
