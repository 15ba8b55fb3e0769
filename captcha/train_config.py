"""`TrainConfig`: everything that defines a recognition training run; stored in every checkpoint.

Each field is also a `captcha train` flag (`captcha.options`): its help says what it means and
why it is the default; docs/recipe-choices.md has the measurements behind the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from captcha.augment import AUGMENT_LEVELS
from captcha.constants import DEFAULT_MAX_PARAMS, INPUT_SIZE, READ_SIZE
from captcha.models import HEAD_TYPES, default_input_size, list_models
from captcha.options import check_choices, option
from captcha.plots import PLOT_FORMATS
from captcha.preprocess import list_preprocessors
from captcha.runtime import DEVICES
from captcha.tasks import RunOptions
from captcha.tensorboard_log import check_available as check_tensorboard
from captcha.tta import TTA_VIEWS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint."""

    data: str | None = option(None, "labeled image folder (default: the built-in generated CAPTCHA set)")
    out: str = option("runs/latest", "run directory: best.pt, last.pt, metrics.csv, learning_curves.png")
    model: str = option("sepnet", "architecture; sepnet (~82K parameters) at its reading size reads unseen styles best within "
                        "15 minutes of CPU training, sepnet_wide (~290K) has three times the arithmetic, resnet18_mod is the "
                        "course's model",
                        choices=lambda: list_models("recognition"))
    preprocess: str = option("gray", "preprocessor; gray reads unseen styles best and the shipped pre-trained weights match it",
                             choices=list_preprocessors)
    head: str = option("attention", "fixed per-character heads (pooled, as in the course), attention heads (position-aware), "
                       "or CTC for variable length", choices=HEAD_TYPES)
    epochs: int = option(60, "passes over the training images; the default reaches the accuracy table's figures")
    batch_size: int = option(64, "images per optimizer step")
    lr: float = option(1e-2, "peak learning rate; the best of the rates tried with the default recipe")
    optimizer: str = option("adamw", "update rule", choices=OPTIMIZERS)
    weight_decay: float = option(0.05, "AdamW's decoupled decay, which read better than a small L2; with --optimizer adam or sgd "
                                 "it is an L2 penalty, where about 1e-4 suits")
    schedule: str = option("onecycle", "learning-rate schedule over the whole run", choices=SCHEDULES)
    label_smoothing: float = option(0.2, "share of each character's target spread evenly over all symbols, a regulariser for small "
                                    "labeled sets that read unseen styles better; 0 is off, and --head ctc takes none")
    ema: float = option(0.0, "decay of a moving average of the weights that is validated and saved instead, e.g. 0.999; "
                        "0 is off, as on top of label smoothing it read less")
    augment: str = option("light", "random augmentation on the training device", choices=AUGMENT_LEVELS)
    augment_views: int = option(1, "independently augmented copies of each image in every step (batch augmentation); 2 with half "
                                "the --batch-size and half the --epochs does the same work, and read no better than 1")
    ink_curves: float = option(0.5, "share of augmented training images that get one extra random curve in the ink's colour, "
                               "practice at reading through curves drawn over the text; 0 is off, and --augment none "
                               "draws none")
    tta: int = option(5, "views read per image when evaluating and serving: the image and its one-pixel shifts, averaged; "
                      "1 is off, a fifth of the model work per image of 5", choices=lambda: sorted(TTA_VIEWS))
    seed: int = option(0, "seed of the split, the initialisation, the order and the augmentation")
    device: str = option("auto", "where to train (auto: CUDA when available)", choices=DEVICES, check=False)
    patience: int = option(0, "stop after this many validated epochs without a better val score; 0 never stops early")
    validate_from: float = option(0.67, "validate after the first epoch, then after every epoch past this share of the run, where "
                                  "the best epoch lies (best.pt is the best validated one); 0: after every epoch")
    max_params: int = option(DEFAULT_MAX_PARAMS, "refuse a model with more parameters", shown="{:,}")
    alphabet: str | None = option(None, "symbols, in class order (default: inferred from the training labels)")
    length: int | None = option(None, "characters per CAPTCHA (default: inferred from the training labels; fixed and attention heads)")
    input_size: tuple[int, int] | None = option(None, "size every image is resized to before the model reads it (default: the "
                                                "model's; sepnet's is {} {}, about {:.0f} times the course's {} {}, where thin "
                                                "strokes read far better)".format(*READ_SIZE, READ_SIZE[0] / INPUT_SIZE[0], *INPUT_SIZE), metavar=("H", "W"))
    skip_bad: bool = option(False, "leave bad files out with a warning instead of stopping")
    cache_dir: str | None = option(None, "where preprocessed datasets are cached (default ~/.cache/captchakit)")
    init: str | None = option("pretrained", "pretrained: the shipped synthetic pre-training weights when they match model, "
                              "preprocessor and head; none: random; or a checkpoint/run to fine-tune")
    eval_batch_size: int | None = option(None, "images a validation pass reads (None: the device's choice, captcha.runtime.eval_batch)",
                                         cli=False)
    resume: bool = option(False, "continue an interrupted run from OUT/last.pt")
    channels_last: bool = option(True, "NHWC memory layout, which convolves faster on CPU and GPU", shown="on")
    compile: bool = option(False, "compile the training model with torch.compile (fixed shapes); a model that does not compile "
                           "trains as it is, with one warning. Off by default: on a CPU it did not pay (docs/training-speed.md)")
    amp: bool = option(True, "bf16 autocast in training steps on CUDA and on CPUs with native bf16 (captcha.runtime.bf16_pays)", cli=False)
    unlabeled: str | None = option(None, "folder of unlabeled images of the same style: pseudo-labeled during training "
                                   "(from a third of the epochs on) and added to every batch")
    pseudo_threshold: float = option(0.95, "use a pseudo-label only when every character's probability reaches this; "
                                     "confidences are rescaled for label smoothing, as `captcha predict` reports them")
    teacher: str | None = option(None, "a trained run (any size, same alphabet, length and preprocessor) to distil from")
    distill_weight: float = option(0.5, "share of the distillation loss, with --teacher")
    distill_temperature: float = option(2.0, "softmax temperature, with --teacher")
    plot_format: str = option("png", "file format of the learning curves and the confusion matrix", choices=PLOT_FORMATS)
    tensorboard: str | None = option(None, "log curves, misread images and settings for TensorBoard in DIR (default OUT/tensorboard); "
                                     "needs the tensorboard extra", nargs="?", const="", metavar="DIR")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("--epochs must be at least 1")
        RunOptions.of(self)  # the checks of the options every task shares
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 8):
            raise ValueError(f"--input-size takes a height and a width of at least 8 pixels, not {' '.join(map(str, self.input_size))}")
        if self.lr <= 0:
            raise ValueError("--lr must be positive")
        check_choices(self)
        if self.head == "ctc" and self.length is not None:
            raise ValueError("--length does not apply to --head ctc, which reads labels of any length")
        if self.augment_views > 1 and self.augment == "none":
            raise ValueError("--augment-views above 1 needs --augment light or strong: unaugmented copies are the same image")
        if not 0.0 <= self.ink_curves <= 1.0:
            raise ValueError("--ink-curves must be in [0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("--label-smoothing must be in [0, 1)")
        if not 0.0 < self.pseudo_threshold <= 1.0:
            raise ValueError("--pseudo-threshold must be in (0, 1]")
        if self.tensorboard is not None:
            check_tensorboard()
        if self.input_size is not None:
            self.input_size = tuple(self.input_size)

    @property
    def read_size(self) -> tuple[int, int]:
        """The (height, width) every image is resized to: --input-size, else the model's own."""
        return self.input_size or default_input_size(self.model)
