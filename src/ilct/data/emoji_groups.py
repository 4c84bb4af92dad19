"""The Unicode emoji groups of the emoji set's captions: what "the asked kind of emoji" means to a scorer.

Unicode's emoji-test.txt (Debian package `unicode-data`: /usr/share/unicode/emoji/emoji-test.txt) files
every emoji sequence under a group ("Smileys & Emotion", "Animals & Nature", ...) and a subgroup. The emoji
set's captions (ilct.data.emoji.caption) are the Unicode names of a glyph's code points in the font's
ligature order, which is not always the sequence's order ("female sign, person with ball" is the
sequence person with ball + ZWJ + female sign), so a caption is matched by its *set* of names. Captions of
emoji newer than the file (the font has a few) have no group (-1), as do the "Component" swatches.

`base(caption)` is the emoji without its skin tones: "waving hand sign, medium skin tone" -> "waving hand
sign", the emoji whose other variants a held-out skin-tone prompt asks for.
"""

from __future__ import annotations

from pathlib import Path

from ilct.data.emoji import caption as sequence_caption
from ilct.errors import IlctError

DEFAULT_EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
INSTALL_HINT = "apt-get install unicode-data"
GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
          "Activities", "Objects", "Symbols", "Flags")  # emoji-test.txt's groups less "Component"
SKIN = " skin tone"


def name_set(caption: str) -> tuple[str, ...]:
    """A caption's names as a sorted tuple: the same for every order of the same code points."""
    return tuple(sorted(p.strip() for p in caption.split(",") if p.strip()))


def base(caption: str) -> str:
    """The caption without its skin tones, names in their order: the emoji a skin-tone variant is of."""
    return ", ".join(p.strip() for p in caption.split(",") if p.strip() and not p.strip().endswith(SKIN))


def read_emoji_test(path: str | Path = DEFAULT_EMOJI_TEST) -> dict[tuple[str, ...], str]:
    """name set -> group, for every sequence of emoji-test.txt (the first one filed wins)."""
    path = Path(path)
    if not path.is_file():
        raise IlctError(f"Unicode's emoji-test.txt not found: {path} (install it with: {INSTALL_HINT})")
    groups: dict[tuple[str, ...], str] = {}
    group = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and ";" in line:
            try:
                cps = tuple(int(x, 16) for x in line.split(";")[0].split())
            except ValueError:
                raise IlctError(f"{path} is not Unicode's emoji-test.txt (line {line[:40]!r})") from None
            if group is not None and cps:
                groups.setdefault(name_set(sequence_caption(cps)), group)
    if not groups:
        raise IlctError(f"{path} lists no emoji sequences")
    return groups


def emoji_groups(captions: list[str], path: str | Path = DEFAULT_EMOJI_TEST) -> list[int]:
    """Each caption's index in GROUPS, -1 where emoji-test.txt has none (or files it under "Component")."""
    table = read_emoji_test(path)
    index = {g: k for k, g in enumerate(GROUPS)}
    return [index.get(table.get(name_set(c), ""), -1) for c in captions]
