"""XSum: ROUGE (by hand and against rouge-score), data layouts and errors, batching, end to end with a tiny BART."""
import json
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer

from conftest import compose, result_file
from dynrank.config import validate
from dynrank.data import xsum as xsum_data
from dynrank.errors import ConfigError, DataError
from dynrank.metrics.rouge import rouge

FIX = Path(__file__).resolve().parent / "fixtures"


def test_rouge_known_pair_by_hand_and_library():
    pred, ref = "The cat sat on the mat.", "the cat was sitting on the mat"
    # stemmed tokens: pred the cat sat on the mat (6), ref the cat was sit on the mat (7)
    # ROUGE-1: 5 common -> F = 2*5/(6+7); ROUGE-2: the cat, on the, the mat -> 2*3/(5+6); ROUGE-L: LCS 5
    one = rouge([pred], [ref])
    assert one["rouge1"] == pytest.approx(100 * 10 / 13) and one["rougeL"] == pytest.approx(100 * 10 / 13)
    assert one["rouge2"] == pytest.approx(100 * 6 / 11)
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(ref, pred)
    assert one == pytest.approx({k: 100 * lib[k].fmeasure for k in lib})
    # averaging over pairs: a disjoint pair scores 0, so the mean halves
    two = rouge([pred, "completely different words"], [ref, "a dog barked"])
    assert two == pytest.approx({k: v / 2 for k, v in one.items()})
    # the reference is the target: precision/recall are not swapped (asymmetric pair)
    r = rouge(["the cat"], ["the cat sat"])
    assert r["rouge1"] == pytest.approx(100 * 2 * (1 * 2 / 3) / (1 + 2 / 3))
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_without_stemming_is_the_authors_and_rouge_score_s():
    pred, ref = "he runs fast", "he running fast"
    # stemmed: runs, running -> run: every unigram and bigram matches; unstemmed only "he", "fast" do
    assert rouge([pred], [ref]) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    plain = rouge([pred], [ref], use_stemmer=False)
    assert plain == pytest.approx({"rouge1": 100 * 2 / 3, "rouge2": 0.0, "rougeL": 100 * 2 / 3})
    pairs = [("The cat sat on the mat.", "the cat was sitting on the mat"), (pred, ref), ("dogs barked", "a dog barks")]
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    want = {k: 100 * sum(lib.score(r, p)[k].fmeasure for p, r in pairs) / len(pairs) for k in plain}
    assert rouge([p for p, _ in pairs], [r for _, r in pairs], use_stemmer=False) == pytest.approx(want)


def test_jsonl_and_csv_layouts_agree():
    a = xsum_data.load_split("validation", str(FIX / "xsum"))
    b = xsum_data.load_split("validation", str(FIX / "xsum_csv"))
    assert a == b and len(a) == 6 and set(a[0]) == {"document", "summary"}
    assert len(xsum_data.load_split("train", str(FIX))) == 12  # <dir>/xsum/train.jsonl


