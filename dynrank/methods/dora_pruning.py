"""Dynamic-rank DoRA's pruning (Mao et al., ACL 2024) as plain tensor objects: the budget schedule (Eq. 9), the
components' importance and its EMA (Eq. 7-8), the pruning mask over the components (Eq. 9) and DEM (Eq. 10).

They hold no modules and no model: the factors come stacked per shape group, A (R, G, r0, d_in), B (R, G, d_out, r0),
c (R, G, r0) for R runs and the G matrices of one shape, and the state is per run over the N = n_modules * r0
components in module order, (R, N). ``dora.DoRA`` wires them into a method's hooks; ``../shared/paper/METHOD_SPEC.md``
states the equations and docs/dora.md the derivations. Updates are in place, a fixed number of ops without
``.item()``, so a captured CUDA graph replays them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class BudgetSchedule:
    """Eq. 9 as the authors' ``get_prune_step`` / ``prune_lora_scaler``, for the 1-based step t (steps done):
    p = int(t - T warmup_frac), P = int(T (1 - warmup_frac - final_frac)); for 0 <= p <= P, every ``interval`` steps
    and at p = P, the k = int(N ((r0 - r) / r0) (p / P)^3) least important of the N components are pruned; after P
    the mask made at p = P is fixed."""

    total_steps: int
    warmup_frac: float
    final_frac: float
    interval: int
    n_components: int
    r0: int
    r: int

    def __call__(self, step: int) -> tuple[int, int]:
        """(p, P) for the 1-based ``step``, truncated toward zero as the code."""
        T = self.total_steps
        return int(step - T * self.warmup_frac), int(T * (1 - self.warmup_frac - self.final_frac))

    def phase(self, step: int) -> str:
        """What happens after the 1-based ``step``: "ema" (update S), "prune" (update S, prune), "fixed" (mask)."""
        p, P = self(step)
        if p > P:
            return "fixed"
        return "prune" if p >= 0 and (p % self.interval == 0 or p == P) else "ema"

    def pruning(self, step: int) -> bool:
        """p <= P for the 1-based ``step``: pruning has not ended (DEM's window, Eq. 10)."""
        p, P = self(step)
        return p <= P

    def end_step(self) -> int:
        """The step where p = P: the last pruning step, after which the code logs 'prune finished'."""
        return next(s for s in range(1, self.total_steps + 1) if self(s)[0] >= self(s)[1])

    def pruned_fraction(self, step: int) -> float:
        """((r0 - r) / r0) * (p / P)^3, p clamped to [0, P] (P = 0: the whole (r0 - r) / r0)."""
        p, P = self(step)
        ratio = 1.0 if P <= 0 else min(max(p, 0) / P, 1.0)
        return ((self.r0 - self.r) / self.r0) * ratio ** 3

    def n_pruned(self, step: int) -> int:
        """k = int(N * fraction); the mask thresholds at max(k, 1) as the authors' code (``ComponentMask.set_k``)."""
        return int(self.n_components * self.pruned_fraction(step))

    def budget(self, step: int) -> int:
        """The components Eq. 9 keeps after ``step`` steps: N - k."""
        return self.n_components - self.n_pruned(step)


def component_importance(A: torch.Tensor, B: torch.Tensor, c: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 7 for one shape group: s_i = ||c_i B_i A_i||_F / (||Delta W||_F + eps), (R, G * r0).

    ||c_i B_i A_i||_F = |c_i| ||B_i|| ||A_i|| and ||Delta W||_F^2 = sum_ij c_i c_j (A A^T)_ij (B^T B)_ij: r0 x r0 Gram
    matrices, one bmm each over runs and matrices, no d_out x d_in matrix; alpha / r0 cancels in the ratio."""
    A, B, c = A.float(), B.float(), c.float()
    own = c.abs() * A.norm(dim=3) * B.norm(dim=2)  # (R, G, r0)
    A2, B2 = A.flatten(0, 1), B.flatten(0, 1)
    gram = (torch.bmm(A2, A2.transpose(1, 2)) * torch.bmm(B2.transpose(1, 2), B2)).view(*own.shape, -1)
    total = torch.einsum("rgi,rgij,rgj->rg", c, gram, c).clamp_min(0).sqrt()  # ||Delta W||_F
    return (own / (total + eps).unsqueeze(-1)).flatten(1)


class ImportanceEMA:
    """Eq. 8: S <- beta S + (1 - beta) s per run, S (R, N) starting at 0 (``ema``), s of Eq. 7 over every group."""

    def __init__(self, runs: int, n_components: int, beta: float, eps: float, device=None,
                 ema: torch.Tensor | None = None):
        self.beta, self.eps = beta, eps
        self.ema = torch.zeros(runs, n_components, device=device)
        if ema is not None:
            self.ema.copy_(ema)

    @torch.no_grad()
    def scores(self, groups: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """s (R, N) of all components, ``groups`` the (A, B, c) of each shape group in module order (Eq. 7)."""
        return torch.cat([component_importance(A, B, c, self.eps) for A, B, c in groups], 1)

    @torch.no_grad()
    def update(self, groups: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.ema.mul_(self.beta).add_(self.scores(groups), alpha=1 - self.beta)


class ComponentMask:
    """Eq. 9's pruning per run: ``mask`` (R, N) is True where c_i := 0, ``keep`` its complement as 0./1. (what c is
    multiplied by), ``kidx`` the device index max(k, 1) - 1 of the threshold, filled on the host (``set_k``)."""

    def __init__(self, runs: int, n_modules: int, r0: int, device=None, mask: torch.Tensor | None = None):
        self.n_modules, self.r0 = n_modules, r0
        self.mask = torch.zeros(runs, n_modules * r0, dtype=torch.bool, device=device)
        if mask is not None:
            self.mask.copy_(mask)
        self.keep = (~self.mask).float()
        self.keep_views = list(self.keep.view(runs, n_modules, r0).unbind(1))  # per module (R, r0)
        self.kidx = torch.zeros(1, dtype=torch.long, device=device)

    def set_k(self, k: int) -> None:
        """Host side, before a pruning step: the threshold is the max(k, 1)-th smallest S (the code's k >= 1)."""
        self.kidx.fill_(max(k, 1) - 1)

    @torch.no_grad()
    def select(self, S: torch.Tensor) -> None:
        """mask = S <= the kidx-th smallest S of its run (one global threshold per run): the top N - max(k, 1) stay.

        The k-th smallest is read from each run's sorted S at a device index (= torch.kthvalue), so a captured CUDA
        graph serves every pruning step."""
        threshold = torch.sort(S, dim=1).values.index_select(1, self.kidx)  # (R, 1)
        torch.le(S, threshold, out=self.mask)
        torch.logical_not(self.mask, out=self.keep)  # writes 0./1. into the float buffer

    @torch.no_grad()
    def apply(self, c: list[torch.Tensor]) -> None:
        """c_i := 0 for the masked components (``c``: each module's (R, r0), in module order)."""
        torch._foreach_mul_(c, self.keep_views)

    def load(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask.bool())
        self.keep.copy_((~self.mask).float())

    def surviving(self, k: int = 0) -> list[int]:
        """Run k's unmasked components per module."""
        return (~self.mask[k]).view(self.n_modules, self.r0).sum(1).tolist()


def dem(groups: Iterable[tuple[torch.Tensor, torch.Tensor]], n_modules: int, r0: int) -> torch.Tensor:
    """Eq. 10: DEM = sum over modules [sum_i Var(A_i) + sum_i Var(B_i)] / (n_modules * 2 * r0) per run, (R,);
    ``groups`` the (A, B) of each shape group, Var unbiased over row i of A and column i of B."""
    total = None
    for A, B in groups:
        v = A.var(dim=3).sum((1, 2)) + B.var(dim=2).sum((1, 2))
        total = v if total is None else total + v
    return total / (n_modules * 2 * r0)
