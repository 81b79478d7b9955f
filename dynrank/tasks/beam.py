"""XSum's beam search, fast: the summaries of ``model.generate`` token for token, at a fraction of its cost.

``transformers``' beam search (``GenerationMixin._beam_search``, vectorised since 4.50) is ported here step for step
(top 2 x beams continuations, finished hypotheses kept by their length-penalised score, the early-stop heuristic,
the same stopping rule and the same output crop), with the logits processors XSum's settings turn on (no repeated
n-grams, the minimum length, forced BOS on the first and forced EOS on the last step) written as tensor operations.
What makes it fast is the decoder step, not the search:

* the encoder runs once per document, and its keys and values for the cross-attention are projected once per
  document and shared by the document's beams (the beams are the query positions of one cross-attention);
* the decoder's self-attention keeps a static key/value cache (one slot per decoding step), so every step has the
  same shapes and, on a GPU, is captured once per batch as a CUDA graph and replayed;
* batches are as large as the GPU's free memory allows (``docs_per_batch``), the encoder run in chunks;
* a stack of R runs (``dynrank.methods.layers``: rows run-major) decodes all runs' beams in one step: row
  ``(k * B + i) * beams + j`` is run k's beam j of document i, the order ``generate`` gives ``repeat_runs``' rows.

Anything else ``generate`` would do differently makes ``FastBeamSearch.build`` return the reason (a model that is
not BART, greedy search, a logits processor not ported here): the caller then uses ``generate``.
``tests/test_xsum.py`` checks the summaries against ``generate`` on a tiny BART (one run and a stack) on a CPU,
``tests/test_gpu.py`` on a GPU with CUDA graphs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..methods.groups import shared_operands

# Generation-config fields that change nothing here: sampling's (do_sample must be off), assisted decoding's, the
# cache's and compilation's, bookkeeping. Any other field set to something but None/False/its neutral value (NEUTRAL)
# is a logits processor or an output this module does not reproduce, and the fast path is not taken.
IGNORED = {"max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "num_beams",
           "length_penalty", "no_repeat_ngram_size", "forced_bos_token_id", "forced_eos_token_id", "pad_token_id",
           "bos_token_id", "eos_token_id", "decoder_start_token_id", "use_cache", "transformers_version",
           "_from_model_config", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
           "disable_compile", "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
           "eta_cutoff", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
           "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind", "assistant_early_exit",
           "assistant_ensemble_weight", "speculation_type", "max_matching_ngram_size", "prefill_chunk_size",
           "continuous_batching_config", "generation_kwargs"}
NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "num_return_sequences": 1,
           "guidance_scale": 1.0, "num_beam_groups": 1, "diversity_penalty": 0.0, "encoder_no_repeat_ngram_size": 0}

# Hypotheses (rows) per decoding step at most: about where a BART-base decoder step stops gaining from a larger batch
# on an H100/H200 (a 3,072 x 768 GEMM is a few microseconds; larger batches only wait longer for their longest
# summary); memory bounds it further (docs_per_batch).
MAX_ROWS = 3072
ENCODER_CHUNK = 64  # documents (x runs) per encoder call: bounds the encoder's activations in a large batch


@dataclass(frozen=True)
class Settings:
    """What ``generate`` resolves from the model's generation config and ``task.generate`` (its
    ``_prepare_generation_config``, ``_prepare_special_tokens``, ``_prepare_generated_length``) that the search
    reads."""
    num_beams: int
    max_length: int  # decoder tokens in all, the start token included (max_new_tokens + 1)
    min_length: int  # EOS banned while the sequence is shorter (MinLength / MinNewTokensLength processors)
    early_stopping: bool | str
    length_penalty: float
    no_repeat_ngram_size: int
    eos: tuple[int, ...]
    fill: int  # the output's filler (generate: pad_token_id, or the first EOS id when pad is 0 or unset)
    start: int  # decoder_start_token_id (else bos)
    forced_bos: int | None
    forced_eos: tuple[int, ...] | None


def _ids(v) -> tuple[int, ...] | None:
    if v is None:
        return None
    return tuple(int(x) for x in (v.tolist() if torch.is_tensor(v) else v)) if not isinstance(v, int) else (int(v),)


def resolve(model, kwargs: dict) -> Settings | str:
    """The search's settings as ``model.generate(**kwargs)`` resolves them, or why the fast path cannot take them."""
    try:
        gc, extra = model._prepare_generation_config(None, **kwargs)
    except Exception as e:  # transformers' private API moved: generate() still works
        return f"transformers' generation config could not be resolved ({type(e).__name__}: {e})"
    if extra:
        return f"generate() arguments that are model inputs: {sorted(extra)}"
    if not gc.num_beams or gc.num_beams < 2:
        return "num_beams < 2 is greedy search"
    if gc.do_sample:
        return "do_sample (beam sampling)"
    for k, v in gc.to_dict().items():
        if k in IGNORED or v is None or v is False or NEUTRAL.get(k, object()) == v:
            continue
        return f"generation setting {k}={v!r} is not ported to the fast beam search"
    eos = _ids(gc.eos_token_id) or ()
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)
    fill = (pad or eos[0]) if eos else -1  # generate's `pad_token_id or eos_token_id[0] if eos... else -1`
    start = gc.decoder_start_token_id if gc.decoder_start_token_id is not None else gc.bos_token_id
    if start is None or isinstance(start, (list, tuple)):
        return f"decoder_start_token_id {start!r} is not one id"
    max_length = gc.max_new_tokens + 1 if gc.max_new_tokens is not None else int(gc.max_length)
    min_length = int(gc.min_length or 0)
    if gc.min_new_tokens:
        min_length = max(min_length, int(gc.min_new_tokens) + 1)
    bos = None if gc.forced_bos_token_id is None else int(gc.forced_bos_token_id)
    return Settings(int(gc.num_beams), max_length, min_length if eos else 0, gc.early_stopping or False,
                    float(gc.length_penalty), int(gc.no_repeat_ngram_size or 0), eos, int(fill), int(start), bos,
                    _ids(gc.forced_eos_token_id))


