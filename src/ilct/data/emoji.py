"""The Noto Color Emoji set: 3,926 colour bitmaps from the font's CBDT table.

Each glyph (136x128 PNG inside the font) is composited on white, padded to a
square and resized to `resolution`. Its caption is the Unicode names of its
code points (from the font's cmap, and for sequences from the GSUB ligatures),
lower-cased, without joiners and variation selectors: "grinning face",
"woman: medium skin tone" style captions for later text conditioning.
Needs fontTools (`pip install 'ilct[emoji]'`) and the Debian package
fonts-noto-color-emoji.
"""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from ilct.data.images import ArrayImages
from ilct.errors import IlctError

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
INSTALL_HINT = "apt-get install fonts-noto-color-emoji"
SKIP = {0x200D, 0xFE0F, 0xFE0E, 0x20E3}  # joiners, variation selectors, keycap


def glyph_codepoints(font) -> dict[str, tuple[int, ...]]:
    """Glyph name -> code point sequence, from the cmap and GSUB ligatures."""
    seqs: dict[str, tuple[int, ...]] = {}
    for cp, name in font.getBestCmap().items():
        seqs.setdefault(name, (cp,))
    if "GSUB" in font:
        for lookup in font["GSUB"].table.LookupList.Lookup:
            for sub in lookup.SubTable:
                if getattr(sub, "ExtSubTable", None) is not None:
                    sub = sub.ExtSubTable
                for first, ligs in (getattr(sub, "ligatures", None) or {}).items():
                    for lig in ligs:
                        parts = [first, *lig.Component]
                        if all(p in seqs for p in parts):
                            seqs.setdefault(lig.LigGlyph, tuple(cp for p in parts for cp in seqs[p]))
    return seqs


def caption(codepoints: tuple[int, ...]) -> str:
    names = []
    for cp in codepoints:
        if cp in SKIP:
            continue
        name = unicodedata.name(chr(cp), "")
        if name.startswith("EMOJI MODIFIER FITZPATRICK"):
            name = {"1-2": "light", "3": "medium-light", "4": "medium", "5": "medium-dark", "6": "dark"}.get(
                name.split("TYPE-")[-1], "") + " skin tone"
        elif name.startswith("REGIONAL INDICATOR SYMBOL LETTER "):
            name = "flag letter " + name[-1]
        elif 0xE0000 <= cp <= 0xE007F or not name:  # tag characters of subdivision flags
            continue
        names.append(name.lower())
    return ", ".join(names)


def render(png: bytes, resolution: int) -> np.ndarray:
    """RGBA bitmap -> RGB on white, centred on a square, resized: uint8 (res, res, 3)."""
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGBA")
        side = max(im.size)
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
        return np.asarray(canvas.convert("RGB").resize((resolution, resolution), Image.LANCZOS))


def load_emoji(font_path: str | Path = DEFAULT_FONT, resolution: int = 64) -> tuple[ArrayImages, list[str]]:
    """All colour glyphs as an ImageDataset (labels = -1) and their captions."""
    font_path = Path(font_path)
    if not font_path.is_file():
        raise IlctError(f"emoji font not found: {font_path} (install it with: {INSTALL_HINT})")
    try:  # optional: pip install 'ilct[emoji]'
        from fontTools.ttLib import TTFont
    except ImportError:
        raise IlctError("the emoji dataset needs fontTools: pip install 'ilct[emoji]'") from None
    try:
        font = TTFont(str(font_path), lazy=True)
        strike = font["CBDT"].strikeData[0]
    except Exception as e:  # fontTools raises many types for damaged fonts
        raise IlctError(f"{font_path} has no readable CBDT colour bitmaps: {e}") from None
    seqs = glyph_codepoints(font)
    images, captions = [], []
    for name in sorted(strike):
        glyph = strike[name]
        data = getattr(glyph, "imageData", None)
        if not data:
            continue
        images.append(render(data, resolution))
        captions.append(caption(seqs.get(name, ())) or name)
    if not images:
        raise IlctError(f"{font_path} holds no colour bitmaps")
    ds = ArrayImages(np.stack(images), np.full(len(images), -1, np.int64), f"emoji:{font_path.name}@{resolution}")
    ds.captions = captions
    return ds, captions
