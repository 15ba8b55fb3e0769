"""`captcha pretrain`: make the shipped synthetic pre-training weights, reproducibly.

    captcha pretrain --model sepnet --preprocess gray --images 40000 --epochs 20 [--fonts /usr/share/fonts]

Draws `--images` CAPTCHAs of the `mix` pseudo-style (every image recombines the pre-training
styles' fonts, colours, distortion and noise, with every glyph stretched and elastically bent
by a random amount; the held-out evaluation styles never appear; with `--fonts`, a share of the
images (`captcha.generate.FONT_FILE_SHARE`) write in 1-3 TrueType / OpenType fonts found under
those paths instead, `captcha.fonts`) with the 62-symbol `PRETRAIN_ALPHABET`, trains the model on
them with the regular training loop (`captcha.train.fit`, strong augmentation), and writes the
best weights as float16 to `captcha/weights/<model>-<preprocess>-<head>.pt`. `captcha train
--init pretrained` starts from the files a model declares where it is registered
(`register_model(weights=...)`): a new file is declared there once. The generated set and the
full run stay in `--work-dir` (resumable with --resume).
`--init pretrained` continues from the shipped weights (or `--init CKPT` from any checkpoint)
instead of starting at random: more pre-training epochs without paying again for the first ones.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from captcha import pretrained
from captcha.alphabet import Alphabet
from captcha.augment import AUGMENT_LEVELS
from captcha.checkpoint import BEST
from captcha.constants import DEFAULT_LENGTH, INPUT_SIZE
from captcha.data import Dataset
from captcha.generate import FONT_FILE_SHARE, MIX, GeneratorConfig, generate_dataset
from captcha.models import HEAD_TYPES, list_models, shipped_weights
from captcha.options import add_options, given_values, option
from captcha.preprocess import list_preprocessors
from captcha.recognition import RecognitionTask
from captcha.recognition_data import PreparedData
from captcha.runtime import DEVICES
from captcha.synth_stream import stream_batches


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run; each field is also a `captcha pretrain` flag."""

    model: str = option("sepnet", "architecture", choices=lambda: list_models("recognition"))
    preprocess: str = option("gray", "preprocessor", choices=list_preprocessors)
    head: str = option("attention", "head type", choices=HEAD_TYPES)
    input_size: tuple[int, int] = option(INPUT_SIZE, "size the images are read at; the shipped weights were made at the "
                                         "drawn size and transfer to any other", metavar=("H", "W"))
    images: int = option(40000, "synthetic training images")
    val_images: int = option(2000, "synthetic validation images")
    epochs: int = option(20, "passes over the synthetic set")
    batch_size: int = option(128, "images per optimizer step")
    lr: float = option(3e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "decay of the first run from random weights; the shipped file continued at lr 1e-2 and 0.05 "
                                 "(README, Synthetic pre-training)")
    augment: str = option("strong", "random augmentation on the training device", choices=AUGMENT_LEVELS)
    seed: int = option(0, "seed of the drawn set and of training")
    device: str = option("auto", "where to train (auto: CUDA when available)", choices=DEVICES, check=False)
    work_dir: str = option("runs/pretrain", "generated set and full run")
    out: str | None = option(None, "weights file (default captcha/weights/<model>-<preprocess>-<head>.pt)")
    resume: bool = option(False, "continue an interrupted pre-training run")
    init: str = option(pretrained.SCRATCH, "none (random) | pretrained (continue from the shipped weights) | a checkpoint")
    fonts: tuple[str, ...] = option((), "TrueType/OpenType files or folders (e.g. /usr/share/fonts): "
                                    f"{FONT_FILE_SHARE:.0%} of the images also write in these", metavar="PATH")
    stream: bool = option(False, "draw --images new images for every epoch while training, in --workers processes, instead "
                          "of one set on disk: --images x --epochs different images seen, none written")
    workers: int = option(0, "processes drawing the streamed images (0: one per core)")


