"""What the benchmarks share (``scripts/bench.py``, ``scripts/profile_step.py``): RoBERTa-base's architecture with
random weights, synthetic batches (every sequence 128 tokens, or CoLA's recorded lengths), dynrank's own step and
PEFT's loop to time, and the timing of a window of steps (CUDA events on a GPU, the host clock without one).

Speed does not depend on the weights, so the model is built from its config; ``cola_lengths`` reads the length
distribution recorded in the repository's ``benchmarks/`` (run from a checkout).
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from .config import compose
from .step import build_stack

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
    as the loop lays them out: packed (``packed_batch.pack``) or padded to the longest of the stack. Each batch also
    says how many tokens are real (``real_tokens``) and how many the step multiplies (``step_tokens``)."""
    from .packed_batch import pack

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
    from dynrank.tasks.glue import classification_losses

    cfg = compose([f"method={method_name}", "task=cola", "budget=r8"])
    return stepper(cfg, build_model(device, model_config), "roberta", partial(classification_losses, runs=runs),
                   mode, device, total_steps, runs)


SCHEDULE_STEPS = 1_000_000  # the schedules' length in a benchmark: every timed step inside their first phase


def stepper(cfg, model, family: str, losses, mode: str, device, total_steps: int, runs: int):
    """``(step(batch) -> loss, adapter parameters)``: ``cfg``'s method wrapped around ``model`` for ``runs`` stacked
    runs, prepared and stepped as the training loop does (bf16 and CUDA graphs as ``mode`` says). The method's
    schedules (DoRA's and AdaLoRA's phases, the learning rate's) span ``SCHEDULE_STEPS``, not the benchmark's few
    steps: a phase that began inside the timed steps would bring a new CUDA-graph key per batch shape (eager steps
    and captures) into them, as the 2026-12-07 rows of dora show (benchmarks/README.md, round four). DoRA's first
    phase (importance EMA and DEM every step, no pruning) is what most of its steps do; its pruning steps (one in
    ``task.pruning_interval``, in the middle 35%) cost more, its last half (mask only) less."""
    total_steps = max(total_steps, SCHEDULE_STEPS)
    stack = build_stack(cfg, model, family=family, seeds=list(range(1, runs + 1)), lrs=[float(cfg.train.lr)] * runs,
                        losses=losses, device=device, total_steps=total_steps, amp="bf16" in mode,
                        graphs=mode.startswith("graph"), compile_model="compile" in mode, clip=1.0)
    step_fn = stack.stepper
    state = {"step": 0}

    def step(batch):
        loss, _ = step_fn(batch, state["step"])
        state["step"] += 1
        return loss

    step.model = stack.step_model
    return step, stack.method.param_counts()["adapter"]


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
    after = (lambda step: model.base_model.update_and_allocate(step)) if method_name == "peft_adalora" else None
    step = peft_loop(model, mode, device, after)
    return step, sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)


