"""The one trainer: `fit` runs a recognition `TrainConfig` or any task (`captcha.tasks.Task`).

`fit` is four steps around a small state object (`Run`): set up (resume point, data, model,
EMA), restore a resumed run, the epoch loop, and the final report. Training images stay in
memory as uint8 tensors on the training device; each batch is normalised and augmented there.
Every epoch writes `last.pt` (weights, optimizer, scheduler, random states, history), so
`--resume` continues an interrupted run exactly where it stopped; `best.pt` is the checkpoint
with the best validation score (validation runs after the first epoch and every epoch past
`validate_from` of the run). Every task writes the same run files: best.pt, last.pt,
metrics.csv, metrics.json, learning_curves.png, confusion_matrix.png (and tensorboard/ on request).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from captcha import checkpoint as ckpt
from captcha import distributed as dist
from captcha.distill import distillation_loss
from captcha.ema import DeviceEMA
from captcha.models import set_backbone_trainable
from captcha.recognition import RecognitionTask
from captcha.runtime import bf16_pays, loss_fn, resolve_device
from captcha.tasks import LabeledImages, PreparedRun, Scores, Stage, Task, score_split
from captcha.tensorboard_log import TensorBoardLog
from captcha.train_config import TrainConfig

Log = Callable[[str], None]

STEP_MARK = "captcha.train_step"  # the profiler's name for one optimizer step (benchmarks/step_profile.py)


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    val: dict
    test: dict | None
    parameters: int
    train_seconds: float
    scores: dict[str, dict] = field(default_factory=dict)  # every split the final report scored


@dataclass
class Run:
    """One run as it goes: what the steps of `fit` share."""

    task: Task
    data: PreparedRun
    device: torch.device
    run_dir: Path
    stages: list[Stage]
    generator: torch.Generator
    ema: DeviceEMA | None = None
    stage_index: int = -1  # the stage the optimizer below belongs to
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    stepped: nn.Module | None = None  # the model the steps run: DistributedDataParallel's wrapper under torchrun
    history: list[dict] = field(default_factory=list)
    best_score: float = -1.0
    best_epoch: int = 0
    stale: int = 0
    start_epoch: int = 1
    train_seconds: float = 0.0
    board: TensorBoardLog | None = None

    @property
    def options(self):
        return self.task.options

    @property
    def model(self) -> nn.Module:
        return self.data.model

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved as best: the EMA of the weights when there is one."""
        return self.ema.module if self.ema is not None else self.data.model

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)


def fit(config: TrainConfig | Task, on_epoch_end: Callable[[int, dict], None] | None = None, log: Log = print,
        given: set[str] | None = None) -> RunResult:
    """Train, keep the best checkpoint, score it on the held-out splits; resumable. `config` is a
    recognition `TrainConfig` or a task. `given` names the settings given on the command line,
    which `--resume` reports as ignored when they differ from the run's, even where they equal
    the defaults."""
    task = RecognitionTask(config, given) if isinstance(config, TrainConfig) else config
    run, saved = _set_up(task, log)
    if saved is not None:
        _restore(run, saved, log)
    _open_run_dir(run, fresh=saved is None, log=log)
    _train_epochs(run, on_epoch_end, log)
    return _finish(run, log)


