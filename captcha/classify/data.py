"""Classification data: an ImageFolder tree or MNIST IDX files, as uint8 tensors per split.

Every image file is decoded by `captcha.imageio` and resized by a registered preprocessor
(`original` = RGB, `gray` = 1 channel) through `captcha.data.load_images`, exactly as the
server will; unreadable files are reported together in one `DataError`. MNIST IDX files
(optionally .gz) are read with torchvision's own IDX reader.

Splits: `train/ val/ test/` subfolders when present, otherwise a seeded split of the pool
(8:2 by default). For MNIST the pool is the 60000 training images and `test` is the test file.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from captcha.constants import IMAGE_EXTENSIONS
from captcha.data import DataError, Sample, image_files, load_images
from captcha.imageio import list_images
from captcha.preprocess import resize

NO_SKIP_HINT = "Fix or remove these files."  # the classification track reads every file or stops

SPLITS = ("train", "val", "test")
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """One split: uint8 images N x C x H x W and class indices N."""

    images: torch.Tensor
    targets: torch.Tensor
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclass
class ClassData:
    class_names: list[str]
    splits: dict[str, Split]
    source: str  # "imagefolder" or "mnist"

    @property
    def channels(self) -> int:
        return int(self.splits["train"].images.shape[1])

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def preprocessor_for(channels: int) -> str:
    """The registered preprocessor giving `channels` channels: `gray` (1) or `original` (RGB)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "gray" if channels == 1 else "original"


def find_mnist(root: str | Path) -> Path | None:
    """The folder holding MNIST's IDX files under `root` (itself, raw/, MNIST/raw/), or None."""
    root = Path(root)
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        name = _MNIST_FILES["train"][0]
        if (folder / name).is_file() or (folder / f"{name}.gz").is_file():
            return folder
    return None


def _read_idx(folder: Path, name: str) -> torch.Tensor:
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.is_file():
        path = plain
    elif packed.is_file():
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            path = Path(tmp.name)
            try:
                with gzip.open(packed, "rb") as src:
                    shutil.copyfileobj(src, tmp)
            except (OSError, EOFError) as exc:  # not gzip, or cut short
                path.unlink(missing_ok=True)
                raise DataError([(str(packed), f"not a readable gzip file ({exc})")], "bad MNIST data", hint=NO_SKIP_HINT) from exc
    else:
        raise FileNotFoundError(f"{plain}: missing MNIST file (also looked for {packed.name})")
    try:
        return read_sn3_pascalvincent_tensor(str(path), strict=False)
    except Exception as exc:  # noqa: BLE001 - torchvision raises assorted errors on bad files
        raise DataError([(str(packed if path != plain else path), f"not an IDX file ({exc})")], "bad MNIST data", hint=NO_SKIP_HINT) from exc
    finally:
        if path != plain:
            path.unlink(missing_ok=True)


def first_mnist_images(root: str | Path, count: int) -> np.ndarray | None:
    """Up to `count` MNIST images under `root` as uint8 N x H x W: the test file's first ones,
    else the training file's; None when `root` holds no MNIST files."""
    folder = find_mnist(root)
    if folder is None:
        return None
    for split in ("test", "train"):
        try:
            return _read_idx(folder, _MNIST_FILES[split][0])[:count].numpy()
        except FileNotFoundError:
            continue
    return None


