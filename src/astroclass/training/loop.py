"""The training loop: one run, or G runs of one grid cell fused into one batched model.

A run alone is a group of one. A group shares what the runs of one (dataset, model, setup) cell share:
the data, the architecture and the batch size (see :func:`fuse_key`). Everything else is each run's own
and stays so: initial weights (built with the run's seed, as if alone), data order, augmentation and
dropout masks (the run's own generators), λ and γ, optimiser (over the run's own parameter views), batch-
norm statistics, early stopping, best weights, outputs. A run that stops leaves the group: it is
evaluated and written at once, and when half the slots are idle the group is rebuilt with the runs left
(their weights and optimiser states moved over exactly), so the others no longer carry it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from astroclass.errors import AstroclassError
from astroclass.models import AstroNet
from astroclass.progress import Bar, say
from astroclass.runconfig import auto_compile, parse_duration
from astroclass.training.config import RunConfig, RunResult, TrainingFailed
from astroclass.training.data import DataCache, DiskImages, Images, RunData, batches, training_order
from astroclass.training.fusion import Slots, fuse
from astroclass.training.method import (
    TTA_VIEWS,
    EarlyStopping,
    augment_runs,
    batch_starts,
    class_weight_tensor,
    dropout_generator,
    dropout_masks,
    finetune_optimizer,
    lr_factor,
    make_optimizer,
    predict_probs,
    run_losses,
    to_float,
    upload,
    val_scores,
)
from astroclass.training.outputs import environment, evaluate, save_checkpoint, write_history, write_result
from astroclass.training.speed import (
    STEP_GRAPH,
    TORCH_CUDA_GRAPHS,
    StepGraph,
    compiled,
    cpu_process_setup,
    fast_layout,
    resolve_device,
)

PER_RUN_OPTIONS = frozenset({"l2", "maxnorm", "optimizer", "seed", "lr", "class_weights", "sampler", "monitor",
                             "augment", "augment_shift", "epochs", "patience", "finetune_lr", "finetune_momentum",
                             "fuse", "schedule", "warmup_epochs", "label_smoothing", "finetune_optimizer"})
"""Options in which the runs of one fused group may differ; every other option they share."""


def fuse_key(config: dict[str, Any]) -> str:
    """Runs with equal keys can train fused: the options outside :data:`PER_RUN_OPTIONS`."""
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in PER_RUN_OPTIONS}, default=str)


class ModelCache:
    """A worker's built models, kept between groups: a later group of the same architecture loads its
    runs' initial weights into the kept model in place, so a compiled model (and its captured CUDA
    graphs) is reused instead of built and compiled again."""

    def __init__(self, size: int = 3):
        self.size = size
        self._items: OrderedDict[tuple, tuple[torch.nn.Module, Any, Slots]] = OrderedDict()
        self.sizes: dict[tuple, int] = {}  # per-run memory footprints (fused_group_size)

    def get(self, key: tuple, build: Callable[[], torch.nn.Module], mode: str | None):
        """(model, its compiled forward, its slots) for ``key``; built (and compiled) when new."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], False
        while len(self._items) >= self.size:
            self._items.popitem(last=False)
        model = build()
        self._items[key] = (model, compiled(model, mode), Slots(cast(AstroNet, model)))
        return self._items[key], True

    def clear(self) -> None:
        self._items.clear()


@dataclass
class WorkerCache:
    """What a long-lived worker keeps from one group to the next."""

    models: ModelCache = field(default_factory=ModelCache)
    data: DataCache = field(default_factory=DataCache)

    def clear(self) -> None:
        self.models.clear()
        self.data.clear()


@dataclass
class _Run:
    """One run of a group while it trains."""

    index: int
    cfg: RunConfig
    out_dir: Path
    result: RunResult
    gen: torch.Generator
    dgen: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)
    opt: torch.optim.Optimizer | None = None
    stopper: EarlyStopping | None = None
    weights: torch.Tensor = field(default_factory=lambda: torch.ones(0))  # loss weight per class (set at start)
    slot: int = 0
    train_images: int = 0
    finished: bool = False  # done or failed: out of the group
    phase_over: bool = False