def peft_loop(model, mode: str, device, after=None):
    """The loop a PEFT user writes: autocast (bf16 modes on a GPU), backward, clip at 1, AdamW, ``after(step)``
    before zero_grad (AdaLoRA's ``update_and_allocate``); ``step(batch) -> loss``."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    bf16 = "bf16" in mode and device.type == "cuda"
    state = {"step": 0}

    def step(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after is not None:
            after(state["step"])
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        return loss.detach()

    step.model = model
    return step


CUTS = {  # a step's kernel cuts (benchmarks/README.md, rounds eight and nine) that ``without`` switches off
    "share": "groups.shared_operands: each low-rank layer makes its own operands",
    "bind": "groups.bind_groups: each group's factors stacked every step, a gradient add per matrix",
    "node": "layers._LowRank and qkv.project: autograd's path (input gradients added, up-projections out of place)",
    "qkv": "qkv.project: a packed layer's query, key and value apart (each its own node)",
}


@contextmanager
def without(*cuts: str):
    """Inside, the step runs with ``cuts`` (of ``CUTS``) switched off, to measure what each one is worth in one
    process (``scripts/bench.py --ablate``, ``scripts/count_step_ops.py``); the model must be built inside too
    (``bind`` acts when the optimizer's buffer is made)."""
    from contextlib import nullcontext

    from . import packing
    from . import step as stepmod
    from .methods import layers

    unknown = set(cuts) - set(CUTS)
    if unknown:
        raise ValueError(f"unknown cut(s) {sorted(unknown)}; choose from {', '.join(CUTS)}")
    saved = stepmod.shared_operands, stepmod.bind_groups, layers._frozen_linear, packing.project
    if "qkv" in cuts:
        packing.project = lambda sa, h: None
    if "share" in cuts:
        stepmod.shared_operands = lambda model: nullcontext()
    if "bind" in cuts:
        stepmod.bind_groups = lambda model, flat: None
    if "node" in cuts:
        layers._frozen_linear = lambda base: False
    try:
        yield
    finally:
        stepmod.shared_operands, stepmod.bind_groups, layers._frozen_linear, packing.project = saved


class _HostMark:
    """A CUDA event's two methods on the host clock (CPU runs of scripts/profile_step.py --smoke)."""

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end) -> float:
        return 1000 * (end.t - self.t)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_steps(per_step_ms: list[float], per_step_tokens: list[float]) -> list[int]:
    """The timed steps that replayed a CUDA graph: time per step token within twice the median's (a step that met a
    new graph key, a new shape or a method's new schedule phase, ran eagerly or was captured; a long run amortises
    those)."""
    per_token = [ms / t for ms, t in zip(per_step_ms, per_step_tokens)]
    median = sorted(per_token)[len(per_token) // 2]
    return [i for i, x in enumerate(per_token) if x <= 2 * median]


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


# --- BART-base on XSum-shaped data (scripts/bench_seq2seq.py, and scripts/estimate.py's Table 4 workload) ----------
# XSum's published lengths: Narayan et al. 2018 ("Don't Give Me the Details, Just the Summary!", EMNLP), Table 1:
# documents 431.07 words on average, summaries 23.26 words (one sentence). Table 1 gives means only, so the shape
# is assumed: log-normal, coefficient of variation 0.75 for documents (news articles: long right tail) and 0.25
# for the one-sentence summaries. BART's BPE tokens per word: 1.2, assumed (BART's tokenizer is not readable
# offline here; BPE splits rarer words). Each side adds BART's <s> and </s>, and is truncated as XsumTask truncates
# (task.max_length 768, task.max_target_length 64).
XSUM_WORDS = {"document": (431.07, 0.75), "summary": (23.26, 0.25)}  # (mean words, coefficient of variation)
XSUM_SOURCE = "Narayan et al. 2018, Table 1 (means); log-normal shape and BPE tokens per word assumed"
TOKENS_PER_WORD = 1.2


def xsum_lengths(n: int, seed: int = 0, tokens_per_word: float = TOKENS_PER_WORD, max_source: int = 768,
                 max_target: int = 64) -> list[tuple[int, int]]:
    """``n`` (source tokens, summary tokens) pairs drawn from the XSum length model above (specials included)."""
    import math
    import random

    rng = random.Random(seed)

    def draw(mean, cv, cap):
        sigma = math.sqrt(math.log(1 + cv * cv))
        words = rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
        return min(cap, max(1, round(words * tokens_per_word)) + 2)

    return [(draw(*XSUM_WORDS["document"], max_source), draw(*XSUM_WORDS["summary"], max_target)) for _ in range(n)]


def bart_base_config(tiny: bool = False):
    """BART-base's architecture (facebook/bart-base's config.json: 6+6 layers, d_model 768, 12 heads, FFN 3,072,
    50,265 tokens, 1,024 positions, ids bos 0 / pad 1 / eos 2, decoder start 2, forced BOS 0 and EOS 2; dropout,
    attention and activation dropout 0.1: each is a pass of the training step); ``tiny``:
    the same with 2+2 layers of width 32 and 1,000 tokens (CPU runs of the benchmark)."""
    from transformers import BartConfig

    size = (dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=1000) if tiny else
            dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=50265))
    return BartConfig(**size, max_position_embeddings=1024, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, dropout=0.1,
                      attention_dropout=0.1, activation_dropout=0.1)


def build_bart(device, tiny: bool = False):
    """BartForConditionalGeneration with random weights (speed does not depend on them), generation config as
    bart-base's (forced BOS 0; task.generate's settings are passed to each search)."""
    from transformers import BartForConditionalGeneration

    torch.manual_seed(0)
    model = BartForConditionalGeneration(bart_base_config(tiny))
    model.generation_config.forced_bos_token_id = 0
    return model.to(device)


