"""`task=export`: a trained run's model as an inference file, with batch norm folded away.

At inference a batch-norm layer is a fixed per-channel affine map (running mean and variance,
weight, bias), so it can be absorbed into the conv or linear layer just before it: one layer
instead of two, the same outputs (the "network compression" trick of the seed list). The folding
is PyTorch's own (`torch.nn.utils.fusion.fuse_conv_bn_eval` / `fuse_linear_bn_eval`); this module
finds the pairs, checks the folded model against the original on the validation set, and times both.

The file holds plain tensors and containers only (`torch.load(path, weights_only=True)` reads it):
the state dict, the run's config, and which pairs were folded. `load_inference(path)` rebuilds the
model from the config, folds the same pairs of the fresh model (so the layer structure matches),
and loads the state dict.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from trainer.engine.trained import build_untrained, load_run
from trainer.errors import ConfigError, TrainerError
from trainer.observe.records import write_atomic

FILE = "inference.pt"
FORMAT = "trainer-inference/1"
CONVS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
CHECK_SAMPLES = 1000  # validation samples the folded outputs are compared on and timed with
TIMING_REPEATS = 7  # passes over them per model, alternating, the median kept


def _foldable(layer: nn.Module, norm: nn.Module) -> bool:
    """A conv or linear layer directly followed by the batch norm of matching kind and width, with running statistics."""
    if not isinstance(norm, _BatchNorm) or norm.running_mean is None:
        return False
    if type(layer) in CONVS:
        return type(norm) is CONVS[type(layer)] and layer.out_channels == norm.num_features
    return isinstance(layer, nn.Linear) and type(norm) is nn.BatchNorm1d and layer.out_features == norm.num_features


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every conv/linear + batch-norm pair that sits next to each other in an nn.Sequential (in
    place; the model must be in eval mode) and return the folded layers' names.

    The batch norm is replaced by nn.Identity rather than removed, so every other module keeps its
    index and name. Only a Sequential guarantees that the norm consumes exactly the layer's output.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode: folding uses the running statistics")
    folded = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            layer, norm = module[index], module[index + 1]
            if _foldable(layer, norm):
                fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
                module[index] = fuse(layer, norm)
                module[index + 1] = nn.Identity()
                folded.append(f"{prefix}.{index}" if prefix else str(index))
    return folded


def count_layers(model: nn.Module) -> dict[str, int]:
    """Leaf modules that compute something (nn.Identity placeholders left out), and how many are batch norms."""
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    return {"layers": len(leaves), "batchnorm": sum(isinstance(m, _BatchNorm) for m in leaves)}


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def time_inference(models: list[nn.Module], x: torch.Tensor, batch_size: int, repeats: int = TIMING_REPEATS) -> list[float]:
    """Median seconds per pass over `x` for each model, the models alternating so machine load hits both alike."""
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        _outputs(model, x[:batch_size], batch_size)  # warm-up: allocator, first-call dispatch
    for _ in range(repeats):
        for model, record in zip(models, times):
            start = time.perf_counter()
            _outputs(model, x, batch_size)
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def export(resume: str | None, run_dir: Path, fold_bn: bool = True, tolerance: float = 1e-4, *,
           check_samples: int = CHECK_SAMPLES) -> dict[str, Any]:
    """Write run_dir/inference.pt from the run `resume` names, batch norm folded if `fold_bn`.

    Args:
        resume: the trained run's folder, or one of its checkpoint files.
        run_dir: where inference.pt goes.
        fold_bn: fold conv/linear + batch-norm pairs; false exports the model as trained.
        tolerance: largest max-abs difference between the folded and unfolded outputs, relative to
            the outputs' scale (max |output|, at least 1), for the file to be written.
        check_samples: validation samples the folded outputs are compared on and timed with
            (fewer under smoke=true).

    Returns:
        {"checkpoint", "file", "folded": [names], "before"/"after": count_layers + "inference_s",
         "max_abs_diff", "speedup", "samples", "notice"}.
    """
    if not isinstance(fold_bn, bool):
        raise ConfigError(f"export.fold_bn={fold_bn} must be true or false")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance <= 0:
        raise ConfigError(f"export.tolerance={tolerance} must be a number > 0")
    run = load_run(resume, "export")
    original = run.model
    vocab_size = len(run.data.chars) if run.data.chars is not None else None  # character models read ids
    exported = build_untrained(run.config, run.data.input_shape, run.data.num_outputs, vocab_size).eval()
    exported.load_state_dict(original.state_dict())
    folded = fold_batchnorm(exported) if fold_bn else []
    notice = None
    if fold_bn and not folded:
        notice = "nothing to fold: the model has no conv/linear layer followed by batch norm; exported as is"
    x = run.data.head("val", check_samples)[0].cpu()
    batch_size = int(run.config.get("batch_size", 100))
    reference, result = _outputs(original, x, batch_size), _outputs(exported, x, batch_size)
    max_abs_diff = float((reference - result).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if not max_abs_diff <= tolerance * scale:  # `not <=` also catches NaN
        raise TrainerError(f"the folded model's outputs differ from the original's by {max_abs_diff:.3g} "
                           f"(> export.tolerance={tolerance} x {scale:.3g}); nothing written")
    before_s, after_s = time_inference([original, exported], x, batch_size)
    payload = {"format": FORMAT, "state_dict": exported.state_dict(), "config": run.config, "folded": folded,
               "input_shape": list(run.data.input_shape), "num_outputs": run.data.num_outputs, "vocab_size": vocab_size}
    path = run_dir / FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda file: torch.save(payload, file))
    return {
        "checkpoint": str(run.path), "file": str(path), "folded": folded, "samples": len(x),
        "before": {**count_layers(original), "inference_s": before_s},
        "after": {**count_layers(exported), "inference_s": after_s},
        "max_abs_diff": max_abs_diff, "speedup": before_s / after_s, "notice": notice,
    }


def load_inference(path: str | Path) -> nn.Module:
    """The model in an inference.pt, in eval mode on the CPU (read with weights_only=True: no code runs)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrainerError(f"{path} is not an inference file written by `train task=export`")
    model = build_untrained(payload["config"], tuple(payload["input_shape"]), payload["num_outputs"],
                            payload.get("vocab_size")).eval()
    if fold_batchnorm(model) != payload["folded"]:
        raise TrainerError(f"{path}: the model its config builds no longer has the folded layers {payload['folded']}")
    model.load_state_dict(payload["state_dict"])
    return model


def render(result: dict[str, Any]) -> RenderableType:
    table = Table(title=f"export of {result['checkpoint']}")
    for column in ("", "layers", "batch norm", f"inference ({result['samples']} samples)"):
        table.add_column(column, justify="right")
    for name in ("before", "after"):
        row = result[name]
        table.add_row(name, str(row["layers"]), str(row["batchnorm"]), f"{row['inference_s'] * 1e3:.1f} ms")
    lines = [f"{len(result['folded'])} conv/linear + batch-norm pairs folded; max |output difference| "
             f"{result['max_abs_diff']:.2e} on {result['samples']} validation samples; inference speed-up x{result['speedup']:.2f} "
             f"(median of {TIMING_REPEATS} alternating passes)",
             *([result["notice"]] if result["notice"] else []), f"inference file: {result['file']}"]
    return Group(table, *(Text(line) for line in lines))
