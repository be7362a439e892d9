"""The Trainer: one fixed step sequence, whatever tricks are switched on.

    batch -> augment -> precision.autocast(forward) -> loss (distill) + penalty -> precision.backward  (x accumulate)
          -> precision.step(optimizer, clipping)     # unscale, clip, step, zero grads
          -> schedule.step_end(), teacher_forcing.step_end()
    each epoch: evaluate (+ decoding, for sequence decoders) -> schedule.eval_end -> early_stopping.eval_end -> checkpoint

Nothing in the per-step path waits on the device: each step's loss and gradient norm go into
the device-side meter (meter.py), read in one transfer at log intervals and epoch ends. Everything
needed to continue a run lives in `TrainState`, which a checkpoint saves and restores exactly.
The loop never asks which trick is on: it reads typed settings (parts.settings) and what each
strategy exposes (clipping.max_norm, precision.skips_inf_steps, metrics.lower_is_better_score).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F

from trainer.data.seq2seq import IGNORE_INDEX
from trainer.data.source import Batch, StreamSource, batch_source, tensor_batches
from trainer.data.text import bits_per_char
from trainer.engine import distributed, threads
from trainer.engine.checkpoint import CheckpointPolicy, NoCheckpoints
from trainer.engine.meter import StepMeter
from trainer.engine.parts import Parts
from trainer.engine.signals import StopSignals
from trainer.engine.snapshot import StateSnapshot
from trainer.observe.display import PlainDisplay
from trainer.observe.layer_stats import LayerWatch
from trainer.observe.loggers import Logger
from trainer.observe.metrics import lower_is_better_score
from trainer.tricks.clipping import total_norm
from trainer.tricks.sched import current_lr

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it can take bigger batches
DIVERGENCE_HISTORY = 5  # per-step losses and gradient norms kept as the evidence before a divergence
# Re-dividing the cores among the running train processes reads their registry (about 0.25 ms):
# at every epoch end a small model's 0.1 s epochs would notice it, and a second is soon enough.
REBALANCE_EVERY_S = 1.0


@dataclass
class Interval:
    """Per-step figures since the last log line, summed on the host."""

    loss_sum: float = 0.0
    steps: int = 0
    grad_sum: float = 0.0
    grad_max: float = 0.0
    clipped: int = 0
    skipped: int = 0
    started: float = 0.0  # training seconds at the interval's start


@dataclass
class TrainState:
    """Where training stands; enough, with the parts' own state_dicts, to continue exactly."""

    epoch: int = 1                # the epoch in progress (1-based)
    batch: int = 0                # the next batch of that epoch
    step: int = 0                 # optimizer steps taken
    samples_seen: int = 0
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    interval: Interval = field(default_factory=Interval)
    last_grad_norm: float | None = None
    skipped_steps: int = 0
    order_state: torch.Tensor | None = None  # the shuffling generator's state at the epoch's start (None: not started)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    train_s: float = 0.0          # training seconds before the current process
    status: str = "completed"     # completed | early_stopped | diverged | interrupted
    message: str | None = None
    signal: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The state for a checkpoint, `history` as JSON text: one object to pickle instead of
        about 25 an epoch, so a checkpoint's cost on the training thread does not grow with the run."""
        # A shallow dict: asdict would deep-copy order_state, a tensor no one mutates (the generator
        # hands out a new one), and the checkpoint serialises it on this thread at once anyway.
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "interval": asdict(self.interval), "history": json.dumps(self.history)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "TrainState":
        history = state["history"]  # a list in checkpoints written before it became JSON text
        return cls(**{**state, "interval": Interval(**state["interval"]),
                      "history": json.loads(history) if isinstance(history, str) else history})


