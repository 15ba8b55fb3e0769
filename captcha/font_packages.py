"""The Debian font packages that the `mix` pre-training style writes in: declared once, found on
this machine, and recorded with their versions for the weights' metadata.

Fonts are needed only to draw pre-training images, never at run time (only the weights ship), so
they are no dependency of the project: `apt-get install` them on the machine that pre-trains
(`install_command()`, also in docs/fonts.md). `find_package_fonts` lists the installed packages'
`.ttf` / `.otf` files, vets them with `captcha.fonts.find_fonts` (every symbol drawn, none alike,
no symbol or Hershey faces, a few files per family) and returns them with `package=version` for
each package that gave a file, so that a set of weights says which faces it has seen.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from captcha.fonts import FONT_SUFFIXES, find_fonts

# Every package and the kind of faces it brings; italics come with most text families. Packages
# whose every face `find_fonts` refuses (small capitals for lower case, `0` drawn as `O`, ...) or
# caps away (Roboto Slab: eight Roboto files come first) are left out.
FONT_PACKAGES: dict[str, str] = {
    # sans
    "fonts-dejavu-core": "sans", "fonts-liberation": "sans", "fonts-freefont-ttf": "sans",
    "fonts-open-sans": "sans", "fonts-lato": "sans", "fonts-cantarell": "sans",
    "fonts-roboto-unhinted": "sans", "fonts-crosextra-carlito": "sans", "fonts-quicksand": "sans",
    "fonts-tuffy": "sans", "fonts-oxygen": "sans", "fonts-go": "sans", "fonts-b612": "sans",
    "fonts-comfortaa": "sans", "fonts-karla": "sans", "fonts-tiresias": "sans",
    "fonts-sil-andika": "sans", "fonts-cabin": "sans", "fonts-dosis": "sans", "fonts-jura": "sans",
    "fonts-adf-gillius": "sans", "fonts-opendyslexic": "sans", "fonts-osifont": "sans",
    # serif
    "fonts-urw-base35": "serif", "fonts-linuxlibertine": "serif", "fonts-crosextra-caladea": "serif",
    "fonts-sil-charis": "serif", "fonts-sil-gentium": "serif", "fonts-vollkorn": "serif",
    "fonts-ebgaramond": "serif", "fonts-texgyre": "serif", "fonts-stix": "serif",
    "fonts-junicode": "serif", "fonts-quattrocento": "serif",
    "fonts-oldstandard": "serif", "fonts-goudybookletter": "serif", "fonts-adf-baskervald": "serif",
    "fonts-cmu": "serif",
    # mono
    "fonts-inconsolata": "mono", "fonts-hack": "mono", "fonts-jetbrains-mono": "mono",
    "fonts-firacode": "mono", "fonts-anonymous-pro": "mono", "fonts-courier-prime": "mono",
    "fonts-ocr-a": "mono", "fonts-ocr-b": "mono", "fonts-fantasque-sans": "mono",
    "fonts-mononoki": "mono", "fonts-gnutypewriter": "mono", "fonts-hermit": "mono",
    # condensed and bold display faces
    "fonts-dejavu-extra": "condensed", "fonts-yanone-kaffeesatz": "condensed",
    "fonts-league-spartan": "bold", "fonts-leckerli-one": "bold", "fonts-cherrybomb": "bold",
    "fonts-national-park": "bold",
    # script
    "fonts-dancingscript": "script", "fonts-kaushanscript": "script", "fonts-kristi": "script",
    "fonts-lobster": "script", "fonts-lobstertwo": "script", "fonts-isabella": "script",
    "fonts-havana": "script", "fonts-rufscript": "script",
    # handwriting-like
    "fonts-comic-neue": "handwriting", "fonts-breip": "handwriting", "fonts-ecolier-court": "handwriting",
    "fonts-femkeklaver": "handwriting", "fonts-sjfonts": "handwriting", "fonts-staypuft": "handwriting",
    "fonts-summersby": "handwriting", "fonts-dustin": "handwriting",
    # outline, shadow, sketched, stencil-like and pixel faces
    "fonts-rampart": "outline", "fonts-train": "outline", "fonts-stick": "decorative",
    "fonts-cabinsketch": "decorative", "fonts-radisnoir": "decorative", "fonts-averia-gwf": "decorative",
    "fonts-engadget": "decorative", "fonts-fantasma": "decorative", "fonts-sixtyfour": "pixel",
    "fonts-pc": "pixel",
}


def install_command(packages=FONT_PACKAGES) -> str:
    """The one apt-get command that installs `packages` (run `apt-get update` once before it)."""
    return "apt-get install -y --no-install-recommends " + " ".join(sorted(packages))


def _dpkg_query(*args: str) -> str:
    """dpkg-query's output; packages it does not know are left out of it (it then exits 1)."""
    try:
        done = subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ValueError("dpkg-query not found: the font packages are Debian's; on another system, "
                         "give font files or folders instead (--fonts PATH...)") from None
    return done.stdout


