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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

from vpipe import __version__
from vpipe.errors import StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace, atomic_write_text
from vpipe.store import FeatureSet
from vpipe.train import runs
from vpipe.train.codebook import codebook_file, codebook_identity, init_aggregation, load_checked, standardise_inputs
from vpipe.train.config import QUICK, TrainConfig
from vpipe.train.data import Splits, loader, make_splits, step_dim
from vpipe.device import resolve_device
from vpipe.train.scoring import (
    Scores,
    amp_dtype,
    autocast,
    build_head,
    predict,
    seed_everything,
    test_metrics,
    torch_threads,
)

#: Bumped when training changes what the same config produces (invalidates reuse).
TRAINER_VERSION = "bilstm-softagg-trainer/2"


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


class _Best:
    """The best epoch so far by (validation accuracy, then lower validation loss)."""

    def __init__(self) -> None:
        self.epoch, self.acc, self.loss = 0, -1.0, math.inf

    def update(self, epoch: int, acc: float, loss: float) -> bool:
        if acc > self.acc or (acc == self.acc and loss < self.loss):
            self.epoch, self.acc, self.loss = epoch, acc, loss
            return True
        return False


def best_epoch(history: pd.DataFrame) -> int:
    """The epoch a run kept, replayed from its history with the rule training used."""
    best = _Best()
    for row in history.itertuples():
        best.update(int(row.epoch), float(row.val_acc), float(row.val_loss))
    return best.epoch


