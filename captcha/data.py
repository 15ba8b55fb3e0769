"""Labeled CAPTCHA folders: find the samples, check them, split them, decode and cache them.

A folder holds images named `<label>_<anything>.<ext>` or `<label>.<ext>`, or a `labels.csv`
(`filename,label`) beside them. `train/`, `val/` and `test/` subfolders are used when present;
otherwise one folder is split with a seed. Every problem in the data is collected and reported
at once, naming each file, before any training starts.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from captcha.alphabet import Alphabet
from captcha.imageio import ImageDecodeError, decode_image, file_problem, list_images
from captcha.preprocess import get_preprocessor

SPLITS = ("train", "val", "test")
_CACHE_FORMAT = 1  # bump when the cache layout or a preprocessor's output changes


SKIP_BAD_HINT = "Fix or remove these files, or pass --skip-bad to leave them out with a warning."
LAYOUT_HINT = ("A data folder holds images named <label>_<anything>.png or <label>.png, or a labels.csv "
               "(filename,label) beside them; train/, val/ and test/ subfolders are used when present.")


class DataError(ValueError):
    """Problems found in a dataset; `problems` lists (path, reason) for every bad file, and
    `hint` (when not None) ends the message with what to do."""

    def __init__(self, problems: list[tuple[str, str]], header: str = "bad data", hint: str | None = SKIP_BAD_HINT):
        self.problems = problems
        lines = [f"{header}: {len(problems)} problem(s)"]
        lines += [f"  {path if path.isprintable() else repr(path)}: {reason}" for path, reason in problems[:200]]
        if len(problems) > 200:
            lines.append(f"  ... and {len(problems) - 200} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str


def label_from_filename(path: Path) -> str:
    """`A7K2_0001.png` -> `A7K2`; `A7K2.png` -> `A7K2`."""
    return path.stem.split("_", 1)[0]


LABELS_CSV = "labels.csv"


def outside_reason(folder: Path) -> str:
    """The one reason given for every file that lies outside the data folder, whether or not
    it exists, so the report never tells which files outside are there."""
    return f"resolves outside {folder}: only files inside the data folder are read"


def _lies_in(path: str | Path, real_folder: str) -> bool:
    """Whether `path`, with its symbolic links followed, lies in the resolved `real_folder`."""
    real = os.path.realpath(path)
    return real == real_folder or real.startswith(real_folder.rstrip(os.sep) + os.sep)


def image_files(folder: Path, problems: list[tuple[str, str]], root: Path | None = None, recursive: bool = False) -> list[Path]:
    """`list_images(folder)` less every file that lies outside `root` (default `folder`) once its
    symbolic links are followed; those, and the entries named like images that are not readable
    files, go to `problems`, named where they were found (a folder linked out of `root`, once)."""
    root = root or folder
    real_root = os.path.realpath(root)
    if not _lies_in(folder, real_root):
        problems.append((str(folder), outside_reason(root)))
        return []
    listing: list[tuple[str, str]] = []
    kept = []
    for path in list_images(folder, recursive, problems=listing):
        if _lies_in(path, real_root):
            kept.append(path)
        else:
            problems.append((str(path), outside_reason(root)))
    problems += [(path, reason if _lies_in(path, real_root) else outside_reason(root)) for path, reason in listing]
    return kept


def _escapes(name: str) -> bool:
    """Whether a listed file name leaves its folder on its own: absolute, or climbing out with `..`."""
    return os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."


def _read_labels_csv(csv_path: Path, problems: list[tuple[str, str]]) -> dict[str, str] | None:
    """{file name as written: label}, or None without the file. A row that is not
    `filename,label`, and a file listed twice with different labels (however spelled: `a.png`
    and `./a.png` are one file), go to `problems` (the file is then left out). Spreadsheet
    exports load too: a UTF-8 byte-order mark, CRLF line ends, and quoted names holding commas
    or line breaks are read."""
    if not os.path.lexists(csv_path):
        return None
    labels: dict[str, str] = {}  # by the name made plain (`_plain_name`)
    written: dict[str, str] = {}  # the plain name -> its first spelling
    conflicting: set[str] = set()
    reader = csv.reader(io.StringIO(_labels_text(csv_path), newline=""))
    try:
        for record, row in enumerate(reader):
            if not row or not any(c.strip() for c in row) or (record == 0 and [c.strip().lower() for c in row[:2]] == ["filename", "label"]):
                continue
            if len(row) < 2:
                problems.append((f"{csv_path}:{reader.line_num}", "expected 'filename,label'"))
                continue
            name, label = _plain_name(row[0].strip()), row[1].strip()
            written.setdefault(name, row[0].strip())
            if name in labels and labels[name] != label:
                problems.append((str(csv_path.parent / name), f"listed twice in {csv_path.name} with different labels ({labels[name]!r} and {label!r})"))
                conflicting.add(name)
            labels.setdefault(name, label)
    except csv.Error as exc:
        raise DataError([(f"{csv_path}:{reader.line_num}", f"not CSV ({exc})")], f"unreadable {csv_path.name}", hint=None) from None
    return {written[name]: label for name, label in labels.items() if name not in conflicting}


def _plain_name(name: str) -> str:
    """A listed name without `.`, `..` and doubled separators (`./a.png` -> `a.png`), as files are opened."""
    return os.path.normpath(name) if name else name


def _labels_text(csv_path: Path) -> str:
    """A labels file's text: UTF-8 (with or without a byte-order mark) or UTF-16 with its mark, as
    spreadsheets save them; any other encoding is refused by name rather than guessed, and so is
    a labels file that is not a readable file inside its folder."""
    reason = file_problem(csv_path)
    if reason is None and not _lies_in(csv_path, os.path.realpath(csv_path.parent)):
        reason = outside_reason(csv_path.parent)
    if reason is not None:
        raise DataError([(str(csv_path), reason)], f"unreadable {csv_path.name}", hint=None)
    data = csv_path.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError([(str(csv_path), f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
                          "(a spreadsheet's \"CSV UTF-8\")")], f"unreadable {csv_path.name}", hint=None) from None


def _raise_problems(problems: list[tuple[str, str]], header: str) -> None:
    if problems:
        raise DataError(problems, header)


def scan_folder(folder: str | Path, problems: list[tuple[str, str]] | None = None, root: str | Path | None = None) -> list[Sample]:
    """All images directly in `folder`, labeled by `labels.csv` if present, else by file name.

    Every file must lie inside `root` (default `folder`) with its symbolic links followed.
    Problems (a malformed row, a listed file that is missing or lies outside, a broken link or a
    folder named like an image) leave those files out and are appended to `problems`; without
    that list they raise one DataError naming each."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such data folder")
    found: list[tuple[str, str]] = []
    root = Path(root) if root is not None else folder
    if not _lies_in(folder, os.path.realpath(root)):
        found.append((str(folder), outside_reason(root)))
        samples: list[Sample] = []
    else:
        csv_labels = _read_labels_csv(folder / LABELS_CSV, found)
        if csv_labels is None:
            samples = [Sample(p, label_from_filename(p)) for p in image_files(folder, found)]
        else:
            samples = _listed_samples(folder, csv_labels, found)
    if problems is None:
        _raise_problems(found, f"bad data in {folder}")
    else:
        problems += found
    return samples


