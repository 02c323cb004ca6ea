"""Training a head on cached features: ``train(ws, TrainConfig) -> RunResult``.

One run: split the manifest's videos (:mod:`vpipe.train.data`), build the head, start
its aggregation from a codebook (:mod:`vpipe.train.codebook`), then AdamW with a linear
warm-up and cosine decay of the learning rate, stepped per batch. After each epoch the
validation split is scored; the best epoch (highest validation accuracy, lower loss
breaking ties, which matters on small validation sets that reach 100 % early) is
checkpointed, and ``patience`` epochs without a better one end the run. The best state
is then scored once on the test split.

Runs are reproducible: seeds for Python, numpy and torch, a seeded shuffle, and seeded
k-means make two CPU runs with one config (and one torch thread count, which changes the
order of floating-point sums) identical bit for bit. A run's fingerprint
(config, features index, data split, codebook) lets ``reuse=True`` return a finished
identical run instead of training again, which is what keeps ``vpipe run`` idempotent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vpipe import __version__
from vpipe.artifacts import atomic_path, atomic_write_text, write_digest_file
from vpipe.artifacts.run_record import BestEpoch, best_epoch
from vpipe.device import autocast, resolve_device
from vpipe.models.heads.registry import Head, HeadBatch, HeadInput, PrepareData
from vpipe.pipeline.progress import progress
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.train import runs
from vpipe.train.config import TrainConfig
from vpipe.train.data import DEFAULT_CACHE_BYTES, InputReader, Splits, features_record, loader, make_splits
from vpipe.train.identity import file_identity, require_test_videos, run_files, run_fingerprint, run_inputs
from vpipe.train.model import build_model
from vpipe.train.scoring import Scores, amp_dtype, predict, seed_everything, test_metrics, torch_threads


@dataclass
class RunResult:
    """A finished run: where it lives, its test metrics and its epoch history."""

    run_id: str
    directory: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "directory": str(self.directory),
            "reused": self.reused,
            "epochs": len(self.history),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "best_val_acc": float(self.history.loc[self.history["epoch"] == self.best_epoch, "val_acc"].iloc[0]),
            "metrics": self.metrics,
        }


def _warmup_cosine(total_steps: int, warmup_steps: int):
    """LR factor per optimizer step: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``, without its multiplication by 1 on CPU.

    torch scales every gradient by ``min(1, max_norm / (‖g‖ + 1e-6))`` even when that is
    1, so as not to read the norm back from an accelerator. On CPU there is nothing to
    wait for, and the skipped pass is a read and write of every gradient (28 M values for
    the default head). The result is the same bit for bit: the scale is computed as
    torch computes it, and only an exact 1 (never NaN) is skipped.
    """
    parameters = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in parameters]
    if not grads or grads[0].device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    norm = torch.nn.utils.get_total_norm(grads)
    if bool(max_norm / (norm + 1e-6) >= 1.0):
        return
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)


@dataclass
class _Step:
    """One optimisation pass over the training batches (autocast and loss scaling on CUDA)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    grad_clip: float
    device: torch.device
    dtype: torch.dtype | None

    def epoch(self, batches: DataLoader) -> tuple[float, float]:
        """Train on every batch once; return the mean loss and accuracy (dropout active)."""
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in batches:
            batch = batch.to(self.device)
            y = batch.labels
            with autocast(self.device, self.dtype):
                loss, logits = self.model.training_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        return loss_sum / seen, correct / seen


def _loss_acc(scores: Scores) -> tuple[float, float]:
    logits, labels = torch.from_numpy(scores.logits), torch.from_numpy(scores.labels)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def _save_checkpoint(path: Path, model: torch.nn.Module, run_config: dict[str, Any], epoch: int) -> None:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": run_config, "epoch": epoch}, tmp)


