"""AdaLoRA's rank allocator (Zhang et al., ICLR 2023, Sec. 3.2-3.3) as plain tensor objects, exactly as HF PEFT 0.21's
``RankAllocator``: the cubic budget schedule (Sec. 3.3), the importance of every triplet from the smoothed sensitivity
and its uncertainty (Sec. 3.2), and the mask that keeps the budget's best triplets.

They hold no modules: the allocator takes each adapted matrix's tensors with the run dimension first, Q = ``lora_A``
(R, r0, d_in), lambda = ``lora_E`` (R, r0, 1), P = ``lora_B`` (R, d_out, r0), and masks lambda in place.
``adalora.AdaLoRA`` wires it into the method's hooks; docs/adalora.md has the details. Updates are batched per shape
group and run, in place and without ``.item()`` (what a captured CUDA graph needs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def shape_groups(tensors: list[torch.Tensor], dim: int) -> list[tuple[int, list[int]]]:
    """(size, indices) of the tensors with that size of dimension ``dim``, by size: Q by d_in, P by d_out."""
    g: dict[int, list[int]] = {}
    for i, t in enumerate(tensors):
        g.setdefault(int(t.shape[dim]), []).append(i)
    return sorted(g.items())


@dataclass(frozen=True)
class BudgetSchedule:
    """Sec. 3.3's global budget scheduler as PEFT's ``budget_schedule``, for the 0-based step index t just taken: no
    masking for t <= tinit, then b(t) = int((b0 - bT) (1 - (t - tinit) / (T - tfinal - tinit))^3 + bT) masked every
    ``deltaT`` steps, the final pattern at b = bT for t >= T - tfinal (b0 = n r0 triplets, bT = n r)."""

    total_steps: int
    tinit: int
    tfinal: int
    deltaT: int
    init_bgt: int
    target_bgt: int

    def __call__(self, step: int) -> tuple[int, bool]:
        """(total rank budget, whether to mask) at the step index ``step``."""
        T, tinit, tfinal = self.total_steps, self.tinit, self.tfinal
        if step <= tinit:
            return self.init_bgt, False
        if step > T - tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - tinit) / (T - tfinal - tinit)
        return int((self.init_bgt - self.target_bgt) * (mul_coeff ** 3) + self.target_bgt), step % self.deltaT == 0

    @property
    def boundary(self) -> int:
        """T - tfinal: the step index that makes the final rank pattern."""
        return self.total_steps - self.tfinal


class RankAllocator:
    """Sec. 3.2's importance and the masking to a budget, per run: for every entry w of Q, lambda and P, the
    sensitivity I = |w * grad|, its EMA Ibar = beta1 Ibar + (1 - beta1) I and the uncertainty U = beta2 U + (1 - beta2)
    |I - Ibar|; triplet i scores s(lambda_i) + mean_j s(Q_ij) + mean_j s(P_ji), s = Ibar * U, and survives while above
    its run's (b0 - b)-th smallest score. State: the EMA ``bank`` (module first, then run), ``keep`` (n, R, r0, 1)
    (multiplied into lambda) and ``fixed`` (1 once the final pattern is set)."""

    def __init__(self, schedule: BudgetSchedule, Q: list[torch.Tensor], E: list[torch.Tensor], P: list[torch.Tensor],
                 beta1: float, beta2: float):
        self.schedule, self.beta1, self.beta2 = schedule, beta1, beta2
        self.n, (R, r0, _) = len(E), E[0].shape
        self.runs, self.init_bgt = R, schedule.init_bgt
        dev = E[0].device
        groups_A, groups_B = shape_groups(Q, 2), shape_groups(P, 1)
        self.E = E
        # the order of the EMA lists: Q by d_in group, lambda, P by d_out group
        self.params = [Q[i] for _, idx in groups_A for i in idx] + E + [P[i] for _, idx in groups_B for i in idx]
        # EMA banks (sensitivity Ibar and uncertainty U) with the module first, then the run: E (n, R, r0, 1);
        # Q per d_in group (G, R, r0, d_in); P per d_out group (G, R, d_out, r0); bank[i] is module i's (R, ...)
        self.bank = {}
        for kind in ("ipt", "unc"):
            self.bank[f"{kind}_E"] = torch.zeros(self.n, R, r0, 1, device=dev)
            for d, idx in groups_A:
                self.bank[f"{kind}_A{d}"] = torch.zeros(len(idx), R, r0, d, device=dev)
            for d, idx in groups_B:
                self.bank[f"{kind}_B{d}"] = torch.zeros(len(idx), R, d, r0, device=dev)
        self.ema = {kind: [v for d, _ in groups_A for v in self.bank[f"{kind}_A{d}"].unbind(0)]
                    + list(self.bank[f"{kind}_E"].unbind(0))
                    + [v for d, _ in groups_B for v in self.bank[f"{kind}_B{d}"].unbind(0)]
                    for kind in ("ipt", "unc")}
        self.idx_A = [(d, torch.tensor(idx, device=dev)) for d, idx in groups_A]
        self.idx_B = [(d, torch.tensor(idx, device=dev)) for d, idx in groups_B]
        self.keep = torch.ones(self.n, R, r0, 1, device=dev)
        self.keep_views = list(self.keep.unbind(0))
        self.fixed = torch.zeros((), device=dev)

    @torch.no_grad()
    def update_and_allocate(self, step: int) -> None:
        """PEFT ``update_and_allocate(step)``, ``step`` the index of the optimizer step just taken: before T - tfinal
        the importance and, on the schedule's masking steps, the mask; at T - tfinal the final mask at the target
        budget (the EMAs reset, PEFT ``reset_ipt``); afterwards that mask re-applied (``mask_using_rank_pattern``)."""
        boundary = self.schedule.boundary
        if step < boundary:
            self.update_importance()
            budget, mask_ind = self.schedule(step)
            if mask_ind:
                self.mask_to_budget(budget)
        elif step == boundary:
            self.mask_to_budget(self.schedule.target_bgt)
            self.fixed.fill_(1.0)
            for v in self.bank.values():
                v.zero_()
        else:
            torch._foreach_mul_(self.E, self.keep_views)

    @torch.no_grad()
    def update_importance(self) -> None:
        """I = |w * grad|; Ibar = b1 Ibar + (1 - b1) I; U = b2 U + (1 - b2) |I - Ibar| (PEFT ``update_ipt``), every
        entry of every run; a parameter without a gradient counts as a zero gradient."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        ipt = torch._foreach_mul(self.params, grads)
        torch._foreach_abs_(ipt)
        avg, unc = self.ema["ipt"], self.ema["unc"]
        torch._foreach_mul_(avg, self.beta1)
        torch._foreach_add_(avg, torch._foreach_mul(ipt, 1 - self.beta1))
        dev = torch._foreach_sub(ipt, avg)
        torch._foreach_abs_(dev)
        torch._foreach_mul_(dev, 1 - self.beta2)
        torch._foreach_mul_(unc, self.beta2)
        torch._foreach_add_(unc, dev)

    def scores(self) -> torch.Tensor:
        """(n, R, r0): S_i = s(lambda_i) + (mean_j s(Q_ij) + mean_j s(P_ji)), s = Ibar * U (PEFT mask_to_budget)."""
        b = self.bank
        s_E = (b["ipt_E"] * b["unc_E"]).squeeze(-1)
        s_A = torch.empty_like(s_E)
        s_B = torch.empty_like(s_E)
        for d, idx in self.idx_A:
            s_A[idx] = (b[f"ipt_A{d}"] * b[f"unc_A{d}"]).mean(dim=3)
        for d, idx in self.idx_B:
            s_B[idx] = (b[f"ipt_B{d}"] * b[f"unc_B{d}"]).mean(dim=2)
        return s_E + (s_A + s_B)

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        """Each run keeps its triplets scoring above its own (b0 - budget)-th smallest score; lambda := 0 for the rest.
        Deviation: PEFT's kthvalue fails with k = 0 (r0 == target rank); nothing is masked then."""
        k = self.init_bgt - budget
        if k <= 0:
            return
        s = self.scores()  # (n, R, r0)
        threshold = torch.kthvalue(s.transpose(0, 1).reshape(self.runs, -1), k, dim=1).values  # stays on the device
        self.keep.copy_((s > threshold.view(1, -1, 1)).unsqueeze(-1))
        torch._foreach_mul_(self.E, self.keep_views)

    def is_fixed(self) -> bool:
        return self.fixed.item() > 0

    def ranks(self, k: int = 0) -> list[int]:
        """Run k's surviving triplets per module (the latest mask; the final one once fixed)."""
        return [int(c) for c in self.keep[:, k].sum(dim=(1, 2)).round().tolist()]

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """Run k's EMAs (``ema.<bank>``), mask (``keep``) and ``fixed``: the names its checkpoint holds."""
        return {**{f"ema.{name}": v[:, k] for name, v in self.bank.items()}, "keep": self.keep[:, k],
                "fixed": self.fixed}

    @torch.no_grad()
    def load(self, k: int, state: dict[str, torch.Tensor]) -> None:
        for name, v in self.bank.items():
            v[:, k].copy_(state[f"ema.{name}"])
        self.keep[:, k].copy_(state["keep"])
        self.fixed.copy_(state["fixed"])