def _warmup_cosine(total_steps: int, warmup_steps: int):
    """LR factor per optimizer step: linear warm-up to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


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

    def epoch(self, batches: DataLoader, report: Callable[[str], object]) -> tuple[float, float]:
        """Train on every batch once; return the mean loss and accuracy (dropout active)."""
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, lengths, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device, self.dtype):
                logits = self.model(x, lengths)
            loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            report(f"loss {loss_sum / seen:.4f}")
        return loss_sum / seen, correct / seen


def _loss_acc(scores: Scores) -> tuple[float, float]:
    logits, labels = torch.from_numpy(scores.logits), torch.from_numpy(scores.labels)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _save_checkpoint(path: Path, model: torch.nn.Module, run_config: dict[str, Any], epoch: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": model.state_dict(), "config": run_config, "epoch": epoch}, tmp)
    tmp.replace(path)


def _run_config(
    ws: DatasetWorkspace,
    config: TrainConfig,
    run_id: str,
    features: FeatureSet,
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
        "model": {"head": config.head, "input_dim": inputs.input_dim, "num_classes": len(inputs.splits.class_names)},
        "features": {
            "name": config.features,
            "layer": config.layer,
            "directory": str(features.directory),
            "index_sha256": inputs.features_sha256,
            "provenance": features.provenance,
        },
        "data": inputs.splits.to_dict(),
        "codebook": None,
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

    splits: Splits
    input_dim: int
    features_sha256: str
    codebook: Path | None
    fingerprint: str


def _inputs(ws: DatasetWorkspace, config: TrainConfig, features: FeatureSet) -> _Inputs:
    input_dim = step_dim(features, config.layer)
    splits = make_splits(ws, features, config.val_fraction, config.seed)
    if not splits.test:
        raise StageError(
            f"dataset {ws.dataset!r} has no test videos with {config.features} features; test metrics need "
            f"them: check the manifest's split column (`vpipe probe --dataset {ws.dataset} --split N`)"
        )
    features_sha256 = features.index_sha256
    book = codebook_file(ws, config)
    if book is not None:
        load_checked(book, config, input_dim)
    fp = fingerprint(TRAINER_VERSION, config.to_dict(), features_sha256, splits.to_dict(), codebook_identity(book))
    return _Inputs(splits, input_dim, features_sha256, book, fp)


def _from_stored(stored: runs.StoredRun, config: TrainConfig) -> RunResult:
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
) -> RunResult:
    """Train a head on ``config.features`` of ``ws`` and write ``runs/<run_id>/``.

    ``run_id`` defaults to :meth:`TrainConfig.default_run_id` (with a ``-2``, ``-3`` ...
    suffix when taken). With ``reuse``, a completed run with the same fingerprint is
    returned as is. ``progress`` shows a progress bar per epoch on stderr; ``threads``
    sets torch's CPU threads for the run only.
    """
    if run_id is not None:
        runs.check_run_id(run_id)
    with ws.open_features(config.features) as features, torch_threads(threads):
        inputs = _inputs(ws, config, features)
        if reuse and (stored := runs.find_by_fingerprint(ws, inputs.fingerprint)) is not None:
            return _from_stored(stored, config)
        device = resolve_device(config.device)
        dtype = amp_dtype(device, config.amp)
        run_id, directory = runs.reserve(ws, run_id or config.default_run_id(), explicit=run_id is not None)
        run_config = _run_config(ws, config, run_id, features, inputs, device, dtype)
        runs.write_json(directory / runs.CONFIG_FILE, run_config)
        return _fit(config, run_config, directory, features, inputs, device, dtype, progress)


def existing_run(ws: DatasetWorkspace, config: TrainConfig) -> RunResult | None:
    """The completed run ``train(ws, config, reuse=True)`` would return, or None if it would train."""
    with ws.open_features(config.features) as features:
        stored = runs.find_by_fingerprint(ws, _inputs(ws, config, features).fingerprint)
    return None if stored is None else _from_stored(stored, config)


def _fit(
    config: TrainConfig,
    run_config: dict[str, Any],
    directory: Path,
    features: FeatureSet,
    inputs: _Inputs,
    device: torch.device,
    dtype: torch.dtype | None,
    show_progress: bool,
) -> RunResult:
    splits = inputs.splits
    seed_everything(config.seed)
    model = build_head(config, inputs.input_dim, len(splits.class_names))
    batch = dict(labels=splits.labels, batch_size=config.batch_size)
    fit_view0 = loader(features, config.layer, splits.train, train=False, **batch)
    standardise_inputs(model, features, config.layer, splits.train, config.seed)
    run_config["codebook"] = init_aggregation(model, config, inputs.codebook, features, splits.train, fit_view0)
    runs.write_json(directory / runs.CONFIG_FILE, run_config)
    model.to(device)

    train_loader = loader(features, config.layer, splits.train, train=True, seed=config.seed, **batch)
    val_loader = loader(features, config.layer, splits.val, train=False, **batch)
    test_loader = loader(features, config.layer, splits.test, train=False, **batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = len(train_loader)
    schedule = _warmup_cosine(config.max_epochs * steps, round(config.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step = _Step(model, optimizer, scheduler, scaler, config.grad_clip, device, dtype)

    rows: list[dict[str, float]] = []
    best = _Best()
    best_state: dict[str, torch.Tensor] = {}
    with _progress(show_progress) as bar:
        for epoch in range(1, config.max_epochs + 1):
            start = time.perf_counter()
            task = bar.add_task(f"epoch {epoch}/{config.max_epochs}", total=steps, status="")
            train_loss, train_acc = step.epoch(train_loader, lambda loss: bar.update(task, advance=1, status=loss))
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
            bar.update(task, status=f"loss {train_loss:.4f}  val_acc {val_acc:.3f}  val_loss {val_loss:.4f}")
            history = pd.DataFrame(rows, columns=runs.HISTORY_COLUMNS)
            atomic_write_text(directory / runs.HISTORY_FILE, history.to_csv(index=False))
            if best.update(epoch, val_acc, val_loss):
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                _save_checkpoint(directory / runs.CHECKPOINT_FILE, model, run_config, epoch)
            elif epoch - best.epoch >= config.patience:
                break

    model.load_state_dict(best_state)
    metrics = test_metrics(model, test_loader, device, dtype, splits.class_names)
    runs.write_json(directory / runs.METRICS_FILE, metrics)
    return RunResult(
        run_id=run_config["run_id"],
        directory=directory,
        metrics=metrics,
        history=history,
        best_epoch=best.epoch,
        stopped_early=len(rows) < config.max_epochs,
    )


def train_for_pipeline(
    ws: DatasetWorkspace, features: str = "li3d-rgb", *, progress: bool = False, **overrides: Any
) -> RunResult:
    """The training step of ``vpipe run``: a BiLSTM with concat aggregation, sized by
    :data:`vpipe.train.config.QUICK` for the built-in synthetic dataset on a laptop CPU.

    It reuses an identical finished run, so rerunning the pipeline does not retrain.
    ``overrides`` replace individual options. It runs on one torch thread: on a busy
    2-core machine, 140 synthetic-sized videos took 32 s on one thread and 420 s on two,
    whose busy-waiting fought the other processes (on quieter cores: 15 s and 13 s).
    """
    return train(ws, pipeline_config(features, **overrides), reuse=True, progress=progress, threads=1)


def pipeline_config(features: str = "li3d-rgb", **overrides: Any) -> TrainConfig:
    """The config :func:`train_for_pipeline` trains (for a status check with :func:`existing_run`)."""
    return TrainConfig(features=features, **{**QUICK, **overrides})