def test_data_errors(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text('{"document": "a", "summary": "b"}\n{"document": "a", "summ\n')
    with pytest.raises(DataError, match=r"train.jsonl:2"):
        xsum_data.load_split("train", str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"document": "a", "title": "b"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1.*'summary'"):
        xsum_data.load_split("train", str(tmp_path))
    (tmp_path / "validation.csv").write_text("text,summary\nx,y\n")
    with pytest.raises(DataError, match="validation.csv.*document"):
        xsum_data.load_split("validation", str(tmp_path))
    with pytest.raises(DataError, match="test.jsonl or test.csv"):
        xsum_data.load_split("test", str(tmp_path))
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="EdinburghNLP/xsum.*data.dir"):
        xsum_data.load_split("validation", None)


def _cfg(tmp_path, *extra):
    return compose(["task=xsum", "model=tiny_bart", f"data.dir={FIX / 'xsum'}", f"data.cache_dir={tmp_path / 'cache'}",
                    f"results.store={tmp_path / 'store'}", "train.progress=false", "train.epochs=1",
                    "eval.max_samples=3", "task.generate.max_new_tokens=8", *extra])


def test_collate_pads_labels_with_minus_100(tmp_path):
    from dynrank import tasks
    from dynrank.models import find_targets, load_tokenizer

    cfg = _cfg(tmp_path)
    tok = load_tokenizer(cfg.model)
    task = tasks.build(cfg, tok)
    train = task.train_set()
    assert len(train) == 12
    batch = task.collate([train[0], train[1]])
    n0, n1 = len(train[0]["labels"]), len(train[1]["labels"])
    assert batch["labels"].shape[1] == max(n0, n1)
    short = 0 if n0 < n1 else 1
    assert (batch["labels"][short, min(n0, n1):] == -100).all() and (batch["labels"] != -100).sum() == n0 + n1
    assert batch["labels"][0, 0] == tok.bos_token_id and tok.eos_token_id in batch["labels"][0].tolist()
    w0 = len(train[0]["input_ids"])
    assert (batch["attention_mask"].sum(1) == torch.tensor([w0, len(train[1]["input_ids"])])).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    # every method adapts q, k, v, out_proj, fc1, fc2 in the encoder and the decoder (self- and cross-attention)
    model = task.build_model()
    targets = find_targets(model, "bart")
    assert len(targets) == 2 * 6 + 2 * 10
    assert {t.layer for t in targets} == {"enc.0", "enc.1", "dec.0", "dec.1"}
    assert sum(t.matrix_type.startswith("cross_") for t in targets) == 2 * 4
    with pytest.raises(ConfigError, match="encoder-decoder"):
        tasks.build(compose(["task=xsum", "model=tiny"]), tok)


def test_evaluate_scores_one_generation_both_ways(tmp_path, monkeypatch):
    from dynrank import tasks
    from dynrank.models import load_tokenizer

    cfg = _cfg(tmp_path, "task.max_target_length=6")  # references cut at 6 tokens under paper_code, as theirs
    tok = load_tokenizer(cfg.model)
    task = tasks.build(cfg, tok)
    ev = task.eval_sets()["validation"]
    gold = [r["summary"] for r in ev.rows]
    cut = task.label_texts(ev.features)
    assert all(g.startswith(c) and len(c) < len(g) for c, g in zip(cut, gold))  # the fixture's summaries are long
    full = tasks.build(_cfg(tmp_path), tok)
    assert full.label_texts(full.eval_sets()["validation"].features) == gold  # no cut: the summaries themselves
    calls = []
    preds = ["thousands of homes running without power", "a teenager swims the lake", "pub closed"]

    def generate(model, features, device, amp, runs):  # one list of summaries per run
        calls.append(1)
        task.gen_tokens = [0] * runs
        return [preds] * runs
    monkeypatch.setattr(task, "generate", generate)
    m, = task.evaluate(torch.nn.Linear(1, 1), {"validation": ev}, torch.device("cpu"), False)
    assert len(calls) == 1  # one generation pass
    assert {k: m[k] for k in ("rouge1", "rouge2", "rougeL")} == pytest.approx(rouge(preds, gold))
    assert {k: m[f"{k}@paper_code"] for k in ("rouge1", "rouge2", "rougeL")} == \
        pytest.approx(rouge(preds, cut, use_stemmer=False))
    assert m["rouge1@paper_code"] != pytest.approx(m["rouge1"])


def _check(res, n):
    dev = res["best"]["dev"]
    assert res["metric"] == "rougeL" and dev["n_eval"] == n
    for k in ("rouge1", "rouge2", "rougeL"):
        assert 0 <= dev[k] <= 100
    assert dev["rouge2"] <= dev["rouge1"] and dev["rougeL"] <= dev["rouge1"]
    for k in ("rouge1", "rouge2", "rougeL"):
        assert 0 <= dev[f"{k}@paper_code"] <= 100
    assert 1 <= dev["gen_len"] <= 8 + 1  # decoder start token + at most max_new_tokens


@pytest.mark.slow
def test_xsum_lora_end_to_end(tmp_path):
    from dynrank.driver import run

    res = run(_cfg(tmp_path, "method=lora", "train.export=true"), tmp_path / "run")
    _check(res, 3)
    assert res["config"]["train"]["lr"] == res["config"]["hparams"]["xsum"]["lr"]  # LoRA's own rate
    assert res["config"]["task"]["generate"] == {"num_beams": 3, "max_new_tokens": 8, "no_repeat_ngram_size": 3,
                                                 "early_stopping": True, "length_penalty": 1.0}
    # r * (d_in + d_out) per matrix; 2 layers each: encoder 4 attention + fc1/fc2, decoder 8 attention + fc1/fc2
    enc, dec = 2 * (4 * (32 + 32) + 2 * (32 + 64)), 2 * (8 * (32 + 32) + 2 * (32 + 64))
    assert res["params"]["adapter"] == 8 * (enc + dec) == 18432 and res["params"]["head"] == 0
    stored = json.loads(result_file(tmp_path / "store/tiny_bart/xsum/lora-r8").read_text())
    assert stored["final"]["dev"] == res["final"]["dev"]
    assert json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"


@pytest.mark.slow
def test_xsum_full_end_to_end_csv(tmp_path):
    from dynrank.driver import run

    res = run(_cfg(tmp_path, "method=full", f"data.dir={FIX / 'xsum_csv'}", "eval.max_samples=2"), tmp_path / "run")
    _check(res, 2)
    assert res["params"]["trainable"] == res["params"]["total"]


def test_documents_and_summaries_are_stripped_as_the_authors_do(tmp_path):
    from dynrank.models import load_tokenizer
    from dynrank.tasks.xsum import prepare_features

    tok = load_tokenizer(_cfg(tmp_path).model)
    padded = [{"document": "  \n A pub closed.\n\n", "summary": " \tThe pub shut. \n"}]
    plain = [{"document": "A pub closed.", "summary": "The pub shut."}]
    assert prepare_features(tok, padded, 64, 16) == prepare_features(tok, plain, 64, 16)
    assert tok(" \tThe pub shut. \n")["input_ids"] != tok("The pub shut.")["input_ids"]  # stripping matters


def test_generation_uses_the_pinned_settings(tmp_path):
    from dynrank import tasks
    from dynrank.models import load_tokenizer

    cfg = _cfg(tmp_path, "task.generate.num_beams=2")
    tok = load_tokenizer(cfg.model)
    task = tasks.build(cfg, tok)
    ev = task.eval_sets()["validation"]
    seen = []

    class Model:
        def generate(self, **kwargs):
            seen.append({k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")})
            return torch.full((len(kwargs["input_ids"]), 3), tok.eos_token_id)

    assert task.generate(Model(), ev.features, torch.device("cpu"), False) == [["", "", ""]]  # one run
    assert seen and all(s == {"num_beams": 2, "max_new_tokens": 8, "no_repeat_ngram_size": 3,
                              "early_stopping": True, "length_penalty": 1.0} for s in seen)


# --- the fast beam search (dynrank/tasks/beam.py): generate()'s summaries, token for token --------------------------
GEN = {"num_beams": 3, "max_new_tokens": 24, "no_repeat_ngram_size": 3, "early_stopping": True, "length_penalty": 1.0}


def peaked_bart(method: str | None = None, runs: int = 1, device="cpu", d_model: int = 32, layers: int = 2,
                vocab: int = 1000):
    """A random BART whose beam search is a real test: weights drawn wide (std 1: peaked next-token distributions
    that depend on the document, unlike the near-uniform ones of a standard init) and EOS favoured (summaries of
    different lengths, so hypotheses finish at different steps); forced BOS as BART-base. ``method``: its adapters
    for ``runs`` stacked runs, each run's drawn at random (a freshly initialised LoRA adds nothing)."""
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=vocab, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                     decoder_ffn_dim=2 * d_model, max_position_embeddings=1026, pad_token_id=1, bos_token_id=0,
                     eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, init_std=1.0)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(cfg)
    model.generation_config.forced_bos_token_id = 0
    with torch.no_grad():
        model.final_logits_bias[0, 2] = 10.0
    if method:
        from dynrank import methods

        mcfg = compose([f"method={method}", "task=xsum", "model=tiny_bart"])
        m = methods.build(mcfg, "bart", runs=runs)
        model = m.wrap(model)
        m.init_runs(list(range(1, runs + 1)))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad and "lora_" in name:
                    p.normal_(0, 0.1)
    return model.to(device).eval()


def documents(lengths, vocab=1000, seed=1, device="cpu"):
    """Random documents of the given lengths, right-padded (pad 1) as XsumTask pads them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), 1)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


LENGTHS = [5, 17, 40, 9, 33, 3, 60, 12]


@pytest.mark.parametrize("runs", [1, 3])
def test_fast_beam_search_equals_generate(runs):
    """Eight documents of 3 to 60 tokens, one run and three LoRA runs stacked (each run's own adapters): the fast
    search's token ids are generate()'s, shape included; the summaries differ by document and run and end at
    different lengths, and the no-repeat rule changes them (so each part of the search is exercised)."""
    from dynrank.tasks import beam
    from dynrank.tasks.base import repeat_runs

    model = peaked_bart("lora" if runs > 1 else None, runs)
    batch = documents(LENGTHS)
    fast = beam.FastBeamSearch.build(model, GEN, torch.device("cpu"), amp=False, graphs=False)
    assert not isinstance(fast, str), fast
    with torch.no_grad():
        want = model.generate(**repeat_runs(batch, runs), **GEN)
        free = model.generate(**repeat_runs(batch, runs), **{**GEN, "no_repeat_ngram_size": 0})
    got = fast(batch, runs)
    assert got.shape == want.shape and torch.equal(got, want)
    assert len({tuple(r.tolist()) for r in want}) >= 0.75 * len(want)  # (run, document): mostly its own summary
    assert len(set((want != 1).sum(1).tolist())) > 2 and (want[:, 1] == 0).all()  # lengths differ; forced BOS
    assert want.shape != free.shape or not torch.equal(want, free)


def test_fast_beam_search_length_penalty_and_min_length():
    """The length-penalised scores of finished hypotheses and the minimum length (EOS banned before it): other
    settings, still generate()'s tokens."""
    from dynrank.tasks import beam

    model = peaked_bart()
    batch = documents(LENGTHS[:5], seed=2)
    with torch.no_grad():
        base = model.generate(**batch, **GEN)
    for kw in ({**GEN, "length_penalty": 2.0, "min_new_tokens": 6}, {**GEN, "length_penalty": 0.5, "min_length": 9},
               {**GEN, "early_stopping": False, "num_beams": 4}):
        fast = beam.FastBeamSearch.build(model, kw, torch.device("cpu"), amp=False, graphs=False)
        with torch.no_grad():
            want = model.generate(**batch, **kw)
        assert want.shape != base.shape or not torch.equal(want, base)  # the setting matters here
        assert torch.equal(fast(batch, 1), want), kw


def test_no_repeat_ngram_matches_transformers():
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    from dynrank.tasks import beam

    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 4):
        seqs = torch.randint(0, 5, (16, 12), generator=g)  # a small alphabet: many repeated n-grams
        scores = torch.randn(16, 7, generator=g)
        s = beam.Settings(3, 64, 0, True, 1.0, n, (2,), 1, 2, None, None)
        assert torch.equal(beam.process(s, seqs, scores.clone()), NoRepeatNGramLogitsProcessor(n)(seqs, scores))


def test_fast_beam_search_falls_back_for_what_it_does_not_port():
    """Settings and models it does not reproduce are named (XsumTask then generates with model.generate())."""
    from dynrank.tasks import beam

    model, cpu = peaked_bart(), torch.device("cpu")
    assert "greedy" in beam.FastBeamSearch.build(model, {**GEN, "num_beams": 1}, cpu, False, False)
    assert "repetition_penalty" in beam.FastBeamSearch.build(model, {**GEN, "repetition_penalty": 1.2}, cpu, False,
                                                            False)
    assert "training" in beam.FastBeamSearch.build(model.train(), GEN, cpu, False, False)
    assert "not BartForConditionalGeneration" in beam.FastBeamSearch.build(torch.nn.Linear(1, 1), GEN, cpu, False,
                                                                          False)


def test_fast_beam_search_halves_a_batch_out_of_memory(monkeypatch):
    """Out of GPU memory a batch is split in halves, and the merged summaries are the whole batch's (run-major,
    filled to one width)."""
    from dynrank.tasks import beam

    model = peaked_bart("lora", 2)
    batch = documents(LENGTHS)
    fast = beam.FastBeamSearch.build(model, GEN, torch.device("cpu"), amp=False, graphs=False)
    want = fast(batch, 2)
    search = fast._search

    def small_only(b, runs):
        if b["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("test")
        return search(b, runs)
    monkeypatch.setattr(fast, "_search", small_only)
    assert torch.equal(fast(batch, 2), want)


def test_xsum_evaluation_fast_and_generate_agree(tmp_path, caplog):
    """Through XsumTask.generate, a stack of two LoRA runs on the fixture's documents: eval.beam_search=fast and
    =generate give the same summaries and generated-token counts; settings it cannot port fall back, logged."""
    import logging

    from dynrank import tasks
    from dynrank.models import load_tokenizer

    cfg = _cfg(tmp_path, "eval.max_samples=6", "task.generate.max_new_tokens=16", "train.eval_batch_size=4")
    tok = load_tokenizer(cfg.model)
    ev = tasks.build(cfg, tok).eval_sets()["validation"]
    model = peaked_bart("lora", 2, vocab=len(tok))
    out = {}
    for mode in ("fast", "generate"):
        task = tasks.build(_cfg(tmp_path, "eval.max_samples=6", "task.generate.max_new_tokens=16",
                                "train.eval_batch_size=4", f"eval.beam_search={mode}"), tok)
        calls = []
        real = model.generate
        model.generate = lambda **kw: calls.append(1) or real(**kw)
        out[mode] = (task.generate(model, ev.features, torch.device("cpu"), False, runs=2), task.gen_tokens)
        del model.generate
        assert bool(calls) == (mode == "generate")
    assert out["fast"] == out["generate"] and out["fast"][0][0] != out["fast"][0][1]
    task = tasks.build(_cfg(tmp_path, "task.generate.num_beams=1"), tok)
    with caplog.at_level(logging.WARNING):
        assert task.beam_search(model, torch.device("cpu"), False) is None
    assert "greedy" in caplog.text
    with pytest.raises(ConfigError, match=r"^eval.beam_search must be fast or generate \(got 'hf'\)$"):
        validate(_cfg(tmp_path, "eval.beam_search=hf"))


def _tiny_bart(**dropouts):
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1026,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, **dropouts)
    torch.manual_seed(0)
    return BartForConditionalGeneration(cfg).train()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bart_dropout_masks_are_each_runs_own(attention):
    """Every dropout BART calls (hidden states, FFN activations, attention probabilities: SDPA's dropout_p, or
    F.dropout in transformers' eager attention) comes from the run's keyed stream: run 0 of a stack of two, its
    sources padded to the other run's longer ones, equals run 0 alone; two runs of one seed on one batch agree, two
    seeds do not; evaluation is unchanged. tests/test_gpu.py runs it on the GPU (the Triton kernels)."""
    check_bart_dropout_streams("cpu", atol=1e-6, attention=attention)


def check_bart_dropout_streams(device, atol, attention="sdpa"):
    from dynrank import dropout, functional_dropout

    model = _tiny_bart(dropout=0.1, attention_dropout=0.2, activation_dropout=0.1).to(device)
    model.config._attn_implementation = attention

    def forward(seeds, src, mask, dec):
        dropout.install_functional(model, seeds, device)
        with functional_dropout.functional(model, len(seeds), [src, dec]) as mode:
            logits = model(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        return logits, mode.stream.site

    g = torch.Generator().manual_seed(1)
    src, other, dec = (torch.randint(3, 50, shape, generator=g).to(device) for shape in ((3, 7), (3, 9), (3, 4)))
    mask = torch.ones(3, 7, dtype=torch.long, device=device)
    mask[1, 5:] = 0
    alone, sites = forward([1], src, mask, dec)
    assert sites == 1 + 2 * 4 + 1 + 2 * 6  # embeddings, then per encoder / decoder layer (attention counted)
    ones, zeros = torch.ones(3, 9, dtype=torch.long, device=device), torch.zeros(3, 2, dtype=torch.long, device=device)
    padded = torch.cat([src, ones[:, :2]], 1), torch.cat([mask, zeros], 1)
    stacked, _ = forward([1, 2], torch.cat([padded[0], other]), torch.cat([padded[1], ones]), torch.cat([dec, dec]))
    assert torch.allclose(stacked[:3], alone, atol=atol)
    twice = [torch.cat([t, t]) for t in (src, mask, dec)]
    same, _ = forward([1, 1], *twice)
    differ, _ = forward([1, 2], *twice)
    assert torch.equal(same[:3], same[3:]) and not torch.allclose(differ[:3], differ[3:], atol=1e-3)
    assert not torch.allclose(alone, model.eval()(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits,
                              atol=1e-3)  # dropout was on in training


@pytest.mark.slow
def test_stacked_xsum_runs_equal_solo_runs_with_dropout(tmp_path, monkeypatch):
    """Two seeds of LoRA on XSum stacked in one model (train.stack=true) against each alone, packed (train.pack=true:
    packing_bart), BART's dropout on in every place it has one: losses, ROUGE and the trained tensors agree
    (tests/test_stack.py's check)."""
    from test_stack import assert_same_runs

    from dynrank.driver import run_side_by_side

    _with_all_dropouts(monkeypatch)

    def cfgs(where, seeds, *extra):
        return [_cfg(tmp_path, f"seed={s}", "train.stack=true", "train.pack=true", "train.log_every=1",
                     "train.batch_size=4", f"results.store={tmp_path / where}", *extra) for s in seeds]

    dirs = [tmp_path / "stacked" / f"run{s}" for s in (1, 2)]
    stacked = run_side_by_side(cfgs("stacked", (1, 2)), dirs)
    assert all(r["training"]["stacked_runs"] == 2 and r["training"]["packed"] for r in stacked)
    solo_dirs = [tmp_path / "solo" / f"run{s}" for s in (1, 2)]
    solo = [run_side_by_side(cfgs("solo", (s,)), [d])[0] for s, d in zip((1, 2), solo_dirs)]
    assert_same_runs(dirs, solo_dirs, stacked, solo)
    assert stacked[0]["epochs"][0]["train_loss"] != stacked[1]["epochs"][0]["train_loss"]


def _with_all_dropouts(monkeypatch, p=0.1):
    """BART's tiny config with its attention and activation dropout on too (the hidden states' is 0.1 already)."""
    from dynrank import models

    build = models.build_tiny_config

    def config(*args):
        c = build(*args)
        c.attention_dropout = c.activation_dropout = p
        return c
    monkeypatch.setattr(models, "build_tiny_config", config)


def _built(tmp_path, method, runs, *extra):
    from test_packing import prepared

    over = [f"method={method}", *extra]
    if method in ("houlsby", "pfeiffer"):
        over.append("method.placement=before_dropout")  # BART's only placement (methods/adapters.py)
    if "dropout" in _cfg(tmp_path, *over).method:
        over.append("method.dropout=0.1")
    return prepared(_cfg(tmp_path, *over), runs)


@pytest.mark.parametrize("method", ["lora", "dora", "houlsby", "bitfit", "full"])
def test_packed_bart_equals_padded_dropout_on(method, tmp_path, monkeypatch):
    """A packed XSum step (packing_bart: sources and summaries packed, the LM head on the decoder's rows) gives the
    padded step's losses and gradients, every dropout of BART and of the method on (hidden states, FFN activations,
    attention probabilities, the adapters' inputs): the masks are keyed by a token's sequence and position."""
    from test_packing import assert_packed_equals_padded

    _with_all_dropouts(monkeypatch)
    runs = 1 if method == "full" else 2
    task, ds, model = _built(tmp_path, method, runs)
    per_run = ([0, 3, 5], [1, 2, 9])[:runs]
    batch = task.train_batch(ds, per_run, packed=True)
    assert "decoder_seq_start" in batch and batch["input_ids"].dim() == 1
    loss = assert_packed_equals_padded(task, ds, model, per_run)
    assert torch.isfinite(loss).all()
    model.eval()  # and the dropout mattered: the same losses without it differ
    with torch.no_grad():
        plain = task.run_losses(model, task.train_batch(ds, per_run, True), runs)
    assert not torch.allclose(plain, loss, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adalora", "dora_wd", "dylora", "pfeiffer"])
def test_packed_bart_equals_padded_other_methods(method, tmp_path, monkeypatch):
    test_packed_bart_equals_padded_dropout_on(method, tmp_path, monkeypatch)


def test_pack_seq2seq_layout():
    """Sources and decoder inputs packed per run (each summary shifted right behind the decoder start), labels at
    the decoder rows and -100 on filler; the decoder's block differs from the encoder's (the dropout stream tells
    the two kinds of rows apart by their count)."""
    from dynrank.packed_batch import pack_seq2seq

    src = [[0, 5, 6, 2], [0, 7, 2], [0, 8, 9, 9, 2], [0, 4, 2]]
    tgt = [[0, 11, 2], [0, 12, 13, 2], [0, 14, 2], [0, 15, 2]]
    b = pack_seq2seq(src, tgt, 2, pad_id=1, decoder_start=2, multiple=1, positions=1024)
    T, D = b["input_ids"].numel(), b["decoder_input_ids"].numel()
    assert T == 2 * 16 and D != T and D % 2 == 0
    assert b["input_ids"][:7].tolist() == [0, 5, 6, 2, 0, 7, 2] and b["input_ids"][16:24].tolist() == [0, 8, 9, 9, 2,
                                                                                                        0, 4, 2]
    half = D // 2
    assert b["decoder_input_ids"][:7].tolist() == [2, 0, 11, 2, 0, 12, 13]
    assert b["labels"][:7].tolist() == [0, 11, 2, 0, 12, 13, 2] and (b["labels"][7:half] == -100).all()
    assert b["labels"][half:half + 6].tolist() == [0, 14, 2, 0, 15, 2]
    assert b["position_ids"][:7].tolist() == [0, 1, 2, 3, 0, 1, 2]
    # dropout keys: sequence index within its run * positions + position, as a padded batch keys them
    assert b["decoder_token_keys"][half + 3:half + 6].tolist() == [1024, 1025, 1026]
    same = pack_seq2seq([[0, 2]] * 2, [[0, 2]] * 2, 1, 1, 2, 1, 1024)  # equal token counts: blocks still differ
    assert same["input_ids"].numel() != same["decoder_input_ids"].numel()


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_bart_low_rank_node_equals_autograd(method, tmp_path, monkeypatch):
    """BART's adapters go through the one-node path (``layers._LowRank``) with their dropout drawn from the
    functional stream at the site ``nn.Dropout`` would take: the losses equal autograd's path bit for bit (the same
    masks at the same sites), the gradients to float rounding, packed and padded, every dropout on."""
    from test_packing import losses_and_grads

    from dynrank.methods import layers

    _with_all_dropouts(monkeypatch)
    task, ds, model = _built(tmp_path, method, 2)
    lows = [m for m in model.modules() if isinstance(m, layers.LowRankLinear)]
    with torch.no_grad():
        for q in model.parameters():
            if q.requires_grad:
                q.add_(torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel())) * 0.1)
    model.train()
    calls = []
    real = layers._LowRank.apply
    monkeypatch.setattr(layers._LowRank, "apply", lambda *a: calls.append(a[-1] is not None) or real(*a))
    for packed in (False, True):
        calls.clear()
        la, ga = losses_and_grads(task, ds, model, ([0, 3, 5], [1, 2, 9]), packed)
        assert len(calls) == len(lows) and all(calls)  # every adapter, each with its keyed dropout
        with monkeypatch.context() as m:
            m.setattr(layers, "_frozen_linear", lambda base: False)
            lb, gb = losses_and_grads(task, ds, model, ([0, 3, 5], [1, 2, 9]), packed)
        assert torch.equal(la, lb), packed
        for n in ga:
            assert torch.allclose(ga[n], gb[n], rtol=1e-5, atol=1e-7), (packed, n)


def test_packed_lm_head_on_a_padded_vocabulary(tmp_path, monkeypatch):
    """The packed step's LM head on the frozen weight padded with zero rows to a multiple of 8 outputs (a GPU's
    aligned GEMMs; forced here to 16 on the tiny BART's 1,000 tokens): the same logits, losses and gradients as the
    head on the weight itself; the padded copy is made once and again when the weight changes."""
    from test_packing import losses_and_grads

    from dynrank import packing_bart

    task, ds, model = _built(tmp_path, "lora", 2)
    W = model.lm_head.weight
    assert not W.requires_grad and W.shape[0] % 16 != 0
    per_run = ([0, 3, 5], [1, 2, 9])
    la, ga = losses_and_grads(task, ds, model, per_run, True)
    assert not hasattr(model, "_padded_lm_head")
    monkeypatch.setattr(packing_bart, "vocab_multiple", lambda device: 16)
    lb, gb = losses_and_grads(task, ds, model, per_run, True)
    padded = model._padded_lm_head[1]
    assert padded.shape[0] == -(-W.shape[0] // 16) * 16 and not padded[W.shape[0]:].any()
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-5, atol=1e-7)
    losses_and_grads(task, ds, model, per_run, True)
    assert model._padded_lm_head[1] is padded  # made once
    with torch.no_grad():
        W.mul_(2.0)
    lc, _ = losses_and_grads(task, ds, model, per_run, True)
    assert model._padded_lm_head[1] is not padded and not torch.allclose(lc, lb)