def _listed_samples(folder: Path, csv_labels: dict[str, str], problems: list[tuple[str, str]]) -> list[Sample]:
    """The listed files that are readable files inside `folder`, each with its label; the others
    go to `problems`. Images in `folder` that the labels file does not list are left out, and a
    note on stderr says so."""
    samples = []
    real_folder = os.path.realpath(folder)
    for name, label in csv_labels.items():
        path = folder / _plain_name(name)
        if "\0" in name:
            problems.append((str(folder / name), f"listed in {LABELS_CSV} but not a file name (it holds a NUL character)"))
        elif _escapes(name) or not _lies_in(path, real_folder):  # checked before the file is looked at
            problems.append((str(folder / name), f"listed in {LABELS_CSV} but {outside_reason(folder)}"))
        elif (reason := file_problem(path)) is not None:
            problems.append((str(path), f"listed in {LABELS_CSV} but {reason}"))
        else:
            samples.append(Sample(path, label))
    listed = {_plain_name(name) for name in csv_labels}
    unlisted = [p.name for p in list_images(folder) if p.name not in listed] if folder.is_dir() else []
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (", ..." if len(unlisted) > 3 else "")
        print(f"note: {len(unlisted)} image(s) in {folder} not listed in its {LABELS_CSV} are left out ({shown})", file=sys.stderr)
    return samples


def has_split_folders(folder: str | Path) -> bool:
    return any((Path(folder) / s).is_dir() for s in SPLITS)


def split_samples(samples: list[Sample], seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1) -> dict[str, list[Sample]]:
    """A seeded shuffle split into train / val / test."""
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = int(round(len(samples) * val_fraction))
    n_test = int(round(len(samples) * test_fraction))
    shuffled = [samples[i] for i in order]
    return {
        "val": shuffled[:n_val],
        "test": shuffled[n_val : n_val + n_test],
        "train": shuffled[n_val + n_test :],
    }


