"""DyLoRA (Valipour et al., EACL 2023): one LoRA adapter trained for every rank b <= r_max at once (docs/methods.md).

Each optimizer step samples one rank b uniformly from [r_min, r_max] (one b for all modules, as the authors'
``run_glue.py``), and every adapted matrix uses the truncated product

    h = W0 x + (alpha / b) * B[:, :b] A[:b, :] dropout(x)            (DyLoRA Eq. 3-4)

alpha / b as the authors' code (huawei-noah/Efficient-NLP, DyLoRA/loralib: alpha / r_max times sqrt(r_max / b) on
both factors). Frozen mode (the paper's Eq. 5, the code's ``set_rank(b, frozen=True)``): only row b of A and column b
of B get a gradient; ``method.mode: full`` trains all of 1..b. The modules compute B diag(gate) A x with gate_i =
alpha / b for i < b, 0 after: the same shapes every step. The ranks come from a schedule drawn once from
``method.seed`` (the run's seed), so b is a function of the step and resumes exactly. Dev evaluation uses r_max;
after training, every rank of ``method.eval_ranks`` (``results["extra_evals"]``). Trainable parameters equal LoRA's
at r = r_max; ``export`` writes a PEFT LoRA adapter truncated to ``method.export_rank`` (default r_max).
"""
from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from ..errors import ConfigError
from ..export import save_peft_lora
from .base import Method, freeze_all_but_head, replace_targets
from .layers import LowRankLinear, init_slice, kaiming


class RankState:
    """The rank every DyLoRA module uses, per run, shared by all modules.

    Stored as per-component vectors so every step has the same shapes (no recompiles, no slicing, one CUDA
    graph for every rank): ``gate[k, i] = alpha / b_k`` for i < b_k, else 0, and (frozen mode) ``grad_mask[k]``
    one-hot at i = b_k - 1, for run k's rank b_k of this step. ``B diag(gate) A`` is exactly
    (alpha / b) B[:, :b] A[:b, :]. Tables per b are built once; a step copies rows b_k of them into
    ``gate`` / ``grad_mask`` (device tensors the modules read), with no host-device sync.
    """

    def __init__(self, runs: int, r_max: int, alpha: float, frozen: bool = True):
        self.runs, self.r_max, self.alpha, self.frozen = runs, r_max, alpha, frozen
        self.build(torch.device("cpu"))

    def build(self, device) -> None:
        r = self.r_max
        b = torch.arange(r + 1, dtype=torch.float32).clamp(min=1).unsqueeze(1)  # row b (row 0 unused)
        i = torch.arange(r, dtype=torch.float32).unsqueeze(0)
        self.gates = ((i < b) * (self.alpha / b)).to(device)  # (r + 1, r)
        self.masks = (i == b - 1).float().to(device)
        self.gate = self.gates[r].repeat(self.runs, 1)  # (R, r): this step's
        self.grad_mask = self.masks[r].repeat(self.runs, 1)
        self.eval_gate = self.gates[r].repeat(self.runs, 1)
        self.eval_b = r

    def set_train(self, b: torch.Tensor | int) -> None:
        """Run k uses rank ``b[k]`` (a long tensor (R,) on the device; an int: every run) in the next training step."""
        if isinstance(b, int):
            b = torch.full((self.runs,), b, dtype=torch.long, device=self.gates.device)
        torch.index_select(self.gates, 0, b, out=self.gate)
        torch.index_select(self.masks, 0, b, out=self.grad_mask)

    def set_eval(self, b: int) -> None:
        self.eval_b = b
        self.eval_gate.copy_(self.gates[b].expand_as(self.eval_gate))


class DyLoRALinear(LowRankLinear):
    shares = False  # the rank gate depends on the mode and the sampled rank: its factors, per layer

    def __init__(self, base: nn.Linear, state: RankState, dropout: float):
        super().__init__(base, state.runs, state.r_max, 1.0, dropout)  # the gate carries alpha / b
        self.state = state
        self.reset_runs()

    def factors(self):
        st = self.state
        A, B = self.lora_A, self.lora_B
        if self.training:
            gate = st.gate
            if st.frozen:  # same values; the gradient reaches only component b - 1
                m = st.grad_mask  # (R, r)
                A = A.detach() + (A - A.detach()) * m.unsqueeze(2)
                B = B.detach() + (B - B.detach()) * m.unsqueeze(1)
        else:
            gate = st.eval_gate
        return A, B * gate.unsqueeze(1)  # gate = alpha / b or 0

    def reset_run(self, k, generator):
        init_slice(self.lora_A[k], kaiming(math.sqrt(5), generator))  # as the authors' code / nn.Linear
        with torch.no_grad():
            self.lora_B[k].zero_()

    def truncated(self, b: int, k: int = 0):
        """(A[:b], B[:, :b]) of run k: the adapter at rank b, to be scaled by alpha / b."""
        return self.lora_A[k, :b], self.lora_B[k, :, :b]