# --- the logits processors XSum turns on, as tensor operations ---------------------------------------------------
def process(s: Settings, seqs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``generate``'s processors on (N, V) log-probabilities, ``seqs`` (N, cur_len) the hypotheses so far, in its order:
    NoRepeatNGram, MinLength, ForcedBOS, ForcedEOS."""
    cur_len, n = seqs.shape[1], s.no_repeat_ngram_size
    if n and cur_len >= n:  # every earlier n-gram whose first n-1 tokens are the last n-1: its last token is banned
        windows = seqs.unfold(1, n, 1)  # (N, cur_len - n + 1, n)
        hit = (windows[..., :-1] == seqs[:, cur_len - n + 1:].unsqueeze(1)).all(-1)
        ban = torch.where(hit, -math.inf, 0.0).to(log_probs.dtype)
        log_probs = log_probs.scatter_add(1, windows[..., -1], ban)  # x + 0 = x exactly; x - inf = -inf
    if cur_len < s.min_length:
        log_probs[:, list(s.eos)] = -math.inf
    if s.forced_bos is not None and cur_len == 1:
        log_probs = torch.full_like(log_probs, -math.inf)
        log_probs[:, s.forced_bos] = 0
    if s.forced_eos is not None and cur_len == s.max_length - 1:
        log_probs = torch.full_like(log_probs, -math.inf)
        log_probs[:, list(s.forced_eos)] = 0
    return log_probs


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def beam_search(s: Settings, decoder, batch: int, device) -> torch.Tensor:
    """``GenerationMixin._beam_search`` (no sampling, one return sequence) over ``batch`` documents: (batch, length)
    token ids, the start token first, filled with ``s.fill`` after each summary's end. ``decoder.step(tokens (N,),
    cur_len) -> (N, V)`` float logits of the next token; ``decoder.reorder(beam_idx (N,), cur_len)`` its cache."""
    K, L, prompt = s.num_beams, s.max_length, 1
    keep = max(2, 1 + len(s.eos)) * K
    top_mask = torch.arange(keep, device=device) < K
    eos = torch.tensor(s.eos, device=device, dtype=torch.long)
    running = torch.full((batch, K, L), s.fill, dtype=torch.long, device=device)
    running[:, :, 0] = s.start
    sequences = running.clone()
    running_scores = torch.zeros(batch, K, device=device)
    running_scores[:, 1:] = -1e9
    scores = torch.full((batch, K), -1e9, device=device)
    finished = torch.zeros(batch, K, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    running_idx = torch.full((batch, K, L - prompt), -1, dtype=torch.int32, device=device)
    beam_idx = running_idx.clone()
    offset = torch.arange(batch, device=device).view(-1, 1) * K
    cur_len = prompt
    while True:
        flat = running[:, :, :cur_len].reshape(batch * K, cur_len)
        log_probs = F.log_softmax(decoder.step(flat[:, -1], cur_len).float(), dim=-1)
        log_probs = process(s, flat, log_probs)
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.view(batch, K, vocab) + running_scores[:, :, None]).view(batch, K * vocab)
        # c. the top `keep` continuations of all beams
        top_lp, top_i = torch.topk(log_probs, k=keep)
        src = top_i // vocab
        top_idx = _gather(running_idx, src)
        top_seq = _gather(running, src)
        top_seq[:, :, cur_len] = top_i % vocab
        top_idx[:, :, cur_len - prompt] = (src + offset).to(top_idx.dtype)
        # d. which of them finish (EOS, or the maximum length)
        hits = torch.isin(top_seq[:, :, cur_len], eos) if len(s.eos) else torch.zeros_like(top_mask).expand(batch, -1)
        if cur_len + 1 >= L:
            hits = torch.ones_like(hits)
        # e. the best `K` unfinished ones run on
        run_lp = top_lp + hits.float() * -1.0e9
        nxt = torch.topk(run_lp, k=K)[1]
        running, running_scores, running_idx = _gather(top_seq, nxt), _gather(run_lp, nxt), _gather(top_idx, nxt)
        # f. the finished ones join the kept hypotheses if they score better (length-penalised)
        just = hits & top_mask[None, :]
        fin_lp = top_lp / ((cur_len + 1 - prompt) ** s.length_penalty)
        fin_lp = fin_lp + (finished.all(-1, keepdim=True) & (s.early_stopping is True)).float() * -1.0e9
        fin_lp = fin_lp + (~improvable).float() * -1.0e9
        fin_lp = fin_lp + (~just) * -1.0e9
        merged = torch.topk(torch.cat((scores, fin_lp), 1), k=K)[1]
        sequences = _gather(torch.cat((sequences, top_seq), 1), merged)
        scores = _gather(torch.cat((scores, fin_lp), 1), merged)
        beam_idx = _gather(torch.cat((beam_idx, top_idx), 1), merged)
        finished = _gather(torch.cat((finished, just), 1), merged)
        # g. the cache follows the running beams; stop when no batch item can improve
        decoder.reorder(running_idx[..., cur_len - prompt].reshape(-1).long(), cur_len)
        cur_len += 1
        best_len = L - prompt if s.early_stopping == "never" and s.length_penalty > 0.0 else cur_len - prompt
        best_running = running_scores[:, :1] / (best_len ** s.length_penalty)
        worst_finished = torch.where(finished, torch.min(scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        go_on = torch.any(improvable) & ~(torch.all(finished) & (s.early_stopping is True)) & ~torch.all(hits)
        if not bool(go_on):
            break
    sequences, beam_idx = sequences[:, 0], beam_idx[:, 0]
    return sequences[:, :prompt + int((beam_idx + 1).bool().sum(1).max())]


# --- the decoder step: shared cross-attention keys/values, a static self-attention cache -------------------------
def _heads(x: torch.Tensor, rows: int, heads: int) -> torch.Tensor:
    """(rows * t, ..., d_model) -> (rows, heads, t, d_model / heads)."""
    return x.reshape(rows, -1, heads, x.shape[-1] // heads).transpose(1, 2)


class BartDecoder:
    """BART's decoder (``BartDecoder`` + ``lm_head`` + ``final_logits_bias``) one token at a time, through the model's
    own submodules (so every method's adapters, stacked runs included, take part), for ``docs`` documents x
    ``beams`` beams. The cross-attention reads each document's keys/values once for all its beams; the
    self-attention a static cache of ``max_length`` slots, time-major (``(layers, 2, T, N, H, d)``), so that a step
    writes slot ``cur_len - 1`` and reordering the beams copies only the slots written so far."""

    def __init__(self, model, encoder_out: torch.Tensor, encoder_mask: torch.Tensor, beams: int, max_length: int):
        self.model, self.dec = model, model.model.decoder
        self.layers = list(self.dec.layers)
        self.beams, self.T = beams, max_length
        self.docs = encoder_out.shape[0]
        self.N = self.docs * beams
        first = self.layers[0].encoder_attn
        self.H, self.scale = first.num_heads, first.scaling
        self.cross = [(_heads(a.encoder_attn.k_proj(encoder_out), self.docs, self.H),
                       _heads(a.encoder_attn.v_proj(encoder_out), self.docs, self.H)) for a in self.layers]
        self.cross_mask = encoder_mask.bool()[:, None, None, :]  # (docs, 1, 1, S)
        k = self.cross[0][0]
        self.cache = torch.zeros(len(self.layers), 2, max_length, self.N, self.H, k.shape[-1], dtype=k.dtype,
                                 device=k.device)
        self.slots = torch.arange(max_length, device=k.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=k.device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) of the token after ``tokens`` (N,) at position ``self.pos``: fixed shapes, no host sync."""
        x = tokens[:, None]
        h = self.dec.embed_tokens(x) + self.dec.embed_positions(x, 0, position_ids=self.pos)
        h = self.dec.layernorm_embedding(h)
        seen = (self.slots <= self.pos)[None, None, None, :]  # (1, 1, 1, T): the slots written so far
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            q = _heads(a.q_proj(h), self.N, self.H)  # (N, H, 1, d)
            for j, proj in enumerate((a.k_proj, a.v_proj)):
                new = proj(h).view(1, self.N, self.H, -1)
                self.cache[i, j].index_copy_(0, self.pos, new.to(self.cache.dtype))
            k, v = (self.cache[i, j].permute(1, 2, 0, 3) for j in (0, 1))  # (N, H, T, d)
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=seen, scale=a.scaling)
            h = layer.self_attn_layer_norm(h + a.out_proj(out.transpose(1, 2).reshape(self.N, 1, -1)))
            c = layer.encoder_attn
            q = c.q_proj(h).view(self.docs, self.beams, self.H, -1).transpose(1, 2)  # (docs, H, beams, d)
            ck, cv = self.cross[i]
            out = F.scaled_dot_product_attention(q, ck.to(q.dtype), cv.to(q.dtype), attn_mask=self.cross_mask,
                                                 scale=c.scaling)
            h = layer.encoder_attn_layer_norm(h + c.out_proj(out.transpose(1, 2).reshape(self.N, 1, -1)))
            h = layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))
        logits = self.model.lm_head(h) + self.model.final_logits_bias.to(h.device)
        return logits[:, 0]

    def step(self, tokens: torch.Tensor, cur_len: int) -> torch.Tensor:
        self.pos.fill_(cur_len - 1)
        return self.forward(tokens)

    def reorder(self, beam_idx: torch.Tensor, cur_len: int) -> None:
        written = self.cache[:, :, :cur_len]
        written.copy_(written.index_select(3, beam_idx))


