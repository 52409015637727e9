"""The one training loop: ``train(TrainConfig(...)) -> run directory``.

A run directory holds:

- ``model/`` -- the bundle (:mod:`covidxray.bundle`) of the epoch with the best validation score (macro ROC AUC;
  the validation loss when the val split has one class only), or of epoch ``select_epoch`` when one was chosen
  beforehand (out of source), with the config, data counts and its val metrics;
  With ``average_from`` = N, the uniform average of the weights of epochs N to the last one run instead
  (:func:`average_epoch_weights`), its val metrics measured on the averaged weights;
- ``epochs/epoch-NNN.safetensors`` -- every epoch's weights, with ``epoch_weights`` or ``average_from`` (for
  :func:`reselect_epoch` and :func:`average_epoch_weights`);
- ``checkpoints/last.pt`` -- the full state to continue (:mod:`.checkpoint`), written every
  ``checkpoint_every`` steps and at every epoch end;
- ``history.csv`` / ``history.jsonl`` -- one row per epoch (train loss/acc, val loss/acc/macro AUC/COVID
  sensitivity/COVID AUC, lr, seconds, images/s; with a held-out source also its COVID and macro AUC, recorded only);
  ``curves.png`` -- accuracy and loss, train vs val;
- ``run.json`` -- config, status (running | completed | early_stopped | time_budget), train_seconds,
  epochs_run, best_epoch.

Determinism: the same config and data give the same history on CPU (seeded init, epoch orders and
augmentation from (seed, epoch, step), ``torch.use_deterministic_algorithms``), and a resumed run continues
with the same numbers it would have produced uninterrupted.
"""

from __future__ import annotations

import copy
import functools
import gc
import inspect
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from covidxray.bundle import BundleConfig, save_bundle, update_bundle
from covidxray.data.manifest import root_label
from covidxray.models.base import XRayNet
from covidxray.preprocess import Preprocessing
from covidxray.training.adversary import SourceAdversary, dann_lambda, source_table
from covidxray.training.augment import Augment, batch_generator
from covidxray.training.checkpoint import ResumeError, checkpoint_path, load_checkpoint, save_checkpoint
from covidxray.training.config import ConfigError, TrainConfig, masked_sources
from covidxray.training.dataset import (
    SplitData,
    batch_inputs,
    check_splits,
    holdout_copies,
    holdout_rows,
    load_images,
    read_training_manifest,
    select_split,
    split_counts,
)
from covidxray.training.distributed import (
    Dist,
    barrier,
    broadcast_flag,
    init_distributed,
    shutdown,
    sum_across,
)
from covidxray.training.groupdro import GroupDRO
from covidxray.training.history import plot_curves, read_history, write_history, write_json
from covidxray.training.sampler import balanced_weights, epoch_order, expected_label_frequency, shard
from covidxray.training.validation import (
    gathered_order,
    predict_logits,
    task_loss,
    task_loss_rows,
    val_metrics,
)

DEFAULT_THREADS = 2
CHANNELS_LAST = torch.channels_last
LR_FACTOR = 0.5


def architecture_kwargs(name: str, image_size: int) -> dict[str, Any]:
    """Builder arguments stored in the bundle: ``image_size`` for models whose layers depend on it."""
    from covidxray.models import registry

    models = registry.list_models()
    if name not in models:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(models)}")
    params = inspect.signature(registry._REGISTRY[name]).parameters
    return {"image_size": int(image_size)} if "image_size" in params else {}


def build_model(cfg: TrainConfig, pre: Preprocessing, arch_kwargs: dict[str, Any]) -> XRayNet:
    """A fresh network (seeded), with ``cfg.weights`` loaded and the backbone frozen if asked."""
    from covidxray.models.init import initialize
    from covidxray.models.registry import create_model

    torch.manual_seed(cfg.seed)
    net = create_model(cfg.model, num_classes=cfg.num_outputs, in_channels=cfg.channels, **arch_kwargs)
    initialize(net, cfg.init)
    if cfg.weights:
        from covidxray.models.weights import load_pretrained

        load_pretrained(net, cfg.weights)
    if cfg.freeze_backbone:
        net.freeze_backbone()
    return XRayNet(net, pre.mean, pre.std, cfg.num_outputs)


