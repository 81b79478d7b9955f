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

Deviation: PEFT crashes (``kthvalue`` with k = 0) when r0 == budget.r; here nothing is masked then.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..config import initial_budget
from ..errors import ConfigError
from ..models import MATRIX_TYPES
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

    def factors(self):
        return self.lora_A * self.lora_E, self.lora_B

    def reset_run(self, k, generator):
        init_slice(self.lora_A[k], normal(0.02, generator))
        init_slice(self.lora_B[k], normal(0.02, generator))
        with torch.no_grad():
            self.lora_E[k].zero_()


def rank_map(targets, counts) -> dict:
    """Surviving ranks per (matrix type, layer): Figure 2's layout, rows in MATRIX_TYPES order (then BART's
    cross-attention types), columns the layer labels in model order; ``None`` where a matrix is not adapted."""
    types = list(MATRIX_TYPES) + ["cross_" + m for m in MATRIX_TYPES]
    present = {t.matrix_type for t in targets}
    rows = [m for m in types if m in present] + sorted(present - set(types))
    cols = list(OrderedDict.fromkeys(t.layer for t in targets))
    grid = [[None] * len(cols) for _ in rows]
    for t, c in zip(targets, counts):
        grid[rows.index(t.matrix_type)][cols.index(t.layer)] = int(c)
    return {"rows": rows, "cols": cols, "counts": grid}


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
        # shape groups: Q (lora_A) by d_in, P (lora_B) by d_out
        self.groups_A = self._group(lambda m: m.lora_A.shape[2])
        self.groups_B = self._group(lambda m: m.lora_B.shape[1])
        self.finish_wrap(model)
        self._ready = False
        return model

    def _group(self, key) -> list[tuple[int, list[int]]]:
        g: dict[int, list[int]] = {}
        for i, m in enumerate(self.modules):
            g.setdefault(int(key(m)), []).append(i)
        return sorted(g.items())

    def setup(self, total_steps: int) -> None:
        """Schedule (PEFT total_step, tinit, tfinal) and the device state: EMA banks and the mask, per run."""
        super().setup(total_steps)
        T = int(total_steps)
        self.tinit = int(float(self.cfg.tinit_fraction) * T)
        self.tfinal = int(float(self.cfg.tfinal_fraction) * T)
        if T < 1 or self.tinit >= T - self.tfinal:
            raise ConfigError(f"AdaLoRA schedule leaves no budgeting phase: tinit={self.tinit}, tfinal={self.tfinal}, "
                              f"T={T} steps; lower method.tinit_fraction / method.tfinal_fraction or train longer")
        dev, R = self.modules[0].lora_A.device, self.runs
        self.params_E = [m.lora_E for m in self.modules]
        self.params_A = [self.modules[i].lora_A for _, idx in self.groups_A for i in idx]
        self.params_B = [self.modules[i].lora_B for _, idx in self.groups_B for i in idx]
        self.params = self.params_A + self.params_E + self.params_B
        # EMA banks (sensitivity Ibar and uncertainty U) with the module first, then the run: E (n, R, r0, 1);
        # Q per d_in group (G, R, r0, d_in); P per d_out group (G, R, d_out, r0); bank[i] is module i's (R, ...)
        self.bank = {}
        for kind in ("ipt", "unc"):
            self.bank[f"{kind}_E"] = torch.zeros(self.n, R, self.init_r, 1, device=dev)
            for d, idx in self.groups_A:
                self.bank[f"{kind}_A{d}"] = torch.zeros(len(idx), R, self.init_r, d, device=dev)
            for d, idx in self.groups_B:
                self.bank[f"{kind}_B{d}"] = torch.zeros(len(idx), R, d, self.init_r, device=dev)
        self.ema = {kind: [v for d, _ in self.groups_A for v in self.bank[f"{kind}_A{d}"].unbind(0)]
                    + list(self.bank[f"{kind}_E"].unbind(0))
                    + [v for d, _ in self.groups_B for v in self.bank[f"{kind}_B{d}"].unbind(0)]
                    for kind in ("ipt", "unc")}
        self.idx_A = [torch.tensor(idx, device=dev) for _, idx in self.groups_A]
        self.idx_B = [torch.tensor(idx, device=dev) for _, idx in self.groups_B]
        # keep[i, k, j] = 1: triplet j of module i survives run k's latest masking (fp32, multiplied into lambda)
        self.keep = torch.ones(self.n, R, self.init_r, 1, device=dev)
        self.keep_views = list(self.keep.unbind(0))
        self.fixed = torch.zeros((), device=dev)  # 1 once the final rank pattern is set (t == T - tfinal)
        self.eye = torch.eye(self.init_r, device=dev)
        self._ready = True

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

    # --- the budget ---------------------------------------------------------------------------------
    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """PEFT ``RankAllocator.budget_schedule``: (total rank budget, whether to mask) at step index ``step``."""
        T, tinit, tfinal = self.total_steps, self.tinit, self.tfinal
        if step <= tinit:
            return self.init_bgt, False
        if step > T - tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - tinit) / (T - tfinal - tinit)
        return int((self.init_bgt - self.target_bgt) * (mul_coeff ** 3) + self.target_bgt), step % self.deltaT == 0

    def pruning_end_step(self) -> int:
        """The rank pattern is final after the step of index T - tfinal (0-based), i.e. T - tfinal + 1 steps done."""
        return self.total_steps - self.tfinal + 1

    def graph_key(self, step: int):
        """CUDA graphs (train.cuda_graphs): steps that only update the importance share one graph, the fixed
        phase another; masking steps (a new k every time) and the finalising step run eagerly ("eager" is
        base.EAGER)."""
        boundary = self.total_steps - self.tfinal
        if step < boundary:
            return "eager" if self.budget_schedule(step)[1] else "importance"
        return "eager" if step == boundary else "fixed"

    @torch.no_grad()
    def before_zero_grad(self, step: int) -> None:
        """PEFT ``AdaLoraModel.update_and_allocate(step)``; ``step`` = index of the optimizer step just taken."""
        boundary = self.total_steps - self.tfinal
        if step < boundary:
            self._update_importance()
            budget, mask_ind = self.budget_schedule(step)
            if mask_ind:
                self._mask_to_budget(budget)
        elif step == boundary:  # finalise the rank pattern
            self._mask_to_budget(self.target_bgt)
            self.fixed.fill_(1.0)
            for v in self.bank.values():  # PEFT reset_ipt
                v.zero_()
        else:  # mask_using_rank_pattern
            torch._foreach_mul_(self.params_E, self.keep_views)

    def _update_importance(self) -> None:
        """I = |w * grad|; Ibar = b1 Ibar + (1 - b1) I; U = b2 U + (1 - b2) |I - Ibar| (PEFT update_ipt)."""
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
        for (d, _), idx in zip(self.groups_A, self.idx_A):
            s_A[idx] = (b[f"ipt_A{d}"] * b[f"unc_A{d}"]).mean(dim=3)
        for (d, _), idx in zip(self.groups_B, self.idx_B):
            s_B[idx] = (b[f"ipt_B{d}"] * b[f"unc_B{d}"]).mean(dim=2)
        return s_E + (s_A + s_B)

    def _mask_to_budget(self, budget: int) -> None:
        """Each run keeps its triplets scoring above its own (init_bgt - budget)-th smallest score."""
        k = self.init_bgt - budget
        if k <= 0:  # r0 == target rank: nothing to prune (PEFT's kthvalue would fail here)
            return
        s = self.scores()  # (n, R, r0)
        threshold = torch.kthvalue(s.transpose(0, 1).reshape(self.runs, -1), k, dim=1).values  # stays on the device
        self.keep.copy_((s > threshold.view(1, -1, 1)).unsqueeze(-1))
        torch._foreach_mul_(self.params_E, self.keep_views)

    # --- state, summary, counts ---------------------------------------------------------------------
    def run_state_dict(self, k: int):
        if not self._ready:
            return {}
        return {**{f"ema.{name}": v[:, k] for name, v in self.bank.items()}, "keep": self.keep[:, k],
                "fixed": self.fixed}

    @torch.no_grad()
    def load_run_state_dict(self, k: int, state):
        if not state:
            return
        for name, v in self.bank.items():
            v[:, k].copy_(state[f"ema.{name}"])
        self.keep[:, k].copy_(state["keep"])
        self.fixed.copy_(state["fixed"])

    def ranks(self, k: int = 0) -> list[int]:
        """Run k's surviving triplets per module (the latest mask; the final one once ``fixed``)."""
        if not self._ready:
            return [self.init_r] * self.n
        return [int(c) for c in self.keep[:, k].sum(dim=(1, 2)).round().tolist()]

    def summary(self, k: int = 0) -> dict:
        ranks = self.ranks(k)
        fixed = bool(self._ready and self.fixed.item() > 0)
        return {
            "rank_map": rank_map(self.targets, ranks),
            "rank_pattern": {t.name: r for t, r in zip(self.targets, ranks)},
            "final_pattern_fixed": fixed,
            "initial_rank": self.init_r, "target_rank": self.target_r,
            "budget": {"initial": self.init_bgt, "target": self.target_bgt, "surviving": sum(ranks)},
            "schedule": {"total_step": self.total_steps, "tinit": getattr(self, "tinit", None),
                         "tfinal": getattr(self, "tfinal", None), "deltaT": self.deltaT},
            "orth_reg_weight": self.orth_reg_weight,
            "params": self.param_counts(k),
        }

    @torch.no_grad()
    def scalars(self, step: int, k: int = 0) -> dict[str, float]:
        """The total rank budget the schedule sets after ``step`` steps (PEFT's ``budget_schedule`` of the step
        index step - 1), the triplets run k's latest mask keeps, and its orthogonal regulariser (before its weight)."""
        if not self._ready:
            return {}
        reg = self.extra_loss(step - 1)
        out = {"budget": self.budget_schedule(step - 1)[0], "surviving": int(self.keep[:, k].sum())}
        if reg is not None and self.orth_reg_weight:
            out["orth_reg"] = float(reg[k]) / self.orth_reg_weight
        return out

    def artifacts(self, run_dir, run: str = "", k: int = 0):
        """``rank_map.json`` (the final rank pattern) and, where ``dynrank.rankmap`` exists, ``rank_map.png``
        drawn like the paper's Figure 2 (the same drawing as dora's, for side-by-side comparison)."""
        from pathlib import Path

        from ..results import write_json

        run_dir = Path(run_dir)
        s = self.summary(k)
        write_json(run_dir / "rank_map.json", {key: s[key] for key in ("rank_map", "rank_pattern", "final_pattern_fixed",
                                                                      "initial_rank", "target_rank", "budget")})
        out = [run_dir / "rank_map.json"]
        try:
            from ..rankmap import draw_rank_map
        except ImportError:  # the drawing helper is optional here
            return out
        title = (f"AdaLoRA{' on ' + run if run else ''}\nsurviving triplets (r0={self.init_r} -> r={self.target_r}), "
                 f"mean {s['budget']['surviving'] / self.n:.2f} per matrix")
        out.append(draw_rank_map(s["rank_map"], run_dir / "rank_map.png", title=title, vmax=self.init_r))
        return out

    def param_counts(self, k: int = 0) -> dict[str, int]:
        """Paper convention (AdaLoRA's Table 1, copied by DoRA's Table 2): a surviving triplet costs
        d_in + d_out + 1. ``adapter`` = the final budget: the final rank pattern once fixed, else the uniform
        allocation budget.r per module; ``adapter_initial`` = what trains (r0 triplets per module)."""
        base = super().param_counts(k)
        sizes = [m.lora_A.shape[2] + m.lora_B.shape[1] + 1 for m in self.modules]
        initial = self.init_r * sum(sizes)
        uniform = self.target_r * sum(sizes)
        fixed = self._ready and self.fixed.item() > 0
        final = sum(r * s for r, s in zip(self.ranks(k), sizes)) if fixed else uniform
        head = base["head"]
        return {"adapter": final, "adapter_initial": initial, "adapter_uniform": uniform, "head": head,
                "trainable": final + head, "trainable_initial": base["adapter"] + head, "total": base["total"]}

    # --- export ----------------------------------------------------------------------------------------
    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        """Run k as a PEFT AdaLoRA adapter (``PeftModel.from_pretrained`` loads it): the surviving triplets of the
        final rank pattern (``rank_pattern`` in the config; all r0 triplets while no final pattern exists) and the
        head."""
        from pathlib import Path

        from peft import AdaLoraConfig

        from ..export import TASK_TYPES
        from ..models import HEAD_PREFIXES
        from ..results import save_tensors

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fixed = self._ready and self.fixed.item() > 0
        keep = (self.keep[:, k].view(self.n, self.init_r).bool().cpu() if fixed
                else torch.ones(self.n, self.init_r, dtype=torch.bool))
        tensors, pattern = {}, {}
        for (t, m), kept in zip(self.layers, keep):
            pre = f"base_model.model.{t.name}"
            kept_dev = kept.to(m.lora_A.device)
            tensors[f"{pre}.lora_A"] = m.lora_A[k].detach()[kept_dev].float().cpu().contiguous()
            tensors[f"{pre}.lora_E"] = m.lora_E[k].detach()[kept_dev].float().cpu().contiguous()
            tensors[f"{pre}.lora_B"] = m.lora_B[k].detach()[:, kept_dev].float().cpu().contiguous()
            pattern[f"{t.name}.lora_E"] = kept.tolist()
        for n, p in self.head(k).items():
            tensors[f"base_model.model.{n}"] = p.detach().float().cpu().contiguous().clone()
        T = max(int(self.total_steps), 1)
        config = AdaLoraConfig(
            task_type=TASK_TYPES[task_type], base_model_name_or_path=base_name or None,
            target_modules=[t.name for t in self.targets], init_r=self.init_r, target_r=self.target_r,
            lora_alpha=self.modules[0].lora_alpha, lora_dropout=0.0,
            tinit=getattr(self, "tinit", 0), tfinal=getattr(self, "tfinal", 0), deltaT=self.deltaT,
            beta1=self.beta1, beta2=self.beta2, orth_reg_weight=self.orth_reg_weight, total_step=T,
            rank_pattern=pattern if fixed else None, inference_mode=True,
            modules_to_save=[p for p in HEAD_PREFIXES if any(n.startswith(p + ".") for n, _ in self.model.named_parameters())],
        )
        config.save_pretrained(str(out))
        save_tensors(tensors, out / "adapter_model.safetensors")
        return out


METHOD = AdaLoRA