class GraphedBartDecoder(BartDecoder):
    """``BartDecoder`` with its step captured as a CUDA graph at the second step of a batch (the first runs eagerly on
    a side stream: the warm-up a capture needs) and replayed after; the same kernels, so the same numbers."""

    def __init__(self, *args, amp: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.amp, self.graph = amp, None
        self.tokens = torch.zeros(self.N, dtype=torch.long, device=self.cache.device)
        self.side = torch.cuda.Stream()

    def _run(self):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            return self.forward(self.tokens)

    def step(self, tokens: torch.Tensor, cur_len: int) -> torch.Tensor:
        self.pos.fill_(cur_len - 1)
        self.tokens.copy_(tokens)
        current = torch.cuda.current_stream()
        if self.graph is None and cur_len == 1:
            self.side.wait_stream(current)
            with torch.cuda.stream(self.side):
                out = self._run()
            current.wait_stream(self.side)
            return out
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            self.side.wait_stream(current)
            with torch.cuda.stream(self.side):
                self.graph.capture_begin()
                try:
                    self.logits = self._run()
                finally:
                    self.graph.capture_end()
            current.wait_stream(self.side)
        self.graph.replay()
        return self.logits


class FastBeamSearch:
    """``model.generate(**repeat_runs(batch, runs), **kwargs)`` for XSum's beam search, fast (module docstring)."""

    def __init__(self, model, settings: Settings, graphs: bool, amp: bool):
        self.model, self.s, self.graphs, self.amp = model, settings, graphs, amp

    @classmethod
    def build(cls, model, kwargs: dict, device, amp: bool, graphs: bool) -> FastBeamSearch | str:
        """The fast search for ``model`` with ``generate``'s ``kwargs``, or why not (``generate`` is used then)."""
        from transformers import BartForConditionalGeneration

        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the modules are the same
        if type(model) is not BartForConditionalGeneration:
            return f"{type(model).__name__} is not BartForConditionalGeneration"
        if model.training:
            return "the model is in training mode (dropout)"
        s = resolve(model, kwargs)
        if isinstance(s, str):
            return s
        if s.max_length > model.config.max_position_embeddings:
            return f"max_length {s.max_length} beyond the model's {model.config.max_position_embeddings} positions"
        return cls(model, s, graphs and device.type == "cuda", amp and device.type == "cuda")

    def bytes_per_doc(self, source_len: int, runs: int) -> int:
        """GPU memory one document of a batch needs, for all ``runs``: its cross-attention keys/values and encoder
        output, its beams' cache and logits (fp32, the few copies the search makes of them)."""
        c = self.model.config
        elt = 2 if self.amp else 4
        cross = (2 * c.decoder_layers + 1) * source_len * c.d_model * elt
        cache = self.s.num_beams * 2 * c.decoder_layers * self.s.max_length * c.d_model * elt
        logits = 6 * self.s.num_beams * c.vocab_size * 4
        return runs * (cross + cache + logits)

    def docs_per_batch(self, source_len: int, runs: int, device, default: int) -> int:
        """Documents per batch: on a GPU, half its free memory over ``bytes_per_doc`` and at most ``MAX_ROWS``
        hypotheses; on a CPU ``default`` (``train.eval_batch_size``)."""
        if device.type != "cuda":
            return default
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        fits = int(0.5 * free) // self.bytes_per_doc(source_len, runs)
        return max(1, min(fits, MAX_ROWS // (runs * self.s.num_beams)))

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], runs: int) -> torch.Tensor:
        """Every run's summaries of ``batch``'s documents, (runs * B, length): ``generate``'s output for the batch
        repeated run-major. Out of GPU memory, the batch is halved (the summaries do not depend on the batch)."""
        try:
            return self._search(batch, runs)
        except torch.cuda.OutOfMemoryError:
            B = batch["input_ids"].shape[0]
            if B == 1:
                raise
            torch.cuda.empty_cache()
            halves = [self({k: v[part] for k, v in batch.items()}, runs) for part in (slice(0, B // 2),
                                                                                    slice(B // 2, B))]
            width = max(h.shape[1] for h in halves)
            halves = [F.pad(h, (0, width - h.shape[1]), value=self.s.fill).view(runs, -1, width) for h in halves]
            return torch.cat(halves, 1).view(-1, width)

    def _search(self, batch: dict[str, torch.Tensor], runs: int) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        docs = ids.shape[0]
        ids = ids.repeat(runs, 1)
        mask = mask.repeat(runs, 1)
        device = ids.device
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else torch.autocast("cpu", enabled=False)
        encoder = self.model.get_encoder()
        with precision, shared_operands(self.model):  # the low-rank layers' operands once, not every decoding step
            chunks = []
            for i in range(0, docs, ENCODER_CHUNK):  # every run's rows of these documents: run-major afterwards
                rows = torch.cat([torch.arange(k * docs + i, k * docs + min(i + ENCODER_CHUNK, docs))
                                  for k in range(runs)]).to(device)
                chunks.append((rows, encoder(input_ids=ids[rows], attention_mask=mask[rows]).last_hidden_state))
            out = torch.empty(runs * docs, *chunks[0][1].shape[1:], dtype=chunks[0][1].dtype, device=device)
            for rows, h in chunks:
                out[rows] = h
            del chunks
            if self.graphs:
                decoder = GraphedBartDecoder(self.model, out, mask, self.s.num_beams, self.s.max_length, amp=self.amp)
            else:
                decoder = BartDecoder(self.model, out, mask, self.s.num_beams, self.s.max_length)
            del out
            return beam_search(self.s, decoder, runs * docs, device)