def _font_files(config: PretrainConfig, log: Callable[[str], None]) -> tuple[tuple[str, ...], str]:
    """The usable fonts under `config.fonts`, and a tag for the data folder that changes with them."""
    if not config.fonts:
        return (), ""
    from captcha.fonts import find_fonts

    files = find_fonts(config.fonts, pretrained.PRETRAIN_ALPHABET, log=log)
    digest = hashlib.sha256("\n".join(f"{Path(f).name}:{Path(f).stat().st_size}" for f in files).encode()).hexdigest()[:8]
    return files, f"-fonts{len(files)}-{digest}"


def pretrain(config: PretrainConfig, log: Callable[[str], None] = print) -> Path:
    """Train on synthetic CAPTCHAs (a set drawn once on disk, or a stream), write the compact
    weights; returns their path."""
    from captcha.train import fit

    fonts, fonts_tag = _font_files(config, log)
    drawn = GeneratorConfig(alphabet=pretrained.PRETRAIN_ALPHABET, length=DEFAULT_LENGTH, styles=(MIX,), seed=config.seed,
                            splits={"train": config.images, "val": config.val_images}, fonts=fonts)
    if config.stream:
        log(f"Streaming {config.images} new pre-training CAPTCHAs an epoch ({MIX} style, {len(drawn.alphabet)} symbols"
            f"{f', {len(fonts)} font files' if fonts else ''}): {config.images * config.epochs:,} images over the run")
        result = fit(StreamedTask(_train_config(config, None), drawn, config.workers), log=log)
    else:
        result = fit(_train_config(config, str(_drawn_set(config, drawn, fonts_tag, log))), log=log)
    out = Path(config.out) if config.out else pretrained.WEIGHTS_DIR / pretrained.weights_name(config.model, config.preprocess, config.head)
    pretrained.save_compact(result.run_dir / BEST, out, {"pretraining": pretraining_record(config, fonts)})
    log(f"Wrote pre-trained weights ({out.stat().st_size / 1024:.0f} KiB, val whole-string "
        f"{result.val['sequence_accuracy'] * 100:.2f}% on the synthetic set) to {out}")
    declared = {w.file for _, w in shipped_weights(config.model)}
    if out.resolve().parent == pretrained.WEIGHTS_DIR and out.name not in declared:
        log(f"`captcha train --init pretrained` starts from it once it is declared where {config.model} is registered: "
            f"weights=(ShippedWeights({out.name!r}, preprocess={config.preprocess!r}, head={config.head!r}),)")
    return out


def pretraining_record(config: PretrainConfig, fonts: tuple[str, ...]) -> dict:
    """What the weights' metadata says they were pre-trained on: the style, the images seen
    and the fonts (file names, and the Debian packages with versions that installed them)."""
    from captcha.font_packages import font_set_of

    distinct = config.images * config.epochs if config.stream else config.images
    return {"style": MIX, "stream": config.stream, "images": distinct, "images_seen": config.images * config.epochs,
            "input_size": list(config.input_size),
            "epochs": config.epochs, "seed": config.seed, "init": config.init, **font_set_of(fonts).metadata()}


def _drawn_set(config: PretrainConfig, drawn: GeneratorConfig, fonts_tag: str, log: Callable[[str], None]) -> Path:
    """The synthetic set on disk in the work folder, drawn the first time."""
    data = Path(config.work_dir) / f"data-{config.images}-{config.val_images}-seed{config.seed}{fonts_tag}"
    marker = data / ".complete"
    if not marker.exists():
        log(f"Drawing {config.images} + {config.val_images} pre-training CAPTCHAs ({MIX} style, "
            f"{len(drawn.alphabet)} symbols{f', {len(drawn.fonts)} font files' if drawn.fonts else ''}) in {data} ...")
        generate_dataset(data, drawn, workers=config.workers)
        if drawn.fonts:
            (data / "fonts.txt").write_text("".join(f"{f}\n" for f in drawn.fonts))
        marker.write_text("ok\n")
    return data