def _on_device(index: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Index batches on ``device``: views into one tensor copied there at once."""
    if device.type == "cpu":
        return index
    return list(torch.cat(index).to(device).split([len(i) for i in index]))


class GroupTrainer:
    """Trains runs of one fused group (or one run) and writes each run's outputs to its folder.

    ``on_epoch(i, row)``: after each epoch of run i; ``on_finish(i, result, history)``: when run i is done
    or failed (at once, while the others go on); ``heartbeat()``: between epochs (a worker checks there
    that its driver is alive)."""

    def __init__(self, configs: list[RunConfig], out_dirs: list[str | Path], progress: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None,
                 on_finish: Callable[[int, dict, list], None] | None = None,
                 heartbeat: Callable[[], None] | None = None, cache: WorkerCache | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        """``clock``: the seconds the group's timings and its budget are measured in (a test hands its own)."""
        if not configs or len(configs) != len(out_dirs):
            raise AstroclassError("a training group needs one output folder per run config")
        self.clock = clock
        self.configs = [c.validate() for c in configs]
        keys = {fuse_key(c.to_dict()) for c in self.configs}
        if len(keys) > 1:
            raise AstroclassError("runs of one group must share dataset, model, setup, batch size and the other "
                                  f"options outside {sorted(PER_RUN_OPTIONS)}")
        self.out_dirs = [Path(d) for d in out_dirs]
        self.progress = progress
        self.on_epoch = on_epoch
        self.on_finish = on_finish
        self.heartbeat = heartbeat
        self.cache = cache or WorkerCache(ModelCache(1), DataCache(1))
        # where the group's time went (seconds, the group's totals so far); a run's result keeps them with its own
        # final evaluation's and outputs' (environment.seconds)
        self.seconds = {"setup": 0.0, "train": 0.0, "validation": 0.0, "regroup": 0.0}
        self.model_reused: bool | None = None
        self.scheduled, self.phase_steps = False, 0
        self.last_phase = False
        self.cosine_t0: float | None = None  # under a budget: when the cosine (after the warm-up) began
        self.reserve = 2.0  # under a budget: seconds kept for the final evaluation and the outputs
        self.planned_at: float | None = None  # when the epochs were last planned
        self.ema: list[torch.Tensor] | None = None
        self.ema_src: list[torch.Tensor] = []
        self.ema_steps = 0
        self.step_graph: dict[str, Any] = {"replayed_steps": 0, "eager_steps": 0, "not_captured": None}
        # compile: step-graph: the captured step with its running totals, kept from epoch to epoch while the runs
        # stepping and their optimisers stay (a new phase, a rebuilt group or a run leaving captures anew)
        self._graphed: tuple[tuple, StepGraph, torch.Tensor, torch.Tensor] | None = None

    # -- set-up ----------------------------------------------------------------------------
    def _build_runs(self, data: RunData) -> tuple[list[_Run], list[dict], AstroNet]:
        """Each run's initial weights, built as if it trained alone (its seed, then the model), and a plain
        model on the device (evaluation, and the pattern the fused model is made from)."""
        from astroclass.models import build_model

        runs, states, template = [], [], None
        for i, (cfg, out) in enumerate(zip(self.configs, self.out_dirs)):
            out.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(out / "config.yaml")
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
            gen = torch.Generator().manual_seed(cfg.seed)
            model = build_model(cfg.model, data.num_classes, in_chans=data.channels, input_size=data.size,
                                pooling=cfg.pooling, weights=cfg.resolved_weights(), init=cfg.resolved_init())
            states.append(model.state_dict())
            if template is None:
                template = fast_layout(model.to(self.device), self.fast)
            result = RunResult(status="failed", config=cfg.to_dict(), dataset_hash=data.content_hash,
                               environment=environment(self.device))
            result.environment["speed"] = {**self.fast, "amp": str(self.fast["amp"]).replace("torch.", "")
                                           if self.fast["amp"] else None, "fused": len(self.configs)}
            result.environment["init"] = cfg.resolved_init()
            if cfg.setup == "pretrained":
                from astroclass.models import resolve_unfreeze

                result.environment["finetune"] = {"unfreeze": resolve_unfreeze(cfg.model, cfg.unfreeze),
                                                  "frozen_bn": cfg.resolved_frozen_bn(),
                                                  "finetune_bn": cfg.finetune_bn}
            runs.append(_Run(i, cfg, out, result, gen, dropout_generator(cfg.seed, self.device), slot=i))
        assert template is not None
        return runs, states, template

    def _model(self, template: AstroNet, states: list[dict], data: RunData):
        c = self.configs[0]
        # no weights in the key: every tensor, the normalisation buffers included, comes from the runs' states
        key = (c.model, data.channels, data.num_classes, data.size, c.pooling,
               tuple(sorted((k, str(v)) for k, v in self.fast.items())), str(self.device), len(states))
        (model, forward, slots), new = self.cache.models.get(
            key, lambda: fuse(template, states, self.fast["grouped_kernels"]), self.fast["compile"])
        if not new:
            for r, state in enumerate(states):
                slots.load(r, state)
        if self.model_reused is None:  # the group's first model: kept from an earlier group, or built
            self.model_reused = not new
        return model, forward, slots

    # -- the group ---------------------------------------------------------------------------
    def run(self) -> list[RunResult]:
        from astroclass.models import set_trainable

        t_start = self.clock()
        c0 = self.configs[0]
        self.device = resolve_device(c0.device)
        self.fast = c0.speed(self.device)
        if self.device.type == "cpu":
            self.fast["keep_freed_memory"] = cpu_process_setup()
        if c0.compile == "auto":  # of the whole group: each run's steps must be graphs for the group's to be
            self.fast["compile"] = auto_compile(self.configs, self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t_start = t_start
        # the budget is each run's: a group of G fused runs has G times it (each run's share of the wall time is
        # what it would have had alone, so fusing never costs a run epochs)
        self.budget = parse_duration(c0.budget) * len(self.configs) if c0.budget else None
        self.epoch_limit: int | None = None  # the budget's epochs for the last phase, once sized
        self.first_epoch_seconds = 0.0
        data, dev = self.cache.data.get(c0, self.device)
        runs, states, self.evaluator = self._build_runs(data)
        self.model, self.forward, self.slots = self._model(self.evaluator, states, data)
        del states
        self.data = data
        k = data.num_classes
        y_train = data.tensors("train")[1]
        for r in runs:
            w = class_weight_tensor(r.cfg, y_train, k)
            r.weights = (w if w is not None else torch.ones(k)).to(self.device)
            r.result.storage = data.storage
            r.result.train_counts = {c: int(n) for c, n in zip(data.class_names, np.bincount(y_train.numpy(),
                                                                                             minlength=k))}
        self.seconds["setup"] = self.clock() - t_start
        phases: list[tuple[str, str | list[str], int | None, bool]]
        if c0.setup == "scratch":
            phases = [("train", "all", None, True)]
        else:
            from astroclass.models import unfreeze_parameters

            phases = [("head", [], c0.head_epochs, False)] if c0.head_epochs > 0 else []  # 0: no head phase
            phases.append(("finetune", unfreeze_parameters(c0.model, self.model.backbone, c0.unfreeze,
                                                           c0.finetune_bn), None, True))
        self.runs = runs
        try:
            for phase, trainable, fixed_epochs, early in phases:
                self.trainable = trainable
                set_trainable(self.model, trainable)
                self.slots.refresh()
                self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
                self.phase = phase
                for r in self._live():
                    r.phase_over = False
                    r.stopper = EarlyStopping(r.cfg.patience) if early else None
                self.scheduled, self.phase_steps = early, 0  # warm-up and schedule: the early-stopped phase
                self.cosine_t0 = None
                self._make_optimizers()
                self._ema_track()  # each phase's average starts from the weights it starts from
                self._phase(phase, fixed_epochs, dev, last=phase == phases[-1][0])
        finally:
            for p in self.model.parameters():  # a kept model holds no gradients between groups
                p.grad = None
        return [r.result for r in runs]

    def _make_optimizers(self) -> None:
        """Each live run's optimiser over its own parameter views. Runs with the same optimiser and
        hyperparameters share one optimiser object: its update is per tensor (each view keeps its own
        moments and step count), so this is each run's own optimiser, stepped for all of them at once."""
        fused = self.fast["fused_optimizer"]
        capturable = self.fast["compile"] == STEP_GRAPH and self.device.type == "cuda"
        groups: dict[tuple, list[_Run]] = {}
        for r in self._live():
            c = r.cfg
            key: tuple = ("finetune", c.finetune_optimizer, c.finetune_lr, c.finetune_momentum) \
                if self.phase == "finetune" else \
                (c.optimizer, c.lr)
            if self.scheduled:  # runs sharing an optimiser share its learning rate at every step
                key += (c.schedule, c.warmup_epochs, c.epochs)
            groups.setdefault(key, []).append(r)
        self.optimizers = []
        self._graphed = None  # its optimisers' steps are in the captured graph
        self.schedule_of: dict[int, RunConfig] = {}
        for key, members in groups.items():
            params = [p for r in members for p in self.slots.parameters(r.slot, self.names)]
            opt = finetune_optimizer(members[0].cfg, params, fused, capturable) if self.phase == "finetune" else \
                make_optimizer(key[0], params, key[1], fused, capturable)
            for pg in opt.param_groups:
                pg["initial_lr"] = pg["lr"]
            self.optimizers.append(opt)
            self.schedule_of[id(opt)] = members[0].cfg
            for r in members:
                r.opt = opt

    def _live(self) -> list[_Run]:
        return [r for r in self.runs if not r.finished]

    def _phase(self, phase: str, fixed_epochs: int | None, dev: dict, last: bool) -> None:
        (xt, yt), (xv, yv) = dev["train"], dev["val"]
        epoch = 0
        self.last_phase = last and fixed_epochs is None
        self.planned_at = self.clock()
        while True:
            active = [r for r in self._live() if not r.phase_over]
            if not active:
                return
            epoch += 1
            if self.heartbeat is not None:
                self.heartbeat()
            t0 = self.clock()
            stats = self._train_epoch(active, xt, yt, phase, epoch)
            self.seconds["train"] += self.clock() - t0
            with self._ema_weights():  # validated, kept as best and finished: the averaged weights
                self._after_epoch(active, stats, phase, epoch, t0, fixed_epochs, last, xv, yv)
            t_regroup = self.clock()
            self._compact()
            self.seconds["regroup"] += self.clock() - t_regroup

    def _after_epoch(self, active: list[_Run], stats: dict, phase: str, epoch: int, t0: float,
                     fixed_epochs: int | None, last: bool, xv: Images, yv: torch.Tensor) -> None:
        """Validate the epoch's weights; record, stop, fail or finish each run."""
        t_val = self.clock()
        val = self._val(active, xv, yv)
        val_seconds = self.clock() - t_val
        self.seconds["validation"] += val_seconds
        seconds = self.clock() - t0
        if self.budget is not None and last and fixed_epochs is None:
            self._size_to_budget(epoch, seconds, val_seconds, active)
        for r in active:
            tl, ta, seen = stats[r.index]
            r.train_images += seen
            if not math.isfinite(tl):
                self._record(r, phase, epoch, math.nan, math.nan, math.nan, math.nan, seconds)
                self._fail(r, f"loss became {tl} in {phase} epoch {epoch}")
                continue
            vl, va, monitored = val[r.index]
            self._record(r, phase, epoch, tl, ta, vl, va, seconds)
            if not math.isfinite(vl):
                self._fail(r, f"validation loss became {vl} in {phase} epoch {epoch}")
                continue
            stop = r.stopper is not None and r.stopper.step(monitored, epoch, functools.partial(self._state_of, r))
            limit = fixed_epochs if fixed_epochs is not None else self._epochs(r.cfg)
            if stop or epoch >= limit:
                r.phase_over = True
                if last:
                    self._finish(r, stopped=stop)

    def _time_fraction(self) -> float:
        """Under a budget: the share of the time from the cosine's start to the budget's end (less the final
        evaluation's reserve) gone now."""
        assert self.budget is not None
        now = self.clock()
        if self.cosine_t0 is None:
            self.cosine_t0 = now
        end = self.t_start + self.budget - self.reserve
        return (now - self.cosine_t0) / max(end - self.cosine_t0, 1e-6)

    def _epochs(self, cfg: RunConfig) -> int:
        """The last phase's epochs for a run: its ``epochs``, or fewer where the budget allows fewer."""
        return cfg.epochs if self.epoch_limit is None else min(cfg.epochs, self.epoch_limit)

    def _size_to_budget(self, epoch: int, epoch_seconds: float, val_seconds: float, active: list[_Run]) -> None:
        """Plan the last phase's epochs to the group's budget (each run's times the runs) after every epoch, from
        that epoch's time (training and validation): fewer when epochs got slower (other work on the machine),
        more when they got faster, so that the run ends within the budget, or past it by less than one epoch
        when the last epoch is slower than the one before. A cosine schedule follows the clock to the budget's
        end (:meth:`_time_fraction`), so it ends near 0 however the plan moved. Each epoch's cost is the time
        from one plan to the next (the loop's work between epochs included). What is left must also hold the
        final evaluation on val and test (about
        two validations, each 8 times one of these where only the final evaluation uses TTA) and writing the
        outputs. A budget the first epoch alone has spent is said at once."""
        assert self.budget is not None
        c0 = self.configs[0]
        self.reserve = 2 * val_seconds * (TTA_VIEWS if c0.tta and not c0.epoch_tta else 1) + 2.0
        now = self.clock()
        used = now - self.t_start
        # an epoch's whole cost: training, validation, and what the loop does between epochs
        cost = now - self.planned_at if self.planned_at is not None and epoch > 1 else epoch_seconds
        self.planned_at = now
        left = self.budget - used - self.reserve
        fit = epoch + max(0, math.floor(left / max(cost, 1e-6)))
        self.epoch_limit = fit
        if epoch == 1:
            self.first_epoch_seconds = round(epoch_seconds, 3)
        if epoch == 1 and fit <= epoch and self.progress:  # the last phase's first epoch: said once
            say(f"note: the budget ({c0.budget}) is spent after the first epoch of {self.phase} "
                f"({epoch_seconds:.0f} s, {used:.0f} s in all): the run ends after it; a smaller model, fewer images "
                f"or a longer budget fit it")
        for r in active:
            r.result.environment["budget"] = {"seconds": self.budget / len(self.configs),
                                              "group_runs": len(self.configs), "epochs": self._epochs(r.cfg),
                                              "first_epoch_seconds": self.first_epoch_seconds}

    def _train_epoch(self, active: list[_Run], x: Images, y: torch.Tensor, phase: str,
                     epoch: int) -> dict[int, tuple[float, float, int]]:
        from astroclass.models import train_mode

        model, slots, g = self.model, self.slots, self.slots.runs
        train_mode(model, self.configs[0].resolved_frozen_bn())
        by_slot: list[_Run | None] = [None] * g
        for r in active:
            by_slot[r.slot] = r
        orders = {r.slot: training_order(x, y, r.cfg.sampler, r.gen) for r in active}
        if isinstance(x, DiskImages):  # each run walks its own windows: keep each one's current and next
            x.cache_images = 2 * x.window * g
        filler = active[0].slot  # idle slots (runs that have left) compute on a live run's batch
        lam = torch.tensor([r.cfg.l2 if r else 0.0 for r in by_slot], device=self.device)
        gammas = [r.cfg.maxnorm if r else 0.0 for r in by_slot]
        gamma = torch.tensor(gammas, device=self.device) if any(gammas) else None  # once per epoch: no copy per step
        weights = torch.stack([r.weights if r else active[0].weights for r in by_slot])
        smoothing = torch.tensor([r.cfg.label_smoothing if r else 0.0 for r in by_slot], device=self.device) \
            if any(r.cfg.label_smoothing for r in active) else None
        clip = self.configs[0].keras_loss_clip()  # paper_exact: the group's runs share it
        live_idx = torch.tensor([r.slot for r in active], device=self.device)
        augment = [(r.gen, r.cfg.augment_shift) if r is not None and r.cfg.augment else None for r in by_slot]
        n = len(y)
        starts = batch_starts(n, self.configs[0].batch_size)
        graphed = self.fast["compile"] == STEP_GRAPH
        graph_key = (tuple(r.slot for r in active), self._not_capturable(active))
        kept = self._graphed if graphed and self._graphed is not None and self._graphed[0] == graph_key else None
        if kept is not None:
            total_loss, total_correct = kept[2:]  # the graph adds to these: zeroed, not replaced
            total_loss.zero_()
            total_correct.zero_()
        else:
            total_loss = torch.zeros(g, device=self.device)
            total_correct = torch.zeros(g, device=self.device, dtype=torch.long)
        seen = 0
        amp = self.fast["amp"]
        bar = Bar(self.progress, len(starts), f"{phase} epoch {epoch}" + (f" ({len(active)} runs)" if g > 1 else ""))
        index = [torch.cat([orders.get(i, orders[filler])[s:s + self.configs[0].batch_size] for i in range(g)])
                 for s in starts]
        # the epoch's batch indices go to the device holding the images (labels) once, not once per step (a copy
        # from pageable memory waits for the device)
        x_index = index if isinstance(x, DiskImages) else _on_device(index, x.device)
        y_index = _on_device(index, y.device)

        drop_grads = self.fast["compile"] in TORCH_CUDA_GRAPHS

        def step(xb: torch.Tensor, yb: torch.Tensor, masks: torch.Tensor, graphed: bool = False) -> None:
            """Forward, backward and every run's update for one batch (a CUDA graph can hold all of it)."""
            b = len(yb) // g
            with torch.autocast(self.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None,
                                cache_enabled=not graphed):  # a graph must cast the weights in every replay
                logits = self.forward(xb, masks)
            losses = run_losses(logits, yb, weights, smoothing, clip) + lam * model.l2_penalty()
            slots.zero_grads(set_to_none=drop_grads)
            losses.index_select(0, live_idx).sum().backward()
            slots.bind_grads(self.names)
            for opt in self.optimizers:  # runs that have left step too, harmlessly, until the group is rebuilt
                opt.step()
            if gamma is not None:
                model.apply_max_norm(gamma)
            if self.ema is not None:
                self._ema_update()
            total_loss.add_(losses.detach() * b)
            total_correct.add_((logits.detach().argmax(1) == yb).view(g, b).sum(1))

        run_step: Callable[..., None] = step
        if graphed:
            if kept is None:
                kept = self._graphed = (graph_key, StepGraph(step, self.device, graph_key[1]), total_loss,
                                        total_correct)
            run_step = kept[1]
        replays_before = run_step.replays if isinstance(run_step, StepGraph) else 0
        for idx, yidx, xs in zip(index, y_index, batches(x, x_index, pin=self.device.type == "cuda")):
            b = len(idx) // g
            xb = to_float(xs.to(self.device, non_blocking=True))
            if any(augment):
                xb = augment_runs(xb, augment)
            if self.fast["channels_last"]:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = upload(y[yidx], self.device)
            masks = dropout_masks([r.dgen if r else None for r in by_slot], b, self.device)
            if self.scheduled:
                for opt in self.optimizers:
                    cfg = self.schedule_of[id(opt)]
                    # under a budget that ends the run before its own epochs do, the cosine follows the clock
                    by_clock = self.budget is not None and self.last_phase and self.epoch_limit is not None \
                        and self.epoch_limit < cfg.epochs
                    f = lr_factor(cfg, self.phase_steps, len(starts), self._epochs(cfg),
                                  self._time_fraction if by_clock else None)
                    for pg in opt.param_groups:
                        pg["lr"] = pg["initial_lr"] * f
                self.phase_steps += 1
            run_step(xb, yb, masks)
            seen += b
            bar.advance()
        if isinstance(run_step, StepGraph):
            self.step_graph["replayed_steps"] += run_step.replays - replays_before
            self.step_graph["eager_steps"] += len(starts) - (run_step.replays - replays_before)
            if run_step.why:
                self.step_graph["not_captured"] = run_step.why
        bar.close()
        if isinstance(x, DiskImages):
            x.drop_cache()
        mean_loss = (total_loss / max(seen, 1)).tolist()
        correct = total_correct.tolist()
        return {r.index: (mean_loss[r.slot], correct[r.slot] / max(seen, 1), seen) for r in active}

    def _not_capturable(self, active: list[_Run]) -> str | None:
        """Why this epoch's training step cannot be one CUDA graph (None: it can); the step then runs eagerly."""
        if self.ema is not None:
            return "the weight average's decay changes every step"
        if self.scheduled and any(r.cfg.lr_changes_every_step() for r in active):
            return "the learning rate changes every step (warm-up or schedule)"
        return None

    def _val(self, active: list[_Run], x: Images, y: torch.Tensor) -> dict[int, tuple[float, float, float]]:
        g = self.slots.runs
        probs = predict_probs(self.model, x, self.device, self.configs[0].eval_batch_size, self.fast["channels_last"],
                              self.fast["amp"], tta=self.configs[0].epoch_tta, runs=g)
        if g == 1:
            probs = probs[None]
        penalty = self.model.l2_penalty().tolist()
        yt = y.cpu().numpy()
        return {r.index: val_scores(probs[r.slot], yt, r.cfg.l2 * penalty[r.slot] if r.cfg.l2 > 0 else 0.0,
                                    r.cfg.monitor, r.cfg.keras_loss_clip()) for r in active}

    # -- the moving average of the weights (ema) ------------------------------------------------
    def _ema_track(self) -> None:
        """Start averaging the current model's floating-point tensors (parameters and batch-norm statistics;
        of all runs at once: the average of a fused tensor is the runs' averages side by side)."""
        decay = self.configs[0].ema
        if decay <= 0:
            self.ema = None
            return
        self.ema_src = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        self.ema = [t.detach().clone() for t in self.ema_src]
        self.ema_steps = 0

    @torch.no_grad()
    def _ema_update(self) -> None:
        assert self.ema is not None
        self.ema_steps += 1
        decay = min(self.configs[0].ema, (1 + self.ema_steps) / (10 + self.ema_steps))
        torch._foreach_lerp_(self.ema, self.ema_src, 1.0 - decay)

    @contextlib.contextmanager
    def _ema_weights(self):
        """The averaged weights in the model while the block runs (the trained ones back afterwards)."""
        if self.ema is None:
            yield
            return
        with torch.no_grad():
            trained = [t.clone() for t in self.ema_src]
            torch._foreach_copy_(self.ema_src, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.ema_src, trained)

    def _state_of(self, r: _Run) -> dict[str, torch.Tensor]:
        """Run r's weights now (its slot read when called: groups are compacted between epochs)."""
        return self.slots.state(r.slot)

    def _record(self, r: _Run, phase: str, epoch: int, tl, ta, vl, va, seconds: float) -> None:
        assert r.opt is not None
        row = {"phase": phase, "epoch": epoch, "train_loss": tl, "train_accuracy": ta, "val_loss": vl,
               "val_accuracy": va, "lr": r.opt.param_groups[0]["lr"], "seconds": round(seconds, 3)}
        r.history.append(row)
        write_history(r.out_dir, r.history)
        if self.progress:
            who = f"{r.cfg.model}" if len(self.runs) == 1 else f"{r.cfg.model} #{r.index} {r.cfg.optimizer} " \
                                                                 f"l2={r.cfg.l2:g} mn={r.cfg.maxnorm:g} s{r.cfg.seed}"
            say(f"[{who} {phase} {epoch:3d}] loss {tl:.4f} acc {ta:.4f} | val loss {vl:.4f} acc {va:.4f} | "
                f"{seconds:.1f}s")
        if self.on_epoch:
            self.on_epoch(r.index, row)

    # -- leaving the group ---------------------------------------------------------------------
    def _leave(self, r: _Run) -> None:
        r.finished = r.phase_over = True
        r.opt, r.stopper = None, None  # free the optimiser state and best weights
        r.result.epochs_run = len(r.history)
        train_time = self.seconds["train"]
        r.result.train_seconds = round(train_time, 3)
        r.result.train_images_per_s = r.train_images / train_time if train_time > 0 else 0.0
        env = r.result.environment
        env["setup_seconds"] = round(self.seconds["setup"], 3)  # data, initial weights, model: before epoch 1
        env["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        env["worker_model_reused"] = self.model_reused  # a model kept by the worker (no build, no compile)
        if self.fast["compile"] == STEP_GRAPH:
            env["speed"]["step_graph"] = dict(self.step_graph)
        if self.device.type == "cuda":
            env["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device))

    def _fail(self, r: _Run, error: str) -> None:
        self._leave(r)
        r.result.error = error
        write_result(r.out_dir, r.result)
        if self.on_finish:
            self.on_finish(r.index, r.result.to_dict(), r.history)

    def _finish(self, r: _Run, stopped: bool) -> None:
        """Run r is done: its best weights into the plain model, evaluated, written, reported."""
        stopper = r.stopper
        self.evaluator.load_state_dict(stopper.best_state if stopper and stopper.best_state is not None
                                       else self.slots.state(r.slot))
        self._leave(r)
        r.result.best_epoch = stopper.best_epoch if stopper else len(r.history)
        r.result.stopped_early = stopped
        seconds = r.result.environment["seconds"]
        evaluate(self.evaluator, self.data, r.cfg, self.device, self.fast, r.result, r.out_dir, seconds)
        if "budget" in r.result.environment:  # how much of it the run used, its final evaluation included
            r.result.environment["budget"]["seconds_used"] = round(self.clock() - self.t_start, 3)
        r.result.status = "done"
        t0 = self.clock()
        save_checkpoint(self.evaluator, self.data, r.cfg, r.result, r.out_dir)
        seconds["checkpoint"] = round(self.clock() - t0, 3)
        write_result(r.out_dir, r.result)
        if self.on_finish:
            self.on_finish(r.index, r.result.to_dict(), r.history)

    def _compact(self) -> None:
        """When half the slots or more are idle, rebuild the group with the runs still training: their
        weights, buffers and optimiser states move over exactly."""
        from astroclass.models import set_trainable

        live = self._live()
        g = self.slots.runs
        if g == 1 or not live or len(live) > g // 2:
            return
        states = [self.slots.state(r.slot) for r in live]
        with self._ema_weights():
            averaged = [self.slots.state(r.slot) for r in live] if self.ema is not None else []
        moments = [(r.opt, self.slots.parameters(r.slot, self.names)) for r in live]
        for p in self.model.parameters():
            p.grad = None
        self.model, self.forward, self.slots = self._model(self.evaluator, states, self.data)
        if averaged:  # the live runs' averages, side by side in the new group's tensors
            steps = self.ema_steps
            for slot, state in enumerate(averaged):
                self.slots.load(slot, state)
            self._ema_track()
            self.ema_steps = steps
            for slot, state in enumerate(states):
                self.slots.load(slot, state)
        set_trainable(self.model, self.trainable)
        self.slots.refresh()
        for slot, r in enumerate(live):
            r.slot = slot
        self._make_optimizers()
        for r, (old_opt, old_params) in zip(live, moments):  # each view's optimiser state moves to its new view
            for old, new in zip(old_params, self.slots.parameters(r.slot, self.names)):
                if old_opt is not None and r.opt is not None and old in old_opt.state:
                    r.opt.state[new] = old_opt.state[old]


def fused_group_size(cfg: RunConfig, limit: int, auto: bool, cache: WorkerCache | None = None,
                     device_share: int = 1) -> int:
    """How many runs like ``cfg`` to fuse: ``limit`` (1 when the model has a layer fusion cannot batch),
    and with ``auto`` no more than fit in 60% of the device's free memory (of at most its total over the
    ``device_share`` workers that train on it at once). A run's footprint is estimated
    from its model: 6 copies of the parameters (weights, gradients, two optimiser moments, best and initial
    weights) plus twice the activations of one training batch (measured by a forward pass).

    ``auto`` on a CPU is 1: one run at batch 32 already keeps its core busy, and the per-run kernels leave only
    the steps between layers to share (benchmarks/bench_grid.py, 2-core CPU, a worker per core: a fused 24-run
    cell of a tiny model trained 1.04-1.08x as fast as its runs unfused, a paper backbone's fused grid took
    1.36x the time); fusion pays where one run leaves most of the device idle, on a GPU."""
    from astroclass.models import build_model
    from astroclass.training.fusion import fusable
    from astroclass.training.speed import available_memory

    device = resolve_device(cfg.device)
    if limit <= 1 or (auto and device.type != "cuda"):
        return 1
    key = ("size", cfg.model, cfg.dataset, cfg.batch_size, cfg.pooling, str(device))
    memo = cache.models.sizes if cache is not None else {}
    if key not in memo:
        from astroclass.data.prepared import PreparedDataset

        with PreparedDataset(cfg.dataset) as ds:
            channels, size, k = ds.channels, ds.image_shape[-1], len(ds.class_names)
        model = build_model(cfg.model, k, in_chans=channels, input_size=size, pooling=cfg.pooling)
        if not fusable(model):
            memo[key] = 0
        else:
            acts = [0]
            hooks = [m.register_forward_hook(lambda m, i, o: acts.__setitem__(0, acts[0] + (o.numel() * 4 if
                     isinstance(o, torch.Tensor) else 0))) for m in model.modules() if not list(m.children())]
            with torch.no_grad():
                model.train()(torch.zeros(cfg.batch_size, channels, size, size))
            for h in hooks:
                h.remove()
            params = sum(p.numel() * 4 for p in model.parameters())
            memo[key] = 6 * params + 2 * acts[0]
    per_run = memo[key]
    if per_run == 0:
        return 1
    if not auto:
        return limit
    return max(1, min(limit, int(0.6 * available_memory(device, device_share) // per_run)))


def train_group(configs: list[RunConfig], out_dirs: list[str | Path], progress: bool = True,
                on_finish: Callable[[int, dict, list], None] | None = None,
                heartbeat: Callable[[], None] | None = None, cache: WorkerCache | None = None) -> list[RunResult]:
    """Train runs of one grid cell fused as one batched model; each run's outputs go to its own folder, as
    if it had trained alone. Failed runs (e.g. NaN loss) come back with status "failed"."""
    return GroupTrainer(configs, out_dirs, progress, on_finish=on_finish, heartbeat=heartbeat, cache=cache).run()


def train(config: RunConfig, out_dir: str | Path, progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> RunResult:
    """Run one training run; outputs: config.yaml, history.csv, checkpoint.pt, predictions.npz, result.json.
    Raises :class:`TrainingFailed` (after writing result.json and the history) when the run fails. ``clock``:
    what its timings and budget are measured with."""
    out = Path(out_dir)
    if config.setup == "pretrained":
        from astroclass.models import resolve_unfreeze

        resolve_unfreeze(config.model, config.unfreeze)
    if out.exists() and not out.is_dir():
        raise AstroclassError(f"{out}: exists and is not a folder; a run writes a folder of outputs (choose "
                              f"another -o)")
    created = not out.exists()
    trainer = GroupTrainer([config], [out_dir], progress, on_epoch=(lambda i, row: on_epoch(row)) if on_epoch else None,
                           clock=clock)
    try:
        result = trainer.run()[0]
    except BaseException:  # a run that never got to a result (a bad model, weights or file, an interrupt)
        if created and not (out / "result.json").exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)  # leaves no folder that looks like a run
        raise
    if result.status != "done":
        raise TrainingFailed(result.error)
    return result