def sam_gradient(model: torch.nn.Module, rho: float, objective: Callable[[], torch.Tensor]) -> None:
    """Sharpness-aware minimisation's second pass (Foret et al., ICLR 2021): with ``model``'s gradients of the
    batch loss in place, move the weights by ``rho`` along the normalised gradient, replace the gradients by those
    of ``objective()`` (the same batch's loss) there, and put the weights back, so the optimizer's step applies
    the gradient of the worst nearby point to the unmoved weights. Batch-norm running statistics keep the first
    pass's update (momentum 0 in the second)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in bns]
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = rho / (float(norm) + 1e-12)
        for p in params:
            p.add_(p.grad, alpha=scale)
    try:
        for m in bns:
            m.momentum = 0.0
        model.zero_grad(set_to_none=True)
        objective().backward()
    finally:
        for m, momentum, count in zip(bns, momenta, tracked, strict=True):
            m.momentum = momentum
            if count is not None:  # the second pass is not a batch of its own (momentum None: a running mean)
                m.num_batches_tracked.copy_(count)
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam; RMSprop with Keras' defaults (rho 0.9, eps 1e-7) as in the seeds; SGD with Nesterov momentum.

    ``weight_decay`` > 0: Adam becomes AdamW (decoupled decay, Loshchilov & Hutter 2019); RMSprop and SGD take it
    as their L2 term. 0 builds exactly the optimizers of runs made before the option existed."""
    params = [p for p in model.parameters() if p.requires_grad]
    wd = float(cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.9, eps=1e-7, weight_decay=wd)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if wd:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=cfg.lr)


def class_weight_tensor(
    cfg: TrainConfig, train: SplitData, sample_p: np.ndarray | None
) -> torch.Tensor | None:
    """Inverse label frequency as the sampler delivers it, normalised to mean 1 (None for ``class_weights=none``)."""
    if cfg.class_weights == "none":
        return None
    freq = expected_label_frequency(train.targets, len(cfg.classes), sample_p)
    w = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12), 0.0)
    return torch.tensor(w / w[freq > 0].mean(), dtype=torch.float32)


def covid_mask(cfg: TrainConfig, train: SplitData, val: SplitData) -> tuple[np.ndarray, np.ndarray] | None:
    """Which training rows have COVID-19 masked out of their loss, and which validation rows are scored the
    same way (``cfg.covid_masked_sources``; None: off).

    A named source must be among the training rows' sources and must hold no COVID-19 row in train or val (its
    rows would otherwise be trained to a class their loss cannot reach)."""
    # a fold that holds a masked source out has none of its rows to mask (crossval --all runs such a fold)
    names = tuple(n for n in masked_sources(cfg.covid_masked_sources) if n != cfg.holdout_source)
    if not names:
        return None
    present = sorted(set(train.sources.tolist()))
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(
            f"covid_masked_sources names {missing}, which no training row comes from (training sources: "
            f"{present}): check the name against the manifest's source column, or drop it from "
            "--covid-masked-sources"
        )
    k = cfg.classes.index("covid")
    for split, what in ((train, "train"), (val, "val")):
        bad = sorted(set(split.sources[np.isin(split.sources, names) & (split.targets == k)].tolist()))
        if bad:
            raise ConfigError(
                f"covid_masked_sources: source(s) {bad} hold COVID-19 rows in {what}; mask only sources without "
                "COVID-19 (e.g. kermany)"
            )
    return np.isin(train.sources, names), np.isin(val.sources, names)


def mask_covid(logits: torch.Tensor, rows: torch.Tensor, covid: int) -> torch.Tensor:
    """``logits`` with the COVID-19 logit of ``rows`` (bool, N) set to -inf: their softmax, and so their
    cross-entropy, is over the other classes only (no gradient reaches the masked logit)."""
    cols = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    cols[covid] = True
    return logits.masked_fill(rows[:, None] & cols[None, :], float("-inf"))


@contextmanager
def _torch_settings(cfg: TrainConfig):
    """Deterministic kernels and ``cfg.threads`` (else OMP_NUM_THREADS, else 2) threads, restored afterwards.

    On a CPU shared with other busy processes, 2 threads can be many times slower than 1 (OpenMP workers
    wait for each other): use ``--threads 1`` or ``OMP_NUM_THREADS=1`` there.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(DEFAULT_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one image is dropped (batch norm cannot train on it)."""
    return n // batch_size if n % batch_size == 1 and n > 1 else math.ceil(n / batch_size)


def _say(cfg: TrainConfig, ctx: Dist, text: str) -> None:
    if cfg.progress and ctx.is_main:
        from tqdm import tqdm

        tqdm.write(text)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


SUMS = (
    "loss",
    "correct",
    "seen",
    "seconds",
    "train_seconds",
    "adv_loss",
    "adv_correct",
    "adv_seen",
    "adv_lambda",
)


class _Adversarial(torch.nn.Module):
    """The classifier and its source adversary as one module (one optimizer, one DDP wrapper).

    ``forward(x, y, sources, lam)`` -> (class logits, adversary loss, adversary's correct count, images it saw).
    """

    def __init__(self, model: XRayNet, adversary: SourceAdversary):
        super().__init__()
        self.model, self.adversary = model, adversary

    def forward(self, x: torch.Tensor, y: torch.Tensor, sources: torch.Tensor, lam: float):
        features = self.model.features(x)
        logits = self.model.net.head(features)
        return (logits, *self.adversary.loss(features, y, sources, lam))


