"""A synthetic CAPTCHA generator drawn with OpenCV (its built-in Hershey fonts), plus any
TrueType / OpenType files it is given (`captcha.fonts`) for the `mix` pre-training pseudo-style.

Text drawn with varied fonts, rotation and warping, a noise curve through the text and noise
dots; several named visual styles. The default `course` style mimics the course data: 4
characters from a 19-symbol alphabet on 50 x 130 RGB images, splits 4000/1000/3000.

Styles come in two disjoint groups (see `PRETRAIN_STYLES` and `EVAL_STYLES`): the evaluation
styles differ from every pre-training style in font, colour, distortion and noise, so accuracy
measured on them is accuracy on a style the project never trained its shipped weights on. The
`mix` pseudo-style that pre-training draws recombines the pre-training styles and widens their
ranges (stroke, glyph size, spacing, noise in the text colour, textures, blur, JPEG), so that it
has seen most of what an unknown style can throw at it; it never draws an evaluation style's
Hershey faces, and no evaluation style is ever drawn for pre-training.

Sets with `mix` draw every image from its own seed, so they can be drawn in parallel, in any
order, or from any index on (`generate_dataset(workers=...)`, `captcha.synth_stream`); sets of
named styles draw each split from one seed, image after image, as they always have.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np

from captcha.constants import DEFAULT_ALPHABET, DEFAULT_LENGTH, DEFAULT_SPLITS, INPUT_SIZE
from captcha.fonts import is_font_path, render_glyph
from captcha.imageio import write_image
from captcha.parallel import ordered_map, worker_count

_F = cv2  # Hershey font ids live on cv2
ALL_FONTS = (
    _F.FONT_HERSHEY_SIMPLEX,
    _F.FONT_HERSHEY_PLAIN,
    _F.FONT_HERSHEY_DUPLEX,
    _F.FONT_HERSHEY_COMPLEX,
    _F.FONT_HERSHEY_TRIPLEX,
    _F.FONT_HERSHEY_COMPLEX_SMALL,
    _F.FONT_HERSHEY_SCRIPT_SIMPLEX,
    _F.FONT_HERSHEY_SCRIPT_COMPLEX,
)


@dataclass(frozen=True)
class Style:
    """How one family of CAPTCHAs looks. Ranges are (low, high), drawn uniformly per image."""

    name: str
    fonts: tuple[int | str, ...]  # Hershey font ids (int) or font file paths (str, `captcha.fonts`)
    italic: float = 0.0  # probability of the italic variant per character
    background: str = "light"  # light | dark | gradient | speckled
    text_color: str = "dark"  # dark | light | random (per glyph) | mono | mono-dark (one colour per image)
    thickness: tuple[int, int] = (2, 3)  # stroke thickness at 2x resolution
    char_height: tuple[float, float] = (0.50, 0.62)  # glyph height as a fraction of image height
    rotation: float = 15.0  # max degrees per character
    shear: float = 0.0  # max horizontal shear per character
    jitter: float = 0.08  # vertical jitter, fraction of height
    overlap: tuple[float, float] = (0.0, 0.1)  # fraction of glyph width characters may overlap
    warp: float = 0.0  # amplitude of a sine warp of the whole image, fraction of height
    curves: tuple[int, int] = (1, 1)  # noise curves through the text
    curve_thickness: tuple[int, int] = (1, 2)  # at 2x resolution
    curve_color: str = "random"  # random | text (same colour as the text)
    dots: tuple[int, int] = (30, 60)
    dot_radius: tuple[int, int] = (1, 2)  # at 2x resolution
    dot_color: str = "random"  # random | text
    blur: float = 0.0  # Gaussian sigma at final resolution
    extra_lines: tuple[int, int] = (0, 0)  # straight distractor lines
    glyph_aspect: tuple[float, float] = (1.0, 1.0)  # horizontal stretch per character: narrower or wider faces
    glyph_elastic: float = 0.0  # smooth random displacement of each glyph's strokes, fraction of its size
    font_stroke: tuple[int, int] = (0, 0)  # pixels at 2x added to a font file's strokes (negative: taken off)
    line_color: str = "random"  # random | text: the straight distractor lines' colour
    texture: str = "none"  # none | grain | blotches | stripes | grid: drawn over the background
    color_noise: float = 0.0  # sigma of per-pixel colour noise at final resolution
    jpeg_quality: int = 0  # 0: none; else the image goes through JPEG at this quality, last
    contrast: float = 0.0  # least luminance gap (0-255) of text colours to the background's mean; 0: any
    description: str = ""


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            "course",
            fonts=(_F.FONT_HERSHEY_SIMPLEX, _F.FONT_HERSHEY_DUPLEX),
            text_color="dark",
            description="like the course data: dark text, one curve through it, noise dots",
        ),
        Style(
            "bold",
            fonts=(_F.FONT_HERSHEY_TRIPLEX, _F.FONT_HERSHEY_DUPLEX),
            thickness=(3, 5),
            background="gradient",
            text_color="random",
            rotation=20,
            dots=(20, 50),
            description="thick coloured glyphs on a gradient",
        ),
        Style(
            "script",
            fonts=(_F.FONT_HERSHEY_SCRIPT_SIMPLEX,),
            italic=0.3,
            thickness=(2, 3),
            text_color="mono",
            rotation=10,
            warp=0.05,
            curves=(1, 2),
            description="handwriting-like font, light warp",
        ),
        Style(
            "dense",
            fonts=(_F.FONT_HERSHEY_SIMPLEX, _F.FONT_HERSHEY_COMPLEX),
            overlap=(0.1, 0.3),
            rotation=25,
            text_color="dark",
            curves=(2, 2),
            dots=(60, 120),
            description="crowded, overlapping glyphs, two curves, many dots",
        ),
        Style(
            "inverse",
            fonts=(_F.FONT_HERSHEY_DUPLEX, _F.FONT_HERSHEY_TRIPLEX),
            background="dark",
            text_color="light",
            rotation=15,
            shear=0.2,
            description="light text on a dark background",
        ),
        # ---- evaluation styles: fonts, colours, distortions and noise unlike the ones above ----
        Style(
            "eval-plain",
            fonts=(_F.FONT_HERSHEY_PLAIN, _F.FONT_HERSHEY_COMPLEX_SMALL),
            italic=0.5,
            background="speckled",
            text_color="mono",
            thickness=(2, 4),
            rotation=30,
            shear=0.3,
            warp=0.08,
            curves=(1, 2),
            curve_color="text",
            dot_color="text",
            dots=(40, 90),
            description="held-out: small fonts, italic, strong warp, noise in the text colour",
        ),
        Style(
            "eval-scriptc",
            fonts=(_F.FONT_HERSHEY_SCRIPT_COMPLEX,),
            italic=0.2,
            background="gradient",
            text_color="mono",
            thickness=(2, 3),
            rotation=20,
            warp=0.1,
            curves=(2, 3),
            curve_color="text",
            curve_thickness=(2, 3),
            dots=(10, 30),
            dot_color="text",
            blur=0.6,
            description="held-out: complex script font, heavy warp, curves in the text colour, blur",
        ),
        Style(
            "eval-lines",
            fonts=(_F.FONT_HERSHEY_COMPLEX_SMALL, _F.FONT_HERSHEY_PLAIN),
            italic=0.7,
            background="light",
            text_color="random",
            thickness=(3, 4),
            char_height=(0.45, 0.7),
            rotation=35,
            shear=0.25,
            overlap=(0.05, 0.25),
            curves=(0, 1),
            extra_lines=(3, 6),
            dots=(80, 150),
            dot_radius=(1, 1),
            description="held-out: random colours, straight distractor lines, fine dense noise",
        ),
        Style(
            "eval-thin",
            fonts=(_F.FONT_HERSHEY_COMPLEX_SMALL, _F.FONT_HERSHEY_PLAIN),
            italic=0.3,
            background="light",
            text_color="mono-dark",
            thickness=(1, 1),
            char_height=(0.34, 0.44),
            rotation=20,
            warp=0.1,
            curves=(1, 1),
            curve_color="text",
            curve_thickness=(3, 5),
            dots=(0, 10),
            dot_color="text",
            description="held-out: thin warped strokes under a thick curve of the text colour, small text",
        ),
    )
}

PRETRAIN_STYLES = ("course", "bold", "script", "dense", "inverse")
EVAL_STYLES = ("eval-plain", "eval-scriptc", "eval-lines", "eval-thin")
MIX = "mix"  # pseudo-style: every image recombines the pre-training styles' traits
# Variety that only the `mix` pseudo-style draws (a value per image, uniformly in these ranges; a
# (low, high) trait gets a sub-range): every glyph is stretched and elastically bent, font files
# drawn bolder or thinner, and colour noise added, so pre-training sees many more letter shapes
# than five Hershey fonts, yet never a held-out font; text colours keep a least contrast to the
# background, as a CAPTCHA meant for people does. Named styles, the evaluation styles among them,
# keep the no-op defaults.
MIX_VARIETY = {
    "glyph_aspect": (0.7, 1.35), "glyph_elastic": (0.0, 0.25), "font_stroke": (-2, 2), "color_noise": (2.0, 10.0),
    "contrast": (50.0, 110.0),
}
# Traits the `mix` draws from a wider range than any named pre-training style has, drawn as
# MIX_VARIETY is: strokes from hairline to bold (at 2x), glyphs from small to large, gaps to
# overlaps, no curve to two thick ones, blur.
MIX_RANGES = {
    "thickness": (1, 7), "char_height": (0.32, 0.75), "overlap": (-0.3, 0.35), "curves": (0, 2),
    "curve_thickness": (1, 5), "extra_lines": (1, 3), "blur": (0.3, 0.9),
}
# Traits the `mix` draws as one of these values per image: curves and lines in the text colour,
# background textures, JPEG artefacts (quality).
MIX_CHOICES = {
    "curve_color": ("random", "text"), "line_color": ("random", "text"),
    "texture": ("grain", "blotches", "stripes", "grid"), "jpeg_quality": (20, 40, 60, 80),
}
# Kinds of noise, each a few of the traits above: a `mix` image keeps its wide draw for 0 to
# MIX_MAX_NOISE of these kinds and the recombined pre-training values for the others, so that a
# few kinds stack, as in a real CAPTCHA, rather than every one at once (which few people could read).
MIX_NOISE = {
    "texture": ("texture",), "colour noise": ("color_noise",), "jpeg": ("jpeg_quality",), "blur": ("blur",),
    "curves": ("curves", "curve_thickness", "curve_color"), "lines": ("extra_lines", "line_color"),
}
MIX_MAX_NOISE = 2
# With font files given (`GeneratorConfig.fonts`), this share of `mix` images draws its text in
# 1-3 of them instead of a pre-training style's Hershey faces.
FONT_FILE_SHARE = 0.6


def _draw_in(rng: np.random.Generator, bounds: tuple, pair: bool):
    """A value uniformly in `bounds` (integers when both bounds are), or a sorted (low, high) pair."""
    low, high = bounds
    if isinstance(low, int) and isinstance(high, int):
        values = [int(v) for v in rng.integers(low, high + 1, 2 if pair else 1)]
    else:
        values = [float(v) for v in rng.uniform(low, high, 2 if pair else 1)]
    return tuple(sorted(values)) if pair else values[0]


def _wide_traits(rng: np.random.Generator) -> dict:
    """The traits of `MIX_VARIETY`, `MIX_RANGES` and `MIX_CHOICES`, drawn for one image, less
    those of the noise kinds (`MIX_NOISE`) it does not draw."""
    wide = {name: _draw_in(rng, bounds, pair=isinstance(getattr(Style, name), tuple)) for name, bounds in {**MIX_VARIETY, **MIX_RANGES}.items()}
    wide.update({name: choices[int(rng.integers(len(choices)))] for name, choices in MIX_CHOICES.items()})
    kinds = list(MIX_NOISE)
    drawn = {kinds[int(i)] for i in rng.choice(len(kinds), size=int(rng.integers(0, MIX_MAX_NOISE + 1)), replace=False)}
    left_out = {name for kind, names in MIX_NOISE.items() if kind not in drawn for name in names}
    return {name: value for name, value in wide.items() if name not in left_out}


def mixed_style(rng: np.random.Generator, names: tuple[str, ...] = PRETRAIN_STYLES, font_files: tuple[str, ...] = ()) -> Style:
    """A new style per call: each trait (font, colours, distortion, noise) comes from a random one
    of `names`, then the wide traits (`_wide_traits`) replace theirs. Pre-training sees many more
    combinations than five styles, yet never an evaluation style's font. With `font_files`,
    `FONT_FILE_SHARE` of the styles write in some of those fonts instead."""
    sources = [STYLES[n] for n in names]
    traits = {f.name: getattr(sources[int(rng.integers(len(sources)))], f.name) for f in fields(Style) if f.name not in ("name", "description")}
    if font_files and rng.random() < FONT_FILE_SHARE:
        picks = rng.choice(len(font_files), size=min(int(rng.integers(1, 4)), len(font_files)), replace=False)
        traits["fonts"] = tuple(font_files[int(i)] for i in picks)
    if traits["background"] == "dark" or traits["text_color"] == "light":  # keep contrast: light on dark only
        traits["background"], traits["text_color"] = "dark", "light"
    traits.update(_wide_traits(rng))
    return replace(sources[0], name=MIX, description="", **traits)


def get_style(name: str) -> Style:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r}; choose from {', '.join(STYLES)}") from None


_MONO_COLORS = {"mono": "random", "mono-dark": "dark"}  # one text colour per image, of this kind


def _color(rng: np.random.Generator, kind: str) -> tuple[int, int, int]:
    if kind == "dark":
        return tuple(int(v) for v in rng.integers(0, 110, 3))
    if kind == "light":
        return tuple(int(v) for v in rng.integers(170, 256, 3))
    return tuple(int(v) for v in rng.integers(0, 200, 3))


def _background(rng: np.random.Generator, style: Style, h: int, w: int) -> np.ndarray:
    if style.background == "dark":
        base = rng.integers(0, 70, 3)
        return np.full((h, w, 3), base, np.uint8)
    base = rng.integers(200, 256, 3).astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    if style.background == "gradient":
        other = rng.integers(170, 256, 3).astype(np.float32)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = img * (1 - t) + other * t
    elif style.background == "speckled":
        img += rng.normal(0, 12, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, img: np.ndarray, kind: str) -> np.ndarray:
    """`img` (the background) under colour grain, smooth colour blotches, stripes at a random angle
    or a grid; away from the text's side (darker on light backgrounds), so contrast stays."""
    h, w = img.shape[:2]
    out = img.astype(np.float32)
    away = -1.0 if img.mean() > 127 else 1.0
    if kind == "grain":
        out += rng.normal(0, rng.uniform(6, 18), (h, w, 3)).astype(np.float32)
    elif kind == "blotches":
        cells = rng.uniform(-1, 1, (int(rng.integers(2, 6)), int(rng.integers(4, 12)), 3)).astype(np.float32)
        out += cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(15, 45)
    elif kind in ("stripes", "grid"):
        tint = away * rng.uniform(10, 40, 3).astype(np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(6, 24)
        if kind == "stripes":
            angle = rng.uniform(0, np.pi)
            lines = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period) > rng.uniform(-0.3, 0.6)
        else:
            lines = (xs % period < 1.5) | (ys % period < 1.5)
        out += lines[..., None] * tint
    return np.clip(out, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """`img` through a JPEG encoder and decoder at `quality`: block and ringing artefacts."""
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else img


FONT_FILE_ITALIC_SHEAR = 0.25  # a font file's "italic": a slant, as the Hershey italic variant has
FONT_FILE_CAP_HEIGHT = 0.8  # capital height per target glyph height (a Hershey capital's share)


def _hershey_canvas(style_font: int, italic: bool, ch: str, target: float, thickness: int) -> np.ndarray:
    font = style_font | cv2.FONT_ITALIC if italic else style_font
    (tw, th), base = cv2.getTextSize(ch, font, 1.0, thickness)
    scale = target / max(th + base * 0.5, 1)
    (tw, th), base = cv2.getTextSize(ch, font, scale, thickness)
    pad = int(max(tw, th + base) * 0.6) + thickness
    size = max(tw, th + base) + 2 * pad
    canvas = np.zeros((size, size), np.uint8)
    cv2.putText(canvas, ch, ((size - tw) // 2, (size + th) // 2), font, scale, 255, thickness, cv2.LINE_AA)
    return canvas


def _glyph(rng: np.random.Generator, style: Style, ch: str, height: int) -> np.ndarray:
    """A float32 coverage mask of one rotated, sheared character, cropped to its ink."""
    font = rng.choice(style.fonts)  # the random draws keep their order: the same seed, the same images
    italic = rng.random() < style.italic
    if is_font_path(font):
        target = height * rng.uniform(*style.char_height)
        stroke = int(rng.integers(style.font_stroke[0], style.font_stroke[1] + 1))
        canvas = render_glyph(str(font), ch, target * FONT_FILE_CAP_HEIGHT, stroke)
    else:
        thickness = int(rng.integers(style.thickness[0], style.thickness[1] + 1))
        target = height * rng.uniform(*style.char_height)
        canvas = _hershey_canvas(int(font), italic, ch, target, thickness)
    size = canvas.shape[0]
    if style.glyph_elastic > 0:
        canvas = _elastic(rng, canvas, style.glyph_elastic * target)
    angle = rng.uniform(-style.rotation, style.rotation)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    matrix[0, 1] += rng.uniform(-style.shear, style.shear)
    if italic and is_font_path(font):
        matrix[0, 1] -= FONT_FILE_ITALIC_SHEAR
    canvas = cv2.warpAffine(canvas, matrix, (size, size), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(canvas > 20)
    if len(xs) == 0:
        return np.zeros((1, 1), np.float32)
    glyph = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if style.glyph_aspect != (1.0, 1.0):
        width = max(1, round(glyph.shape[1] * rng.uniform(*style.glyph_aspect)))
        glyph = cv2.resize(glyph, (width, glyph.shape[0]), interpolation=cv2.INTER_LINEAR)
    return glyph.astype(np.float32) / 255.0


ELASTIC_GRID = 4  # random shifts per side of a glyph's canvas that its smooth bend passes through


def _elastic(rng: np.random.Generator, mask: np.ndarray, amplitude: float) -> np.ndarray:
    """Bend a glyph's strokes: a smooth random displacement field of at most `amplitude` pixels,
    interpolated from a coarse grid of random shifts (far cheaper than blurring per-pixel noise)."""
    size = mask.shape[0]
    shift = []
    for _ in range(2):
        coarse = rng.uniform(-1, 1, (ELASTIC_GRID, ELASTIC_GRID)).astype(np.float32)
        noise = cv2.resize(coarse, (mask.shape[1], size), interpolation=cv2.INTER_CUBIC)
        shift.append(noise * (amplitude / max(float(np.abs(noise).max()), 1e-6)))
    xs, ys = np.meshgrid(np.arange(mask.shape[1], dtype=np.float32), np.arange(size, dtype=np.float32))
    return cv2.remap(mask, xs + shift[0], ys + shift[1], cv2.INTER_LINEAR, borderValue=0)


def _paint(img: np.ndarray, mask: np.ndarray, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Alpha-blend `color` into img through `mask` at top-left (x, y), clipped to the image."""
    h, w = img.shape[:2]
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, w), min(y + mh, h)
    if x0 >= x1 or y0 >= y1:
        return
    m = mask[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = (region * (1 - m) + np.asarray(color, np.float32) * m).astype(np.uint8)


def _sine_warp(rng: np.random.Generator, img: np.ndarray, amplitude: float) -> np.ndarray:
    h, w = img.shape[:2]
    period = rng.uniform(0.6, 1.4) * w
    phase = rng.uniform(0, 2 * np.pi)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dy = amplitude * h * np.sin(2 * np.pi * xs / period + phase)
    dx = 0.5 * amplitude * h * np.sin(2 * np.pi * ys / (0.8 * h) + phase)
    return cv2.remap(img, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _contrasting(color: tuple[int, int, int], background: float, least: float) -> tuple[int, int, int]:
    """`color` (BGR) shifted away from the `background` luminance until they differ by `least`:
    darker on a light background, lighter on a dark one."""
    b, g, r = color
    luminance = 0.114 * b + 0.587 * g + 0.299 * r
    if abs(luminance - background) >= least:
        return color
    target = background - least if background > 127 else background + least
    return tuple(int(np.clip(c + target - luminance, 0, 255)) for c in color)


def _draw_text(rng: np.random.Generator, img: np.ndarray, style: Style, text: str, text_color: tuple[int, int, int], background: float) -> None:
    """Paint the glyphs of `text` side by side, squeezed to fit the width (on `img`, at 2x)."""
    h, w = img.shape[:2]
    glyphs = [_glyph(rng, style, ch, h) for ch in text]
    overlaps = [rng.uniform(*style.overlap) for _ in glyphs]
    total = sum(g.shape[1] * (1 - o) for g, o in zip(glyphs, overlaps))
    squeeze = min(1.0, 0.92 * w / max(total, 1))
    if squeeze < 1.0:
        glyphs = [cv2.resize(g, (max(1, int(g.shape[1] * squeeze)), max(1, int(g.shape[0] * squeeze)))) for g in glyphs]
        total *= squeeze
    x = int(rng.uniform(0.02 * w, max(0.02 * w + 1, w - total - 0.02 * w)))
    for glyph, overlap in zip(glyphs, overlaps):
        y = int((h - glyph.shape[0]) / 2 + rng.uniform(-style.jitter, style.jitter) * h)
        color = text_color if style.text_color in _MONO_COLORS else _color(rng, style.text_color)
        if style.contrast > 0:
            color = _contrasting(color, background, style.contrast)
        _paint(img, glyph, x, y, color)
        x += int(glyph.shape[1] * (1 - overlap))


def _draw_noise(rng: np.random.Generator, img: np.ndarray, style: Style, text_color: tuple[int, int, int]) -> None:
    """Draw the style's curves, straight lines and dots over `img` (at 2x)."""
    h, w = img.shape[:2]

    def noise_color(kind: str) -> tuple[int, int, int]:
        if kind == "text":
            return text_color
        return _color(rng, "light" if style.background == "dark" else "random")

    for _ in range(int(rng.integers(style.curves[0], style.curves[1] + 1))):
        x_a, x_b = rng.uniform(0, 0.25 * w), rng.uniform(0.75 * w, w)
        xs = np.linspace(x_a, x_b, 60)
        mid = h / 2 + rng.uniform(-0.15, 0.15) * h
        amp = rng.uniform(0.05, 0.22) * h
        period = rng.uniform(0.5, 1.5) * w
        ys = mid + amp * np.sin(2 * np.pi * xs / period + rng.uniform(0, 2 * np.pi)) + rng.uniform(-0.1, 0.1) * h * (xs / w - 0.5)
        pts = np.stack([xs, ys], axis=1).round().astype(np.int32)[None]
        thickness = int(rng.integers(style.curve_thickness[0], style.curve_thickness[1] + 1))
        cv2.polylines(img, pts, False, noise_color(style.curve_color), thickness, cv2.LINE_AA)
    for _ in range(int(rng.integers(style.extra_lines[0], style.extra_lines[1] + 1))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, noise_color(style.line_color), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(style.dots[0], style.dots[1] + 1))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        radius = int(rng.integers(style.dot_radius[0], style.dot_radius[1] + 1))
        cv2.circle(img, centre, radius, noise_color(style.dot_color), -1, cv2.LINE_AA)


def render(text: str, style: Style, rng: np.random.Generator, size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """Draw one CAPTCHA of `text`; returns uint8 BGR at `size` (H, W)."""
    out_h, out_w = size
    img = _background(rng, style, out_h * 2, out_w * 2)  # draw at 2x, then shrink: smoother glyph edges
    if style.texture != "none":
        img = _texture(rng, img, style.texture)
    text_color = _color(rng, _MONO_COLORS.get(style.text_color, style.text_color))
    if style.background == "dark" and style.text_color in ("random", "mono"):
        text_color = _color(rng, "light")
    background = float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).mean()) if style.contrast > 0 else 0.0
    if style.contrast > 0:
        text_color = _contrasting(text_color, background, style.contrast)
    _draw_text(rng, img, style, text, text_color, background)
    if style.warp > 0:
        img = _sine_warp(rng, img, style.warp)
    _draw_noise(rng, img, style, text_color)
    img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    if style.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), style.blur)
    if style.color_noise > 0:
        img = np.clip(img + rng.normal(0, style.color_noise, img.shape), 0, 255).astype(np.uint8)
    if style.jpeg_quality > 0:
        img = _jpeg(img, style.jpeg_quality)
    return img


def random_text(rng: np.random.Generator, alphabet: str, length: int | tuple[int, int]) -> str:
    n = length if isinstance(length, int) else int(rng.integers(length[0], length[1] + 1))
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


@dataclass
class GeneratorConfig:
    """What `captcha generate` draws."""

    alphabet: str = DEFAULT_ALPHABET
    length: int | tuple[int, int] = DEFAULT_LENGTH  # fixed, or (min, max) for variable length
    size: tuple[int, int] = INPUT_SIZE  # (height, width)
    splits: dict[str, int] = field(default_factory=lambda: dict(zip(("train", "val", "test"), DEFAULT_SPLITS)))
    styles: tuple[str, ...] = ("course",)
    seed: int = 0
    fonts: tuple[str, ...] = ()  # font files the `mix` pseudo-style may also write in (captcha.fonts.find_fonts)

    def __post_init__(self) -> None:
        if not self.alphabet:
            raise ValueError("--alphabet must hold at least one symbol")
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"--alphabet {self.alphabet!r} repeats a symbol")
        low, high = self.length if isinstance(self.length, tuple) else (self.length, self.length)
        if low < 1:
            raise ValueError(f"labels need at least 1 character (--length / --min-length {low})")
        if low > high:
            raise ValueError(f"--min-length {low} is above --length {high}")
        bad = {k: v for k, v in self.splits.items() if v < 0}
        if bad:
            raise ValueError(f"--splits must not be negative: {bad}")
        if min(self.size) < 8:
            raise ValueError(f"images of {self.size[0]}x{self.size[1]} pixels are too small to draw text on (--height, --width)")


def image_name(text: str, index: int) -> str:
    """`<label>_<index>.png`, the name `captcha train` reads the label from; labels with symbols
    a file name cannot carry safely (`/`, `_`, spaces, ...) get `<index>.png`, and `labels.csv`
    (written beside the images either way) carries their label."""
    safe = all(c.isascii() and (c.isalnum() or c == "-") for c in text)
    return f"{text}_{index:05d}.png" if safe else f"{index:05d}.png"


# Images one worker process draws and writes per task, for sets drawn from a seed per image.
GENERATE_CHUNK = 256


def seeds_per_image(config: GeneratorConfig) -> bool:
    """Whether image i of split s is drawn from its own seed (seed, s, i): for sets with the `mix`
    pseudo-style, what pre-training draws at scale, so that any part of a split can be drawn in any
    process, in any order. A set of named styles draws each split from one seed (seed, s), image
    after image, as it always has: the evaluation sets stay the same images."""
    return MIX in config.styles


def _draw_next(rng: np.random.Generator, config: GeneratorConfig, index: int) -> tuple[str, np.ndarray]:
    """Image `index` of a split, drawn with `rng` as it stands: its label and uint8 BGR pixels."""
    text = random_text(rng, config.alphabet, config.length)
    name = config.styles[index % len(config.styles)]
    style = mixed_style(rng, font_files=config.fonts) if name == MIX else get_style(name)
    return text, render(text, style, rng, config.size)


def draw_sample(config: GeneratorConfig, split_index: int, index: int) -> tuple[str, np.ndarray]:
    """Image `index` of split `split_index` drawn from its own seed (`seeds_per_image`): the same
    label and pixels wherever and whenever it is drawn."""
    return _draw_next(np.random.default_rng([config.seed, split_index, index]), config, index)


def _write_images(out_dir: str, config: GeneratorConfig, split_index: int, split: str, start: int, count: int) -> list[tuple[str, str]]:
    """Draw and write images start..start+count-1 of one split; returns their (file name, label)
    rows. A set of named styles is drawn a whole split at a time, from the split's seed."""
    if seeds_per_image(config):
        drawn = (draw_sample(config, split_index, i) for i in range(start, start + count))
    else:
        assert start == 0, "a split drawn from one seed is drawn whole"
        rng = np.random.default_rng([config.seed, split_index])
        drawn = (_draw_next(rng, config, i) for i in range(count))
    rows = []
    for i, (text, img) in enumerate(drawn, start):
        name = image_name(text, i)
        write_image(Path(out_dir) / split / name, img)
        rows.append((name, text))
    return rows


def generate_dataset(out_dir: str | Path, config: GeneratorConfig, workers: int = 1) -> dict[str, int]:
    """Write `out_dir/<split>/<label>_<index>.png` plus a `labels.csv` per split.

    Each split has its own seed stream, so changing one split's size leaves the others unchanged.
    `workers` processes draw and write the images (1: this process; 0: one per core); the files
    are the same whatever their number. Sets with `mix` spread every split over the workers in
    chunks of `GENERATE_CHUNK` images; sets of named styles give each worker a whole split.
    """
    out_dir = Path(out_dir)
    workers = worker_count(workers)  # settings fail here, before any work
    for name in config.styles:
        if name != MIX:
            get_style(name)
    tasks = []
    for split_index, (split, count) in enumerate(config.splits.items()):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        step = GENERATE_CHUNK if seeds_per_image(config) else max(count, 1)
        tasks += [(str(out_dir), config, split_index, split, start, min(step, count - start)) for start in range(0, count, step)]
    rows: dict[str, list[tuple[str, str]]] = {split: [] for split in config.splits}
    processes = min(workers, max(len(tasks), 1))  # no idle workers for a set of a few tasks
    for task, task_rows in zip(tasks, ordered_map(_write_images, tasks, processes)):
        rows[task[3]] += task_rows
    for split, split_rows in rows.items():
        with open(out_dir / split / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(split_rows)
    return dict(config.splits)