def rank_schedule(seed: int, total_steps: int, r_min: int, r_max: int) -> list[int]:
    """The rank of every optimizer step, uniform in [r_min, r_max], a function of (seed, step)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(r_min, r_max + 1, (int(total_steps),), generator=g).tolist()


class DyLoRA(Method):
    name = "dylora"

    def __init__(self, cfg, budget, family, runs: int = 1):
        super().__init__(cfg, budget, family, runs)
        self.r_min, self.r_max = int(cfg.r_min), int(cfg.r_max)
        if not 1 <= self.r_min <= self.r_max:
            raise ConfigError(f"DyLoRA needs 1 <= method.r_min <= method.r_max (got r_min={self.r_min}, "
                              f"r_max={self.r_max}); r_max defaults to budget.r")
        self.alpha = float(cfg.alpha)
        self.state = RankState(self.runs, self.r_max, self.alpha, frozen=str(cfg.mode) == "frozen")  # or full: SCHEMA
        self.seeds = [int(cfg.seed)] * self.runs  # the rank schedules' seeds (init_runs: the runs')
        self.schedule: list[list[int]] = [[] for _ in range(self.runs)]  # per run, the rank of every step
        self.step = 0

    def wrap(self, model):
        freeze_all_but_head(model)
        p = float(self.cfg.dropout)
        self.layers = replace_targets(model, self.family, lambda t: DyLoRALinear(t.module, self.state, p))
        self.finish_wrap(model)
        return model

    def init_runs(self, seeds, method_cfgs=None):
        """Each run draws its ranks from its own ``method.seed`` (by default the run's seed), as it would alone."""
        super().init_runs(seeds, method_cfgs)
        self.seeds = [int(c.seed) for c in method_cfgs] if method_cfgs else list(seeds)

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        device = self.layers[0][1].lora_A.device
        self.state.build(device)  # the loop has moved the model by now
        self.schedule = [rank_schedule(s, total_steps, self.r_min, self.r_max) for s in self.seeds]
        last = torch.full((self.runs, 1), self.r_max, dtype=torch.long)  # after the last step: r_max
        self._ranks = torch.cat([torch.tensor(self.schedule, dtype=torch.long).view(self.runs, -1), last], 1).to(device)
        self._set_step(0)

    def _set_step(self, step: int) -> None:
        self.step = step
        self.state.set_train(self._ranks[:, min(step, self._ranks.shape[1] - 1)])

    def after_step(self, step: int) -> None:
        self._set_step(step)  # the rank of the next step

    def prepare_step(self, step: int) -> None:
        self._set_step(step)

    def state_dict(self):
        return {"step": torch.full((self.runs,), self.step, dtype=torch.long)}

    def load_state_dict(self, state):
        if "step" in state and hasattr(self, "_ranks"):
            self._set_step(int(state["step"].max()))

    def eval_ranks(self) -> list[int]:
        ranks = sorted({int(r) for r in self.cfg.eval_ranks if 1 <= int(r) <= self.r_max} | {self.r_max})
        return ranks

    def final_evaluation(self, evaluate):
        out = [{} for _ in range(self.runs)]
        try:
            for b in self.eval_ranks():
                self.state.set_eval(b)
                for k, metrics in enumerate(evaluate()):
                    out[k][f"rank_{b}"] = metrics
        finally:
            self.state.set_eval(self.r_max)
        return out

    def summary(self, k: int = 0) -> dict:
        hist = Counter(self.schedule[k][: self.step])
        return {"r_min": self.r_min, "r_max": self.r_max, "mode": "frozen" if self.state.frozen else "full",
                "scaling": "alpha / b", "alpha": self.alpha, "eval_ranks": self.eval_ranks(),
                "sampled_ranks": {str(b): hist.get(b, 0) for b in range(self.r_min, self.r_max + 1)}}

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        b = int(self.cfg.export_rank or self.r_max)
        if not 1 <= b <= self.r_max:
            raise ConfigError(f"method.export_rank must be in [1, {self.r_max}] (got {b})")
        adapters = {t.name: dict(zip("AB", m.truncated(b, k)), alpha=self.alpha) for t, m in self.layers}
        return save_peft_lora(out_dir, self.model, base_name, task_type, adapters, head=self.head(k))


METHOD = DyLoRA