class _Run:
    """The state of one run while it trains (kept out of :func:`train` to keep each step readable)."""

    def __init__(self, cfg: TrainConfig, df: pd.DataFrame, ctx: Dist, resume: bool):
        self.cfg, self.df, self.ctx = cfg, df, ctx
        self.dir = Path(cfg.out)
        self.pre = cfg.preprocessing()
        self.arch_kwargs = architecture_kwargs(cfg.model, cfg.image_size)
        self.train_split = select_split(df, cfg, "train")
        self.val_split = select_split(df, cfg, "val")
        check_splits(df, cfg, self.train_split, self.val_split)
        self.holdout_split = holdout_rows(df, cfg)
        self.sample_p = (
            balanced_weights(self.train_split.targets, self.train_split.sources, cfg.source_power)
            if cfg.sampler == "balanced"
            else None
        )
        self.weight = class_weight_tensor(cfg, self.train_split, self.sample_p)
        # validation scores the masked rows the way they are trained (else p(covid) of a masked source's images,
        # never trained, would move the LR schedule, early stopping and the kept epoch)
        masks = covid_mask(cfg, self.train_split, self.val_split)
        self.covid_masked, self.covid_masked_val = masks if masks is not None else (None, None)
        self.monitor = "val_auc_macro" if len(np.unique(self.val_split.targets)) > 1 else "val_loss"
        self.augment = Augment(cfg.augment, cfg.image_size, acquisition=cfg.acquisition, erasing=cfg.erasing)
        self.dro = (
            GroupDRO.for_split(
                self.train_split.sources,
                self.train_split.targets,
                cfg.classes,
                cfg.group_dro,
                sync=ctx.active,
            )
            if cfg.group_dro
            else None
        )

        if ctx.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.images = load_images(df, self.pre, cfg, progress=cfg.progress)
        barrier(ctx)
        if not ctx.is_main:
            self.images = load_images(df, self.pre, cfg, progress=False)

        # channels-last: ~1.4-1.6x faster convolutions on CPU (oneDNN); weights are saved contiguous anyway
        self.model = build_model(cfg, self.pre, self.arch_kwargs).to(ctx.device, memory_format=CHANNELS_LAST)
        self.adversary, self.source_names = self._adversary()
        trained = self.model if self.adversary is None else _Adversarial(self.model, self.adversary)
        self.optimizer = build_optimizer(cfg, trained)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=LR_FACTOR, patience=max(1, cfg.patience // 2)
        )
        self.epoch, self.step = 0, 0
        self.sums = dict.fromkeys(SUMS, 0.0)
        self.best_score, self.best_epoch, self.bad_epochs = -math.inf, 0, 0
        self.best_metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.status = "running"
        self.averaged: tuple[int, int] | None = None  # (first, last) epoch once model/ holds their average
        self.dense: AveragedModel | None = None  # average_every: the running average of the weights so far
        self.averaged_holdout: dict[str, Any] = {}
        self.final_holdout: dict[str, Any] = {}  # holdout_final_only, no averaging: the kept model's figures
        self.averaging_skipped = ""
        self.averaging_note = ""  # average_every took no snapshot: the epoch-end average was kept instead
        if resume:
            self._restore(load_checkpoint(self.dir))
        elif ctx.is_main and checkpoint_path(self.dir).exists():
            _say(
                cfg,
                ctx,
                f"note: {self.dir} held an earlier run; starting afresh (use --resume to continue it)",
            )
            checkpoint_path(self.dir).unlink()
        self.net = trained
        if ctx.active:
            self.net = torch.nn.parallel.DistributedDataParallel(trained)

    def _adversary(self) -> tuple[SourceAdversary | None, list[str]]:
        """The source adversary of ``cfg.adversary`` (None when off), and the training sources it tells apart."""
        cfg = self.cfg
        names, present = source_table(self.train_split.targets, self.train_split.sources, len(cfg.classes))
        if cfg.adversary == "none":
            return None, names
        if len(names) < 2:
            raise ConfigError(
                f"adversary {cfg.adversary!r} needs training images from 2+ sources, got {names}"
            )
        with torch.no_grad():
            probe = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
            n_features = int(self.model.eval().features(probe).flatten(1).shape[1])
        with torch.random.fork_rng(devices=[]):  # leave the global stream (dropout) as without an adversary
            torch.manual_seed(cfg.seed + 1)
            adversary = SourceAdversary(n_features, present, cfg.adversary).to(self.ctx.device)
        return adversary, names

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        sums = dict(self.sums)
        if self.step:  # mid-epoch: wall time of this epoch so far
            sums["seconds"] += time.perf_counter() - self.epoch_start
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "adversary": None if self.adversary is None else self.adversary.state_dict(),
            "group_dro": None if self.dro is None else self.dro.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "sums": sums,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "torch_rng": torch.get_rng_state(),
            "dense_average": None if self.dense is None else self.dense.state_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"])
        if self.dro is not None:
            self.dro.load_state_dict(state["group_dro"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.sums = {**dict.fromkeys(SUMS, 0.0), **state["sums"]}
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.best_metrics = dict(state["best_metrics"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("dense_average") is not None:
            self.dense = AveragedModel(self.model)
            self.dense.load_state_dict(state["dense_average"])

    def checkpoint(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.dir, self._state())

    # -- one epoch -------------------------------------------------------------------------------------------
    def train_epoch(self) -> None:
        cfg, ctx, split = self.cfg, self.ctx, self.train_split
        self.epoch_start = time.perf_counter()
        order = shard(
            epoch_order(len(split), cfg.seed, self.epoch, self.sample_p, cfg.epoch_samples),
            ctx.rank,
            ctx.world,
        )
        n_batches = _num_batches(len(order), cfg.batch_size)
        bar = None
        if cfg.progress and ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=n_batches,
                initial=self.step,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
            )
        weight = None if self.weight is None else self.weight.to(ctx.device)
        source_index = {s: i for i, s in enumerate(self.source_names)}
        src_all = np.asarray([source_index[s] for s in split.sources], np.int64)
        total_steps = max(1, cfg.epochs * n_batches)
        self.net.train()
        while self.step < n_batches:
            t0 = time.perf_counter()
            idx = order[self.step * cfg.batch_size : (self.step + 1) * cfg.batch_size]
            x = batch_inputs(self.images, split.positions[idx], self.pre)
            x = self.augment(x, batch_generator(cfg.seed, self.epoch, self.step, ctx.rank))
            x = x.to(ctx.device).contiguous(memory_format=CHANNELS_LAST)
            y = torch.from_numpy(split.targets[idx]).to(ctx.device)
            if self.adversary is None:
                mix = None
                if cfg.mixup:
                    mix = mixup_draw(cfg.mixup, len(y), cfg.seed, self.epoch, self.step, ctx.rank)
                logits, loss, total = self._objective(x, y, weight, idx, mix)
            else:
                lam = dann_lambda(cfg.adversary_weight, (self.epoch * n_batches + self.step) / total_steps)
                src = torch.from_numpy(src_all[idx]).to(ctx.device)
                logits, adv_loss, adv_correct, adv_n = self.net(x, y, src, lam)
                logits, loss, total = self._class_loss(logits, y, weight, idx)
                total = total + adv_loss
                self.sums["adv_loss"] += float(adv_loss.detach()) * adv_n
                self.sums["adv_correct"] += float(adv_correct)
                self.sums["adv_seen"] += adv_n
                self.sums["adv_lambda"] = lam
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.sam:  # (validated: no adversary, no GroupDRO, whose state a second pass would move)
                sam_gradient(self.net, cfg.sam, functools.partial(self._minimised, x, y, weight, idx, mix))
            self.optimizer.step()
            if (  # steps counted over the whole run, so K need not divide an epoch's steps
                cfg.average_every
                and self.epoch + 1 >= cfg.average_from
                and (self.epoch * n_batches + self.step + 1) % cfg.average_every == 0
            ):
                if self.dense is None:
                    self.dense = AveragedModel(self.model)
                self.dense.update_parameters(self.model)
            with torch.no_grad():
                pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
            self.sums["loss"] += loss.item() * len(y)
            self.sums["correct"] += float((pred == y).sum())
            self.sums["seen"] += len(y)
            dt = time.perf_counter() - t0
            self.sums["train_seconds"] += dt
            self.step += 1
            if bar is not None:
                rate = self.sums["seen"] * ctx.world / max(self.sums["train_seconds"], 1e-9)
                bar.set_postfix(loss=f"{self.sums['loss'] / self.sums['seen']:.4f}", img_s=f"{rate:.0f}")
                bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < n_batches:
                self.checkpoint()
        if bar is not None:
            bar.close()

    def _objective(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
        idx: np.ndarray,
        mix: tuple[float, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, the loss recorded, the loss minimised) of a batch without a source adversary; ``mix`` =
        (lambda, permutation) blends the batch with itself first (mixup)."""
        if mix is not None:
            lam, perm = mix
            logits = self.net(lam * x + (1 - lam) * x[perm])
            smoothing = self.cfg.label_smoothing
            loss = lam * task_loss(logits, y, weight, smoothing) + (1 - lam) * task_loss(
                logits, y[perm], weight, smoothing
            )
            return logits, loss, loss
        return self._class_loss(self.net(x), y, weight, idx)

    def _class_loss(
        self, raw: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, idx: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the logits as the loss sees them, the loss recorded, the loss minimised) of the network's logits
        ``raw``: COVID-19 masked for the rows of ``covid_masked_sources``; with ``covid_mask_weight`` W < 1 the
        loss is W x the masked loss + (1 - W) x the plain one (rows of other sources: the plain loss either way)."""
        logits = self._masked(raw, idx)
        recorded, minimised = self._task_loss(logits, y, weight, idx)
        w = self.cfg.covid_mask_weight
        if self.covid_masked is not None and w < 1:  # (validated: no GroupDRO, no label smoothing)
            plain = task_loss(raw, y, weight, self.cfg.label_smoothing)
            recorded, minimised = w * recorded + (1 - w) * plain, w * minimised + (1 - w) * plain
        return logits, recorded, minimised

    def _minimised(self, *batch: Any) -> torch.Tensor:
        """The loss :meth:`_objective` minimises (sharpness-aware minimisation's second pass)."""
        return self._objective(*batch)[2]

    def _masked(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """The batch's logits as its loss sees them: COVID-19 masked for the rows of ``covid_masked_sources``."""
        if self.covid_masked is None:
            return logits
        rows = torch.from_numpy(self.covid_masked[idx]).to(logits.device)
        return mask_covid(logits, rows, self.cfg.classes.index("covid"))

    def _task_loss(
        self, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, idx: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss recorded in the history, the loss minimised): the same mean loss, or with GroupDRO the mean
        recorded and the groups' ``q``-weighted loss minimised."""
        if self.dro is None:
            loss = task_loss(logits, y, weight, self.cfg.label_smoothing)
            return loss, loss
        recorded = task_loss(logits.detach(), y, weight, self.cfg.label_smoothing)
        return recorded, self.dro.loss(task_loss_rows(logits, y, weight, self.cfg.label_smoothing), idx)

    def val_figures(self, model: XRayNet) -> dict[str, Any]:
        """:func:`val_metrics` of ``model`` on the validation split (gathered over ranks), with COVID-19 masked
        for the rows of ``covid_masked_sources`` as in training."""
        ctx = self.ctx
        logits, targets = predict_logits(
            model, self.images, self.val_split, self.pre, ctx, self.cfg.batch_size * 2
        )
        if self.covid_masked_val is None:
            return val_metrics(logits, targets, self.cfg.classes)
        # the figures the run monitors score the masked rows as they are trained; the bundle predicts without
        # the mask, so the plain COVID-19 AUC is recorded beside them
        unmasked = val_metrics(logits, targets, self.cfg.classes)["val_auc_covid"]
        masked = logits.copy()
        masked[
            self.covid_masked_val[gathered_order(ctx, len(self.val_split))], self.cfg.classes.index("covid")
        ] = -np.inf
        return {**val_metrics(masked, targets, self.cfg.classes), "val_auc_covid_unmasked": unmasked}

    def end_epoch(self) -> bool:
        """Validate, record, keep the best, checkpoint; True when training should stop."""
        cfg, ctx = self.cfg, self.ctx
        loss_sum, correct, seen, train_secs = sum_across(
            ctx, [self.sums["loss"], self.sums["correct"], self.sums["seen"], self.sums["train_seconds"]]
        )
        metrics = self.val_figures(self.model)
        seconds = self.sums["seconds"] + (time.perf_counter() - self.epoch_start)
        row = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            **metrics,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
            "images_per_s": round(seen / max(train_secs / ctx.world, 1e-9), 1),
        }
        # the held-out source's figures: recorded for choosing the epoch out of source afterwards (item 6 of
        # issue #12), never used here (LR schedule, early stopping and model/ follow validation)
        if not self.cfg.holdout_final_only:
            row.update(self.holdout_figures(self.model))
        if self.adversary is not None:  # the adversary's own view: can it still tell the sources apart?
            adv_loss, adv_correct, adv_seen = sum_across(
                ctx, [self.sums["adv_loss"], self.sums["adv_correct"], self.sums["adv_seen"]]
            )
            row["adv_loss"] = adv_loss / max(adv_seen, 1)
            row["adv_source_acc"] = adv_correct / max(adv_seen, 1)
            row["adv_lambda"] = round(self.sums["adv_lambda"], 6)
        self.history.append(row)
        self.train_seconds += seconds
        value = metrics[self.monitor]
        score = -math.inf if value is None else (value if self.monitor != "val_loss" else -value)
        self.scheduler.step(score)
        if cfg.epoch_weights or cfg.average_from:
            self.save_epoch_weights()
        if cfg.select_epoch:  # the epoch was chosen beforehand: keep each epoch up to it, then stop
            improved = self.epoch + 1 <= cfg.select_epoch
        else:
            improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch + 1, 0
            self.best_metrics = {k: v for k, v in row.items() if k.startswith("val_")}
            self.save_model()
        else:
            self.bad_epochs += 1
        _say(
            cfg,
            ctx,
            f"epoch {row['epoch']}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {_fmt(row['val_loss'])} acc {_fmt(row['val_acc'])} AUC {_fmt(row['val_auc_macro'])} "
            f"COVID sens {_fmt(row['val_sensitivity_covid'])} AUC {_fmt(row['val_auc_covid'])}  "
            f"{row['images_per_s']:.0f} img/s {seconds:.0f} s{'  *best' if improved else ''}",
        )
        self.epoch += 1
        self.step = 0
        self.sums = {k: 0.0 for k in self.sums}
        stop = False
        if self.epoch >= cfg.epochs or (cfg.select_epoch and self.epoch >= cfg.select_epoch):
            self.status = "completed"
            stop = self.epoch < cfg.epochs
        elif cfg.patience and not (cfg.select_epoch or cfg.average_from) and self.bad_epochs >= cfg.patience:
            self.status, stop = "early_stopped", True
        elif cfg.max_minutes is not None and self.train_seconds > cfg.max_minutes * 60:
            self.status, stop = "time_budget", True
        if stop:
            _say(cfg, ctx, f"stopping after epoch {self.epoch}: {self.status.replace('_', ' ')}")
        self.checkpoint()
        if ctx.is_main:
            write_history(self.dir, self.history)
            plot_curves(self.dir, self.history, title=f"{cfg.model} ({', '.join(cfg.classes)})")
            self.write_run_json()
        return broadcast_flag(ctx, stop)

    # -- outputs ---------------------------------------------------------------------------------------------
    def save_epoch_weights(self) -> None:
        """``epochs/epoch-NNN.safetensors``: this epoch's weights, for :func:`reselect_epoch`."""
        if not self.ctx.is_main:
            return
        from safetensors.torch import save_file

        path = epoch_weights_path(self.dir, self.epoch + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)

    @property
    def averaged_steps(self) -> int:
        """average_every: how many weight snapshots ``model/`` averages (0 until it holds their average)."""
        return int(self.dense.n_averaged) if self.averaged and self.dense is not None else 0

    @property
    def selected_by(self) -> str:
        if self.averaged:
            first, last = self.averaged
            every = f", every {self.cfg.average_every} steps" if self.averaged_steps else ""
            return f"average of epochs {first}-{last} (average_from {first}{every})"
        return f"select_epoch {self.cfg.select_epoch}" if self.cfg.select_epoch else f"best {self.monitor}"

    def holdout_figures(self, model: XRayNet) -> dict[str, Any]:
        """``model``'s COVID and macro ROC AUC on every image of the held-out source ({} without one)."""
        if self.holdout_split is None or not len(self.holdout_split):
            return {}
        logits, targets = predict_logits(
            model, self.images, self.holdout_split, self.pre, self.ctx, self.cfg.batch_size * 2
        )
        h = val_metrics(logits, targets, self.cfg.classes)
        return {"holdout_auc_covid": h["val_auc_covid"], "holdout_auc_macro": h["val_auc_macro"]}

    def averaging_record(self) -> dict[str, Any]:
        """What run.json and the bundle say about weight averaging (nothing when it is off)."""
        if not self.cfg.average_from:
            return {}
        d: dict[str, Any] = {"averaged_epochs": list(self.averaged) if self.averaged else None}
        if self.averaged and self.averaged_steps:
            d["averaged_steps"] = self.averaged_steps
        if self.averaged_holdout:
            d["averaged_holdout"] = self.averaged_holdout
        if self.averaging_skipped:
            d["averaging_skipped"] = self.averaging_skipped
        if self.averaging_note:
            d["averaging_note"] = self.averaging_note
        return d

    def bn_batches(self) -> list[torch.Tensor]:
        """The training images in batches, for recomputing batch-norm statistics; a last batch of one image joins
        the one before (batch norm cannot normalise a single image, as in :func:`_num_batches`)."""
        pos, bs = self.train_split.positions, self.cfg.batch_size * 2
        chunks = [pos[i : i + bs] for i in range(0, len(pos), bs)]
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2:] = [np.concatenate(chunks[-2:])]
        return [batch_inputs(self.images, c, self.pre) for c in chunks]

    def average(self) -> None:
        """``average_from``: replace ``model/`` by the average of the weights of epochs ``average_from`` to the
        last one run, with the averaged model's validation (and held-out source's) figures. A run stopped
        before ``average_from`` (time budget) keeps its best epoch and says so."""
        cfg, ctx = self.cfg, self.ctx
        first, last = cfg.average_from, len(self.history)
        if last < first:
            self.averaging_skipped = (
                f"the run stopped after epoch {last} ({self.status.replace('_', ' ')}), before average_from "
                f"{first}: model/ keeps epoch {self.best_epoch} ({self.selected_by})"
            )
            _say(cfg, ctx, f"no weight averaging: {self.averaging_skipped}")
            return
        # every rank averages (the files are rank 0's, written before the epoch's closing broadcast: a shared
        # disk), because predict_logits gathers over the ranks
        bn = self.bn_batches() if has_batch_norm(self.model) else None
        if cfg.average_every and self.dense is None:
            self.averaging_note = (
                f"average_every {cfg.average_every} is more than the optimizer steps of epochs {first}-{last}: no "
                "snapshot was taken, so model/ holds the average of those epochs' end weights instead"
            )
            _say(cfg, ctx, self.averaging_note)
        if self.dense is not None:
            averaged = averaged_module(copy.deepcopy(self.dense), bn, ctx.device)
        else:
            averaged = average_epoch_weights(self.model, self.dir, first, last, bn, device=ctx.device)
        averaged = averaged.to(ctx.device, memory_format=CHANNELS_LAST)
        self.best_metrics = self.val_figures(averaged)
        self.averaged_holdout = self.holdout_figures(averaged)
        self.averaged, self.best_epoch = (first, last), last
        self.save_model(averaged)
        _say(
            cfg,
            ctx,
            f"averaged the weights of epochs {first}-{last}: val AUC {_fmt(self.best_metrics['val_auc_macro'])}",
        )

    def training_facts(self) -> dict[str, Any]:
        return {
            **self.cfg.to_dict(),
            "train_seconds": round(self.train_seconds, 3),
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "monitor": self.monitor,
            "selected_by": self.selected_by,
            **self.averaging_record(),
            **({"final_holdout": self.final_holdout} if self.final_holdout else {}),
            "world_size": self.ctx.world,
        }

    def save_model(self, model: XRayNet | None = None) -> None:
        """Write the bundle next to ``model/`` and swap it in, so ``model/`` is never half written."""
        if not self.ctx.is_main:
            return
        cfg = self.cfg
        config = BundleConfig(
            architecture=cfg.model,
            architecture_kwargs=self.arch_kwargs,
            classes=list(cfg.classes),
            num_outputs=cfg.num_outputs,
            preprocessing=self.pre,
            training=self.training_facts(),
            data={
                "manifest": str(cfg.manifest),
                "manifest_sha1": self.df.attrs.get("manifest_sha1"),
                "root": root_label(self.df.attrs["root"]) if self.df.attrs.get("root") else None,
                "holdout_source": cfg.holdout_source,
                "holdout_copies_excluded": self.holdout_copies_excluded(),
                "counts": split_counts(self.df, [self.train_split, self.val_split]),
            },
            metrics={"val": self.best_metrics},
        )
        _swap_bundle(self.dir, (model or self.model).eval(), config)

    def holdout_copies_excluded(self) -> dict[str, int]:
        """Train and val rows of other sources left out as copies of the held-out source's images."""
        if not self.cfg.holdout_source:
            return {}
        copies = holdout_copies(self.df, self.cfg.holdout_source)
        split = self.df["split"].astype(str).to_numpy()
        return {name: int((copies & (split == name)).sum()) for name in ("train", "val")}

    def write_run_json(self) -> None:
        write_json(
            self.dir / "run.json",
            {
                "status": self.status,
                "config": self.cfg.to_dict(),
                "train_seconds": round(self.train_seconds, 3),
                "epochs_run": len(self.history),
                "best_epoch": self.best_epoch,
                "monitor": self.monitor,
                "selected_by": self.selected_by,
                **self.averaging_record(),
                **({"final_holdout": self.final_holdout} if self.final_holdout else {}),
                **({} if self.dro is None else {"group_dro_weights": self.dro.weights()}),
                "best_val": self.best_metrics,
                "holdout_copies_excluded": self.holdout_copies_excluded(),
                "bundle": "model",
                "checkpoint": str(Path("checkpoints") / "last.pt"),
                "world_size": self.ctx.world,
            },
        )

    def finish(self) -> None:
        if self.cfg.average_from:  # train() has set the final status by now
            self.average()
        if self.cfg.holdout_final_only and not self.averaged_holdout and (self.dir / "model").is_dir():
            # no per-epoch scoring and no averaged model scored: score the model kept in model/ once
            from covidxray.bundle import load_bundle

            kept = load_bundle(self.dir / "model").model.to(self.ctx.device)
            self.final_holdout = self.holdout_figures(kept)
        if self.ctx.is_main and (self.dir / "model").is_dir():
            update_bundle(self.dir / "model", training=self.training_facts())
        if self.ctx.is_main:
            self.write_run_json()


def train(cfg: TrainConfig, manifest_df: pd.DataFrame | None = None, resume: bool = False) -> Path:
    """Train ``cfg.model`` on the manifest's train split, validating every epoch; returns the run directory.

    ``resume=True`` continues from ``<cfg.out>/checkpoints/last.pt`` (mid-epoch included).
    """
    cfg.validate()
    df = manifest_df if manifest_df is not None else read_training_manifest(cfg.manifest)
    with _torch_settings(cfg):
        ctx = init_distributed()
        run = None
        try:
            run = _Run(cfg, df, ctx, resume)
            if ctx.is_main:
                run.write_run_json()
            while run.epoch < cfg.epochs and run.status == "running":
                run.train_epoch()
                if run.end_epoch():
                    break
            if run.status == "running":  # resumed a run whose epochs were all done
                run.status = "completed"
            run.finish()
            if ctx.is_main:
                kept = run.selected_by if run.averaged else f"epoch {run.best_epoch} ({run.selected_by})"
                _say(cfg, ctx, f"kept {kept}; bundle: {run.dir / 'model'}")
        finally:
            del run  # DDP's reducer must go before its process group, or gloo can hang at exit
            gc.collect()
            shutdown(ctx)
    return Path(cfg.out)


def mixup_draw(
    alpha: float, n: int, seed: int, epoch: int, step: int, rank: int = 0
) -> tuple[float, torch.Tensor]:
    """Mixup's blend weight ~ Beta(alpha, alpha) and partner order for one batch: a function of (seed, epoch,
    step, rank) only, like the augmentation, so a resumed run and any number of loader workers draw the same."""
    rng = np.random.default_rng([int(seed), int(epoch), int(step), int(rank), 0x6D6978])
    return float(rng.beta(alpha, alpha)), torch.from_numpy(rng.permutation(n))


def epoch_weights_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / "epochs" / f"epoch-{epoch:03d}.safetensors"


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def average_epoch_weights(
    model: XRayNet,
    run_dir: str | Path,
    first: int,
    last: int,
    bn_batches=None,
    device: torch.device | str = "cpu",
) -> XRayNet:
    """A copy of ``model`` holding the uniform average (stochastic weight averaging) of the weights of epochs
    ``first`` to ``last`` kept in ``<run_dir>/epochs`` (``torch.optim.swa_utils.AveragedModel``), on ``device``.
    A model with batch norm needs ``bn_batches`` (an iterable of input batches, e.g. the training images) to
    recompute its running statistics for the averaged weights (``update_bn``); ``model`` itself is left as it
    was."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    if not 1 <= first <= last:
        raise ValueError(f"averaging needs 1 <= first <= last, got epochs {first}-{last}")
    missing = [e for e in range(first, last + 1) if not epoch_weights_path(run, e).is_file()]
    if missing:
        raise ResumeError(
            f"{run}: no weights for epoch(s) {missing} to average (kept in {run / 'epochs'}); "
            "train with --average-from or --epoch-weights to keep every epoch"
        )
    if has_batch_norm(model) and bn_batches is None:
        raise ValueError(
            f"{type(model).__name__} has batch norm: averaging its weights needs training batches to recompute "
            "the running statistics (bn_batches)"
        )
    work = copy.deepcopy(model).to(device)
    averaged = AveragedModel(work)
    for epoch in range(first, last + 1):
        work.load_state_dict(load_file(str(epoch_weights_path(run, epoch))))
        averaged.update_parameters(work)
    return averaged_module(averaged, bn_batches, device)


def averaged_module(
    averaged: AveragedModel, bn_batches: Iterable[torch.Tensor] | None, device: str | torch.device
) -> XRayNet:
    """The model inside ``averaged``, in eval mode: its parameters are the average; its batch-norm statistics
    (the seed CNNs have none) are recomputed on ``bn_batches`` for them (``update_bn``), since averaging buffers
    would not give the statistics of the averaged weights."""
    if bn_batches is not None and has_batch_norm(averaged.module):
        update_bn(bn_batches, averaged, device=torch.device(device))
    return averaged.module.eval()


def reselect_epoch(run_dir: str | Path, epoch: int, reason: str) -> Path:
    """Rebuild ``<run>/model`` from the weights of ``epoch`` (kept by ``epoch_weights``), e.g. the epoch chosen
    on out-of-source figures; ``reason`` is recorded as the bundle's ``training.selected_by``. The bundle's
    ``metrics.val`` become that epoch's validation figures. Returns the bundle folder."""
    from safetensors.torch import load_file

    from covidxray.bundle import load_bundle

    run = Path(run_dir)
    path = epoch_weights_path(run, epoch)
    if not path.is_file():
        kept = sorted(p.name for p in (run / "epochs").glob("epoch-*.safetensors"))
        raise ResumeError(
            f"{run}: no weights for epoch {epoch} ({path} missing; kept: {kept or 'none'}); "
            "train with --epoch-weights to keep every epoch"
        )
    bundle = load_bundle(run / "model")
    bundle.model.load_state_dict(load_file(str(path)))
    row = next((h for h in read_history(run) if int(h["epoch"]) == epoch), {})
    config = bundle.config
    # one epoch now, not an average
    dropped = ("averaged_epochs", "averaged_holdout", "averaging_skipped", "averaged_steps", "averaging_note")
    config.training = {
        **{k: v for k, v in config.training.items() if k not in dropped},
        "best_epoch": epoch,
        "selected_by": reason,
    }
    config.metrics = {**config.metrics, "val": {k: v for k, v in row.items() if k.startswith("val_")}}
    config.created = ""
    return _swap_bundle(run, bundle.model.eval(), config)


def _swap_bundle(run_dir: Path, model: XRayNet, config: BundleConfig) -> Path:
    """Write the bundle next to ``<run>/model`` and swap it in, so ``model/`` is never half written."""
    tmp, final = run_dir / ".model.tmp", run_dir / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    save_bundle(tmp, model, config)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def resume(run_dir: str | Path, **overrides: Any) -> Path:
    """Continue the run in ``run_dir`` with its saved config (``overrides`` e.g. ``epochs=30``, ``progress=False``)."""
    state = load_checkpoint(run_dir)
    d = dict(state["config"])
    d.update({k: v for k, v in overrides.items() if v is not None})
    d["out"] = str(run_dir)
    cfg = TrainConfig.from_dict(d)
    return train(cfg, resume=True)


__all__ = [
    "ResumeError",
    "architecture_kwargs",
    "build_model",
    "average_epoch_weights",
    "epoch_weights_path",
    "reselect_epoch",
    "resume",
    "train",
]