# Param-group settings that choose the optimizer's implementation for this device, not the
# maths: a checkpoint from another device (fused on a GPU, foreach elsewhere) must not impose its own.
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def keep_implementation(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`saved` (an optimizer state_dict) with each param group's implementation settings as
    `optimizer` was constructed with (load_state_dict would otherwise take the saved ones, and
    places the `step` counters by them)."""
    groups = [{**group, **{key: built[key] for key in IMPLEMENTATION_KEYS if key in built}}
              for group, built in zip(saved["param_groups"], optimizer.param_groups)]
    return {**saved, "param_groups": groups}


def training_left(epoch: int, step: int, epochs: int, max_steps: int | None) -> bool:
    """Whether a run standing at `epoch` (the one in progress, 1-based) after `step` optimizer steps
    has anything left to train under `epochs` and `max_steps`."""
    return epoch <= epochs and not (max_steps and step >= max_steps)


class StopTraining(Exception):
    """Raised inside the loop to end it with the status already set on the state."""


Probe = Callable[["Trainer"], "dict[str, Any] | None"]


class Trainer:
    """Fits `parts` for `parts.settings.epochs` (or `max_steps`), reporting to the display and loggers.

    Args:
        parts: what build_parts made of the config, with the loop's typed settings.
        generator: the data order's own generator, independent of the model's RNG.
        checkpoints: when a checkpoint is due, and how one is saved and waited for.
        probes: called at each epoch end; a record each returns goes to the loggers.
        watch_layers: measure per-layer statistics on the last training step of the epochs they are
            due at (`layers_due`), into `layer_rows` (for observe.probes.layers_probe).
    """

    def __init__(
        self, parts: Parts, display: PlainDisplay, loggers: list[Logger], generator: torch.Generator,
        checkpoints: CheckpointPolicy | None = None, probes: list[Probe] | None = None,
        watch_layers: bool = False,
    ) -> None:
        self.parts, self.display, self.loggers, self.generator = parts, display, loggers, generator
        self.settings = settings = parts.settings
        self.model, self.net, self.optimizer, self.data = parts.model, parts.net, parts.optimizer, parts.data
        # Under torchrun: training goes through DistributedDataParallel, evaluation through the
        # plain net (each rank evaluates its shard; no DDP collective may run on one rank alone).
        self.ranks = parts.distributed
        self.ddp = self.ranks.data_parallel(self.model, parts.device)
        self.train_net = self.net if self.ddp is None else torch.compile(self.ddp) if settings.compile else self.ddp
        # Samples per step, all ranks together.
        self.step_batch = settings.batch_size * settings.accumulate * self.ranks.world_size
        self.stop_vote = distributed.StopVote(self.ranks)
        # Every batch comes through the source, from tensors in memory or streamed from disk alike.
        self.source = batch_source(self.data, self.ranks, settings.accumulate)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.checkpoints = checkpoints or NoCheckpoints()
        self.probes = probes or []
        self.state = TrainState()
        self.best_score: float | None = None  # the best metric's lower-is-better score (checkpoints keep it)
        self.meter = StepMeter()
        self.signals = StopSignals()
        self.last_good = StateSnapshot(self.model)
        # An evaluation's per-layer statistics come from the epoch's last training step: hooks on
        # its forward, its gradients before the update, so they cost no extra forward or backward.
        # A compiled net's submodules take no hooks without recompiling: layers_probe measures it apart.
        self.layer_watch = LayerWatch(self.model) if watch_layers and not settings.compile else None
        self.layer_rows: list[dict[str, Any]] | None = None
        # Whether this epoch's end takes per-layer statistics: every settings.layer_stats_every_epochs-th
        # epoch and the run's last; and before the first step (the fresh model's, which run.py records).
        self.layers_due = True
        self.started = 0.0
        self.rebalanced = time.monotonic()  # threads.resolve divided the cores as the run started

    # ---- the step -------------------------------------------------------------------------

    def train_step(self, index: torch.Tensor, measure_layers: bool = False) -> None:
        """One optimizer step over `accumulate` micro-batches: the training samples `index` names
        (the step's global batch, a slice of the epoch's order); with `measure_layers` (and a layer
        watch), the per-layer statistics of this step into `layer_rows`."""
        parts = self.parts
        accumulate = self.settings.accumulate
        losses = []
        micros = self.source.step(index)  # this rank's part of the global batch, on the device
        watch = self.layer_watch if measure_layers else None
        for number, (x, y) in enumerate(micros):
            last = number == len(micros) - 1
            # Under torchrun, gradients are averaged across ranks once per step: in the last backward.
            with self.ranks.no_sync(self.ddp, last=last):
                with parts.precision.autocast():
                    inputs = parts.augment(x)
                    with watch if watch is not None and last else nullcontext():
                        outputs = self.train_net(inputs)
                    # The objective to minimise, and the hard-label loss reported as train_loss
                    # (the same tensor unless distill=soft mixes in the teacher's soft targets).
                    objective, loss = parts.loss(outputs, y, inputs)
                objective = parts.penalty(objective)
                # Each micro-batch's mean loss counts 1/accumulate of the step's (no extra op without it).
                parts.precision.backward(objective / accumulate if accumulate > 1 else objective)
            losses.append(loss.detach())
        rows = watch.rows(self._true_gradients()) if watch is not None else None
        grad_norm, skipped = parts.precision.step(self.optimizer, parts.clipping, self.params,
                                                  self.settings.skip_nonfinite)
        if watch is not None:
            # Non-finite gradients (a step nan_policy=skip or fp16's scaler skips) measured nan or
            # inf, not the net: layers_probe then measures apart. One host sync, once an epoch.
            self.layer_rows = rows if bool(torch.isfinite(total_norm(grad_norm))) else None
        parts.schedule.step_end()
        parts.teacher_forcing.step_end()
        self.meter.record(losses[0] if len(losses) == 1 else torch.stack(losses).mean(), grad_norm)
        self.state.interval.skipped += skipped

    def _true_gradients(self) -> dict[int, torch.Tensor | None]:
        """Each parameter's gradient as the optimizer will apply it, before clipping: under fp16
        unscaled (a host sync for the scale: once an epoch)."""
        scale = self.parts.precision.loss_scale
        return {id(p): (p.grad / scale if scale else p.grad) if p.grad is not None else None for p in self.params}

    # ---- the loop -------------------------------------------------------------------------

    def fit(self) -> TrainState:
        """Train from `self.state` (fresh, or restored by `load_state_dict`) to the end."""
        self.started = time.perf_counter() - self.state.train_s
        try:
            with self.signals:
                self._epochs()
            self.stop_vote.settle()  # the last step's vote: every rank waits for it, so none is left in flight
        except StopTraining:
            self.stop_vote.settle()
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside our handler: stop now
            self.state.status, self.state.message = "interrupted", f"interrupted at step {self.state.step}"
        finally:
            self.checkpoints.wait()
            self.state.train_s = self.elapsed
        return self.state

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _epochs(self) -> None:
        state, settings, n = self.state, self.settings, self.data.num_train
        per_epoch, step_batch = self.parts.steps_per_epoch, self.step_batch
        self.model.train()
        if self.parts.early_stopping.stopped:  # resumed from the checkpoint of the epoch that stopped the run: it has ended
            self._stop_early(state.epoch - 1)
        # A run resumed with max_steps at or below its checkpoint's step has nothing left to train.
        while training_left(state.epoch, state.step, settings.epochs, settings.max_steps):
            if state.order_state is None:
                state.order_state = self.generator.get_state()
            self.generator.set_state(state.order_state)
            order = self.source.start_epoch(torch.randperm(n, generator=self.generator), state.batch, step_batch, per_epoch)
            while state.batch < per_epoch:
                last_of_epoch = state.batch == per_epoch - 1 or bool(settings.max_steps) and state.step + 1 >= settings.max_steps
                if last_of_epoch:
                    self.layers_due = self._layers_due_after(state.epoch, state.step + 1)
                self.train_step(order[state.batch * step_batch : (state.batch + 1) * step_batch],
                                last_of_epoch and self.layers_due)
                state.batch += 1
                state.step += 1
                state.samples_seen += min(step_batch, n)
                if state.step % settings.log_every == 0:
                    self._log_interval()
                if self._stop_requested():
                    self._interrupt()
                if settings.max_steps and state.step >= settings.max_steps:
                    break
                if self.checkpoints.due_at_step(state.step):
                    self.checkpoints.save(self, False)
            self._end_epoch()
            if settings.max_steps and state.step >= settings.max_steps:
                return

    def _layers_due_after(self, epoch: int, step: int) -> bool:
        """Whether the end of `epoch`, `step` optimizer steps in, takes per-layer statistics: at every
        settings.layer_stats_every_epochs-th epoch, and at the run's end (so the diagnosis reads the
        trained model's). A function of the epoch alone: a resumed run takes them where it would have."""
        settings = self.settings
        return epoch % settings.layer_stats_every_epochs == 0 or not training_left(epoch + 1, step, settings.epochs,
                                                                                     settings.max_steps)

    def _end_epoch(self) -> None:
        state = self.state
        self._flush()
        self._rebalance_threads()
        metrics = self.evaluate()
        row = {"kind": "epoch", "epoch": state.epoch, "step": state.step,
               "train_loss": state.epoch_loss_sum / max(state.epoch_steps, 1), **metrics,
               "lr": self.lr, "grad_norm": state.last_grad_norm, "elapsed": self.elapsed}
        state.history.append(row)
        self._emit(row)
        for probe in self.probes:
            record = probe(self)
            if record is not None:
                self._emit(record)
        self.display.epoch_end(row)
        if not math.isfinite(row["train_loss"]) or not math.isfinite(metrics["val_loss"]):
            self._stop("diverged", state.message or f"the loss became non-finite in epoch {state.epoch}")
        self.parts.schedule.eval_end(metrics["val_loss"])
        stop = self.parts.early_stopping.eval_end(metrics, self.model)
        best = self._is_best(metrics)
        finished_epoch = state.epoch
        # The run's last epoch is always checkpointed: the tasks (export, tsne, sample) and a later
        # resume read the latest checkpoint, which must be the model the summary reports.
        last = not training_left(finished_epoch + 1, state.step, self.settings.epochs, self.settings.max_steps)
        # The generator now stands where this epoch's shuffle left it: the next epoch's order
        # starts there, and a checkpoint taken now must carry it (not a fresh seed's state).
        state.epoch, state.batch, state.order_state = state.epoch + 1, 0, self.generator.get_state()
        state.epoch_loss_sum, state.epoch_steps = 0.0, 0
        if self.checkpoints.due_at_epoch(finished_epoch) or stop or best or last:
            self.checkpoints.save(self, best)
        if stop:
            self._stop_early(finished_epoch)

    def _rebalance_threads(self) -> None:
        """Another train process may have started or ended: at most every REBALANCE_EVERY_S, take
        this process's share of the cores now (threads.rebalance)."""
        now = time.monotonic()
        if now - self.rebalanced >= REBALANCE_EVERY_S:
            threads.rebalance(self.parts.cfg.trainer.threads)
            self.rebalanced = now

    def _stop_early(self, finished_epoch: int) -> None:
        monitor = self.parts.early_stopping.monitor
        self._stop("early_stopped", f"{monitor} stopped improving; stopped after epoch {finished_epoch}")

    def _is_best(self, metrics: dict[str, float | None]) -> bool:
        """Whether this evaluation is the best so far by settings.best_metric (best.pt's)."""
        metric = self.settings.best_metric
        value = metrics[metric]
        if value is None:
            return False
        score = lower_is_better_score(metric, value)
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            return True
        return False

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived; under torchrun, on any rank, and all ranks stop after the same step."""
        agreed = self.stop_vote(self.signals.received)
        if agreed is not None:
            self.signals.received = agreed
        return agreed is not None

    def _interrupt(self) -> None:
        """A signal arrived: the step is done; checkpoint and stop."""
        self._flush()
        self.state.signal = self.signals.received
        self.checkpoints.save(self, False)
        self._stop("interrupted", f"stopped by {self.signals.name} at step {self.state.step}")

    def _stop(self, status: str, message: str) -> None:
        self.state.status, self.state.message = status, message
        raise StopTraining

    # ---- reading the device buffers -------------------------------------------------------

    def _flush(self) -> None:
        """Read the pending per-step losses and grad norms (one host sync) into the host sums."""
        if not self.meter.pending:
            return
        state, interval = self.state, self.state.interval
        first_step = state.step - self.meter.pending + 1
        losses, norms = self.meter.read(losses_across_ranks=self.ranks.mean)  # the global batch's loss
        self._check_finite(losses, norms, first_step)
        # Non-finite entries are steps whose update was skipped (nan_policy=skip, or the fp16
        # scaler calibrating): they are counted there and kept out of the means.
        finite_losses = [loss for loss in losses if math.isfinite(loss)]
        finite_norms = [norm for norm in norms if math.isfinite(norm)]
        interval.loss_sum += sum(finite_losses)
        interval.steps += len(finite_losses)
        interval.grad_sum += sum(finite_norms)
        interval.grad_max = max(interval.grad_max, *finite_norms, 0.0)
        max_norm = self.parts.clipping.max_norm
        if max_norm is not None:
            interval.clipped += sum(norm > max_norm for norm in finite_norms)
        state.epoch_loss_sum += sum(finite_losses)
        state.epoch_steps += len(finite_losses)
        state.last_grad_norm = finite_norms[-1] if finite_norms else None
        if not self.settings.skip_nonfinite:  # weights known to be finite, to end a diverged run with (nan_policy=stop)
            self.last_good.take()

    def _check_finite(self, losses: list[float], norms: list[float], first_step: int) -> None:
        """Under nan_policy=stop, end the run at the first non-finite loss, or gradient norm
        (except under fp16, where the scaler skips inf steps while it finds its scale)."""
        if self.settings.skip_nonfinite:
            return  # precision.step skipped those updates and counted them
        skips_inf = self.parts.precision.skips_inf_steps
        for offset, (loss, norm) in enumerate(zip(losses, norms)):
            bad_norm = not math.isfinite(norm) and not skips_inf
            if math.isfinite(loss) and not bad_norm:
                continue
            step = first_step + offset
            before = [f"{n:.3g}" for n in norms[max(offset - 3, 0) : offset]]
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
            message = f"non-finite {what} at step {step}" + (f" after gradient norms {', '.join(before)}" if before else "")
            self._emit_divergence(step, losses[:offset], norms[:offset])
            if self.last_good.taken:
                self.last_good.restore()
                message += "; the weights are the last finite ones"
            self._stop("diverged", message)

    def _emit_divergence(self, step: int, losses_before: list[float], norms_before: list[float]) -> None:
        """The evidence of a divergence for the diagnosis, which may come before any step or epoch
        line: where it happened, the LR, and the last finite losses and gradient norms before it."""
        interval = self.state.interval
        self._emit({
            "kind": "diverged", "epoch": self.state.epoch, "step": step, "lr": self.lr,
            "losses_before": losses_before[-DIVERGENCE_HISTORY:], "grad_norms_before": norms_before[-DIVERGENCE_HISTORY:],
            # The mean of the unlogged steps before those: the loss the run had reached.
            "interval_loss": interval.loss_sum / interval.steps if interval.steps else None,
        })

    def _log_interval(self) -> None:
        self._flush()
        state, interval = self.state, self.state.interval
        now = self.elapsed
        record = {
            "kind": "step", "epoch": state.epoch, "step": state.step,
            "train_loss": interval.loss_sum / max(interval.steps, 1), "lr": self.lr,
            "grad_norm": interval.grad_sum / max(interval.steps, 1), "grad_norm_max": interval.grad_max,
            "clipped_fraction": (interval.clipped / max(interval.steps, 1)
                                 if self.parts.clipping.max_norm is not None else None),
            "loss_scale": self.parts.precision.loss_scale, "skipped_steps": interval.skipped,
            "samples_per_s": interval.steps * self.step_batch / max(now - interval.started, 1e-9),
            "elapsed": now,
        }
        state.skipped_steps += interval.skipped
        state.interval = Interval(started=now)
        self._emit(record)
        self.display.progress(state.step, state.epoch, record["train_loss"], record["lr"], record["samples_per_s"])

    def _emit(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    @property
    def lr(self) -> float:
        return current_lr(self.optimizer)

    # ---- evaluation -----------------------------------------------------------------------

    def evaluate(self) -> dict[str, float | None]:
        """Mean validation loss (unsmoothed, unpenalised) and accuracy, in eval mode; for a character
        LM (data=text) also the loss in bits per character; for a sequence decoder (model=seq2seq)
        also its decoded token and sequence accuracy (val_token_acc, val_seq_acc)."""
        loss, acc = self.measure_split("val")
        metrics: dict[str, float | None] = {"val_loss": loss, "val_acc": acc}
        if self.data.char_lm:
            metrics["val_bpc"] = bits_per_char(loss)
        decoded = self.decoded(self.data.x_val, self.data.y_val) if self.parts.decoding is not None else {}
        return {**metrics, **{f"val_{name}": value for name, value in decoded.items()}}

    def measure_split(self, split: str) -> tuple[float, float | None]:
        """`measure` on split `split` ("val", "test") of the data: its tensors, or its batches read from disk."""
        if isinstance(self.source, StreamSource):
            return self.measure_batches(self.source.eval_batches(split, EVAL_BATCH_SIZE))
        return self.measure(getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}"))

    def measure(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float | None]:
        """Mean loss and accuracy (None for regression) of the model on (inputs, targets), in eval mode.

        Sequence targets (N, T) count per position (per character, per token), IGNORE_INDEX positions
        (a target sequence's padding) excluded: for a decoder, the loss and the accuracy of the next
        token given the true ones before it (teacher-forced). Under torchrun each rank measures its
        shard and the sums are added up."""
        return self.measure_batches(tensor_batches(inputs, targets, self.ranks, EVAL_BATCH_SIZE))

    @torch.no_grad()
    def measure_batches(self, batches: Iterator[Batch]) -> tuple[float, float | None]:
        """`measure` over this rank's shard, in batches; the sums are added up across ranks."""
        self.model.eval()
        self.ranks.share_buffers(self.model)  # every rank measures the model rank 0 checkpoints
        classification = self.data.task == "classification"
        sums = torch.zeros(3, device=self.parts.device)  # loss, correct, counted: this rank's shard
        for x, y in batches:
            with self.parts.precision.autocast():
                out = self.net(x).float()
            if classification:
                sums[0] += F.cross_entropy(out, y, reduction="sum")
                real = y != IGNORE_INDEX
                sums[1] += ((out.argmax(dim=1) == y) & real).sum()
                sums[2] += real.sum()
            else:
                sums[0] += F.mse_loss(out, y, reduction="sum") / y.shape[1]
                sums[2] += len(y)
        self.model.train()
        loss_sum, correct, counted = self.ranks.sum(sums).tolist()
        return loss_sum / counted, correct / counted if classification else None

    @torch.no_grad()
    def decoded(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """`token_acc` and `seq_acc` of the model's own outputs (parts.decoding: greedy or beam
        search); nothing for a model that does not decode."""
        if self.parts.decoding is None:
            return {}
        self.model.eval()
        with self.parts.precision.autocast():
            accuracy = self.parts.decoding.accuracy(self.model, inputs, targets, EVAL_BATCH_SIZE)
        self.model.train()
        return accuracy

    # ---- checkpoint state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        self.state.train_s = self.elapsed
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.parts.schedule.state_dict(),
            "scaler": self.parts.precision.state_dict(),
            "early_stopping": self.parts.early_stopping.state_dict(),
            "distill": self.parts.loss.state_dict(),  # the teacher's path and hash, never its weights
            "teacher_forcing": self.parts.teacher_forcing.state_dict(),
            "train_state": {**self.state.to_dict(), "best_score": self.best_score},
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(keep_implementation(payload["optimizer"], self.optimizer))
        self.parts.schedule.load_state_dict(payload["schedule"])
        self.parts.precision.load_state_dict(payload["scaler"])
        self.parts.early_stopping.load_state_dict(payload["early_stopping"])
        self.parts.loss.load_state_dict(payload.get("distill", {}))  # older checkpoints: no teacher
        if "teacher_forcing" in payload:  # checkpoints from before scheduled sampling have none (and no decoder)
            self.parts.teacher_forcing.load_state_dict(payload["teacher_forcing"])
        train_state = dict(payload["train_state"])
        self.best_score = train_state.pop("best_score")
        self.state = TrainState.from_dict(train_state)
        self.state.status, self.state.message, self.state.signal = "completed", None, None
