"""Property-based fuzzing of the data readers (issue #32): arbitrary labels.csv contents and
file names on disk. Whatever is there, reading a data folder either gives samples that are all
readable files inside it, or a DataError naming each bad file or entry: never another
exception, never a file outside the folder.

A fixed example budget keeps the file short on two cores; no example database is written.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import stat
import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captcha.classify.data import load_image_folder
from captcha.data import LABELS_CSV, DataError, load_images, load_splits

BUDGET = settings(max_examples=120, deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PNG = cv2.imencode(".png", np.full((8, 16, 3), 127, np.uint8))[1].tobytes()
KINDS = ("image", "image", "image", "garbage", "empty", "folder", "broken_link", "loop", "link_out", "link_in")

# File names a file system takes: no separator, no NUL, not `.` or `..`, at most 255 bytes.
name_text = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=40)
extension = st.sampled_from([".png", ".PNG", ".jpg", ".txt", ""])
file_name = st.builds(lambda stem, ext: stem + ext, name_text, extension).filter(
    lambda n: n not in (".", "..", LABELS_CSV) and len(n.encode()) <= 255)
entries_on_disk = st.lists(st.tuples(file_name, st.sampled_from(KINDS)), max_size=6, unique_by=lambda e: e[0])


def _make_entry(folder: Path, name: str, kind: str, outside: Path) -> None:
    path = folder / name
    if kind == "image":
        path.write_bytes(PNG)
    elif kind == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "broken_link":
        path.symlink_to(folder / "no such file.png")
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "link_out":
        path.symlink_to(outside / "secret.png")
    else:  # link_in: a link to a file beside it
        (folder / "target.bin").write_bytes(PNG)
        path.symlink_to(folder / "target.bin")


def _entry_names(on_disk: list[str], outside: Path):
    """Names a labels.csv may hold: the files there, other spellings of them, and hostile ones."""
    hostile = ["../outside/secret.png", "../outside/none.png", str(outside / "secret.png"), "/etc/hostname",
               "../../../../../../../etc/hostname", "a" * 300 + ".png", "x\0y.png", "", ".", "..", "sub/../../outside/secret.png"]
    spellings = [f"./{n}" for n in on_disk] + [f"sub/../{n}" for n in on_disk] + [f"{n}/" for n in on_disk]
    return st.one_of(st.sampled_from(on_disk or ["none.png"]), st.sampled_from(spellings or ["./none.png"]),
                     st.sampled_from(hostile), st.text(max_size=30))


@st.composite
def labels_file(draw, on_disk: list[str], outside: Path, prefix: str = "") -> bytes | None:
    """A labels.csv as bytes (or None: no labels file): rows written by csv in several dialects,
    or joined by hand, in several encodings, with or without a header; or arbitrary bytes."""
    shape = draw(st.sampled_from(["none", "csv", "csv", "hand", "bytes"]))
    if shape == "none":
        return None
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    prefixed = bool(prefix) and draw(st.booleans())  # split layouts: mostly `train/<name>`, sometimes not
    names = _entry_names(on_disk, outside).map(lambda n: prefix + n if n and prefixed else n)
    rows = draw(st.lists(st.tuples(names, st.text(max_size=8)), max_size=8))
    rows += draw(st.lists(st.sampled_from(rows), max_size=2)) if rows else []  # duplicates
    header = [["filename", "label"]] if draw(st.booleans()) else []
    if shape == "hand":
        ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        text = "".join(f"{a},{b}{ending}" for a, b in header + rows)
    else:
        buffer = io.StringIO(newline="")
        quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
        writer = csv.writer(buffer, quoting=quoting, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
        writer.writerows(header + rows)
        text = buffer.getvalue()
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be-bom", "latin-1"]))
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be", errors="surrogatepass")
    return text.encode(encoding, errors="replace")


def _check_samples(samples, folder: Path) -> None:
    real = os.path.realpath(folder)
    for sample in samples:
        resolved = os.path.realpath(sample.path)
        assert resolved == real or resolved.startswith(real + os.sep), f"{sample.path} lies outside {folder}"
        assert stat.S_ISREG(os.stat(sample.path).st_mode), f"{sample.path} is not a regular file"


def _check_error(error: DataError, folder: Path, written: set[str]) -> None:
    assert error.problems
    for path, reason in error.problems:
        assert reason, path
        named = path.startswith(str(folder)) or path in written or path.strip() in written
        assert named, f"problem names neither a file in {folder} nor a listed entry: {path!r}"
    str(error)  # the report renders, whatever the names hold


def _read_every_way(folder: Path, written: set[str]) -> None:
    """load_splits as training reads it (raise) and as --skip-bad reads it (collect), then decode."""
    for problems in (None, []):
        try:
            splits = load_splits(folder, seed=0, problems=problems)
        except DataError as exc:
            _check_error(exc, folder, written)
            continue
        samples = [s for part in splits.values() for s in part]
        _check_samples(samples, folder)
        encoded = load_images(samples, "gray", (8, 16), cache_dir=False, workers=1)
        assert len(encoded.samples) + len(encoded.problems) == len(samples)
        if problems:
            _check_error(DataError(problems), folder, written)


def _written_entries(csv_bytes: bytes | None) -> set[str]:
    """Every field of the labels file, as it may be named in a report (absolute entries)."""
    if not csv_bytes:
        return set()
    fields = set()
    for encoding in ("utf-8-sig", "utf-16", "latin-1"):
        try:
            text = csv_bytes.decode(encoding)
        except UnicodeDecodeError:
            continue
        try:
            fields |= {os.path.normpath(f.strip()) for row in csv.reader(io.StringIO(text, newline="")) for f in row if f.strip()}
            fields |= {f.strip() for row in csv.reader(io.StringIO(text, newline="")) for f in row}
        except csv.Error:
            pass
    return fields


@BUDGET
@given(data=st.data(), on_disk=entries_on_disk, split_layout=st.booleans())
def test_any_labels_csv_and_file_names_give_samples_inside_or_a_named_error(data, on_disk, split_layout):
    with tempfile.TemporaryDirectory() as tmp:
        outside = Path(tmp) / "outside"
        outside.mkdir()
        (outside / "secret.png").write_bytes(PNG)
        folder = Path(tmp) / "data"
        images = folder / "train" if split_layout else folder
        images.mkdir(parents=True)
        for name, kind in on_disk:
            _make_entry(images, name, kind, outside)
        prefix = "train/" if split_layout else ""
        csv_bytes = data.draw(labels_file([n for n, _ in on_disk], outside, prefix))
        if csv_bytes is not None:
            (folder / LABELS_CSV).write_bytes(csv_bytes)
        _read_every_way(folder, _written_entries(csv_bytes))


@BUDGET
@given(classes=st.lists(st.tuples(file_name, entries_on_disk), min_size=1, max_size=3, unique_by=lambda c: c[0]),
       linked_class=st.booleans())
def test_any_image_folder_tree_gives_files_inside_or_a_named_error(classes, linked_class):
    with tempfile.TemporaryDirectory() as tmp:
        outside = Path(tmp) / "outside"
        (outside / "cls").mkdir(parents=True)
        (outside / "secret.png").write_bytes(PNG)
        (outside / "cls" / "secret.png").write_bytes(PNG)
        root = Path(tmp) / "tree"
        for class_name, entries in classes:
            (root / class_name).mkdir(parents=True)
            for name, kind in entries:
                _make_entry(root / class_name, name, kind, outside)
        if linked_class:
            (root / "linked").symlink_to(outside / "cls", target_is_directory=True)
        try:
            data = load_image_folder(root, (8, 8), channels=1, cache_dir=False)
        except DataError as exc:
            _check_error(exc, root, set())
            return
        except FileNotFoundError as exc:  # no image at all: the message names the tree
            assert str(root) in str(exc)
            return
        real = os.path.realpath(root)
        for split in data.splits.values():
            for path in split.paths:
                assert os.path.realpath(path).startswith(real + os.sep), f"{path} lies outside {root}"
