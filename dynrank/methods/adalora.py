"""AdaLoRA (Zhang et al., 2023), following HF PEFT 0.21's ``AdaLoraModel`` / ``RankAllocator`` exactly; docs/adalora.md
has the details and the parameter counts. Per run (the leading run dimension of ``layers.LowRankLinear``):

* Sec. 3.1, SVD-shaped update (PEFT ``SVDLinear``): h = W0 x + (alpha / (r0 + 1e-5)) P diag(lambda) Q dropout(x),
  Q = ``lora_A`` (r0 x d_in), lambda = ``lora_E`` (r0 x 1), P = ``lora_B`` (d_out x r0); lambda = 0, P, Q ~ N(0, 0.02);
  r0 = ``initial_budget`` (ceil(1.5 * budget.r), as dora), the target average rank budget.r. Orthogonal regulariser
  orth_reg_weight * mean of ||P^T P - I||_F and ||Q Q^T - I||_F, unsquared as the code and PEFT (``extra_loss``).
* Sec. 3.2, importance (PEFT ``update_ipt`` / ``mask_to_budget``): I = |w * grad|, Ibar = beta1 Ibar + (1 - beta1) I,
  U = beta2 U + (1 - beta2) |I - Ibar|, s = Ibar * U, at every step t < T - tfinal; triplet i scores
  s(lambda_i) + mean_j s(Q_ij) + mean_j s(P_ji).
* Sec. 3.3, cubic budget schedule (PEFT ``budget_schedule``), t the 0-based step just taken, tinit = int(0.15 T),
  tfinal = int(0.5 T), deltaT = ``task.pruning_interval``: no masking up to tinit; then b(t) = int((n r0 - n r)
  (1 - (t - tinit) / (T - tfinal - tinit))^3 + n r) and every deltaT steps lambda_i := 0 for the triplets at or below
  the (n r0 - b)-th smallest score (one global threshold); at t = T - tfinal the final mask at b = n r (EMAs reset),
  re-applied after every later step. It runs in ``before_zero_grad`` (after the optimizer and scheduler steps, before
  zero_grad), where PEFT's ``update_and_allocate`` sits: this step's clipped gradients, the updated weights.

The importance, the schedule and the masking (Sec. 3.2-3.3) are the plain tensor objects of ``adalora_allocator``
(``BudgetSchedule``, ``RankAllocator``); the class here builds the layers, adds the regulariser and wires the allocator
into its hooks. The rank map is ``rankmap.build_rank_map``'s, the export ``export.save_peft_adalora``'s.

Deviation: PEFT crashes (``kthvalue`` with k = 0) when r0 == budget.r; here nothing is masked then.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import initial_budget
from ..errors import ConfigError
from ..export import save_peft_adalora
from ..rankmap import build_rank_map, draw_rank_map
from ..results import write_json
from .adalora_allocator import BudgetSchedule, RankAllocator, shape_groups
from .base import Method, freeze_all_but_head, replace_targets
from .layers import LowRankLinear, init_slice, normal


class SVDLinear(LowRankLinear):
    """W0 x + P_k diag(lambda_k) Q_k dropout(x) * alpha / (r0 + 1e-5) for run k, as PEFT's ``adalora.SVDLinear``."""

    def __init__(self, base: nn.Linear, runs: int, r: int, alpha: float, dropout: float):
        lora_alpha = float(alpha) if alpha > 0 else float(r)  # PEFT's ``scaling``: lora_alpha (r when alpha <= 0)
        # PEFT divides by the fp32 tensor ranknum + 1e-5; the same number as a Python float.
        ranknum = float(torch.tensor(float(r)) + 1e-5)
        super().__init__(base, runs, r, lora_alpha / ranknum, dropout)
        self.lora_alpha, self.ranknum = lora_alpha, ranknum
        B = self.lora_B  # Q = lora_A, lambda = lora_E, P = lora_B: registered in PEFT's order
        del self.lora_B
        self.lora_E = nn.Parameter(torch.zeros(runs, r, 1, device=B.device))  # lambda: singular values
        self.lora_B = B
        self.reset_runs()

    factor_params = ("lora_A", "lora_E", "lora_B")

    @staticmethod
    def combine(A, E, B):
        return A * E, B

    def reset_run(self, k, generator):
        init_slice(self.lora_A[k], normal(0.02, generator))
        init_slice(self.lora_B[k], normal(0.02, generator))
        with torch.no_grad():
            self.lora_E[k].zero_()