def _train_config(config: PretrainConfig, data: str | None):
    from captcha.train import TrainConfig

    stream_tag = "-stream" if config.stream else ""
    if tuple(config.input_size) != INPUT_SIZE:  # its own run folder, so that --resume never mixes sizes
        stream_tag += "-{}x{}".format(*config.input_size)
    return TrainConfig(
        data=data, out=str(Path(config.work_dir) / f"run-{config.model}-{config.preprocess}-{config.head}{stream_tag}"),
        model=config.model, preprocess=config.preprocess, head=config.head, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay, augment=config.augment, seed=config.seed,
        device=config.device, alphabet=pretrained.PRETRAIN_ALPHABET, init=config.init, resume=config.resume,
        input_size=tuple(config.input_size),
        label_smoothing=0.0,  # the shipped weights were made without it: the documented command regenerates them
        ink_curves=0.0,  # nor with extra ink curves
        tta=1,  # the compact weights carry no views; the synthetic val score is one view's
        validate_from=0.0,  # a long run is watched epoch by epoch
    )


class StreamedTask(RecognitionTask):
    """Recognition on images drawn while training goes: epoch e reads images (e-1)*n .. e*n-1 of
    the generator's train stream (n = its train split), validation the first images of its val
    stream, drawn once. The stream is deterministic, so a resumed run reads the images the
    interrupted one would have.

    When training runs on a GPU, each epoch's images are drawn while the epoch before trains (a
    background thread feeds the drawing workers), so the GPU does not wait for the CPU's drawing;
    an epoch whose images were not drawn ahead (the first after a resume) is drawn when it starts.
    On the CPU drawing and training would share the same cores, and one after the other is the
    faster (docs/pretraining.md); `draw_ahead` overrides that choice."""

    def __init__(self, config, drawn: GeneratorConfig, workers: int, given: set[str] | None = None, draw_ahead: bool | None = None):
        super().__init__(config, given)
        self.drawn, self.workers, self.draw_ahead = drawn, workers, draw_ahead
        self._drawer: ThreadPoolExecutor | None = None
        self._ahead: tuple[int, Future] | None = None  # (epoch, its images being drawn)

    def resumed(self, saved: dict):
        task, ignored = super().resumed(saved)
        return StreamedTask(task.config, self.drawn, self.workers, self.given, self.draw_ahead), ignored

    def read_data(self) -> tuple[PreparedData, str]:
        splits = {"train": self._draw(0, 0), "val": self._draw(1, 0)}
        return PreparedData(Alphabet(self.drawn.alphabet), self.drawn.length, splits), f"the {self.drawn.styles[0]} stream"

    def epoch_images(self, data: PreparedData, device):
        ahead = device.type != "cpu" if self.draw_ahead is None else self.draw_ahead

        def images(epoch: int):
            drawn = None if epoch == 1 else self._epoch_set(epoch)  # epoch 1's were drawn by read_data
            if ahead and epoch < self.config.epochs:
                self._draw_ahead(epoch + 1)
            return None if drawn is None else self.labeled(drawn, data.alphabet, data.length, device)

        return images

    def _epoch_set(self, epoch: int) -> Dataset:
        """Epoch `epoch`'s training images: the ones drawn ahead, or drawn now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == epoch:
            return ahead[1].result()
        return self._draw(0, self._first_image(epoch))

    def _draw_ahead(self, epoch: int) -> None:
        if self._drawer is None:
            self._drawer = ThreadPoolExecutor(1, thread_name_prefix="draw-next-epoch")
        self._ahead = (epoch, self._drawer.submit(self._draw, 0, self._first_image(epoch)))

    def _first_image(self, epoch: int) -> int:
        return (epoch - 1) * self.drawn.splits["train"]

    def _draw(self, split: int, start: int) -> Dataset:
        count = list(self.drawn.splits.values())[split]
        batches = list(stream_batches(self.drawn, 256, preprocess=self.config.preprocess, input_size=self.config.read_size,
                                      split=split, start=start, stop=start + count, workers=self.workers))
        return Dataset(np.concatenate([b.images for b in batches]), [t for b in batches for t in b.labels], [])


def _cmd_pretrain(args) -> int:
    from captcha import distributed

    distributed.init()
    try:
        pretrain(PretrainConfig(**given_values(args, PretrainConfig)))
    finally:
        distributed.cleanup()
    return 0


def register(sub) -> None:
    """Add `captcha pretrain` to the CLI."""
    p = sub.add_parser("pretrain", help="make the shipped synthetic pre-training weights (captcha/weights/)")
    add_options(p, PretrainConfig)
    p.set_defaults(func=_cmd_pretrain)
