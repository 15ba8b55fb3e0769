"""`captcha pretrain`: make the shipped synthetic pre-training weights, reproducibly.

    captcha pretrain --model sepnet --preprocess gray --images 40000 --epochs 20 [--fonts /usr/share/fonts]

Draws `--images` CAPTCHAs of the `mix` pseudo-style (every image recombines the pre-training
styles' fonts, colours, distortion and noise, with every glyph stretched and elastically bent
by a random amount; the held-out evaluation styles never appear; with `--fonts`, 60% of the images
write in 1-3 TrueType / OpenType fonts found under those paths instead, `captcha.fonts`) with
the 62-symbol `PRETRAIN_ALPHABET`, trains the model on them with the regular training loop
(`captcha.train.fit`, strong augmentation), and writes the best weights as float16 to
`captcha/weights/<model>-<preprocess>-<head>.pt`, where `captcha train --init pretrained` finds
them. The generated set and the full run stay in `--work-dir` (resumable with --resume).
`--init pretrained` continues from the shipped weights (or `--init CKPT` from any checkpoint)
instead of starting at random: more pre-training epochs without paying again for the first ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from captcha import pretrained
from captcha.checkpoint import BEST
from captcha.constants import DEFAULT_LENGTH


@dataclass
class PretrainConfig:
    model: str = "sepnet"
    preprocess: str = "gray"
    head: str = "attention"
    images: int = 40000
    val_images: int = 2000
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4  # the first run from random weights; the shipped file continued at lr 1e-2, 0.05 (README)
    augment: str = "strong"
    seed: int = 0
    device: str = "auto"
    work_dir: str = "runs/pretrain"
    out: str | None = None  # default: the package's weights folder
    resume: bool = False
    init: str = pretrained.SCRATCH  # none (random) | pretrained (continue from the shipped weights) | a checkpoint
    fonts: tuple[str, ...] = ()  # font files or folders the mix style also writes in (captcha.fonts.find_fonts)


def _font_files(config: PretrainConfig, log: Callable[[str], None]) -> tuple[tuple[str, ...], str]:
    """The usable fonts under `config.fonts`, and a tag for the data folder that changes with them."""
    if not config.fonts:
        return (), ""
    from captcha.fonts import find_fonts

    files = find_fonts(config.fonts, pretrained.PRETRAIN_ALPHABET, log=log)
    digest = hashlib.sha256("\n".join(f"{Path(f).name}:{Path(f).stat().st_size}" for f in files).encode()).hexdigest()[:8]
    return files, f"-fonts{len(files)}-{digest}"


def pretrain(config: PretrainConfig, log: Callable[[str], None] = print) -> Path:
    """Generate the synthetic set (once), train on it, write the compact weights; returns their path."""
    from captcha.generate import MIX, GeneratorConfig, generate_dataset
    from captcha.train import TrainConfig, fit

    work = Path(config.work_dir)
    fonts, fonts_tag = _font_files(config, log)
    data = work / f"data-{config.images}-{config.val_images}-seed{config.seed}{fonts_tag}"
    marker = data / ".complete"
    if not marker.exists():
        log(f"Drawing {config.images} + {config.val_images} pre-training CAPTCHAs ({MIX} style, "
            f"{len(pretrained.PRETRAIN_ALPHABET)} symbols{f', {len(fonts)} font files' if fonts else ''}) in {data} ...")
        generate_dataset(data, GeneratorConfig(
            alphabet=pretrained.PRETRAIN_ALPHABET, length=DEFAULT_LENGTH, styles=(MIX,), seed=config.seed,
            splits={"train": config.images, "val": config.val_images}, fonts=fonts,
        ))
        if fonts:
            (data / "fonts.txt").write_text("".join(f"{f}\n" for f in fonts))
        marker.write_text("ok\n")
    train_config = TrainConfig(
        data=str(data), out=str(work / f"run-{config.model}-{config.preprocess}-{config.head}"),
        model=config.model, preprocess=config.preprocess, head=config.head, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay, augment=config.augment, seed=config.seed,
        device=config.device, alphabet=pretrained.PRETRAIN_ALPHABET, init=config.init, resume=config.resume,
        label_smoothing=0.0,  # the shipped weights were made without it: the documented command regenerates them
        tta=1,  # the compact weights carry no views; the synthetic val score is one view's
    )
    result = fit(train_config, log=log)
    out = Path(config.out) if config.out else pretrained.WEIGHTS_DIR / pretrained.weights_name(config.model, config.preprocess, config.head)
    pretrained.save_compact(result.run_dir / BEST, out)
    log(f"Wrote pre-trained weights ({out.stat().st_size / 1024:.0f} KiB, val whole-string "
        f"{result.val['sequence_accuracy'] * 100:.2f}% on the synthetic set) to {out}")
    return out


def _cmd_pretrain(args) -> int:
    from captcha import distributed

    values = {k: v for k, v in vars(args).items() if k in PretrainConfig.__dataclass_fields__ and v is not None}
    if "fonts" in values:
        values["fonts"] = tuple(values["fonts"])
    distributed.init()
    try:
        pretrain(PretrainConfig(**values))
    finally:
        distributed.cleanup()
    return 0


def register(sub) -> None:
    """Add `captcha pretrain` to the CLI."""
    from captcha.models import HEAD_TYPES, list_models
    from captcha.preprocess import list_preprocessors

    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="make the shipped synthetic pre-training weights (captcha/weights/)")
    p.add_argument("--model", choices=list_models("recognition"), help=f"default {d.model}")
    p.add_argument("--preprocess", choices=list_preprocessors(), help=f"default {d.preprocess}")
    p.add_argument("--head", choices=HEAD_TYPES, help=f"default {d.head}")
    p.add_argument("--images", type=int, help=f"synthetic training images (default {d.images})")
    p.add_argument("--val-images", type=int, help=f"default {d.val_images}")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"default {d.lr}")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--augment", choices=("none", "light", "strong"), help=f"default {d.augment}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--work-dir", help=f"generated set and full run (default {d.work_dir})")
    p.add_argument("--out", help="weights file (default captcha/weights/<model>-<preprocess>-<head>.pt)")
    p.add_argument("--resume", action="store_true", default=None, help="continue an interrupted pre-training run")
    p.add_argument("--init", help="none (default: random) | pretrained (continue from the shipped weights) | a checkpoint")
    p.add_argument("--fonts", nargs="+", metavar="PATH", help="TrueType/OpenType files or folders (e.g. /usr/share/fonts): 60%% of the images also write in these")
    p.set_defaults(func=_cmd_pretrain)
