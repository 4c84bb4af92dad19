"""Output paths never land on inputs.

Every file a command writes (`sample --out/--npz`, `eval --json`, `analyze --out/--name`) is checked
before anything is computed: it must carry its own suffix, must not be a folder, and must not be a file
of a run (its config, statistics, log, checkpoints), of an autoencoder or of a latent directory, the
ones the command reads or any other ilct made. An existing file that passes is replaced atomically.
"""

from __future__ import annotations

from pathlib import Path

from ilct.errors import IlctError
from ilct.runfolder import CHECKPOINTS_DIR, CONFIG_FILE, LOCK_FILE, RUN_FILES, STATS_FILE

# Folders ilct makes, recognized by the files they hold.
_MARKERS = {
    "run": (CONFIG_FILE, STATS_FILE),
    "checkpoint": ("state.json",),
    "autoencoder": ("config.json", "model.safetensors"),
    "latent directory": ("meta.json",),
}
_RUN_FILES = (*RUN_FILES, LOCK_FILE)


def _made_by_ilct(folder: Path) -> str | None:
    """What ilct folder this is (a run, a checkpoint, an autoencoder, a latent directory), or None."""
    for what, names in _MARKERS.items():
        if all((folder / n).is_file() for n in names):
            return what
    if folder.name == CHECKPOINTS_DIR and (folder / "latest").exists():
        return "checkpoint folder"
    return None


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
    for folder in list(target.parents)[:3]:
        what = _made_by_ilct(folder)
        inside_run_files = what == "run" and target.parent == folder and target.name in _RUN_FILES
        if what in ("checkpoint", "autoencoder", "latent directory", "checkpoint folder") or inside_run_files:
            raise IlctError(f"{flag} {text} would overwrite a file of the {what} {folder}: write it elsewhere")
    return path