class AdaLoRA(Method):
    name = "adalora"

    # --- wrap ---------------------------------------------------------------------------------------
    def wrap(self, model):
        cfg = self.cfg
        self.target_r = int(self.budget.r)
        self.init_r = initial_budget(cfg, self.target_r)
        self.orth_reg_weight = float(cfg.orth_reg_weight)
        self.beta1, self.beta2 = float(cfg.beta1), float(cfg.beta2)
        self.deltaT = int(cfg.deltaT)  # (values: conf/method/adalora.yaml; ranges: config.schema)
        alpha, p = float(cfg.alpha), float(cfg.dropout)
        freeze_all_but_head(model)
        self.layers = replace_targets(model, self.family,
                                      lambda t: SVDLinear(t.module, self.runs, self.init_r, alpha, p))
        self.targets = [t for t, _ in self.layers]
        self.modules = [m for _, m in self.layers]
        self.n = len(self.modules)
        self.init_bgt = self.init_r * self.n  # PEFT RankAllocator.init_bgt
        self.target_bgt = self.target_r * self.n  # PEFT RankAllocator.target_bgt
        # shape groups of the orthogonal regulariser: Q (lora_A) by d_in, P (lora_B) by d_out
        self.groups_A = shape_groups([m.lora_A for m in self.modules], 2)
        self.groups_B = shape_groups([m.lora_B for m in self.modules], 1)
        self.finish_wrap(model)
        self.schedule = self.allocator = None  # (setup: the step count)
        return model

    def setup(self, total_steps: int) -> None:
        """Schedule (PEFT total_step, tinit, tfinal) and the rank allocator's device state, per run."""
        super().setup(total_steps)
        T = int(total_steps)
        tinit = int(float(self.cfg.tinit_fraction) * T)
        tfinal = int(float(self.cfg.tfinal_fraction) * T)
        if T < 1 or tinit >= T - tfinal:
            raise ConfigError(f"AdaLoRA schedule leaves no budgeting phase: tinit={tinit}, tfinal={tfinal}, "
                              f"T={T} steps; lower method.tinit_fraction / method.tfinal_fraction or train longer")
        self.schedule = BudgetSchedule(T, tinit, tfinal, self.deltaT, self.init_bgt, self.target_bgt)
        self.allocator = RankAllocator(self.schedule, [m.lora_A for m in self.modules],
                                       [m.lora_E for m in self.modules], [m.lora_B for m in self.modules],
                                       self.beta1, self.beta2)
        self.eye = torch.eye(self.init_r, device=self.modules[0].lora_A.device)

    # --- the orthogonal regulariser -----------------------------------------------------------------
    def extra_loss(self, step: int):
        """orth_reg_weight * mean_i (||Q_i Q_i^T - I||_F + ||P_i^T P_i - I||_F) / 2 per run (PEFT
        AdaLoraModel.forward): (R,)."""
        if self.orth_reg_weight == 0:
            return None
        dev = self.modules[0].lora_A.device
        with torch.autocast(device_type=dev.type, enabled=False):
            total = 0.0
            for _, idx in self.groups_A:
                Q = torch.stack([self.modules[i].lora_A for i in idx], 1).flatten(0, 1)  # (R*G, r0, d_in)
                total = total + torch.linalg.vector_norm(torch.bmm(Q, Q.transpose(1, 2)) - self.eye,
                                                         dim=(1, 2)).view(self.runs, -1).sum(1)
            for _, idx in self.groups_B:
                P = torch.stack([self.modules[i].lora_B for i in idx], 1).flatten(0, 1)  # (R*G, d_out, r0)
                total = total + torch.linalg.vector_norm(torch.bmm(P.transpose(1, 2), P) - self.eye,
                                                         dim=(1, 2)).view(self.runs, -1).sum(1)
            return self.orth_reg_weight * (total / (2 * self.n))

    # --- the budget (Sec. 3.2-3.3: ``adalora_allocator``) --------------------------------------------------
    def pruning_end_step(self) -> int:
        """The rank pattern is final after the step of index T - tfinal (0-based), i.e. T - tfinal + 1 steps done."""
        return self.schedule.boundary + 1

    def graph_key(self, step: int):
        """CUDA graphs (train.cuda_graphs): steps that only update the importance share one graph, the fixed
        phase another; masking steps (a new k every time) and the finalising step run eagerly ("eager" is
        base.EAGER)."""
        boundary = self.schedule.boundary
        if step < boundary:
            return "eager" if self.schedule(step)[1] else "importance"
        return "eager" if step == boundary else "fixed"

    def before_zero_grad(self, step: int) -> None:
        """PEFT ``AdaLoraModel.update_and_allocate(step)``; ``step`` = index of the optimizer step just taken."""
        self.allocator.update_and_allocate(step)

    # --- state, summary, counts ---------------------------------------------------------------------
    def run_state_dict(self, k: int):
        return self.allocator.state(k) if self.allocator is not None else {}

    def load_run_state_dict(self, k: int, state):
        if state:
            self.allocator.load(k, state)

    def ranks(self, k: int = 0) -> list[int]:
        """Run k's surviving triplets per module (the latest mask; the final one once fixed)."""
        return self.allocator.ranks(k) if self.allocator is not None else [self.init_r] * self.n

    def fixed(self) -> bool:
        """The final rank pattern is set (t = T - tfinal has been taken)."""
        return self.allocator is not None and self.allocator.is_fixed()

    def summary(self, k: int = 0) -> dict:
        ranks = self.ranks(k)
        fixed = self.fixed()
        return {
            "rank_map": build_rank_map((t.matrix_type, t.layer, r) for t, r in zip(self.targets, ranks)),
            "rank_pattern": {t.name: r for t, r in zip(self.targets, ranks)},
            "final_pattern_fixed": fixed,
            "initial_rank": self.init_r, "target_rank": self.target_r,
            "budget": {"initial": self.init_bgt, "target": self.target_bgt, "surviving": sum(ranks)},
            "schedule": {"total_step": self.total_steps, "tinit": getattr(self.schedule, "tinit", None),
                         "tfinal": getattr(self.schedule, "tfinal", None), "deltaT": self.deltaT},
            "orth_reg_weight": self.orth_reg_weight,
            "params": self.param_counts(k),
        }

    @torch.no_grad()
    def scalars(self, step: int, k: int = 0) -> dict[str, float]:
        """The total rank budget the schedule sets after ``step`` steps (PEFT's ``budget_schedule`` of the step
        index step - 1), the triplets run k's latest mask keeps, and its orthogonal regulariser (before its weight)."""
        if self.allocator is None:
            return {}
        reg = self.extra_loss(step - 1)
        out = {"budget": self.schedule(step - 1)[0], "surviving": int(self.allocator.keep[:, k].sum())}
        if reg is not None and self.orth_reg_weight:
            out["orth_reg"] = float(reg[k]) / self.orth_reg_weight
        return out

    def artifacts(self, run_dir, run: str = "", k: int = 0):
        """``rank_map.json`` (the final rank pattern) and ``rank_map.png`` drawn like the paper's Figure 2 (the same
        drawing as dora's, for side-by-side comparison)."""
        run_dir = Path(run_dir)
        s = self.summary(k)
        write_json(run_dir / "rank_map.json", {key: s[key] for key in ("rank_map", "rank_pattern", "final_pattern_fixed",
                                                                      "initial_rank", "target_rank", "budget")})
        title = (f"AdaLoRA{' on ' + run if run else ''}\nsurviving triplets (r0={self.init_r} -> r={self.target_r}), "
                 f"mean {s['budget']['surviving'] / self.n:.2f} per matrix")
        png = draw_rank_map(s["rank_map"], run_dir / "rank_map.png", title=title, vmax=self.init_r)
        return [run_dir / "rank_map.json", png]

    def param_counts(self, k: int = 0) -> dict[str, int]:
        """Paper convention (AdaLoRA's Table 1, copied by DoRA's Table 2): a surviving triplet costs
        d_in + d_out + 1. ``adapter`` = the final budget: the final rank pattern once fixed, else the uniform
        allocation budget.r per module; ``adapter_initial`` = what trains (r0 triplets per module)."""
        base = super().param_counts(k)
        sizes = [m.lora_A.shape[2] + m.lora_B.shape[1] + 1 for m in self.modules]
        initial = self.init_r * sum(sizes)
        uniform = self.target_r * sum(sizes)
        fixed = self.fixed()
        final = sum(r * s for r, s in zip(self.ranks(k), sizes)) if fixed else uniform
        head = base["head"]
        return {"adapter": final, "adapter_initial": initial, "adapter_uniform": uniform, "head": head,
                "trainable": final + head, "trainable_initial": base["adapter"] + head, "total": base["total"]}

    # --- export ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        """Run k as a PEFT AdaLoRA adapter (``PeftModel.from_pretrained`` loads it): the surviving triplets of the
        final rank pattern (``rank_pattern`` in the config; all r0 triplets while no final pattern exists) and the
        head."""
        fixed = self.fixed()
        keep = (self.allocator.keep[:, k].view(self.n, self.init_r).bool().cpu() if fixed
                else torch.ones(self.n, self.init_r, dtype=torch.bool))
        adapters = {}
        for (t, m), kept in zip(self.layers, keep):
            on = kept.to(m.lora_A.device)
            adapters[t.name] = {"A": m.lora_A[k][on], "E": m.lora_E[k][on], "B": m.lora_B[k][:, on]}
        config = dict(init_r=self.init_r, target_r=self.target_r, lora_alpha=self.modules[0].lora_alpha,
                      tinit=getattr(self.schedule, "tinit", 0), tfinal=getattr(self.schedule, "tfinal", 0),
                      deltaT=self.deltaT, beta1=self.beta1, beta2=self.beta2, orth_reg_weight=self.orth_reg_weight,
                      total_step=max(int(self.total_steps), 1),
                      rank_pattern={f"{t.name}.lora_E": kept.tolist() for t, kept in zip(self.targets, keep)}
                      if fixed else None)
        return save_peft_adalora(out_dir, self.model, base_name, task_type, adapters, config, head=self.head(k))


METHOD = AdaLoRA