def package_versions(packages) -> dict[str, str]:
    """{package: version} for those of `packages` that are installed (the others are left out)."""
    if not packages:
        return {}
    out = _dpkg_query("-W", "-f", "${Package}\t${Version}\t${db:Status-Status}\n", *packages)
    versions = {}
    for line in out.splitlines():
        name, _, rest = line.partition("\t")
        version, _, status = rest.partition("\t")
        if status == "installed" and version:
            versions[name] = version
    return versions


def package_font_files(package: str) -> list[str]:
    """The `.ttf` / `.otf` files an installed package put on this machine."""
    listed = _dpkg_query("-L", package).splitlines()
    return [f for f in listed if f.lower().endswith(FONT_SUFFIXES) and Path(f).is_file()]


@dataclass(frozen=True)
class FontSet:
    """Vetted font files and the `package: version` of each package that gave one of them."""

    files: tuple[str, ...]
    packages: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict:
        """What a set of weights records about the faces it was pre-trained on (JSON-ready)."""
        return {
            "font_packages": [f"{name}={version}" for name, version in sorted(self.packages.items())],
            "font_files": sorted(Path(f).name for f in self.files),
        }


def _owners(versions: dict[str, str]) -> dict[str, str]:
    """{resolved font file: package} for the installed `versions`' packages (first package wins)."""
    owner: dict[str, str] = {}
    for package in sorted(versions):
        for f in package_font_files(package):
            owner.setdefault(str(Path(f).resolve()), package)
    return owner


def font_set_of(files, packages=FONT_PACKAGES) -> FontSet:
    """`files` with the `package: version` of each of `packages` that installed one of them, for
    fonts given as paths (`captcha pretrain --fonts /usr/share/fonts`); files of no such package,
    or a system without dpkg, leave the packages empty."""
    files = tuple(files)
    if not files:
        return FontSet(files)
    try:
        versions = package_versions(packages)
    except ValueError:
        return FontSet(files)
    owner = _owners(versions)
    used = {owner.get(str(Path(f).resolve())) for f in files} - {None}
    return FontSet(files, {name: versions[name] for name in sorted(used)})


def find_package_fonts(symbols: str, packages=FONT_PACKAGES, log: Callable[[str], None] | None = None) -> FontSet:
    """The usable fonts of the installed `packages` (`captcha.fonts.find_fonts` vets them) and
    their packages' versions. Raises ValueError, naming the install command, when none of the
    packages is installed or none of their files can draw `symbols`."""
    versions = package_versions(packages)
    if not versions:
        raise ValueError(f"none of the {len(packages)} font packages is installed; as root: apt-get update && {install_command(packages)}")
    owner = _owners(versions)
    if not owner:
        raise ValueError(f"the installed font packages ({', '.join(sorted(versions))}) hold no .ttf/.otf file")
    files = find_fonts(sorted(owner), symbols, log=log)
    used = {owner[f] for f in files}
    return FontSet(files, {name: versions[name] for name in sorted(used)})