def load_splits(folder: str | Path, seed: int = 0, problems: list[tuple[str, str]] | None = None,
                require_train: bool = True) -> dict[str, list[Sample]]:
    """Samples per split: from `train/ val/ test/` subfolders, or a seeded 80/10/10 split.

    With split folders, one `labels.csv` at the top may label them all, its file names written
    from the top (`train/0001.png,ab12`); a split folder may instead hold its own. Problems of
    the labels files go to `problems` (or raise, without that list), as in `scan_folder`.
    `require_train=False` accepts split folders without `train/` (a test set to evaluate on)."""
    folder = Path(folder)
    if not has_split_folders(folder):
        return split_samples(scan_folder(folder, problems), seed)
    if require_train and not (folder / "train").is_dir():
        present = ", ".join(f"{s}/" for s in SPLITS if (folder / s).is_dir())
        raise DataError([(str(folder / "train"), f"no train/ folder beside {present}")], f"no training data in {folder}", hint=LAYOUT_HINT)
    found: list[tuple[str, str]] = []
    top_labels = _read_labels_csv(folder / LABELS_CSV, found)
    splits: dict[str, list[Sample]] = {}
    if top_labels is None:
        splits = {s: scan_folder(folder / s, found, root=folder) if (folder / s).is_dir() else [] for s in SPLITS}
    else:
        own = [s for s in SPLITS if os.path.lexists(folder / s / LABELS_CSV)]
        if own:
            raise DataError([(str(folder / s / LABELS_CSV), f"{folder / LABELS_CSV} labels the split folders too: keep one of the two") for s in own],
                            f"two label files in {folder}", hint=None)
        splits = _top_labelled_splits(folder, top_labels, found)
    if problems is None:
        _raise_problems(found, f"bad labels in {folder}")
    else:
        problems += found
    return splits


def _top_labelled_splits(folder: Path, top_labels: dict[str, str], problems: list[tuple[str, str]]) -> dict[str, list[Sample]]:
    """The samples of each split that the labels file at the top of `folder` lists (`train/0001.png`);
    entries outside the split folders, and split folders linked out of `folder`, go to `problems`."""
    by_split: dict[str, dict[str, str]] = {s: {} for s in SPLITS}
    for name, label in top_labels.items():
        split, _, rest = _plain_name(name).replace("\\", "/").partition("/")
        if _escapes(name):
            problems.append((str(folder / name), f"listed in {LABELS_CSV} but {outside_reason(folder)}"))
        elif split in by_split and rest:
            by_split[split][rest] = label
        else:
            problems.append((str(folder / name), f"listed in {folder / LABELS_CSV} outside train/, val/ and test/"))
    real_root = os.path.realpath(folder)
    for s in SPLITS:
        if by_split[s] and not _lies_in(folder / s, real_root):  # a split folder linked elsewhere
            problems.append((str(folder / s), outside_reason(folder)))
            by_split[s] = {}
    return {s: _listed_samples(folder / s, by_split[s], problems) for s in SPLITS}


def check_labels(samples: list[Sample], alphabet: Alphabet, length: int | None) -> list[tuple[str, str]]:
    """(path, reason) for every label that is empty, of the wrong length, or off the alphabet.

    `length=None` allows any length (variable-length CAPTCHAs).
    """
    problems = []
    for s in samples:
        if not s.label:
            problems.append((str(s.path), "empty label"))
            continue
        if length is not None and len(s.label) != length:
            problems.append((str(s.path), f"label {s.label!r} has {len(s.label)} characters, expected {length}"))
        unknown = alphabet.unknown_symbols(s.label)
        if unknown:
            problems.append((str(s.path), f"label {s.label!r} has symbols outside the alphabet: {unknown!r}"))
    return problems


# Labels of other lengths than the most common one, as a share of the training labels, from
# which they are taken for a variable-length set rather than for a few mislabeled files.
VARIABLE_LENGTH_SHARE = 0.05


def length_spread(labels: list[str], length: int) -> str | None:
    """'105 with 4, 99 with 5, 96 with 6' when many labels are not `length` characters long (a
    variable-length set, which wants `--head ctc`); None when only a few stray labels are."""
    counts = Counter(len(t) for t in labels)
    others = len(labels) - counts.get(length, 0)
    if others == 0 or others < VARIABLE_LENGTH_SHARE * len(labels):
        return None
    return ", ".join(f"{n} with {k}" for k, n in sorted(counts.items()))