def seq2seq_batches(pairs: list[tuple[int, int]], batch_size: int, n: int, device, vocab: int, multiple: int,
                    runs: int = 1, packed: bool = False):
    """``n`` batches of ``batch_size`` (source, summary) length pairs taken in turn from ``pairs``, as XsumTask.collate
    builds them: sources padded (pad 1) to a multiple of ``multiple``, labels padded with -100 likewise; or
    ``packed``, as XsumTask.packed_batch packs them for ``runs`` stacked runs (``packed_batch.pack_seq2seq``); and per
    batch its (real, computed) token counts, source + summary (computed: padded, or packed rows with filler)."""
    g = torch.Generator().manual_seed(0)
    out, counts = [], []
    for b in range(n):
        chunk = [pairs[(b * batch_size + i) % len(pairs)] for i in range(batch_size)]
        if packed:
            from .packed_batch import pack_seq2seq

            src = [[0] + torch.randint(3, vocab, (s - 2,), generator=g).tolist() + [2] for s, _ in chunk]
            tgt = [[0] + torch.randint(3, vocab, (t - 2,), generator=g).tolist() + [2] for _, t in chunk]
            batch = pack_seq2seq(src, tgt, runs, 1, 2, multiple, 1024)  # BART-base's ids and 1,024 positions
            out.append({k: v.to(device) for k, v in batch.items()})
            counts.append((sum(s + t for s, t in chunk), batch["input_ids"].numel() + batch["labels"].numel()))
            continue
        S = -(-max(s for s, _ in chunk) // multiple) * multiple
        T = -(-max(t for _, t in chunk) // multiple) * multiple
        ids = torch.full((batch_size, S), 1, dtype=torch.long)
        mask = torch.zeros(batch_size, S, dtype=torch.long)
        labels = torch.full((batch_size, T), -100, dtype=torch.long)
        for i, (s, t) in enumerate(chunk):
            ids[i, :s] = torch.randint(3, vocab, (s,), generator=g)
            mask[i, :s] = 1
            labels[i, :t] = torch.randint(3, vocab, (t,), generator=g)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
        counts.append((sum(s + t for s, t in chunk), batch_size * (S + T)))
    return out, counts


def xsum_batches(method: str, device, runs: int, n: int, pairs: list[tuple[int, int]], vocab: int, packed: bool,
                 per_run: int | None = None, pads_as=None):
    """``n`` XSum training batches of ``runs`` runs of ``method`` on ``device``, each run the method's XSum batch
    (conf/hparams; ``per_run`` instead if given), padded to the multiple a run on ``pads_as`` (default ``device``)
    pads to (``device.fast_path``) or packed (``seq2seq_batches``): (batches, their (real, computed) token counts,
    per_run, the pad multiple)."""
    from .device import fast_path

    cfg = compose([f"method={method}", "task=xsum", "model=bart_base"])
    per_run = per_run or int(cfg.train.batch_size)
    multiple = fast_path(cfg, pads_as or device)["pad_to_multiple"]
    batches, counts = seq2seq_batches(pairs, per_run * runs, n, device, vocab, multiple, runs, packed)
    return batches, counts, per_run, multiple


def dynrank_seq2seq_runner(method_name: str, mode: str, device, total_steps: int, runs: int = 1, tiny: bool = False):
    """dynrank's step for ``runs`` stacked runs of ``method_name`` on BART-base (XSum's config: the method's XSum
    learning rate), with XsumTask's loss."""
    from dynrank.tasks.xsum import XsumTask

    cfg = compose([f"method={method_name}", "task=xsum", "model=bart_base", "budget=r8"])
    task = XsumTask(cfg, None)
    return stepper(cfg, build_bart(device, tiny), "bart", partial(task.run_losses, runs=runs), mode, device,
                   total_steps, runs)


def peft_seq2seq_runner(mode: str, device, tiny: bool = False):
    """PEFT's LoRA on BART-base as a PEFT user trains it: r 8, q/k/v/out_proj/fc1/fc2 (dynrank's targets), autocast,
    backward, clip, AdamW."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_bart(device, tiny), LoraConfig(
        r=8, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        task_type="SEQ_2_SEQ_LM"))
    step = peft_loop(model, mode, device)
    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)
