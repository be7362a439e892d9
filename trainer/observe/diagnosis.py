"""Why a run went wrong, from its records, and what to try first.

`diagnose` reads what the run logged (metrics.jsonl's start, step, epoch, layers and diverged
lines) and, where given, its config, and returns findings: inputs not standardised, an init
whose fresh model starts far above chance, labels that do not match the inputs, batch norm on
tiny batches, divergence, a loss spike (LR too high, or warmup missing), oscillation, clipping on
nearly every step, vanishing gradients, a stall, dead ReLU units, a model too small to fit,
underfitting, overfitting. Each finding has its evidence (the run's numbers that triggered it)
and suggestions ordered by what most often fixes it, each a complete override to paste;
`with_commands` turns them into `train ...` commands: the run's own overrides plus the fix.
Every threshold is a named constant with the reason for its value; they are deliberately
conservative: a healthy run should get no findings (scripts/diagnose_bench.py measures both).
"""
from __future__ import annotations

import math
import shlex
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trainer.observe.history import read_metrics
from trainer.observe.records import json_safe

# Fewer loss readings than this show no trend (and a 3-step smoke run gets no findings).
MIN_POINTS = 3
# Divergence: the training loss at the end (median of the last third of readings) is above twice
# the first. Training lowers the loss; ending at double the starting loss means the updates made the model worse, not just noisier.
DIVERGE_RATIO = 2.0
# Oscillation: consecutive logged losses differ by 50% or more. Each reading already averages
# log_every steps, which removes most minibatch noise, so swings this big are the optimizer
# overshooting (LR too high) ...
OSCILLATION_JUMP = 1.5
# ... by at least a quarter of the first loss: once the loss is near 0, single-batch readings
# (log_every=1) differ by large factors that are only noise ...
OSCILLATION_MIN_SIZE = 0.25
# ... and they reverse direction (up-down-up) at least twice, in at least a quarter of the
# transitions: a single spike is an outlier batch, repeated reversals are a pattern.
OSCILLATION_MIN_REVERSALS = 2
OSCILLATION_REVERSAL_SHARE = 0.25
# Stall: the mean loss over the last third of the readings is within 2% (up or down) of the first third's.
# Healthy runs drop the loss by tens of percent over a run; 2% is within batch-to-batch noise.
STALL_REL_CHANGE = 0.02
# ... over at least 20 optimizer steps: a smoke run's first few steps (warmup alone can span them)
# say nothing about whether the LR is too low.
STALL_MIN_STEPS = 20
# A flat loss that had already fallen to half of its first reading is a converged run, not a stall.
STALL_CONVERGED_RATIO = 0.5
# Median global gradient norm below this: updates move the weights by ~lr * 1e-4 (SGD), too little
# to learn in any number of steps: the vanishing-gradient problem (Hochreiter 1991; Glorot & Bengio 2010).
VANISHING_GRAD_NORM = 1e-4
# Underfitting: after >= MIN_POINTS epochs the training loss is still above half its first reading
# (the model has not even halved its loss on data it sees every epoch) ...
UNDERFIT_LOSS_RATIO = 0.5
# ... and the validation accuracy, where there is one, is below 90% (above it, the loss simply
# started low: nothing to fix).
UNDERFIT_MAX_ACC = 0.9
# Overfitting: the validation loss has stayed above its minimum for at least 3 evaluations (fewer
# is within noise; early stopping's usual patience is about this) ...
OVERFIT_EVALS = 3
# ... ends at least 5% above that minimum, while the training loss kept falling below its value there ...
OVERFIT_MIN_RISE = 0.05
# ... and the rise is at least 1% of the fresh model's loss (the loss's scale): a run that converged
# to ~0 loss can double its validation loss (1.1e-5 -> 2.6e-5) with every prediction unchanged.
OVERFIT_MIN_SCALE_RISE = 0.01
# Dead units: more than half of a ReLU layer's units output 0 for a whole batch; they get no
# gradient and cannot recover (Lu et al. 2020, "Dying ReLU and initialization").
DEAD_FRACTION = 0.5
# Clipping: more than 90% of steps clipped means max_norm is below the typical gradient norm, so
# clipping rescales every update (an unplanned LR cut) rather than catching rare spikes (Pascanu et al. 2013).
CLIPPED_FRACTION = 0.9


