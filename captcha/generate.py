"""A synthetic CAPTCHA generator drawn with OpenCV (its built-in Hershey fonts), plus any
TrueType / OpenType files it is given (`captcha.fonts`) for the `mix` pre-training pseudo-style.

Text drawn with varied fonts, rotation and warping, a noise curve through the text and noise
dots; several named visual styles. The default `course` style mimics the course data: 4
characters from a 19-symbol alphabet on 50 x 130 RGB images, splits 4000/1000/3000.

Styles come in two disjoint groups (see `PRETRAIN_STYLES` and `EVAL_STYLES`): the evaluation
styles differ from every pre-training style in font, colour, distortion and noise, so accuracy
measured on them is accuracy on a style the project never trained its shipped weights on.
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
    text_color: str = "dark"  # dark | light | random | mono (one colour per image)
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
    )
}

PRETRAIN_STYLES = ("course", "bold", "script", "dense", "inverse")
EVAL_STYLES = ("eval-plain", "eval-scriptc", "eval-lines")
MIX = "mix"  # pseudo-style: every image recombines the pre-training styles' traits
# Letter-shape variety that only the `mix` pseudo-style draws (a value per image, uniformly in these
# ranges): every glyph of the five pre-training faces is stretched and elastically bent, so
# pre-training sees many more letter shapes than five Hershey fonts, yet never a held-out font.
# Named styles, the evaluation styles among them, keep the no-op defaults.
MIX_VARIETY = {"glyph_aspect": (0.7, 1.35), "glyph_elastic": (0.0, 0.25)}
# With font files given (`GeneratorConfig.fonts`), this share of `mix` images draws its text in
# 1-3 of them instead of a pre-training style's Hershey faces.
FONT_FILE_SHARE = 0.6


def mixed_style(rng: np.random.Generator, names: tuple[str, ...] = PRETRAIN_STYLES, font_files: tuple[str, ...] = ()) -> Style:
    """A new style per call: each trait (font, colours, distortion, noise) comes from a random one
    of `names`, and the letter-shape variety (`MIX_VARIETY`) is drawn afresh. Pre-training sees
    many more combinations than five styles, yet never a font, colour scheme or noise kind that
    only the evaluation styles have. With `font_files`, `FONT_FILE_SHARE` of the styles write in
    some of those fonts instead."""
    sources = [STYLES[n] for n in names]
    traits = {f.name: getattr(sources[int(rng.integers(len(sources)))], f.name) for f in fields(Style) if f.name not in ("name", "description", *MIX_VARIETY)}
    if font_files and rng.random() < FONT_FILE_SHARE:
        picks = rng.choice(len(font_files), size=min(int(rng.integers(1, 4)), len(font_files)), replace=False)
        traits["fonts"] = tuple(font_files[int(i)] for i in picks)
    if traits["background"] == "dark" or traits["text_color"] == "light":  # keep contrast: light on dark only
        traits["background"], traits["text_color"] = "dark", "light"
    low, high = MIX_VARIETY["glyph_aspect"]
    a, b = sorted(rng.uniform(low, high, 2))
    traits["glyph_aspect"] = (float(a), float(b))
    traits["glyph_elastic"] = float(rng.uniform(*MIX_VARIETY["glyph_elastic"]))
    return replace(sources[0], name=MIX, description="", **traits)


def get_style(name: str) -> Style:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r}; choose from {', '.join(STYLES)}") from None


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
        # the style's thickness range, read as 0-1 px of faux bold at 2x on the font's own strokes
        stroke = int(rng.integers(0, 2)) if style.thickness[1] >= 3 else 0
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


def _elastic(rng: np.random.Generator, mask: np.ndarray, amplitude: float) -> np.ndarray:
    """Bend a glyph's strokes: a smooth random displacement field of at most `amplitude` pixels."""
    size = mask.shape[0]
    sigma = max(size / 6, 1.0)
    shift = []
    for _ in range(2):
        noise = cv2.GaussianBlur(rng.uniform(-1, 1, mask.shape).astype(np.float32), (0, 0), sigma)
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


def render(text: str, style: Style, rng: np.random.Generator, size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """Draw one CAPTCHA of `text`; returns uint8 BGR at `size` (H, W)."""
    out_h, out_w = size
    h, w = out_h * 2, out_w * 2  # draw at 2x, then shrink: smoother glyph edges
    img = _background(rng, style, h, w)
    text_color = _color(rng, style.text_color if style.text_color != "mono" else "random")
    if style.background == "dark" and style.text_color in ("random", "mono"):
        text_color = _color(rng, "light")

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
        color = text_color if style.text_color == "mono" else _color(rng, style.text_color)
        _paint(img, glyph, x, y, color)
        x += int(glyph.shape[1] * (1 - overlap))

    if style.warp > 0:
        img = _sine_warp(rng, img, style.warp)

    def noise_color(kind: str) -> tuple[int, int, int]:
        if kind == "text":
            return text_color
        return _color(rng, "light" if style.background == "dark" else "random")

    for _ in range(int(rng.integers(style.curves[0], style.curves[1] + 1))):
        xs = np.linspace(0, w - 1, 60)
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
        cv2.line(img, p1, p2, noise_color("random"), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(style.dots[0], style.dots[1] + 1))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        radius = int(rng.integers(style.dot_radius[0], style.dot_radius[1] + 1))
        cv2.circle(img, centre, radius, noise_color(style.dot_color), -1, cv2.LINE_AA)

    img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    if style.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), style.blur)
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


def generate_dataset(out_dir: str | Path, config: GeneratorConfig) -> dict[str, int]:
    """Write `out_dir/<split>/<label>_<index>.png` plus a `labels.csv` per split.

    Each split has its own seed stream, so changing one split's size leaves the others unchanged.
    """
    out_dir = Path(out_dir)
    styles = [None if s == MIX else get_style(s) for s in config.styles]  # None: a new mixed style per image
    counts = {}
    for split_index, (split, count) in enumerate(config.splits.items()):
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([config.seed, split_index])
        rows = []
        for i in range(count):
            text = random_text(rng, config.alphabet, config.length)
            style = styles[i % len(styles)] or mixed_style(rng, font_files=config.fonts)
            img = render(text, style, rng, config.size)
            name = image_name(text, i)
            write_image(split_dir / name, img)
            rows.append((name, text))
        with open(split_dir / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
        counts[split] = count
    return counts
