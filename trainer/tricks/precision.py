"""Numeric precision, one strategy per `precision=` choice.

The strategy owns autocast and the backward -> unscale -> clip -> step sequence (as timm's
`NativeScaler`), so the loop reads the same whatever precision is on. Master weights stay
fp32: autocast only lowers the precision of the ops it runs.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer

from trainer.config import group_choices
from trainer.errors import ConfigError
from trainer.tricks.clipping import Clipping, NormParts, total_norm

PRECISIONS = group_choices("precision")  # conf/precision/*.yaml
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # what a run may compute in besides fp32


@dataclass
class Precision:
    """Args:
        requested: the `precision=` choice.
        actual: what runs on this device (tf32 on a CPU falls back to fp32, auto resolves).
        device_type: "cuda" or "cpu", for autocast and the gradient scaler: fp16 autocast and
            loss scaling run on the CPU too, so the CPU runs the same code path as a GPU.
        notice: a one-line explanation when actual differs from requested, else None.
    """

    requested: str
    actual: str
    device_type: str
    notice: str | None = None
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        # Loss scaling keeps small fp16 gradients from flushing to zero (Micikevicius et al. 2018);
        # bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.actual == "fp16")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES.get(self.actual)

    def autocast(self) -> AbstractContextManager:
        """Autocast to the run's dtype; in fp32 no context at all (a disabled torch.autocast still
        costs a few microseconds at every entry, which a small model's step notices)."""
        dtype = self.autocast_dtype
        return nullcontext() if dtype is None else torch.autocast(self.device_type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward through the (scaled, under fp16) loss; gradients accumulate until `step`."""
        self.scaler.scale(loss).backward()

    def step(
        self, optimizer: Optimizer, clipping: Clipping, params: list[torch.Tensor], skip_nonfinite: bool = False,
    ) -> tuple[NormParts, bool]:
        """Unscale, clip, step and zero the gradients.

        Returns the global gradient norm measured before clipping (device tensors, not yet
        reduced: clipping.total_norm reduces them) and whether the update was skipped for
        non-finite gradients (`skip_nonfinite`, which costs one host sync per step; under fp16
        the scaler also skips inf steps itself while it calibrates).
        """
        self.scaler.unscale_(optimizer)  # clip and measure the true gradients, not the scaled ones
        norm = clipping(params, True)
        skipped = skip_nonfinite and not bool(torch.isfinite(total_norm(norm)))
        if not skipped:
            self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return norm, skipped

    @property
    def skips_inf_steps(self) -> bool:
        """Whether the gradient scaler skips steps with inf gradients itself (fp16, while it finds
        its scale): such a gradient norm is no divergence."""
        return self.scaler.is_enabled()

    @property
    def loss_scale(self) -> float | None:
        """The fp16 loss scale (a host sync: read it at log intervals only), None when not scaling."""
        return self.scaler.get_scale() if self.skips_inf_steps else None

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """A disabled scaler's state is empty (a checkpoint of an fp32 or bf16 run, say precision=auto
        on the CPU): an enabled one then starts calibrating afresh, as in a new run."""
        if state or not self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def build(name: str, device: torch.device, model: nn.Module | None = None, teacher: nn.Module | None = None) -> Precision:
    """Builder named by conf/precision/*.yaml; `device`, the `model` it will run and a distillation
    `teacher` (run under the same autocast) are passed at run time."""
    if name not in PRECISIONS:
        raise ConfigError(f"precision={name!r} is unknown; valid: {', '.join(PRECISIONS)}")
    if name not in ("auto", "tf32", "fp32", *AUTOCAST_DTYPES):  # a conf/precision/*.yaml without code here
        raise NotImplementedError(f"precision={name} has a YAML in conf/precision/ but no code in trainer/tricks/precision.py")
    cuda = device.type == "cuda"
    set_fp32_math(tf32=cuda and name == "tf32")
    if not cuda:
        if name == "tf32":
            return Precision(name, "fp32", device.type, f"precision={name} needs a CUDA GPU; running fp32 on the {device.type}")
        if name == "fp16" and (holder := _fused_lstm_holder(model, teacher)) is not None:
            return Precision(name, "fp32", device.type, f"precision={name} cannot run {holder} LSTM on the {device.type} "
                             "(no float16 CPU kernel); running fp32 (bf16 runs there)")
        # fp16 and bf16 autocast (and fp16's loss scaling) run on the CPU as on a GPU.
        return Precision(name, "fp32" if name == "auto" else name, device.type)
    if name == "auto":
        return Precision(name, "bf16" if native_bf16() else "fp16", "cuda")
    return Precision(name, name, "cuda")


def _fused_lstm_holder(model: nn.Module | None, teacher: nn.Module | None) -> str | None:
    """Which of the run's networks runs PyTorch's fused LSTM ("an" for the model, "the distillation
    teacher's"), or None. Its CPU kernel (oneDNN) has no float16 version: the first forward under fp16
    autocast raises, in no_grad too. Measured on torch 2.14: nn.GRU, nn.RNN and the cells run, and
    so does an nn.LSTM subclass with its own forward (PeepholeLSTM's step-by-step ops)."""
    for network, holder in ((model, "an"), (teacher, "the distillation teacher's")):
        if network is not None and any(isinstance(m, nn.LSTM) and type(m).forward is nn.LSTM.forward
                                       for m in network.modules()):
            return holder
    return None


def native_bf16() -> bool:
    """Whether the current GPU computes in bf16 natively (compute capability 8.0, Ampere, and later).

    Since torch 2.4 `torch.cuda.is_bf16_supported()` also says yes where bf16 is only emulated
    (slower than fp16 there), so emulation is excluded."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def set_fp32_math(tf32: bool) -> None:
    """TF32 (fp32 matmuls and convolutions on tensor cores with a 10-bit mantissa, Ampere+) on or
    off, with the current API (the `allow_tf32` setters are deprecated). Set for every job, not
    only when tf32 is chosen: a sweep's jobs may share a process and must not inherit it."""
    mode = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.rnn.fp32_precision = mode
