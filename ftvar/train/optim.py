"""Adam without bias correction (BERT's original optimizer), for `train.bias_correction = false`.

Mosbach et al. 2021 found that BERT's original optimizer (`BertAdam`, in Devlin et al.'s code) leaves out
Adam's bias correction, which makes the first updates of fine-tuning large (m / sqrt(v) with both moments
still near their zero start, no warm-up of the step size) and explains many of the failed runs on small
GLUE tasks. Hand-written because torch's Adam and AdamW always correct the bias and have no switch for it
(the Trainer has none either); everything else is AdamW's: decoupled weight decay applied before the update
(`p ← p·(1 − lr·wd) − lr·m / (sqrt(v) + eps)`, which is BertAdam's `p ← p − lr·(m / (sqrt(v) + eps) + wd·p)`),
the same betas and eps as ftvar's AdamW (eps 1e-8 where BertAdam had 1e-6: only the bias correction differs),
and AdamW's state layout (`step`, `exp_avg`, `exp_avg_sq` per parameter), so that checkpoints and stacks read
it as they read AdamW's. It is capturable: a group's learning rate may be a device tensor that the caller
updates in place, every operation stays on the device (torch's foreach kernels), and nothing reads a value
back to the host, so that a CUDA graph can hold a step of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class AdamWithoutBiasCorrection(torch.optim.Optimizer):
    """AdamW without bias correction (BERT's original optimizer); capturable (see the module's docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _moments(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = self.state[p]
        if not state:  # AdamW's layout: the step on the parameter's device (capturable), two moments
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self._moments(p) for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_add_([s["step"] for s in states], 1.0)
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            if wd:  # decoupled weight decay, before the update (AdamW's order)
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_lerp_(m, grads, 1.0 - beta1)  # m ← β1·m + (1 − β1)·g
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1.0 - beta2)  # v ← β2·v + (1 − β2)·g²
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, eps)
            if isinstance(lr, torch.Tensor):  # a device tensor: no host read of it
                update = torch._foreach_div(m, denom)
                torch._foreach_mul_(update, lr)
                torch._foreach_sub_(params, update)
            else:
                torch._foreach_addcdiv_(params, m, denom, value=-lr)
        return loss