def _run_config(
    ws: DatasetWorkspace,
    config: TrainConfig,
    run_id: str,
    reader: InputReader,
    inputs: _Inputs,
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    """``config.json``: everything needed to rebuild the model and its data."""
    return {
        "run_id": run_id,
        "dataset": ws.dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": inputs.fingerprint,
        "train": config.to_dict(),
        "model": {
            "head": config.head,
            "late_fusion": config.late_fusion,
            "shapes": {role: list(shape) for role, shape in inputs.shapes.items()},
            "num_classes": len(inputs.splits.class_names),
        },
        "inputs": [spec.to_dict() for spec in inputs.specs],
        "features": features_record(reader),
        "files": inputs.files,
        "data": inputs.splits.to_dict(),
        "prepared": None,
        "environment": {
            "vpipe": __version__,
            "torch": str(torch.__version__),
            "device": str(device),
            "autocast": None if dtype is None else str(dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
        },
    }


@dataclass(frozen=True)
class _Inputs:
    """What a run reads, resolved and checked before anything is written."""

    specs: list[HeadInput]
    shapes: dict[str, tuple[int, ...]]
    splits: Splits
    files: dict[str, dict[str, str]]
    fingerprint: str


def _inputs(ws: DatasetWorkspace, config: TrainConfig, reader: InputReader) -> _Inputs:
    shapes = reader.shapes()
    splits = make_splits(ws, reader, config.val_fraction, config.seed)
    require_test_videos(ws, config, splits)
    files = {key: file_identity(path) for key, path in run_files(ws, config).items()}
    fp = run_fingerprint(config, reader.index_sha256(), splits, files)
    return _Inputs(reader.inputs, shapes, splits, files, fp)


def _from_stored(stored: runs.RunRecord, config: TrainConfig) -> RunResult:
    history = stored.history
    return RunResult(
        run_id=stored.run_id,
        directory=stored.directory,
        metrics=stored.metrics,
        history=history,
        best_epoch=best_epoch(history),
        stopped_early=len(history) < config.max_epochs,
        reused=True,
    )


def train(
    ws: DatasetWorkspace,
    config: TrainConfig,
    *,
    run_id: str | None = None,
    reuse: bool = False,
    progress: bool = False,
    threads: int | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> RunResult:
    """Train ``config.head`` on ``config.features`` of ``ws`` and write ``runs/<run_id>/``.

    ``run_id`` defaults to :meth:`TrainConfig.default_run_id` (with a ``-2``, ``-3`` ...
    suffix when taken). With ``reuse``, a completed run with the same fingerprint is
    returned as is. ``progress`` reports epochs on stderr; ``threads`` sets torch's CPU
    threads for the run only; ``cache_bytes`` bounds the decoded inputs kept between
    epochs (see :mod:`vpipe.train.data`; it changes speed and memory, never results).
    """
    if run_id is not None:
        runs.check_run_id(run_id)
    with InputReader(ws, run_inputs(config), cache_bytes=cache_bytes) as reader, torch_threads(threads):
        inputs = _inputs(ws, config, reader)
        if reuse and (stored := runs.find_by_fingerprint(ws, inputs.fingerprint)) is not None:
            return _from_stored(stored, config)
        device = resolve_device(config.device)
        dtype = amp_dtype(device, config.amp)
        seed_everything(config.seed)
        model = build_model(config, inputs.shapes, len(inputs.splits.class_names))
        prepared = _prepare(model, config, reader, inputs)
        run_id, directory = runs.reserve(ws, run_id or config.default_run_id(), explicit=run_id is not None)
        run_config = _run_config(ws, config, run_id, reader, inputs, device, dtype)
        run_config["prepared"] = prepared
        runs.write_json(directory / runs.CONFIG_FILE, run_config)
        return _fit(model, config, run_config, directory, reader, inputs, device, dtype, progress)


def existing_run(ws: DatasetWorkspace, config: TrainConfig) -> RunResult | None:
    """The completed run ``train(ws, config, reuse=True)`` would return, or None if it would train."""
    with InputReader(ws, run_inputs(config)) as reader:
        stored = runs.find_by_fingerprint(ws, _inputs(ws, config, reader).fingerprint)
    return None if stored is None else _from_stored(stored, config)


def _prepare(model: Head, config: TrainConfig, reader: InputReader, inputs: _Inputs) -> dict[str, Any] | None:
    """Run the head's :meth:`Head.prepare` hook on the fit videos (view 0); it runs before
    the run's directory is reserved, so a head that refuses its data leaves nothing behind."""
    fit = inputs.splits.train

    def batches() -> Iterator[HeadBatch]:
        return iter(loader(reader, fit, inputs.splits.labels, batch_size=config.batch_size, train=False))

    data = PrepareData(
        sample=lambda role, limit: reader.sample(role, fit, limit, config.seed),
        batches=batches,
        files={key: Path(entry["path"]) for key, entry in inputs.files.items()},
        fit_videos=len(fit),
        seed=config.seed,
        histogram_columns=reader.histogram_columns,
    )
    return model.prepare(data)


def _phases(config: TrainConfig) -> list[tuple[int, float]]:
    """(epochs, learning-rate factor) of each phase of the schedule."""
    if config.schedule == "two-phase" and config.max_epochs > 1:
        first = (config.max_epochs + 1) // 2
        return [(first, 1.0), (config.max_epochs - first, 0.1)]
    return [(config.max_epochs, 1.0)]


def _fit(
    model: Head,
    config: TrainConfig,
    run_config: dict[str, Any],
    directory: Path,
    reader: InputReader,
    inputs: _Inputs,
    device: torch.device,
    dtype: torch.dtype | None,
    show_progress: bool,
) -> RunResult:
    splits = inputs.splits
    model.to(device)

    batch = dict(labels=splits.labels, batch_size=config.batch_size)
    train_loader = loader(reader, splits.train, train=True, seed=config.seed, **batch)
    val_loader = loader(reader, splits.val, train=False, **batch)
    test_loader = loader(reader, splits.test, train=False, **batch)
    steps = len(train_loader)

    rows: list[dict[str, float]] = []
    best = BestEpoch()
    best_state: dict[str, torch.Tensor] = {}
    epoch = 0
    with progress(f"train {run_config['run_id']}", config.max_epochs, quiet=None if show_progress else True) as bar:
        for phase_epochs, factor in _phases(config):
            if best_state:
                model.load_state_dict(best_state)
            # The fused update is one pass over each parameter instead of a dozen element-wise
            # kernels per group: 5x faster on CPU for the default head's 28 M parameters, where
            # the update was a quarter of a training step (BENCHMARKS.md).
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=config.lr * factor, weight_decay=config.weight_decay, fused=True
            )
            if config.schedule == "two-phase":
                schedule = lambda step: 1.0  # noqa: E731 - constant rate within a phase
            else:
                schedule = _warmup_cosine(phase_epochs * steps, round(config.warmup_epochs * steps))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            step = _Step(model, optimizer, scheduler, scaler, config.grad_clip, device, dtype)
            phase_start = epoch
            for epoch in range(phase_start + 1, phase_start + phase_epochs + 1):
                start = time.perf_counter()
                train_loss, train_acc = step.epoch(train_loader)
                val_loss, val_acc = _loss_acc(predict(model, val_loader, device, dtype))
                rows.append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "train_acc": train_acc,
                        "val_loss": val_loss,
                        "val_acc": val_acc,
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": time.perf_counter() - start,
                    }
                )
                bar.advance(status=f"epoch {epoch}: loss {train_loss:.4f}, val_acc {val_acc:.3f}, val_loss {val_loss:.4f}")
                history = pd.DataFrame(rows, columns=runs.HISTORY_COLUMNS)
                atomic_write_text(directory / runs.HISTORY_FILE, history.to_csv(index=False))
                if best.update(epoch, val_acc, val_loss):
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    _save_checkpoint(directory / runs.CHECKPOINT_FILE, model, run_config, epoch)
                elif epoch - best.epoch >= config.patience:
                    break
            epoch = phase_start + phase_epochs

    model.load_state_dict(best_state)
    metrics = test_metrics(model, test_loader, device, dtype, splits.class_names)
    # The checkpoint is rewritten on every improvement; its digest is taken once, from
    # the final file, before metrics.json marks the run complete (``vpipe verify``).
    write_digest_file(directory / runs.CHECKPOINT_FILE)
    runs.write_json(directory / runs.METRICS_FILE, metrics)
    return RunResult(
        run_id=run_config["run_id"],
        directory=directory,
        metrics=metrics,
        history=history,
        best_epoch=best.epoch,
        stopped_early=len(rows) < config.max_epochs,
    )
