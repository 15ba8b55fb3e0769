"""TrueType / OpenType fonts for the generator: find them, vet them, draw one glyph.

The Hershey fonts built into OpenCV are only eight faces, and the evaluation styles hold three of
them out, so pre-training sees five. Any folder of `.ttf` / `.otf` files (a Linux machine's
`/usr/share/fonts`, say) adds hundreds of letter shapes: `find_fonts` collects the files that can
draw every symbol of an alphabet, and `render_glyph` draws one character as a coverage mask, the
same kind of mask the Hershey path draws, so everything after it (rotation, shear, elastic bend,
placement, noise) is shared.

A font is refused when it cannot draw a symbol (it falls back to its 'missing glyph' box), when it
draws several symbols the same, when it draws ink for a space (its letters are light on a dark
box), or when its name says it is a symbol, dingbat, maths or Hershey face: symbol fonts map
letters to pictures, and a Hershey-derived outline would leak a held-out evaluation font into
pre-training.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

FONT_SUFFIXES = (".ttf", ".otf")
# File-name parts of faces that do not draw letters, or that would leak a held-out (Hershey) font,
# and of the Debian faces seen to draw small capitals or pictures for lower case (BecauseWe*, Humor
# Sans, dkg handwriting, Linux Biolinum Keyboard, Dustin's It wasn't me): their letters would
# contradict their labels.
REFUSED_NAME_PARTS = (
    "symbol", "dingbat", "d050000l", "math", "emoji", "awesome", "ornament", "hershey", "wingding",
    "becausewe", "humor-sans", "dkg", "linbiolinum_k", "it_wasn_t_me",
)
PER_FAMILY = 4  # at most this many files of one family, so a family of 18 weights counts like one of 4
PER_SUPERFAMILY = 8  # at most this many of families sharing a first word (Tiresias Infofont, Tiresias LPfont, ...)
_REFERENCE_PX = 64
_MISSING = "\u0378"  # an unassigned code point: every font draws its missing-glyph box for it
THINNED_INK_KEPT = 0.9  # thinning stops where growing the strokes back restores less of the ink


def is_font_path(value: object) -> bool:
    """A style's font entry is a Hershey id (int) or the path of a font file (str)."""
    return isinstance(value, str)


@lru_cache(maxsize=4096)
def _font(path: str, px: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, px)


def _mask(path: str, px: int, text: str, stroke: int = 0) -> np.ndarray:
    """The ink of `text` at `px` pixels, as uint8 (0-255), cropped to its ink (empty: 0 x 0)."""
    from PIL import Image, ImageDraw

    font = _font(path, px)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    w, h = max(right - left, 1) + 2, max(bottom - top, 1) + 2
    image = Image.new("L", (w, h), 0)
    ImageDraw.Draw(image).text((1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    mask = np.asarray(image)
    ys, xs = np.nonzero(mask > 20)
    if len(xs) == 0:
        return np.zeros((0, 0), np.uint8)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@lru_cache(maxsize=1024)
def cap_height_ratio(path: str) -> float:
    """Height of the capital H per pixel of font size: sizes fonts so that their capitals agree."""
    return max(_mask(path, _REFERENCE_PX, "H").shape[0], 1) / _REFERENCE_PX


def thin_strokes(mask: np.ndarray, px: int) -> np.ndarray:
    """`mask` with `px` pixels eroded from every edge of its strokes, or fewer where more would
    erase a part of the glyph (an arm, a serif, a hairline face's every stroke): thinning stops
    when growing the strokes back by as much no longer restores `THINNED_INK_KEPT` of the ink."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    ink = int(np.count_nonzero(mask > 127))
    thinned = mask
    for k in range(1, px + 1):
        thinner = cv2.erode(mask, kernel, iterations=k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        restored = cv2.dilate(thinner, kernel, iterations=k)
        if np.count_nonzero(restored > 127) < THINNED_INK_KEPT * ink:
            break
        thinned = thinner
    return thinned


def render_glyph(path: str, ch: str, cap_height: float, stroke: int = 0) -> np.ndarray:
    """`ch` drawn so that the font's capital H would be `cap_height` pixels tall, on a square
    canvas with room to rotate; uint8 coverage (0-255), like `cv2.putText` on a black canvas.
    `stroke` pixels are added to every edge of the strokes (faux bold), or taken from them when
    negative (`thin_strokes`)."""
    px = max(4, round(cap_height / cap_height_ratio(path)))
    ink = _mask(path, px, ch, max(stroke, 0))
    if stroke < 0 and ink.size:
        ink = thin_strokes(ink, -stroke)
    if ink.size == 0:
        return np.zeros((1, 1), np.uint8)
    h, w = ink.shape
    size = int(max(h, w) * 1.6) + 2
    canvas = np.zeros((size, size), np.uint8)
    y, x = (size - h) // 2, (size - w) // 2
    canvas[y : y + h, x : x + w] = ink
    return canvas


def unusable_reason(path: str, symbols: str) -> str | None:
    """Why `path` cannot draw `symbols` (None when it can)."""
    name = Path(path).name.lower()
    refused = next((part for part in REFUSED_NAME_PARTS if part in name), None)
    if refused:
        return f"its name says {refused!r}"
    try:
        if _mask(path, _REFERENCE_PX, " ").size:
            return "it draws ink for a space (light letters on a dark box)"
        missing = _mask(path, _REFERENCE_PX, _MISSING)
        drawn = {}
        for ch in symbols:
            ink = _mask(path, _REFERENCE_PX, ch)
            if ink.size == 0:
                return f"it draws nothing for {ch!r}"
            if ink.shape == missing.shape and np.array_equal(ink, missing):
                return f"it has no glyph for {ch!r}"
            key = (ink.shape, ink.tobytes())
            if key in drawn:
                return f"it draws {drawn[key]!r} and {ch!r} the same"
            drawn[key] = ch
    except OSError as err:
        return f"it cannot be read ({err})"
    return None


def _family(path: str) -> str:
    try:
        return _font(path, _REFERENCE_PX).getname()[0] or Path(path).stem
    except OSError:
        return Path(path).stem


def find_fonts(paths, symbols: str, log=None) -> tuple[str, ...]:
    """Every usable font file under `paths` (files or folders, searched recursively), at most
    `PER_FAMILY` per family and `PER_SUPERFAMILY` per first word, sorted: the same folders give
    the same tuple on every machine that has the same files. `log`, when given, hears about each
    refused file; a missing path raises FileNotFoundError, and no usable font at all ValueError."""
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.suffix.lower() in FONT_SUFFIXES and f.is_file()]
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"font path {str(p)!r} is neither a font file nor a folder")
    by_family = defaultdict(list)
    for f in sorted({str(f.resolve()) for f in files}):
        reason = unusable_reason(f, symbols)
        if reason:
            if log:
                log(f"font {f} skipped: {reason}")
            continue
        by_family[_family(f)].append(f)
    by_first_word = defaultdict(list)
    for family in sorted(by_family):
        by_first_word[family.split()[0].lower()] += sorted(by_family[family], key=lambda s: (len(Path(s).name), s))[:PER_FAMILY]
    found = tuple(sorted(f for files in by_first_word.values() for f in files[:PER_SUPERFAMILY]))
    if not found:
        raise ValueError(f"--fonts {' '.join(str(p) for p in paths)}: no usable .ttf/.otf font there")
    return found
