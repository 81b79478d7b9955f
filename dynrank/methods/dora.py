"""Dynamic-rank DoRA (Mao et al., ACL 2024): LoRA split into rank-one components, pruned by importance.

Follows ``../shared/paper/METHOD_SPEC.md`` and, where the paper is silent or differs, the authors' code
(github.com/MIkumikumi0116/DoRA, ``Finetune_Utils.py``), which produced the paper's numbers. docs/dora.md maps each
equation to the code, with the schedule's pseudo-code and the derivations. Per run k (the leading run dimension of
``layers.LowRankLinear``), every target matrix gets A (r0 x d_in), B (d_out x r0) and c (r0):

* Eq. 5-6: W = W0 + sum_i c_i B_i A_i, h = W0 x + (alpha / r0) B (c * (A dropout(x))). r0 = ``initial_budget``
  (ceil(1.5 * budget.r) unless ``method.initial_budget``, Table 6); budget.r is the final budget. c starts at 0;
  A and B are Kaiming-uniform with a = ``method.kaiming_a`` (0, as the code; nn.Linear's is sqrt(5)).
* Eq. 7-8: s_i = ||c_i B_i A_i||_F / (||Delta W||_F + eps), S_i <- beta S_i + (1 - beta) s_i (beta 0.9, S from 0),
  after every optimizer step until pruning ends; alpha / r0 cancels in the ratio and is left out; no d_out x d_in
  matrix is formed (|c_i| ||B_i|| ||A_i|| and r0 x r0 Gram matrices, batched per shape group and run).
* Eq. 9: p = int(t - T warmup_frac), P = int(T (1 - warmup_frac - final_frac)); for 0 <= p <= P, every
  ``pruning_interval`` steps and at p = P, c_i := 0 where S_i <= the max(k, 1)-th smallest S of the run (one global
  threshold; k = int(N ((r0 - r) / r0) (p / P)^3), the code's truncations and k >= 1); after P the mask made at p = P
  is re-applied every step. Pruning is gentle: A_i and B_i stay, a pruned c_i may grow back before the next pruning.
* Eq. 10: DEM = sum_modules [sum_i Var(A_i) + sum_i Var(B_i)] / (n_modules * 2 * r0), unbiased variances, added as
  reg_coef * DEM (Table 8's ``task.reg_coef``) while p <= P (the code's 1-based step); ``method.dem=false`` is
  Table 5's ablation.

The pruning (Eq. 7-10: ``BudgetSchedule``, ``ImportanceEMA``, ``ComponentMask``, ``dem``) is plain tensor objects in
``dora_pruning``; the class here builds the layers and wires those objects into the method's hooks. Parameter counts
follow the paper (components at the final budget, d_in + d_out + 1 each); ``export`` drops pruned components and
folds c into B, as a PEFT LoRA adapter with ``rank_pattern`` and ``alpha_pattern``. A step is a fixed number of
batched ops, without ``.item()``; with CUDA graphs, ``graph_key`` = (DEM on, phase ema | prune | fixed).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import initial_budget
from ..errors import ConfigError, TrainingError
from ..export import save_peft_lora
from ..rankmap import build_rank_map, draw_rank_map
from ..results import write_json
from .base import Method, freeze_all_but_head, replace_targets
from . import dora_pruning
from .dora_pruning import BudgetSchedule, ComponentMask, ImportanceEMA
from .groups import factors_of
from .layers import LowRankLinear, init_slice, kaiming


class DoRALinear(LowRankLinear):
    """W0 x + scaling * B_k (c_k * (A_k dropout(x))) (Eq. 6): r0 rank-one components with scalars c, per run k."""

    def __init__(self, base: nn.Linear, runs: int, r0: int, alpha: float, dropout: float, kaiming_a: float = 0.0):
        super().__init__(base, runs, r0, alpha / r0, dropout)
        self.r0 = r0
        self.kaiming_a = kaiming_a
        self.lora_c = nn.Parameter(torch.zeros(runs, r0, device=base.weight.device))
        self.reset_runs()

    factor_params = ("lora_A", "lora_B", "lora_c")

    @staticmethod
    def combine(A, B, c):
        # c is folded into B's columns (d_out x r0) rather than applied to the (tokens x r0) activations
        return A, B * c.unsqueeze(-2)

    def reset_run(self, k, generator):
        init_slice(self.lora_A[k], kaiming(self.kaiming_a, generator))
        init_slice(self.lora_B[k], kaiming(self.kaiming_a, generator))
        with torch.no_grad():
            self.lora_c[k].zero_()

    @torch.no_grad()
    def merge(self, k: int = 0) -> nn.Linear:
        self.base.weight += self.delta_weight(k).to(self.base.weight.dtype)
        return self.base


class DoRA(Method):
    name = "dora"

    def __init__(self, cfg, budget, family: str, runs: int = 1):
        super().__init__(cfg, budget, family, runs)
        self.r = int(budget.r)
        self.r0 = initial_budget(cfg, self.r)
        self.alpha = float(cfg.alpha)
        self.dropout = float(cfg.dropout)
        self.beta = float(cfg.beta)
        self.eps = float(cfg.eps)
        self.warmup_frac = float(cfg.warmup_frac)
        self.final_frac = float(cfg.final_frac)
        self.kaiming_a = float(cfg.kaiming_a)
        self.interval = int(cfg.pruning_interval)  # (values: conf/method/dora.yaml; ranges: config.schema; a sum: below)
        if not (0 <= self.warmup_frac and 0 <= self.final_frac and self.warmup_frac + self.final_frac < 1):
            raise ConfigError(f"method.warmup_frac + method.final_frac must be in [0, 1) "
                              f"(got {self.warmup_frac} + {self.final_frac})")
        self.reg_coef = float(cfg.reg_coef) if bool(cfg.dem) else 0.0
        self.done = False  # the final mask (made at p = P) exists (the same step for every run)

    # --- wrap ---------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        freeze_all_but_head(model)
        pairs = replace_targets(model, self.family, lambda t: DoRALinear(
            t.module, self.runs, self.r0, self.alpha, self.dropout, self.kaiming_a))
        shapes: dict[tuple[int, int], list] = {}
        for t, m in pairs:  # group matrices of one shape: each group is batched with stack + bmm
            shapes.setdefault((m.base.in_features, m.base.out_features), []).append((t, m))
        self.layers = [tm for group in shapes.values() for tm in group]
        self._groups, start = [], 0
        for group in shapes.values():
            self._groups.append((start, start + len(group)))
            start += len(group)
        self._c = [m.lora_c for _, m in self.layers]  # (R, r0) each: what the pruning mask multiplies
        self.n_modules = len(self.layers)
        self.n_components = self.n_modules * self.r0
        self.finish_wrap(model)
        self._alloc(self.layers[0][1].lora_A.device)
        return model

    def _alloc(self, device, importance: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> None:
        """Method state per run: S (EMA importance, Eq. 8) and the latest pruning mask (Eq. 9)."""
        self.importance = ImportanceEMA(self.runs, self.n_components, self.beta, self.eps, device, importance)
        self.pruning = ComponentMask(self.runs, self.n_modules, self.r0, device, mask)
        self._prepared = None

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        self.schedule = BudgetSchedule(total_steps, self.warmup_frac, self.final_frac, self.interval,
                                       self.n_components, self.r0, self.r)
        device = self._c[0].device
        if self.importance.ema.device != device:
            self._alloc(device, self.importance.ema, self.pruning.mask)

    def pruning_end_step(self) -> int:
        return self.schedule.end_step()

    def factor_groups(self, *names: str):
        """Per shape group, each of ``names`` (``lora_A``, ``lora_B``, ``lora_c``) as one tensor (R, G, ...): the
        parameters themselves where the optimizer's buffer holds them side by side, else stacked
        (``groups.factors_of``)."""
        for a, b in self._groups:
            yield factors_of([m for _, m in self.layers[a:b]], names)

    # --- Eq. 10: DEM --------------------------------------------------------------------------
    def dem(self) -> torch.Tensor:
        return dora_pruning.dem(self.factor_groups("lora_A", "lora_B"), self.n_modules, self.r0)

    def extra_loss(self, step: int) -> torch.Tensor | None:
        if not self._dem_on(step):
            return None
        return self.reg_coef * self.dem()

    def _dem_on(self, step: int) -> bool:
        """DEM for 0-based ``step``: p is the code's, from its 1-based counter of the step being computed."""
        return self.reg_coef != 0.0 and self.schedule.pruning(step + 1)

    # --- after each optimizer step: EMA (Eq. 8), pruning (Eq. 9), fixed mask ----------------------
    def graph_key(self, step: int):
        """CUDA graphs: steps with the same DEM on/off and the same phase replay one graph."""
        return (self._dem_on(step), self.schedule.phase(step + 1))

    def prepare_step(self, step: int) -> None:
        """Host side, before 0-based ``step``: the pruning step's k goes to a device scalar (no sync)."""
        self._prepared = step
        t = step + 1
        if self.schedule.phase(t) == "prune":
            self.pruning.set_k(self.schedule.n_pruned(t))
        p, P = self.schedule(t)
        if p >= P:
            self.done = True  # the final mask is made by this step (p = P) or already exists

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self._prepared != step - 1:  # called outside the loop (tests): prepare here
            self.prepare_step(step - 1)
        phase = self.schedule.phase(step)
        if phase == "fixed":
            self.pruning.apply(self._c)  # c_i := 0 for masked components
            return
        self.importance.update(self.factor_groups("lora_A", "lora_B", "lora_c"))
        if phase == "prune":
            self.pruning.select(self.importance.ema)
            self.pruning.apply(self._c)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"importance": self.importance.ema, "mask": self.pruning.mask,
                "pruning_done": torch.full((self.runs,), int(self.done), dtype=torch.uint8)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "importance" in state:
            self.importance.ema.copy_(state["importance"])
        if "mask" in state:
            self.pruning.load(state["mask"])
        if "pruning_done" in state:
            self.done = bool(state["pruning_done"].any())

    # --- results --------------------------------------------------------------------------------
    def surviving(self, k: int = 0) -> list[int]:
        """Run k's components per matrix not masked by the latest pruning step (all r0 before any pruning)."""
        return self.pruning.surviving(k)

    def _costs(self) -> list[int]:
        return [m.base.in_features + m.base.out_features + 1 for _, m in self.layers]

    def param_counts(self, k: int = 0) -> dict[str, int]:
        """Paper convention: adapter = components at the final budget, each d_in + d_out + 1.

        Before pruning has ended, the final budget is counted as r components in every matrix.
        ``adapter_initial`` counts all r0 components (what trains until pruning ends).
        """
        costs = self._costs()
        initial = self.r0 * sum(costs)
        if self.done:
            final = sum(n * c for n, c in zip(self.surviving(k), costs))
        else:
            final = self.r * sum(costs)
        base = super().param_counts(k)
        head = base["head"]
        return {"adapter": final, "adapter_initial": initial, "head": head, "trainable": final + head,
                "trainable_initial": initial + head, "total": base["total"]}

    def rank_map(self, k: int = 0) -> dict:
        return build_rank_map((t.matrix_type, t.layer, n) for (t, _), n in zip(self.layers, self.surviving(k)))

    def summary(self, k: int = 0) -> dict:
        surv = self.surviving(k)
        counts = self.param_counts(k)
        return {
            "rank_map": self.rank_map(k),
            "initial_budget": self.r0, "final_budget": self.r,
            "surviving": int(sum(surv)), "components": self.n_components, "pruning_done": self.done,
            "params_initial": counts["adapter_initial"], "params_final": counts["adapter"],
            "ranks": {t.name: int(n) for (t, _), n in zip(self.layers, surv)},
        }

    @torch.no_grad()
    def scalars(self, step: int, k: int = 0) -> dict[str, float]:
        """The budget Eq. 9 sets after ``step`` steps (components kept: N - k), the components the latest
        pruning left of run k (not masked), and run k's DEM of the current A and B (Eq. 10, before reg_coef)."""
        return {"budget": self.schedule.budget(step), "surviving": int((~self.pruning.mask[k]).sum()),
                "dem": float(self.dem()[k])}

    def artifacts(self, run_dir, run: str = "", k: int = 0) -> list[Path]:
        run_dir = Path(run_dir)
        s = self.summary(k)
        write_json(run_dir / "rank_map.json", {key: s[key] for key in
                                                ("rank_map", "initial_budget", "final_budget", "surviving",
                                                 "components", "pruning_done", "ranks")})
        title = (f"DoRA{' on ' + run if run else ''}\nsurviving components (r0={self.r0} -> r={self.r}), "
                 f"mean {s['surviving'] / self.n_modules:.2f} per matrix")
        png = draw_rank_map(s["rank_map"], run_dir / "rank_map.png", title=title, vmax=self.r0)
        return [run_dir / "rank_map.json", png]

    # --- export ---------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        """Run k as a PEFT LoRA adapter: pruned components dropped, c folded into B (B' = B[:, keep] * c[keep])."""
        adapters = {}
        for t, m in self.layers:
            A, B, c = m.lora_A[k], m.lora_B[k], m.lora_c[k]
            keep = (c != 0).nonzero().flatten()  # exactly the components that act on the output
            n = int(keep.numel())
            if n == 0:
                continue  # PEFT rejects rank 0: a matrix with no survivors is simply not targeted
            adapters[t.name] = {"A": A[keep], "B": B[:, keep] * c[keep],
                                "alpha": self.alpha * n / self.r0}  # PEFT scaling alpha_m / n = alpha / r0
        if not adapters:
            raise TrainingError("every DoRA component is zero (c = 0 everywhere); there is no adapter to export")
        return save_peft_lora(out_dir, self.model, base_name, task_type, adapters, head=self.head(k))


METHOD = DoRA