def _resize_stack(images: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """uint8 N x H x W gray images -> N x C x h x w at `size` (gray replicated for RGB)."""
    h, w = size
    if images.shape[1:] != (h, w):
        images = np.stack([resize(im, (h, w)) for im in images])  # as the exported model's preprocessor resizes
    out = images[:, None]
    return np.repeat(out, channels, axis=1) if channels > 1 else out


def _split_pool(n: int, ratios: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / val indices: the first `ratios[0]` and next `ratios[1]` of a permutation."""
    if ratios[0] <= 0 or ratios[1] < 0 or ratios[0] + ratios[1] > 1.0 + 1e-9:
        raise ValueError(f"split ratios must be positive and sum to at most 1, got {ratios}")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * ratios[0]))
    n_val = min(int(round(n * ratios[1])), n - n_train)
    return order[:n_train], order[n_train : n_train + n_val]


def load_mnist(
    root: str | Path,
    size: tuple[int, int],
    channels: int = 1,
    split: tuple[float, float] = (0.8, 0.2),
    seed: int = 0,
    train_size: tuple[int, int] | None = None,
) -> ClassData:
    """MNIST from IDX files: the training file split by `split`, the test file as `test`.

    `--split 0.8 0.1` gives the course's 48000 / 6000 / 10000.
    """
    folder = find_mnist(root)
    if folder is None:
        raise FileNotFoundError(f"{root}: no MNIST IDX files (train-images-idx3-ubyte[.gz]) here")
    arrays = {}
    for name, (img_file, lbl_file) in _MNIST_FILES.items():
        images, labels = _read_idx(folder, img_file), _read_idx(folder, lbl_file)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError([(str(folder / img_file), f"{tuple(images.shape)} images for {tuple(labels.shape)} labels")], "bad MNIST data", hint=NO_SKIP_HINT)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
            bad = sorted({int(v) for v in labels.tolist() if not 0 <= v <= 9})
            raise DataError([(str(folder / lbl_file), f"labels must be digits 0-9, found {bad[:10]}")], "bad MNIST data", hint=NO_SKIP_HINT)
        arrays[name] = (images.numpy().astype(np.uint8), labels.long())
    train_idx, val_idx = _split_pool(len(arrays["train"][1]), split, seed)
    images, labels = arrays["train"]
    train_images = _resize_stack(images[train_idx], train_size or size, channels)
    images = _resize_stack(images[val_idx], size, channels)
    arrays["test"] = (_resize_stack(arrays["test"][0], size, channels), arrays["test"][1])
    splits = {
        "train": Split(torch.from_numpy(train_images), labels[train_idx]),
        "val": Split(torch.from_numpy(images), labels[val_idx]),
        "test": Split(torch.from_numpy(arrays["test"][0]), arrays["test"][1]),
    }
    return ClassData([str(i) for i in range(10)], splits, "mnist")


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_tree(root: Path, folder: Path, class_names: list[str], problems: list[tuple[str, str]]) -> list[Sample]:
    """The images under each class folder of `folder`; files that lie outside `root` (through a
    symbolic link) or are not readable files go to `problems`."""
    samples = []
    for name in class_names:
        sub = folder / name
        if sub.is_dir():
            samples += [Sample(p, name) for p in image_files(sub, problems, root=root, recursive=True)]
    return samples


def _encode(samples: list[Sample], class_names: list[str], size: tuple[int, int], channels: int, cache_dir, problems: list) -> Split:
    encoded = load_images(samples, preprocessor_for(channels), size, cache_dir=cache_dir)
    problems += encoded.problems
    index = {c: i for i, c in enumerate(class_names)}
    targets = torch.tensor([index[s.label] for s in encoded.samples], dtype=torch.long)
    return Split(torch.from_numpy(np.ascontiguousarray(encoded.images)), targets, [str(s.path) for s in encoded.samples])


def load_image_folder(
    root: str | Path,
    size: tuple[int, int],
    channels: int = 3,
    split: tuple[float, float] = (0.8, 0.2),
    seed: int = 0,
    cache_dir: str | Path | None | bool = None,
    train_size: tuple[int, int] | None = None,
) -> ClassData:
    """An ImageFolder tree (`root/<class>/*.png` or `root/{train,val,test}/<class>/...`).

    Class names are the sorted subfolder names (of `train/` when split); a missing `val/`
    is carved out of `train/` by `split`, a missing `test/` stays empty (the val split is then
    the held-out set). `train_size` (default `size`) keeps training images larger for crops.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    has_splits = (root / "train").is_dir()
    if not has_splits and any((root / s).is_dir() for s in ("val", "test")):  # else "val" and "test" would be two classes
        present = ", ".join(f"{s}/" for s in ("val", "test") if (root / s).is_dir())
        raise DataError([(str(root / "train"), f"no train/ folder beside {present}")], f"no training data in {root}", hint=None)
    class_names = _class_folders(root / "train" if has_splits else root)
    if not class_names:
        raise FileNotFoundError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    problems: list[tuple[str, str]] = []  # every bad file of every split, reported together
    if has_splits:
        per_split = {s: _scan_tree(root, root / s, class_names, problems) if (root / s).is_dir() else [] for s in SPLITS}
        for s in ("val", "test"):
            if (root / s).is_dir():
                extra = sorted(set(_class_folders(root / s)) - set(class_names))
                if extra:
                    raise DataError([(str(root / s / e), "class folder not in train/") for e in extra], f"bad data in {root}", hint=NO_SKIP_HINT)
        if not (root / "val").is_dir():
            pool = per_split["train"]
            train_idx, val_idx = _split_pool(len(pool), split, seed)
            per_split["train"], per_split["val"] = [pool[i] for i in train_idx], [pool[i] for i in val_idx]
    else:
        pool = _scan_tree(root, root, class_names, problems)
        train_idx, val_idx = _split_pool(len(pool), split, seed)
        per_split = {"train": [pool[i] for i in train_idx], "val": [pool[i] for i in val_idx], "test": []}
    if not per_split["train"] and problems:
        raise DataError(sorted(problems), f"bad data in {root}", hint=NO_SKIP_HINT)
    if not per_split["train"]:
        raise FileNotFoundError(f"{root}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    base = root / "train" if has_splits else root
    empty = [c for c in class_names if not list_images(base / c, recursive=True)]
    if empty:  # a class without a training image would be an output nothing ever trains
        raise DataError([(str(base / c), "class folder without images") for c in empty], f"bad data in {root}", hint=NO_SKIP_HINT)
    sizes = {"train": train_size or size, "val": size, "test": size}
    splits = {s: _encode(per_split[s], class_names, sizes[s], channels, cache_dir, problems) for s in SPLITS}
    if problems:
        raise DataError(sorted(problems), f"bad or unreadable images in {root}", hint=NO_SKIP_HINT)
    return ClassData(class_names, splits, "imagefolder")


def load_data(
    root: str | Path,
    size: tuple[int, int],
    channels: int,
    split: tuple[float, float] = (0.8, 0.2),
    seed: int = 0,
    cache_dir: str | Path | None | bool = None,
    train_size: tuple[int, int] | None = None,
) -> ClassData:
    """MNIST IDX files when `root` holds them, else an ImageFolder tree."""
    if Path(root).is_dir() and find_mnist(root) is not None:
        return load_mnist(root, size, channels, split, seed, train_size)
    return load_image_folder(root, size, channels, split, seed, cache_dir, train_size)


def eval_split(data: ClassData) -> str:
    """The held-out split reports use: `test` when it has images, else `val`."""
    return "test" if len(data.splits["test"]) else "val"