def default_cache_dir() -> Path:
    """Where decoded datasets are cached: $XDG_CACHE_HOME/captchakit, else ~/.cache/captchakit."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "captchakit"


def _cache_key(payloads: list[bytes], paths: list[Path], preprocessor: str, size: tuple[int, int]) -> str:
    digest = hashlib.sha256(f"v{_CACHE_FORMAT}|{preprocessor}|{size[0]}x{size[1]}".encode())
    for path, data in zip(paths, payloads):
        digest.update(path.name.encode())
        digest.update(hashlib.sha1(data).digest())
    return digest.hexdigest()[:32]


@dataclass
class EncodedImages:
    """Preprocessed uint8 images N x K x H x W, in the order of the samples they came from."""

    images: np.ndarray
    samples: list[Sample]
    problems: list[tuple[str, str]]  # unreadable files, left out of `images`/`samples`


def load_images(
    samples: list[Sample],
    preprocessor: str,
    size: tuple[int, int],
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> EncodedImages:
    """Decode and preprocess every sample once, in parallel; cache the result on disk.

    The cache key covers every file's bytes, the preprocessor and the size, so a changed file
    gives a new key and a stale cache is never reused. Files that do not decode are cached too
    (which ones, and why), so a `--skip-bad` rerun reports them again without decoding anything.
    """
    paths = [s.path for s in samples]
    payloads, problems = _read_files(paths)
    cache_file = None
    if cache_dir is not False:
        key = _cache_key(payloads, paths, preprocessor, size)
        cache_file = Path(cache_dir or default_cache_dir()) / f"{key}.npz"
        if problems:  # a file that cannot be read is never cached or looked up (its bytes are unknown)
            cache_file = None
        elif cache_file.exists():
            try:
                return _cached_images(cache_file, samples, problems)
            except Exception:  # noqa: BLE001 - a broken cache file is rebuilt
                pass

    prep = get_preprocessor(preprocessor)
    bad = {p for p, _ in problems}

    def work(i: int) -> np.ndarray | str:
        if str(paths[i]) in bad:
            return ""
        try:
            return prep(decode_image(payloads[i], str(paths[i])), size)
        except ImageDecodeError as exc:
            return exc.reason

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(tqdm(pool.map(work, range(len(samples))), total=len(samples), desc="decoding", unit="image", leave=False,
                            disable=None))  # None: drawn on a terminal only
    kept_images, kept_samples = [], []
    for sample, result in zip(samples, results):
        if isinstance(result, str):
            if result:
                problems.append((str(sample.path), result))
            continue
        kept_images.append(result.transpose(2, 0, 1))
        kept_samples.append(sample)
    h, w = size
    images = np.stack(kept_images) if kept_images else np.zeros((0, prep.channels, h, w), np.uint8)
    if cache_file is not None:
        _write_cache(cache_file, images, results)
    return EncodedImages(images, kept_samples, problems)


def _read_files(paths: list[Path]) -> tuple[list[bytes], list[tuple[str, str]]]:
    """Every file's bytes (empty for one that cannot be read), and the ones that could not be."""
    payloads: list[bytes] = []
    problems: list[tuple[str, str]] = []
    for p in paths:
        try:
            payloads.append(p.read_bytes())
        except OSError as exc:
            payloads.append(b"")
            problems.append((str(p), f"cannot read file ({exc.strerror})"))
    return payloads, problems


def _write_cache(cache_file: Path, images: np.ndarray, results: list[np.ndarray | str]) -> None:
    """Save the decoded images, and which files did not decode and why, atomically; a cache that
    cannot be written (a full disk, a read-only folder) is only a note on stderr, with no partial
    file left behind."""
    kept = np.array([not isinstance(r, str) for r in results], bool)
    reasons = np.array([r if isinstance(r, str) else "" for r in results], str)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")  # one per process: ranks may race
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=images, kept=kept, reasons=reasons)
        os.replace(tmp, cache_file)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        print(f"note: could not write the decoded-image cache {cache_file} ({exc.strerror or exc}); continuing without it", file=sys.stderr)


def _cached_images(cache_file: Path, samples: list[Sample], problems: list[tuple[str, str]]) -> EncodedImages:
    """A cache file's images; files that did not decode are left out and added to `problems`."""
    with np.load(cache_file) as cached:
        images = cached["images"]
        if "kept" not in cached:  # written before failures were cached: only for sets without any
            return EncodedImages(images, samples, problems)
        kept, reasons = cached["kept"], cached["reasons"]
    if len(kept) != len(samples) or int(kept.sum()) != len(images):
        raise ValueError(f"{cache_file}: does not match its {len(samples)} samples")
    problems += [(str(s.path), str(r)) for s, k, r in zip(samples, kept, reasons) if not k and r]
    return EncodedImages(images, [s for s, k in zip(samples, kept) if k], problems)


@dataclass
class Dataset:
    """One split, ready for a model: preprocessed images and encoded labels."""

    images: np.ndarray  # uint8 N x K x H x W
    labels: list[str]
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.labels)