# Inputs: a mean beyond +-5 or a std outside [0.01, 20] (over all training inputs). Default inits
# assume inputs of order one (LeCun et al. 1998, "Efficient BackProp": standardise each input);
# far outside this the first layer saturates or its outputs are huge, and every LR is wrong for it.
INPUT_MEAN_LIMIT = 5.0
INPUT_STD_RANGE = (0.01, 20.0)
# Init: a fresh classifier should predict close to uniformly, at about the chance loss; starting
# above 3x it means the logits are already huge: the weights' scale ignores fan-in (Glorot & Bengio
# 2010; He et al. 2015). (Correct inits start within ~10% of chance.)
INIT_LOSS_RATIO = 3.0
# Labels: the best validation accuracy stays under 1.5x chance (under 37.5% with 4 classes, 15%
# with 10) while the training loss falls below 80% of the chance loss: the model fits the training
# labels but learns nothing that holds on validation: the labels do not follow from the inputs.
LABELS_ACC_OVER_CHANCE = 1.5
LABELS_TRAIN_FIT = 0.8
# Batch norm: under 8 samples per batch its statistics are too noisy to normalise with, and the
# running averages used at evaluation disagree with them (Wu & He 2018, "Group Normalization").
BATCHNORM_MIN_BATCH = 8
# LR too high: a training-loss reading above 1.5x the fresh model's loss. Each reading averages
# log_every steps, and training lowers the loss, so a mean this far above the start is the updates
# overshooting. In the first quarter of a run without warmup it is the missing warmup (Goyal et
# al. 2017; Adam's variance estimate is unreliable in the first steps, Liu et al. 2020).
WARMUP_EARLY_FRACTION = 0.25
WARMUP_SPIKE_RATIO = 1.5
SCHEDULES_WITHOUT_WARMUP = ("constant", "step", "cosine", "cosine_restarts", "exponential", "plateau")
# Vanishing gradients at the start: the first weight layer's gradient norm under 1/100 of the last
# one's in the fresh model: the signal back to the first layers is shrunk by every layer on the way.
VANISHING_LAYER_RATIO = 1e-2
# Too small: the loss is no longer falling (the last third of the run made under 10% of the whole
# drop; a steady decline makes about a third of it there), yet it is still above 30% of the chance
# loss: more steps will not help, more capacity may.
PLATEAU_SHARE = 0.1
TOO_SMALL_LOSS_RATIO = 0.3
# LRs known to be stable for each optimizer family on standardised inputs with a sane init
# (SGD ~0.1, Adam-type ~1e-3: Bengio 2012, Kingma & Ba 2015): a stall under 1/30 of them means the
# LR is too low ...
STABLE_LR = {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
LOW_LR_FACTOR = 30
# ... and the range of LRs that still train, up to 10x the stable one (Adam at 1e-2, SGD at 1).
STABLE_LR_SPAN = 10
# How much wider a model too small to fit is made: 4x the units is a clear step, not noise.
WIDEN_FACTOR = 4


@dataclass
class Finding:
    """Args:
        kind: inputs | init | labels | batchnorm_batch | divergence | warmup | lr_too_high | oscillation | clipping |
            vanishing_gradients | stall | dead_units | too_small | underfitting | overfitting.
        message: one sentence: what happened, with the run's numbers.
        evidence: the numbers behind it (JSON-ready).
        suggestions: overrides to try, the likeliest fix first; each complete and pasteable as it is
            (several overrides in one suggestion are separated by spaces).
        commands: `train ...` per suggestion: the run's overrides with the suggestion applied.
    """

    kind: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestions: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def suggestion(self) -> str:
        """The first thing to try."""
        return self.suggestions[0] if self.suggestions else ""


@dataclass
class Facts:
    """What the diagnosis reads besides the curves: the start line (data statistics and the fresh
    model's loss), the diverged line, the run's status and its config (a plain dict, or empty)."""

    status: str = "completed"
    start: dict[str, Any] = field(default_factory=dict)
    diverged: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def setting(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


Records = list[dict[str, Any]]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _values(records: Records, key: str) -> list[float]:
    return [float(r[key]) for r in records if _finite(r.get(key))]


def _readings(epochs: Records, steps: Records) -> list[float]:
    """The finite training losses in step order: the per-interval step lines when there are enough,
    else the epoch means."""
    from_steps = _values(steps, "train_loss")
    return from_steps if len(from_steps) >= MIN_POINTS else _values(epochs, "train_loss")


def _first_loss(epochs: Records, steps: Records, facts: Facts | None = None) -> float | None:
    """The fresh model's loss (the start line), else the earliest finite training-loss reading."""
    if facts is not None and _finite(facts.start.get("initial_loss")):
        return float(facts.start["initial_loss"])
    rows = [r for r in (*steps, *epochs) if _finite(r.get("train_loss")) and _finite(r.get("step"))]
    return float(min(rows, key=lambda r: r["step"])["train_loss"]) if rows else None


def _peak_lr(epochs: Records, steps: Records, facts: Facts | None = None) -> float | None:
    """The highest LR the run logged (the diverged line's too); else the configured one, for a run
    that stopped before its first log line."""
    lrs = _values(steps, "lr") + _values(epochs, "lr")
    if facts is not None and _finite(facts.diverged.get("lr")):
        lrs.append(float(facts.diverged["lr"]))
    if not lrs and facts is not None and _finite(facts.setting("optim.lr")):
        lrs.append(float(facts.setting("optim.lr")))
    return max(lrs) if lrs else None


def _lr(value: float) -> str:
    """An LR as the user would type it: 0.003, 1e-7, 3."""
    return f"{value:.2g}".replace("e-0", "e-").replace("e+0", "e")


def _stable_lr(facts: Facts) -> float | None:
    return STABLE_LR.get(str(facts.setting("optim.name")))


def _lower_lr(peak: float, facts: Facts, factor: float = 10) -> str:
    """`optim.lr=...`: the peak LR / factor; when that is still over 10x the optimizer's known-stable
    LR (the peak was wildly off), the stable LR itself."""
    stable = _stable_lr(facts)
    target = peak / factor
    if stable and target > STABLE_LR_SPAN * stable:
        target = stable
    return f"optim.lr={_lr(target)}"


def _no_warmup(facts: Facts) -> bool:
    name = facts.setting("sched.name")
    if name is None:
        return False  # no config: nothing known about the schedule
    return name in SCHEDULES_WITHOUT_WARMUP or facts.setting("sched.warmup_steps") == 0 or (
        facts.setting("sched.warmup_steps") is None and facts.setting("sched.warmup_fraction") == 0)


def _lr_fixes(lower: str, facts: Facts) -> list[str]:
    """After an LR that is too high: lower it; add warmup and clipping where missing; measure it."""
    fixes = [lower]
    if _no_warmup(facts):
        fixes.append("sched=cosine_warmup")
    if facts.setting("clipping.name", "none") == "none":
        fixes.append("clipping=norm")
    return fixes + ["task=lr_find"]


# ---- checked before training: the data and the fresh model ----------------------------------------

def _inputs(facts: Facts) -> Finding | None:
    mean, std = facts.start.get("input_mean"), facts.start.get("input_std")
    if not _finite(mean) or not _finite(std):
        return None
    low, high = INPUT_STD_RANGE
    if abs(mean) <= INPUT_MEAN_LIMIT and low <= std <= high:
        return None
    return Finding(
        "inputs", f"the training inputs are not standardised: mean {mean:.3g}, std {std:.3g} (a net's default init "
        f"expects mean ~0, std ~1)", {"input_mean": mean, "input_std": std, "mean_limit": INPUT_MEAN_LIMIT,
                                     "std_range": list(INPUT_STD_RANGE)},
        ["data.standardise=true"])


def _init_fix(facts: Facts) -> str:
    """He for the ReLU family (and GELU, ReLU-like), Xavier for the saturating tanh and sigmoid."""
    return "init=xavier" if facts.setting("model.activation") in ("tanh", "sigmoid") else "init=he"


def _init(facts: Facts, layers: Records | None) -> Finding | None:
    initial, chance = facts.start.get("initial_loss"), facts.start.get("chance_loss")
    if facts.start.get("task") != "classification" or not _finite(chance) or chance <= 0:
        return None
    exploded = initial is None or not _finite(initial)  # inf or nan at step 0: the logits overflowed
    if not exploded and initial <= INIT_LOSS_RATIO * chance:
        return None
    evidence: dict[str, Any] = {"initial_loss": initial, "chance_loss": chance, "init": facts.setting("init.name")}
    stds = [row["act_std"] for row in _start_layers(layers) if row.get("kind") in ("Linear", "Conv1d", "Conv2d")
            and _finite(row.get("act_std"))]
    if len(stds) >= 2:
        evidence.update(first_layer_act_std=stds[0], last_layer_act_std=stds[-1])
    growth = f"; activation std {stds[0]:.3g} in the first layer, {stds[-1]:.3g} in the last" if len(stds) >= 2 else ""
    loss = "non-finite" if exploded else f"{initial:.3g}, {initial / chance:.0f}x"
    return Finding(
        "init", f"the fresh model's loss is {loss} the chance loss {chance:.3g}{growth}: the initial weights are "
        "too large for their fan-in", evidence, [_init_fix(facts), "norm=batchnorm"])


def _start_layers(layers: Records | None) -> Records:
    """The layer dicts of the evaluation before the first step (step 0), if it was logged."""
    for record in layers or []:
        if record.get("step") == 0 and "layers" in record:
            return list(record.get("layers") or [])
    return []


# ---- from the curves ------------------------------------------------------------------------------

def _divergence(epochs: Records, steps: Records, facts: Facts) -> Finding | None:
    # metrics.jsonl writes a non-finite loss as null; records still in memory hold nan or inf.
    bad = [r for r in (*steps, *epochs) for key in ("train_loss", "val_loss") if key in r and not _finite(r[key])]
    readings = _readings(epochs, steps)
    first = _first_loss(epochs, steps, facts)
    peak = _peak_lr(epochs, steps, facts)
    before = [v for v in facts.diverged.get("losses_before") or [] if _finite(v)]
    last = before[-1] if before else facts.diverged.get("interval_loss") if _finite(facts.diverged.get("interval_loss")) \
        else readings[-1] if readings else None
    evidence: dict[str, Any] = {"status": facts.status, "first_loss": first, "last_finite_loss": last, "peak_lr": peak}
    if facts.diverged:
        evidence.update(first_non_finite_step=facts.diverged.get("step"),
                        grad_norms_before=facts.diverged.get("grad_norms_before"))
    fixes = _lr_fixes(_lower_lr(peak, facts), facts) if peak else ["clipping=norm", "task=lr_find"]
    configured = facts.setting("optim.lr")
    evidence["configured_lr"] = configured
    of_configured = f" (optim.lr={_lr(configured)})" if _finite(configured) and peak and configured != peak else ""
    at_lr = f" at an LR of {_lr(peak)}{of_configured}" if peak else ""
    losses = f"; before it the loss went {first:.3g} -> {last:.3g}" if first is not None and last is not None else ""
    norms = [n for n in facts.diverged.get("grad_norms_before") or [] if _finite(n)]
    grads = f" and the gradient norm {' -> '.join(f'{n:.3g}' for n in norms[-3:])}" if norms else ""
    if bad or facts.diverged or facts.status == "diverged":
        where = facts.diverged.get("step") or min((r["step"] for r in bad if _finite(r.get("step"))), default=None)
        evidence["first_non_finite_step"] = where
        at = f" at step {where}" if where is not None else ""
        return Finding("divergence", f"the loss became non-finite{at}{at_lr}{losses}{grads}: the updates overshoot",
                       evidence, fixes)
    # The median of the last third, not the last reading: one bad batch is not a divergence.
    tail = statistics.median(readings[-max(len(readings) // 3, 1):]) if readings else None
    if first and tail is not None and len(readings) >= MIN_POINTS and tail > DIVERGE_RATIO * first:
        evidence["final_loss"] = tail
        return Finding("divergence", f"the training loss rose from {first:.3g} to {tail:.3g} (median of the last "
                       f"readings, over {DIVERGE_RATIO:g}x its start){at_lr}: the LR is too high", evidence, fixes)
    return None


def _spike(epochs: Records, steps: Records, facts: Facts) -> Finding | None:
    """A training-loss reading above 1.5x the fresh model's loss: the updates threw the model off.
    Early in a run without warmup, warmup is the fix; otherwise (or with warmup) the LR is too high."""
    first = facts.start.get("initial_loss")
    readings = [r for r in steps if _finite(r.get("train_loss")) and _finite(r.get("step"))]
    span = [r["step"] for r in (*steps, *epochs) if _finite(r.get("step"))]
    if not _finite(first) or first <= 0 or not readings or not span:
        return None
    spike = max(readings, key=lambda r: r["train_loss"])
    if spike["train_loss"] <= WARMUP_SPIKE_RATIO * first:
        return None
    peak = _peak_lr(epochs, steps, facts)
    evidence = {"initial_loss": first, "peak_loss": spike["train_loss"], "peak_loss_step": spike["step"],
                "peak_lr": peak, "sched": facts.setting("sched.name"), "final_loss": readings[-1]["train_loss"]}
    jumped = (f"the training loss jumped from {first:.3g} (fresh model) to {spike['train_loss']:.3g} by step "
              f"{spike['step']} at a peak LR of {_lr(peak) if peak else '?'}")
    if _no_warmup(facts) and spike["step"] <= WARMUP_EARLY_FRACTION * max(span):
        fixes = ["sched=cosine_warmup", _lower_lr(peak, facts, factor=3) if peak else "task=lr_find"]
        stable = _stable_lr(facts)
        if peak and stable and peak > STABLE_LR_SPAN * stable:  # beyond what warmup can make usable
            fixes.reverse()
        return Finding("warmup", f"{jumped}, with no warmup: the first updates at the full LR overshoot",
                       evidence, fixes)
    return Finding("lr_too_high", f"{jumped}: the updates overshoot; the LR is too high",
                   evidence, _lr_fixes(_lower_lr(peak, facts), facts) if peak else ["task=lr_find"])


def _oscillation(epochs: Records, steps: Records, facts: Facts) -> Finding | None:
    losses = _readings(epochs, steps)
    first = _first_loss(epochs, steps)
    if len(losses) < MIN_POINTS + 2 or not first or first <= 0:
        return None

    def big(a: float, b: float) -> bool:
        low, high = sorted((abs(a), abs(b)))
        return high > OSCILLATION_JUMP * max(low, 1e-12) and high - low > OSCILLATION_MIN_SIZE * first

    moves = [(b > a) if big(a, b) else None for a, b in zip(losses, losses[1:])]
    reversals = sum(1 for a, b in zip(moves, moves[1:]) if a is not None and b is not None and a != b)
    if reversals < OSCILLATION_MIN_REVERSALS or reversals < OSCILLATION_REVERSAL_SHARE * (len(moves) - 1):
        return None
    peak = _peak_lr(epochs, steps, facts)
    swing = max(abs(b - a) for a, b in zip(losses, losses[1:]))
    return Finding(
        "oscillation",
        f"the training loss jumps up and down ({reversals} reversals in {len(losses)} readings, swings up to "
        f"{swing:.3g} against a first loss of {first:.3g}) at a peak LR of {_lr(peak) if peak else '?'}: the LR is too high",
        {"reversals": reversals, "readings": len(losses), "largest_swing": swing, "first_loss": first, "peak_lr": peak},
        _lr_fixes(_lower_lr(peak, facts, factor=3), facts) if peak else ["clipping=norm", "task=lr_find"],
    )


def _vanishing_at_start(layers: Records | None) -> float | None:
    """The fresh model's first / last weight-layer gradient norm (None without a step-0 record)."""
    norms = [row["grad_norm"] for row in _start_layers(layers) if _finite(row.get("grad_norm"))
             and row.get("kind") in ("Linear", "Conv1d", "Conv2d", "LSTM", "GRU", "RNN")]
    if len(norms) < 2 or norms[-1] <= 0:
        return None
    return norms[0] / norms[-1]


def _vanishing_fixes(facts: Facts) -> list[str]:
    fixes = []
    if facts.setting("model.residual") is False:
        fixes.append("model.residual=true")
    if facts.setting("norm.name", "none") == "none":
        fixes.append("norm=batchnorm")
    if facts.setting("init.name") not in ("he", "he_uniform", "xavier", "xavier_normal", "orthogonal"):
        fixes.append(_init_fix(facts))
    return fixes or ["task=check_init"]


def _stall(epochs: Records, steps: Records, layers: Records | None, facts: Facts) -> Finding | None:
    readings = _values(epochs, "train_loss") if len(epochs) >= MIN_POINTS else _readings(epochs, steps)
    span = [r["step"] for r in (*steps, *epochs) if _finite(r.get("step"))]
    if len(readings) < MIN_POINTS or not span or max(span) - min(span) < STALL_MIN_STEPS:
        return None
    third = max(len(readings) // 3, 1)
    start, end = statistics.fmean(readings[:third]), statistics.fmean(readings[-third:])
    first = _first_loss(epochs, steps) or start
    change = (start - end) / abs(start) if start else 0.0
    if abs(change) >= STALL_REL_CHANGE or end < STALL_CONVERGED_RATIO * first:
        return None
    grads = _values(steps, "grad_norm") or _values(epochs, "grad_norm")
    grad = statistics.median(grads) if grads else None
    ratio = _vanishing_at_start(layers)
    peak = _peak_lr(epochs, steps, facts)
    evidence = {"loss_start": start, "loss_end": end, "relative_change": -change, "median_grad_norm": grad,
                "first_to_last_layer_grad_ratio": ratio, "peak_lr": peak}
    moved = f"the loss barely moved ({start:.3g} -> {end:.3g}, {-change:+.1%})"
    if (grad is not None and grad < VANISHING_GRAD_NORM) or (ratio is not None and ratio < VANISHING_LAYER_RATIO):
        shown = f"the gradient norm is {grad:.1e}" if grad is not None and grad < VANISHING_GRAD_NORM else \
            f"the first layer's gradient is {ratio:.1e} of the last layer's"
        return Finding("vanishing_gradients", f"{moved} and {shown}: gradients vanish before they reach the "
                       "first layers", evidence, _vanishing_fixes(facts))
    stable = _stable_lr(facts)
    if peak is not None and stable is not None and peak < stable / LOW_LR_FACTOR:
        return Finding("stall", f"{moved} with a peak LR of {_lr(peak)}, under 1/{LOW_LR_FACTOR} of the usual "
                       f"{_lr(stable)} for optim={facts.setting('optim.name')}: the LR is too low", evidence,
                       [f"optim.lr={_lr(stable)}", "task=lr_find"])
    return Finding("stall", f"{moved}; measure a better LR with the LR range test", evidence,
                   ["task=lr_find", f"optim.lr={_lr(peak * 10)}"] if peak else ["task=lr_find"])


def _labels(epochs: Records, facts: Facts) -> Finding | None:
    classes, chance = facts.start.get("num_outputs"), facts.start.get("chance_loss")
    accuracy, losses = _values(epochs, "val_acc"), _values(epochs, "train_loss")
    if facts.start.get("task") != "classification" or not classes or not _finite(chance) or len(accuracy) < MIN_POINTS:
        return None
    chance_acc = 1 / classes
    if max(accuracy) >= LABELS_ACC_OVER_CHANCE * chance_acc or not losses or min(losses) >= LABELS_TRAIN_FIT * chance:
        return None
    noise = facts.setting("data.label_noise", 0)
    planted = f"; data.label_noise={noise} replaces that share of them with random classes" if noise else ""
    return Finding(
        "labels", f"the training loss fell to {min(losses):.3g} (chance: {chance:.3g}) while the best validation "
        f"accuracy stayed at {max(accuracy):.1%} (chance: {chance_acc:.1%}): the training labels may not match the "
        f"inputs (a shuffled or misaligned label file){planted}",
        {"best_val_acc": max(accuracy), "chance_acc": chance_acc, "min_train_loss": min(losses), "chance_loss": chance,
         "label_noise": noise},
        (["data.label_noise=0"] if noise else []) + ["early_stopping=val_loss regularisation=label_smoothing"])


def _batchnorm_batch(epochs: Records, facts: Facts) -> Finding | None:
    batch = facts.setting("batch_size")
    if facts.setting("norm.name") != "batchnorm" or not isinstance(batch, int) or batch >= BATCHNORM_MIN_BATCH:
        return None
    last = epochs[-1] if epochs else {}
    return Finding(
        "batchnorm_batch", f"batch norm normalises each batch of {batch} samples by that batch's own mean and std: "
        f"too few for stable statistics (use at least {BATCHNORM_MIN_BATCH}), and the running averages used at "
        "evaluation disagree with them" + (f" (final train loss {last['train_loss']:.3g}, validation loss "
                                           f"{last['val_loss']:.3g})" if _finite(last.get("train_loss"))
                                           and _finite(last.get("val_loss")) else ""),
        {"batch_size": batch, "min_batch": BATCHNORM_MIN_BATCH, "final_train_loss": last.get("train_loss"),
         "final_val_loss": last.get("val_loss"), "final_val_acc": last.get("val_acc")},
        ["norm=layernorm", f"batch_size={4 * BATCHNORM_MIN_BATCH}"])


def _underfitting(epochs: Records, steps: Records, facts: Facts) -> Finding | None:
    losses = _values(epochs, "train_loss")
    first = _first_loss(epochs, steps, facts)
    if len(losses) < MIN_POINTS or not first or first <= 0:
        return None
    accuracy = _values(epochs, "val_acc")
    if losses[-1] <= UNDERFIT_LOSS_RATIO * first or (accuracy and accuracy[-1] >= UNDERFIT_MAX_ACC):
        return None
    last_epoch = int(epochs[-1].get("epoch") or len(epochs))
    curve = _readings(epochs, steps)
    third = max(len(curve) // 3, 1)
    end = statistics.fmean(curve[-third:])
    # The share of the whole drop that came in the last third: about a third or more while the
    # loss still falls steadily, near zero once it has levelled off.
    late_drop = (statistics.fmean(curve[-2 * third:-third]) - end) / (first - end) if first > end and len(curve) >= 2 * third else 0.0
    still_falling = late_drop > PLATEAU_SHARE
    evidence = {"first_loss": first, "final_train_loss": losses[-1], "final_val_acc": accuracy[-1] if accuracy else None,
                "epochs": last_epoch, "last_third_share_of_drop": late_drop}
    shown = (f"the training loss is still {losses[-1] / first:.0%} of its start ({first:.3g} -> {losses[-1]:.3g})"
             + (f", val accuracy {accuracy[-1]:.1%}" if accuracy else ""))
    chance = facts.start.get("chance_loss")
    width, outputs = facts.setting("model.width"), facts.start.get("num_outputs")
    # A hidden layer narrower than the outputs is a bottleneck: the logits have rank <= width.
    bottleneck = isinstance(width, int) and isinstance(outputs, int) and width < outputs
    levelled = not still_falling and (not _finite(chance) or end > TOO_SMALL_LOSS_RATIO * chance)
    if isinstance(width, int) and (bottleneck or levelled):
        if bottleneck:
            evidence["num_outputs"] = outputs
            late_drop_text = f"its hidden layers are {width} wide for {outputs} outputs"
        else:
            late_drop_text = f"it stopped falling (the last third of the run made {late_drop:.0%} of the drop)"
        return Finding("too_small", f"{shown}, and {late_drop_text}: the model is too small to fit the training set",
                       {**evidence, "width": width},
                       [f"model.width={WIDEN_FACTOR * width}", f"epochs={2 * last_epoch}"])
    return Finding("underfitting", f"{shown}, and still falling: train longer", evidence,
                   [f"epochs={2 * last_epoch}"] + ([f"model.width={WIDEN_FACTOR * width}"] if isinstance(width, int) else [])
                   + ["task=lr_find"])


def _overfitting(epochs: Records, facts: Facts) -> Finding | None:
    rows = [r for r in epochs if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))]
    if len(rows) < OVERFIT_EVALS + 1:
        return None
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    after = rows[best + 1:]
    low, last = rows[best], rows[-1]
    rise = last["val_loss"] - low["val_loss"]
    scale = _first_loss(epochs, [], facts) or rows[0]["val_loss"]
    if (len(after) < OVERFIT_EVALS or rise < OVERFIT_MIN_RISE * low["val_loss"]
            or rise < OVERFIT_MIN_SCALE_RISE * abs(scale) or last["train_loss"] >= low["train_loss"]):
        return None
    began = low.get("epoch")
    evidence = {"began_epoch": began, "best_val_loss": low["val_loss"], "final_val_loss": last["val_loss"],
                "train_loss_at_best": low["train_loss"], "final_train_loss": last["train_loss"],
                "gap": last["val_loss"] - last["train_loss"], "train_samples": facts.start.get("train_samples")}
    handled = " (early stopping ended the run)" if facts.status == "early_stopped" else ""
    # More (augmented) data attacks the cause; dropout and weight decay limit what is memorised;
    # early stopping only keeps the best epoch.
    fixes = []
    if facts.setting("augment.name", "none") == "none" and facts.config:
        fixes.append("augment=shift")
    if facts.setting("regularisation.name", "none") == "none":
        fixes.append("regularisation=dropout")
    if facts.status != "early_stopped" and facts.setting("early_stopping.name", "none") == "none":
        fixes.append("early_stopping=val_loss")
    return Finding(
        "overfitting",
        f"from epoch {began} the validation loss rose {low['val_loss']:.3g} -> {last['val_loss']:.3g} while the "
        f"training loss fell {low['train_loss']:.3g} -> {last['train_loss']:.3g}{handled}",
        evidence, fixes or ["regularisation=dropout regularisation.dropout=0.5"],
    )


def _last_layers(layers: Records | None) -> Records:
    """The layer dicts of the last evaluation, from either a list of "layers" records or one list of layer dicts."""
    if not layers:
        return []
    if "layers" in layers[-1]:
        return list(layers[-1].get("layers") or [])
    return list(layers)


def _dead_units(layers: Records | None, facts: Facts) -> Finding | None:
    dead = [(layer.get("name"), float(layer["dead_fraction"])) for layer in _last_layers(layers)
            if _finite(layer.get("dead_fraction")) and layer["dead_fraction"] > DEAD_FRACTION]
    if not dead:
        return None
    shown = ", ".join(f"{name} {fraction:.0%}" for name, fraction in dead[:4]) + (" ..." if len(dead) > 4 else "")
    # Units die when a large update pushes their bias far negative: at an LR above the optimizer's
    # usual one, lowering it comes first; a leaky ReLU keeps a gradient flowing through dead units.
    peak, stable = _peak_lr([], [], facts), _stable_lr(facts)
    fixes = [_lower_lr(peak, facts)] if peak and stable and peak > 3 * stable else []
    fixes.append("model.activation=leaky_relu")
    if facts.setting("init.name") not in ("he", "he_uniform"):
        fixes.append("init=he")
    return Finding("dead_units", f"{len(dead)} ReLU layer(s) have most units dead (zero for the whole batch): {shown}",
                   {"layers": {name: fraction for name, fraction in dead}}, fixes)


def _clipping(steps: Records) -> Finding | None:
    fractions = _values(steps, "clipped_fraction")
    if not fractions or statistics.fmean(fractions) <= CLIPPED_FRACTION:
        return None
    mean = statistics.fmean(fractions)
    grads = _values(steps, "grad_norm")
    typical = statistics.median(grads) if grads else None
    return Finding(
        "clipping", f"{mean:.0%} of steps were clipped: max_norm is below the usual gradient norm"
        + (f" ({typical:.3g})" if typical else "") + ", so clipping shrinks every update",
        {"clipped_fraction": mean, "median_grad_norm": typical},
        ([f"clipping.max_norm={typical:.2g}"] if typical else []) + ["clipping=none"],
    )


def diagnose(
    epochs: Records,
    steps: Records,
    layers: Records | None = None,
    status: str = "completed",
    *,
    start: dict[str, Any] | None = None,
    diverged: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> list[Finding]:
    """Findings about a run, causes before symptoms (the first finding's first suggestion is the
    first thing to try); none for a healthy run.

    Args:
        epochs: the "epoch" records, in order.
        steps: the "step" records, in order.
        layers: the "layers" records (step 0's for the fresh model, the last for dead units), or
            the layer dicts of one evaluation.
        status: the run's status (completed | early_stopped | diverged | interrupted).
        start: the "start" record (input statistics, chance and initial loss), if logged.
        diverged: the "diverged" record (step, LR, losses and gradient norms before it), if any.
        config: the run's resolved config as a dict; without it, config-based findings are skipped.
    """
    facts = Facts(status, start or {}, diverged or {}, config or {})
    inputs = _inputs(facts)
    found: list[Finding | None] = [inputs, None if inputs else _init(facts, layers), _batchnorm_batch(epochs, facts)]
    diverging = _divergence(epochs, steps, facts)
    found.append(diverging)
    if diverging is None:  # after a divergence the other curve shapes mean nothing
        found.append(_labels(epochs, facts))
        found.append(_spike(epochs, steps, facts))
        oscillating = _oscillation(epochs, steps, facts)
        found.append(oscillating)
        clipping = _clipping(steps)
        found.append(clipping)
        # No progress: an oscillation or clipping every step explains it.
        stalled = _stall(epochs, steps, layers, facts) if oscillating is None and clipping is None else None
        found.append(stalled)
        found.append(_dead_units(layers, facts))
        if stalled is None:  # a stall is the more specific underfitting
            found.append(_underfitting(epochs, steps, facts))
        found.append(_overfitting(epochs, facts))
    else:
        found.append(_clipping(steps))
    findings = [finding for finding in found if finding is not None]
    kinds = {finding.kind for finding in findings}
    if kinds & {"labels", "lr_too_high", "warmup", "oscillation", "clipping"}:  # they explain a poor fit: no capacity advice
        findings = [f for f in findings if f.kind not in ("overfitting", "underfitting", "too_small", "stall")]
    return findings


def diagnose_file(metrics_path: Path, status: str = "completed", config: dict[str, Any] | None = None) -> list[Finding]:
    """`diagnose` on a run's metrics.jsonl."""
    records = read_metrics(metrics_path)
    return diagnose(records["epoch"], records["step"], records["layers"], status,
                    start=(records.get("start") or [{}])[0], diverged=(records.get("diverged") or [{}])[-1],
                    config=config)


def _key(override: str) -> str:
    """The key an override sets: `optim.lr` of `optim.lr=0.1`, `norm` of `+norm=none`."""
    return override.split("=", 1)[0].lstrip("+~")


# Overrides that belong to one run only: a new run gets its own folder and starts fresh.
RUN_ONLY_KEYS = ("hydra", "resume")


def apply_suggestion(overrides: list[str], suggestion: str) -> list[str]:
    """The run's overrides with a suggestion applied: a key the suggestion sets replaces the run's
    value; choosing another group option (`init=he`) drops the old option's settings (`init.std=1`)."""
    fixes = shlex.split(suggestion)
    replaced = {_key(fix) for fix in fixes}
    groups = {key for key in replaced if "." not in key}
    kept = [o for o in overrides
            if _key(o) not in replaced and _key(o).split(".")[0] not in RUN_ONLY_KEYS
            and not any(_key(o).startswith(group + ".") and group != "data" for group in groups)]
    return kept + fixes


def command(overrides: list[str], suggestion: str) -> str:
    """`train ...` ready to paste in a shell."""
    return " ".join(["train", *(shlex.quote(o) for o in apply_suggestion(overrides, suggestion))])


def with_commands(findings: list[Finding], overrides: list[str]) -> list[Finding]:
    """Fill every finding's `commands`: one `train ...` per suggestion."""
    for finding in findings:
        finding.commands = [command(overrides, suggestion) for suggestion in finding.suggestions]
    return findings


def to_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    """The findings as JSON-ready dicts, for summary.json's "diagnosis"."""
    return [json_safe(asdict(finding)) for finding in findings]


def panel(findings: list[Finding]) -> RenderableType:
    """A rich panel: one row per finding (what the run shows, what to try in order), or a green all-clear."""
    if not findings:
        return Panel(Text("no problems found in the curves", style="green"), title="diagnosis", border_style="green")
    table = Table(show_header=True, header_style="bold", box=None, expand=True)
    table.add_column("finding", style="bold yellow", no_wrap=True)
    table.add_column("what the run shows")
    table.add_column("try, in order", style="cyan")
    for finding in findings:
        table.add_row(finding.kind, finding.message,
                      "\n".join(f"{i}. {s}" for i, s in enumerate(finding.suggestions, 1)))
    return Panel(table, title="diagnosis", border_style="yellow")


def command_lines(findings: list[Finding]) -> list[str]:
    """Each finding's first fix as a whole `train ...` line, printed outside the panel so that no
    wrapping breaks it: copy, paste, run."""
    return [f"try ({finding.kind}): {finding.commands[0]}" for finding in findings if finding.commands]
