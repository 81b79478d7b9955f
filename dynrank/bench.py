"""What the benchmarks share (``scripts/bench.py``, ``scripts/profile_step.py``): RoBERTa-base's architecture with
random weights, synthetic batches (every sequence 128 tokens, or CoLA's recorded lengths), dynrank's own step and
PEFT's loop to time, and the timing of a window of steps (CUDA events on a GPU, the host clock without one).

Speed does not depend on the weights, so the model is built from its config; ``cola_lengths`` reads the length
distribution recorded in the repository's ``benchmarks/`` (run from a checkout).
"""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch

from .config import compose
from .step import make_optimizer, make_stepper, prepare_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TARGET_REGEX = r".*layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


def cola_lengths() -> list[int]:
    """Token counts of GLUE CoLA's training sentences (recorded: benchmarks/cola_train_lengths.json)."""
    return json.loads((BENCHMARKS / "cola_train_lengths.json").read_text())["lengths"]


# Real length distributions (benchmarks/*_lengths.json: MiniLM's WordPiece as RoBERTa's stand-in) and each task's
# training batch per run (conf/task: the paper's Table 8); squad: SQuAD v1.1 dev windows (its train set is not here).
REAL = {"cola": ("cola_train", 16), "sst2": ("sst2_train", 64), "mrpc": ("mrpc_train", 16), "rte": ("rte_train", 16),
        "stsb": ("stsb_train", 16), "qnli": ("qnli_dev", 16), "squad": ("squad_v1_dev", 16)}


def real_lengths(setting: str) -> list[int]:
    """The recorded token counts of ``setting`` (a key of ``REAL``), expanded from their histogram."""
    d = json.loads((BENCHMARKS / f"{REAL[setting][0]}_lengths.json").read_text())
    if "lengths" in d:
        return d["lengths"]
    return [int(n) for n, count in d["histogram"].items() for _ in range(int(count))]


def real_batches(setting: str, n: int, device, vocab: int, runs: int, packed: bool, pad_multiple: int = 8,
                 batch_size: int | None = None, seed: int = 0):
    """``n`` steps of ``runs`` runs, each run its own batch of the task's size drawn from its real lengths, laid out
    as the loop lays them out: packed (``packing.pack``) or padded to the longest of the stack. Each batch also
    says how many tokens are real (``real_tokens``) and how many the step multiplies (``step_tokens``)."""
    from .packing import pack

    lengths = real_lengths(setting)
    bs = batch_size or REAL[setting][1]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lens = [lengths[int(i)] for i in torch.randint(len(lengths), (runs * bs,), generator=g)]
        rows = [[0, *torch.randint(3, vocab, (m - 2,), generator=g).tolist(), 2] for m in lens]
        labels = torch.randint(0, 2, (runs * bs,), generator=g)
        if packed:
            b = pack(rows, runs, pad_id=1, position_offset=2, multiple=pad_multiple)
        else:
            L = -(-max(lens) // pad_multiple) * pad_multiple
            ids = torch.full((len(rows), L), 1, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
            b = {"input_ids": ids, "attention_mask": (ids != 1).long()}
        b = {k: v.to(device) for k, v in b.items()}
        b["labels"] = labels.to(device)
        out.append((b, sum(lens), b["input_ids"].numel()))
    return out


def make_batches(setting: str, n: int, device, vocab: int, lengths: list[int], pad_multiple: int,
                 batch_size: int | None = None):
    """``n`` random batches: ``fixed`` = L=128, batch 32; ``cola`` = CoLA's lengths, batch 16 (or ``batch_size``)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if setting == "fixed":
            bs, L = batch_size or 32, 128
            lens = [L] * bs
        else:
            bs = batch_size or 16
            lens = [lengths[int(torch.randint(len(lengths), (1,), generator=g))] for _ in range(bs)]
            L = -(-max(lens) // pad_multiple) * pad_multiple
        ids = torch.randint(3, vocab, (bs, L), generator=g)
        mask = torch.zeros(bs, L, dtype=torch.long)
        for i, n_tok in enumerate(lens):
            mask[i, :n_tok] = 1
            ids[i, n_tok:] = 1
        labels = torch.randint(0, 2, (bs,), generator=g)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
    return out


def build_model(device, model_config: dict | None = None):
    """RoBERTa-base's architecture with random weights (``model_config`` overrides RobertaConfig's fields)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(num_labels=2, **(model_config or {}))).to(device)


def dynrank_runner(method_name: str, mode: str, device, total_steps: int, model_config: dict | None = None,
                   runs: int = 1):
    """dynrank's own step (``dynrank.step.make_stepper``: eager, or a CUDA graph in the graph modes) for ``runs``
    stacked runs of ``method_name`` (seeds 1..runs, the method's CoLA learning rate); a batch holds every run's."""
    from dynrank import methods
    from dynrank.tasks.glue import classification_losses

    cfg = compose([f"method={method_name}", "task=cola", "budget=r8"])
    model = build_model(device, model_config)
    method = methods.build(cfg, "roberta", runs=runs)
    model = method.wrap(model)
    method.init_runs(list(range(1, runs + 1)))
    bf16 = "bf16" in mode
    step_model = prepare_model(model, method, device, bf16, "compile" in mode, seeds=list(range(1, runs + 1)))
    method.setup(total_steps)
    optimizer = make_optimizer(cfg.train, method, [float(cfg.train.lr)] * runs, total_steps)
    stepper = make_stepper(step_model, method, partial(classification_losses, runs=runs), optimizer, 1.0, bf16,
                           device, graphs=mode.startswith("graph"))
    state = {"step": 0}

    def step(batch):
        loss, _ = stepper(batch, state["step"])
        state["step"] += 1
        return loss

    return step, method.param_counts()["adapter"]


def peft_runner(method_name: str, mode: str, device, total_steps: int):
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    model = build_model(device)
    if method_name == "peft_adalora":
        config = AdaLoraConfig(init_r=12, target_r=8, lora_alpha=8, lora_dropout=0.1, target_modules=TARGET_REGEX,
                               total_step=total_steps, tinit=int(0.15 * total_steps), tfinal=int(0.5 * total_steps),
                               deltaT=10, task_type="SEQ_CLS")
    else:
        config = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, target_modules=TARGET_REGEX, task_type="SEQ_CLS",
                            use_dora=method_name == "peft_dora")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    bf16 = "bf16" in mode
    state = {"step": 0}

    def step(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if method_name == "peft_adalora":
            model.base_model.update_and_allocate(state["step"])
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss.detach()

    return step, sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)


class _HostMark:
    """A CUDA event's two methods on the host clock (CPU runs of scripts/profile_step.py --smoke)."""

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end) -> float:
        return 1000 * (end.t - self.t)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, batches, n: int, device):
    """Runs ``n`` steps over ``batches``: (wall s, per-step ms, samples, last loss). The per-step times are on the
    GPU's timeline (CUDA events; idle gaps included), on the host clock without a GPU."""
    t0 = time.perf_counter()
    samples = 0
    marks = [torch.cuda.Event(enable_timing=True) if device.type == "cuda" else _HostMark() for _ in range(n + 1)]
    marks[0].record()
    for i in range(n):
        b = batches[i % len(batches)]
        last = step(b)
        marks[i + 1].record()
        samples += b["input_ids"].shape[0]
    synchronize(device)
    dt = time.perf_counter() - t0
    return dt, [marks[i].elapsed_time(marks[i + 1]) for i in range(n)], samples, last
