"""Font files in the generator: finding and vetting them, drawing glyphs, the Debian packages they come from,
the mix style, pretrain --fonts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from captcha.cli import main
from captcha.font_packages import (FONT_PACKAGES, FontSet, find_package_fonts, font_set_of, install_command, package_font_files,
                                    package_versions)
from captcha.fonts import find_fonts, render_glyph, thin_strokes, unusable_reason
from captcha.generate import EVAL_STYLES, FONT_FILE_SHARE, STYLES, GeneratorConfig, generate_dataset, mixed_style, render
from captcha.pretrain import PretrainConfig, pretrain
from captcha.pretrained import PRETRAIN_ALPHABET

QUIET = {"log": lambda s: None}


@pytest.fixture()
def font_dir(tmp_path):
    """A folder with one real font (the TrueType face Pillow embeds), a symbol-named copy and garbage."""
    folder = tmp_path / "fonts"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "Aileron-Regular.ttf").write_bytes(ImageFont.load_default(size=20).font_bytes)
    shutil.copy(folder / "sub" / "Aileron-Regular.ttf", folder / "FancySymbols.ttf")
    (folder / "Broken.otf").write_bytes(b"not a font at all")
    (folder / "readme.txt").write_text("ignored")
    return folder


def test_find_fonts_keeps_usable_files_and_says_why_others_are_skipped(font_dir):
    said: list[str] = []
    found = find_fonts([font_dir], PRETRAIN_ALPHABET, log=said.append)
    assert [p.split("/")[-1] for p in found] == ["Aileron-Regular.ttf"]
    assert any("FancySymbols.ttf" in s and "symbol" in s for s in said)
    assert any("Broken.otf" in s and "cannot be read" in s for s in said)
    assert find_fonts([font_dir / "sub" / "Aileron-Regular.ttf"], "abc") == found  # a file works as well as a folder
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_fonts([font_dir / "nowhere"], "abc")


def test_a_font_without_a_symbol_or_named_after_a_held_out_face_is_refused(font_dir):
    font = str(font_dir / "sub" / "Aileron-Regular.ttf")
    assert unusable_reason(font, PRETRAIN_ALPHABET) is None
    assert "no glyph" in unusable_reason(font, "ab\u4e00")  # no CJK in a Latin face
    hershey = font_dir / "Hershey-Script.ttf"
    shutil.copy(font, hershey)
    assert "hershey" in unusable_reason(str(hershey), "ab")


def test_render_glyph_sizes_by_capital_height(font_dir):
    font = str(font_dir / "sub" / "Aileron-Regular.ttf")
    for cap in (16, 40):
        mask = render_glyph(font, "H", cap)
        ys = np.nonzero((mask > 20).any(axis=1))[0]
        assert abs((ys.max() - ys.min() + 1) - cap) <= 2
        assert mask.shape[0] == mask.shape[1]  # square, with room to rotate
    x_height = np.nonzero((render_glyph(font, "x", 40) > 20).any(axis=1))[0]
    assert x_height.max() - x_height.min() + 1 < 36  # lower case stays smaller than capitals: case is visible


def test_mix_style_writes_in_font_files_only_when_given(font_dir):
    font = str(font_dir / "sub" / "Aileron-Regular.ttf")
    rng = np.random.default_rng(0)
    uses = 0
    for _ in range(100):
        style = mixed_style(rng, font_files=(font,))
        uses += style.fonts == (font,)
        img = render("aQ7z", style, rng)
        assert img.shape == (50, 130, 3) and img.std() > 5
    assert abs(uses / 100 - FONT_FILE_SHARE) < 0.15
    rng = np.random.default_rng(0)
    assert all(not any(isinstance(f, str) for f in mixed_style(rng).fonts) for _ in range(50))
    for name in EVAL_STYLES:  # the held-out styles keep their Hershey faces
        assert all(isinstance(f, int) for f in STYLES[name].fonts)


def test_generated_set_with_fonts_is_seeded_and_cli_takes_fonts(tmp_path, font_dir):
    config = GeneratorConfig(styles=("mix",), splits={"train": 8}, seed=3, fonts=find_fonts([font_dir], PRETRAIN_ALPHABET))
    generate_dataset(tmp_path / "a", config)
    generate_dataset(tmp_path / "b", config)
    for fa in sorted((tmp_path / "a" / "train").glob("*.png")):
        assert fa.read_bytes() == (tmp_path / "b" / "train" / fa.name).read_bytes()
    assert main(["generate", str(tmp_path / "c"), "--style", "mix", "--splits", "4", "2", "2", "--fonts", str(font_dir)]) == 0
    assert len(list((tmp_path / "c" / "train").glob("*.png"))) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["generate", str(tmp_path / "d"), "--style", "mix", "--fonts", str(empty)]) == 2
    assert main(["generate", str(tmp_path / "e"), "--style", "course", "--fonts", str(font_dir)]) == 2  # fonts need mix
    assert not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="no usable"):
        find_fonts([empty], "abc")


def test_pretrain_with_fonts_records_them_and_redraws_when_they_change(tmp_path, font_dir):
    small = dict(images=32, val_images=8, epochs=1, batch_size=16, work_dir=str(tmp_path / "work"))
    pretrain(PretrainConfig(**small, out=str(tmp_path / "w.pt"), fonts=(str(font_dir),)), **QUIET)
    (data,) = (tmp_path / "work").glob("data-*-fonts1-*")
    assert (data / "fonts.txt").read_text().strip().endswith("Aileron-Regular.ttf")
    pretrain(PretrainConfig(**small, out=str(tmp_path / "w2.pt")), **QUIET)
    assert len(list((tmp_path / "work").glob("data-*"))) == 2  # without fonts: another set
    with pytest.raises(ValueError, match="no usable"):
        pretrain(PretrainConfig(**small, fonts=(str(tmp_path / "work"),)), **QUIET)


def test_thinning_and_faux_bold_change_the_ink_and_keep_the_glyph(font_dir):
    font = str(font_dir / "sub" / "Aileron-Regular.ttf")
    ink = {stroke: int(np.count_nonzero(render_glyph(font, "H", 60, stroke) > 127)) for stroke in (-30, -1, 0, 2)}
    assert ink[-1] < ink[0] < ink[2]
    assert 0 < ink[-30] <= ink[-1]  # thinned only while no stroke vanishes
    hairline = np.zeros((40, 40), np.uint8)
    hairline[5:35, 10:13] = 255  # a 3-pixel stem
    hairline[5:7, 13:30] = 255  # and a 2-pixel arm, which one pixel off each edge would erase
    assert np.array_equal(thin_strokes(hairline, 1), hairline)


HAS_DPKG = shutil.which("dpkg-query") is not None
INSTALLED_FONT_PACKAGES = sorted(package_versions(FONT_PACKAGES)) if HAS_DPKG else []


def test_font_package_list_covers_every_kind_and_installs_in_one_command():
    kinds = set(FONT_PACKAGES.values())
    assert {"sans", "serif", "mono", "condensed", "bold", "script", "handwriting", "outline"} <= kinds
    command = install_command()
    assert command.startswith("apt-get install -y") and all(f" {p}" in command for p in FONT_PACKAGES)
    assert FontSet(("/x/a/Aileron-Regular.ttf",), {"fonts-b": "2.0", "fonts-a": "1:1.0-2"}).metadata() == {
        "font_packages": ["fonts-a=1:1.0-2", "fonts-b=2.0"], "font_files": ["Aileron-Regular.ttf"]}


@pytest.mark.skipif(not HAS_DPKG, reason="dpkg-query is Debian's; this is not a Debian system")
def test_package_versions_and_a_missing_package_set_name_the_install_command():
    versions = package_versions(["dpkg", "fonts-no-such-package-here"])
    assert list(versions) == ["dpkg"] and versions["dpkg"][0].isdigit()
    with pytest.raises(ValueError, match="apt-get install -y --no-install-recommends fonts-no-such-package-here"):
        find_package_fonts("abc", packages=["fonts-no-such-package-here"])


@pytest.mark.skipif(not INSTALLED_FONT_PACKAGES, reason="none of captcha.font_packages.FONT_PACKAGES is installed "
                    "(CI has none; docs/fonts.md has the apt-get command)")
def test_installed_font_packages_give_vetted_files_and_their_versions():
    packages = INSTALLED_FONT_PACKAGES[:2]  # two packages: vetting every installed face takes half a minute
    found = find_package_fonts(PRETRAIN_ALPHABET, packages=packages)
    assert found.files and set(found.packages) <= set(packages)
    assert all(found.packages[p] == package_versions([p])[p] for p in found.packages)
    assert all(f in {str(Path(g).resolve()) for p in found.packages for g in package_font_files(p)} for f in found.files)
    assert found.metadata()["font_packages"] == [f"{p}={v}" for p, v in sorted(found.packages.items())]


@pytest.mark.skipif(not INSTALLED_FONT_PACKAGES, reason="none of captcha.font_packages.FONT_PACKAGES is installed")
def test_fonts_given_as_paths_are_traced_to_their_packages(tmp_path):
    package = INSTALLED_FONT_PACKAGES[0]
    owned = package_font_files(package)[0]
    stray = tmp_path / "Stray-Regular.ttf"
    stray.write_bytes(Path(owned).read_bytes())
    found = font_set_of([owned, str(stray)])
    assert found.packages == {package: package_versions([package])[package]}
    assert found.metadata()["font_files"] == sorted([Path(owned).name, "Stray-Regular.ttf"])
    assert font_set_of([str(stray)]).packages == {}
