"""Optimizers, one `optim=` choice each: sgd, momentum, nesterov, adam, adamw, rmsprop.

Weight decay skips biases and normalisation parameters (all 1-D tensors) unless
`decay_norm_and_bias=true`: decaying a norm's scale or a bias only limits what the layer can
express (as in nanoGPT, timm and Goyal et al. 2017).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

from trainer.config import group_choices
from trainer.errors import ConfigError

OPTIMIZERS = group_choices("optim")  # conf/optim/*.yaml
FUSED_DEVICES = ("cuda", "cpu")  # where torch has fused SGD, Adam and AdamW kernels


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias or not weight_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    alpha: float = 0.99,
    decay_norm_and_bias: bool = False,
) -> Optimizer:
    """Builder named by conf/optim/*.yaml; `model` is passed at run time.

    Args:
        name: one of OPTIMIZERS. `momentum` is SGD with heavy-ball momentum, `nesterov` SGD
            with Nesterov momentum (Sutskever et al. 2013).
        lr: the base learning rate; a schedule multiplies it.
        weight_decay: L2 coupled into the gradient for sgd/momentum/nesterov/adam/rmsprop,
            decoupled for adamw (Loshchilov & Hutter 2019).
        momentum: for momentum, nesterov and rmsprop.
        betas: Adam's moment decay rates.
        eps: Adam's and RMSprop's denominator guard.
        alpha: RMSprop's squared-gradient decay rate.
        decay_norm_and_bias: decay 1-D parameters (biases, norm scales) too.
    """
    _check(name, lr, weight_decay, momentum, betas, eps, alpha)
    groups = param_groups(model, weight_decay, decay_norm_and_bias)
    # The fused kernels update every parameter in one pass (one launch per step on CUDA instead
    # of several per tensor), on CUDA and on the CPU alike, so the CPU runs the GPU's code path.
    # Under fp16 they also take the gradient scaler's skip decision on the device (no host sync).
    fused = {"fused": True} if all(p.device.type in FUSED_DEVICES for p in model.parameters()) else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, **fused)
    if name in ("momentum", "nesterov"):
        sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=name == "nesterov", **fused)
        return zero_momentum(sgd) if fused else sgd
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **fused)
    if name == "rmsprop":
        # torch has no fused RMSprop: under fp16 the scaler syncs with the host each step (task=plan says so).
        return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    # A conf/optim/*.yaml without code here (the valid names are read from conf/): never a silent stand-in.
    raise NotImplementedError(f"optim={name} has a YAML in conf/optim/ but no code in trainer/tricks/optim.py")


def zero_momentum(optimizer: torch.optim.SGD) -> torch.optim.SGD:
    """Start fused SGD's momentum buffers at zero.

    The fused kernel allocates them uninitialised and fills them on the first step; when the fp16
    gradient scaler skips that step (inf gradients) the kernel writes nothing, and the next step
    reads the garbage (weights moved by ~1e7). From zeros, the first applied step gives the buffer
    the gradient itself (dampening is 0), exactly as an unfused first step does."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def _check(name: str, lr: float, weight_decay: float, momentum: float,
           betas: tuple[float, float], eps: float, alpha: float) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(f"optim={name!r} is unknown; valid: {', '.join(OPTIMIZERS)}")
    if lr <= 0:
        raise ConfigError(f"optim.lr={lr} must be > 0")
    if weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={weight_decay} must be >= 0")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"optim.momentum={momentum} must be in [0, 1)")
    if name == "nesterov" and momentum == 0:
        # torch's SGD raises a bare ValueError for Nesterov without momentum; name the fix instead.
        raise ConfigError("optim=nesterov needs optim.momentum > 0 (e.g. 0.9); use optim=sgd for none")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas={list(betas)} must be two numbers in [0, 1)")
    if eps <= 0:
        raise ConfigError(f"optim.eps={eps} must be > 0")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"optim.alpha={alpha} must be in (0, 1)")