def _set_up(task: Task, log: Log) -> tuple[Run, dict | None]:
    """The task as the resumed run saved it (if resuming), its data and model, and the run state."""
    run_dir = Path(task.options.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: a file of that name is there; name a folder for the run")
    device = resolve_device(task.options.device)
    task, saved = _resume_point(task, run_dir / ckpt.LAST, log)
    torch.manual_seed(task.options.seed)
    data = task.prepare(device, saved is None, log)
    # The same seed on every process: each draws the same permutation and takes its own share of it
    # (`dist.shard`); per-rank seeds drew different permutations, so shares overlapped.
    run = Run(task, data, device, run_dir, task.stages(), torch.Generator().manual_seed(task.options.seed))
    if task.options.ema:
        run.ema = DeviceEMA(data.model, task.options.ema)
    return run, saved


def _resume_point(task: Task, last_path: Path, log: Log) -> tuple[Task, dict | None]:
    """With `--resume` and a last.pt: the task rebuilt from the settings it saved, and its state."""
    if not task.options.resume:
        return task, None
    if not last_path.exists():  # a typo in --out, or a run cut short before its first epoch ended
        raise FileNotFoundError(f"--resume: no {last_path} to continue (a run writes it at the end of each epoch); "
                                "check --out, or start the run without --resume")
    saved = ckpt.read_checkpoint_file(last_path)
    task, ignored = task.resumed(saved["config"])
    if dist.is_main():
        log(f"Resuming {last_path.parent} from epoch {saved['epoch']} of {sum(s.epochs for s in task.stages())}")
        if ignored:
            log("--resume continues the run with the settings it was started with; ignoring " + ", ".join(ignored))
    return task, saved


def _restore(run: Run, saved: dict, log: Log) -> None:
    """Put the interrupted run back as last.pt saved it: weights, optimizer, random states, record."""
    run.model.load_state_dict(saved["model_state"])
    run.start_epoch = saved["epoch"] + 1
    if run.start_epoch <= run.epochs:
        enter_stage(run, run.start_epoch)
        if saved.get("stage", 0) == run.stage_index:  # the same stage: its optimizer and schedule go on
            run.optimizer.load_state_dict(saved["optimizer"])
            if run.scheduler is not None and saved.get("scheduler"):
                run.scheduler.load_state_dict(saved["scheduler"])
    run.generator.set_state(saved["generator"])
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    torch.set_rng_state(saved["torch_rng"])
    run.history = saved["history"]
    run.best_score, run.best_epoch = saved["best_score"], saved["best_epoch"]
    run.stale, run.train_seconds = saved["stale"], saved["train_seconds"]
    patience = run.options.patience
    if patience and run.stale >= patience:  # it had stopped early: only the final evaluation is left
        run.start_epoch = run.epochs + 1
        if dist.is_main():
            log(f"The run stopped early at epoch {saved['epoch']} (patience {patience}): nothing left to train")
    if run.data.extra is not None:  # the pool as it was: no extra relabel
        run.data.extra.restore(saved.get("pseudo"))


def _open_run_dir(run: Run, fresh: bool, log: Log) -> None:
    """The run folder (an old run in it moved aside first), the start line, TensorBoard."""
    if not dist.is_main():
        return
    if fresh:
        _keep_previous_run(run.run_dir, log)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log(run.data.start_line)
    if run.options.tensorboard is not None:
        run.board = TensorBoardLog(Path(run.options.tensorboard or run.run_dir / "tensorboard"))


def _stage_of(stages: list[Stage], epoch: int) -> int:
    """The index of the stage that epoch `epoch` (counted from 1 over all stages) belongs to."""
    end = 0
    for index, stage in enumerate(stages):
        end += stage.epochs
        if epoch <= end:
            return index
    raise ValueError(f"epoch {epoch} is past the last stage")


def enter_stage(run: Run, epoch: int) -> Stage:
    """The stage of `epoch`; on entering it, its freezing, optimizer and schedule."""
    index = _stage_of(run.stages, epoch)
    stage = run.stages[index]
    if index != run.stage_index:
        set_backbone_trainable(run.model, not stage.freeze_backbone)
        run.stepped = _compiled(dist.wrap_model(run.model, run.device), run.options.compile)
        run.optimizer = stage.optimizer([p for p in run.model.parameters() if p.requires_grad])
        steps = math.ceil(math.ceil(len(run.data.train) / dist.world_size()) / run.options.batch_size)
        run.scheduler = stage.scheduler(run.optimizer, steps)
        run.stage_index = index
    return stage


def _compiled(model: nn.Module, wanted: bool) -> nn.Module:
    """`model` compiled by torch.compile when `wanted` and this torch can (else `model` itself);
    a compiled model that fails at its first step falls back in `_forward`."""
    if not wanted or not hasattr(torch, "compile"):
        return model
    return torch.compile(model, dynamic=False)


def _forward(run: Run, x: torch.Tensor) -> torch.Tensor:
    """The training model's logits; a compiled model that cannot compile is replaced by the
    plain one, with one warning, and training goes on."""
    try:
        return run.stepped(x)
    except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds (backend, dynamo, C++ toolchain)
        plain = getattr(run.stepped, "_orig_mod", None)
        if plain is None:
            raise
        warnings.warn(f"--compile: the model did not compile ({type(exc).__name__}: {str(exc)[:200]}); training without it")
        run.stepped = plain
        return run.stepped(x)


def _train_epochs(run: Run, on_epoch_end: Callable[[int, dict], None] | None, log: Log) -> None:
    """Train epoch after epoch, validating the first and those past `validate_from` of the run,
    until the last or until patience runs out."""
    timer_start = time.perf_counter() - run.train_seconds
    for epoch in range(run.start_epoch, run.epochs + 1):
        started = time.perf_counter()
        stage = enter_stage(run, epoch)
        fresh = run.data.epoch_train(epoch) if run.data.epoch_train is not None else None
        if fresh is not None:  # a task that draws new images every epoch (streamed pre-training)
            run.data.train = fresh
        if run.data.extra is not None:
            run.data.extra.update(epoch, run.eval_model, log)
        train = train_one_epoch(run, stage, f"epoch {epoch}/{run.epochs}")
        val = None
        if run.options.validates(epoch, run.epochs):
            val = score_split(run.task, run.eval_model, run.data.scored[run.data.watch], run.options.eval_batch_size)
        elapsed = time.perf_counter() - timer_start
        rows = _history_rows(run, epoch, stage, train, val, elapsed)
        improved = val is not None and val.score > run.best_score
        if val is not None:  # early stopping counts validated epochs
            run.best_score, run.best_epoch, run.stale = (val.score, epoch, 0) if improved else (run.best_score, run.best_epoch, run.stale + 1)
        if dist.is_main():
            for line in run.task.epoch_lines(epoch, run.epochs, stage, train, val, elapsed, time.perf_counter() - started):
                log(line)
            _save_epoch(run, epoch, stage, val if improved else None, elapsed)
        if on_epoch_end is not None:
            on_epoch_end(epoch, rows[-1])
        if run.options.patience and run.stale >= run.options.patience:
            if dist.is_main():
                log(f"Stopping early: no better {run.data.watch} {run.task.score_name} for {run.options.patience} epochs")
            break
    run.train_seconds = time.perf_counter() - timer_start
    set_backbone_trainable(run.model, True)
    dist.barrier()


def _history_rows(run: Run, epoch: int, stage: Stage, train: Scores, val: Scores | None, elapsed: float) -> list[dict]:
    """The epoch's rows of the history (train, and val when it was validated); a run of several
    stages names the stage."""
    lr = run.optimizer.param_groups[0]["lr"]
    named = {"stage": stage.name} if len(run.stages) > 1 else {}
    rows = [{"epoch": epoch, **named, "phase": phase, **s.as_dict(), "elapsed": round(elapsed, 3), "lr": lr}
            for phase, s in (("train", train), ("val", val)) if s is not None]
    run.history += rows
    if run.board is not None:
        run.board.epoch(rows)
    return rows


def _save_epoch(run: Run, epoch: int, stage: Stage, best: Scores | None, elapsed: float) -> None:
    """best.pt when the epoch is the best so far, then last.pt and metrics.csv."""
    meta = run.data.meta
    if best is not None:
        meta["metrics"] = {"best_epoch": epoch, **({"stage": stage.name} if len(run.stages) > 1 else {}), run.data.watch: best.as_dict()}
        ckpt.save_checkpoint(run.run_dir / ckpt.BEST, run.eval_model, meta)
    ckpt.save_checkpoint(
        run.run_dir / ckpt.LAST, run.model, meta, optimizer=run.optimizer.state_dict(),
        ema=run.ema.state_dict() if run.ema is not None else None,
        scheduler=run.scheduler.state_dict() if run.scheduler is not None else None,
        generator=run.generator.get_state(), torch_rng=torch.get_rng_state(), history=run.history,
        epoch=epoch, stage=run.stage_index, best_score=run.best_score, best_epoch=run.best_epoch, stale=run.stale,
        train_seconds=elapsed, config=run.task.settings(),
        pseudo=run.data.extra.state() if run.data.extra is not None else None,
    )
    run.task.write_history(run.run_dir / "metrics.csv", run.history)


def train_one_epoch(run: Run, stage: Stage, progress_desc: str = "") -> Scores:
    """One pass over the training images; with an extra pool (pseudo-labeled images), every batch
    also gets as many images drawn at random from it; with `augment_views` above 1, each image is
    read in that many independently augmented copies in the same step; with a teacher, the loss
    mixes in distillation from its logits on the same augmented batch.

    The steps never wait for the device: the loss and the logits stay there and are read once,
    at the end of the epoch, so a GPU queues step after step."""
    task, options, split, model = run.task, run.options, run.data.train, run.stepped
    model.train()
    if stage.freeze_backbone:
        run.model.backbone.eval()  # frozen means frozen: batch-norm statistics stay as loaded
    pool = run.data.extra.batch_pool() if run.data.extra is not None else None
    n = len(split)
    order = dist.shard(torch.randperm(n, generator=run.generator), n)
    on_images = order.to(split.images.device)
    loss_sum = torch.zeros((), device=run.device)
    read = []
    bar = tqdm(total=math.ceil(len(order) / options.batch_size), desc=progress_desc, unit="step", leave=False,
               disable=None if dist.is_main() else True)  # None: drawn on a terminal only
    for start in range(0, len(order), options.batch_size):
        idx = order[start : start + options.batch_size]
        logits, loss = _step(run, split, idx, on_images[start : start + options.batch_size], pool)
        loss_sum += loss.detach() * len(idx)
        read.append(logits.detach())
        bar.update()
    bar.close()
    logits = torch.cat(read).float().cpu() if read else torch.zeros(0)
    return task.train_scores(loss_sum.item(), logits, split, order)


def _step(run: Run, split: LabeledImages, idx: torch.Tensor, on_images: torch.Tensor,
          pool: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the images `idx` (`on_images`: the same indices where the images are);
    returns the logits of those images and the loss, both left on the device."""
    with torch.profiler.record_function(STEP_MARK):
        return _step_work(run, split, idx, on_images, pool)


def _step_work(run: Run, split: LabeledImages, idx: torch.Tensor, on_images: torch.Tensor,
               pool: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    options, device, teacher = run.options, run.device, run.data.teacher
    batch, y = split.images[on_images], split.targets[idx]
    if pool is not None and len(pool[0]):
        extra = torch.randint(len(pool[0]), (len(idx),), generator=run.generator)
        batch = torch.cat([batch, pool[0][extra.to(pool[0].device)]])
        y = torch.cat([y, pool[1][extra]])
    if options.augment_views > 1:  # copies first-to-last, so rows [:len(idx)] stay the labeled images' first view
        batch, y = batch.repeat(options.augment_views, 1, 1, 1), y.repeat(options.augment_views, 1)
    x = run.task.inputs(batch.to(device, non_blocking=True), run.generator)
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.amp and bf16_pays(device)):
        logits = _forward(run, x)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
    loss = loss_fn(logits, y, run.task.head, run.task.label_smoothing)
    if teacher is not None:
        w = options.distill_weight
        loss = (1.0 - w) * loss + w * distillation_loss(logits, teacher_logits, options.distill_temperature)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.stepped)
    return logits[: len(idx)], loss  # the epoch's statistics cover the labeled images only


def _finish(run: Run, log: Log) -> RunResult:
    """Score the best checkpoint on the held-out splits; metrics.json, pictures, closing lines."""
    task, data = run.task, run.data
    best_model, best_meta = ckpt.load_model(run.run_dir / ckpt.BEST, run.device)
    scores = {name: score_split(task, best_model, data.scored[name], run.options.eval_batch_size)
              for name in task.report_splits if name in data.scored and len(data.scored[name])}
    if dist.is_main():
        best_meta["metrics"] = {"best_epoch": run.best_epoch, **{name: scores[name].as_dict() if name in scores else None
                                                                 for name in task.report_splits}, "train_seconds": round(run.train_seconds, 2)}
        ckpt.save_checkpoint(run.run_dir / ckpt.BEST, best_model, best_meta)
        (run.run_dir / "metrics.json").write_text(json.dumps(best_meta["metrics"], indent=2) + "\n")
        shown = "test" if "test" in scores else data.watch
        task.pictures(run.run_dir, run.history, shown, data.scored[shown], scores[shown], run.board)
        if run.board is not None:
            run.board.finish(task.settings(), {f"{name}_{task.headline}": s.score for name, s in scores.items() if name != "train"})
        for line in task.final_lines(run.best_epoch, run.best_score, scores, run.train_seconds, run.run_dir):
            log(line)
    as_dicts = {name: s.as_dict() for name, s in scores.items()}
    parameters = sum(p.numel() for p in run.model.parameters())
    return RunResult(run.run_dir, run.best_epoch, as_dicts.get("val"), as_dicts.get("test"), parameters, run.train_seconds, as_dicts)


def _keep_previous_run(run_dir: Path, log: Log) -> None:
    """A new run in a folder that holds one moves the old run to `<folder>.previous` (replacing an
    older one there), so that forgetting `--resume`, or training again, loses nothing at once."""
    if not ((run_dir / ckpt.LAST).exists() or (run_dir / ckpt.BEST).exists()):
        return
    here = Path.cwd().resolve()
    if run_dir.resolve() in (here, *here.parents):  # --out . : there is nowhere to move it
        log(f"{run_dir} holds a run; starting a new one over it (--resume continues the old one)")
        return
    previous = run_dir.with_name(run_dir.name + ".previous")
    if previous.is_dir():
        shutil.rmtree(previous)
    elif previous.exists():
        previous.unlink()
    run_dir.rename(previous)
    log(f"{run_dir} held a run: moved to {previous} (--resume continues a run instead of starting over)")
