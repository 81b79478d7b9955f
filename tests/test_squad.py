"""SQuAD: the official metrics (values worked out by hand), windowing + post-processing, data errors, end to end."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, compose, result_file
from dynrank.data import squad as squad_data
from dynrank.errors import ConfigError, DataError
from dynrank.metrics.squad import (normalize_answer, squad_v1_metrics, squad_v1_window_metrics, squad_v2_metrics,
                                   squad_v2_window_metrics)
from dynrank.models import load_tokenizer
from dynrank.tasks.squad import (answer_windows, paper_code_windows, postprocess, prepare_features,
                                 window_predictions)

FIX = Path(__file__).resolve().parent / "fixtures" / "squad"
SHARED = ROOT.parent / "shared"


# --- metrics --------------------------------------------------------------------------------------

def test_normalize_answer():
    assert normalize_answer("  The  Quick, brown-fox ate AN apple. ") == "quick brownfox ate apple"
    assert normalize_answer("A theory of the anthem") == "theory of anthem"  # articles only as whole words
    assert normalize_answer("the") == "" and normalize_answer("") == ""


def test_squad_v1_metric_by_hand():
    golds = {"q1": ["The Eiffel Tower", "Eiffel Tower"], "q2": ["in 1889"],
             "q3": ["Gustave Eiffel's company", "Gustave Eiffel"], "q4": ["Paris"]}
    preds = {"q1": "eiffel tower!", "q2": "1889", "q3": "the company of Gustave Eiffel"}  # q4 unanswered
    # q1: exact after normalisation (EM 1, F1 1); q2: P=1, R=1/2 -> F1 2/3; q3: vs "gustave eiffels company"
    # 2 common of 4 pred / 3 gold -> 4/7, vs "gustave eiffel" 2 of 4 / 2 -> 2/3: max 2/3; q4: missing -> 0.
    m = squad_v1_metrics(golds, preds)
    assert m["exact_match"] == pytest.approx(25.0)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3 + 0) / 4)


GOLDS_V2 = {"a": ["Paris", "paris city"], "b": ["blue whale"], "c": [], "d": [], "e": ["42"],
            "f": ["a", "The cat"]}  # f: "a" normalises to "" and is dropped from the gold answers
PREDS_V2 = {"a": "the Paris", "b": "whale", "c": "", "d": "something", "e": "", "f": "cat"}
NA_V2 = {"a": -3.0, "b": -1.0, "c": 2.0, "d": 0.5, "e": 1.0, "f": -2.0}


def test_squad_v2_metric_by_hand():
    m = squad_v2_metrics(GOLDS_V2, PREDS_V2)
    # per question (EM, F1): a (1,1) b (0,2/3) c (1,1) d (0,0) e (0,0) f (1,1)
    assert m["exact"] == pytest.approx(50.0) and m["total"] == 6
    assert m["f1"] == pytest.approx(100 * (3 + 2 / 3) / 6)
    assert m["HasAns_exact"] == pytest.approx(50.0) and m["HasAns_f1"] == pytest.approx(100 * (8 / 3) / 4)
    assert m["HasAns_total"] == 4 and m["NoAns_total"] == 2
    assert m["NoAns_exact"] == pytest.approx(50.0) and m["NoAns_f1"] == pytest.approx(50.0)
    assert "best_f1" not in m  # only with na_probs (the script's --na-prob-file)


def test_squad_v2_best_thresholds_by_hand():
    m = squad_v2_metrics(GOLDS_V2, PREDS_V2, na_probs=NA_V2, na_prob_thresh=float("inf"))
    assert m["exact"] == pytest.approx(50.0)  # unchanged: no question is over the threshold
    # sorted by na_prob: a(-3) f(-2) b(-1) d(.5) e(1) c(2); start at #no-answer = 2
    # exact: 2 -> 3 (a) -> 4 (f, thresh -2) -> 4 (b) -> 3 (d answered wrongly) -> 3 -> 3
    assert m["best_exact"] == pytest.approx(100 * 4 / 6) and m["best_exact_thresh"] == -2.0
    # f1: 2 -> 3 -> 4 -> 4 2/3 (b, thresh -1) -> 3 2/3 -> 3 2/3 -> 3 2/3
    assert m["best_f1"] == pytest.approx(100 * (4 + 2 / 3) / 6) and m["best_f1_thresh"] == -1.0


def test_squad_v2_na_prob_thresh_overrides_like_the_script():
    # na_prob_thresh=0: c, d (na .5) and e (na 1) count as "no answer": d becomes right, e stays wrong
    m = squad_v2_metrics(GOLDS_V2, PREDS_V2, na_probs=NA_V2, na_prob_thresh=0.0)
    assert m["exact"] == pytest.approx(100 * 4 / 6) and m["f1"] == pytest.approx(100 * (4 + 2 / 3) / 6)
    assert m["NoAns_exact"] == pytest.approx(100.0) and m["HasAns_exact"] == pytest.approx(50.0)


# --- the authors' window-level scoring (protocol paper_code), hand-made repeated ids ----------------

def test_v1_window_metric_counts_every_window_against_the_last_prediction():
    # q has two windows with different predictions, r one window: evaluate's squad keeps pred_dict[q] = the
    # LAST window's "Paris" and scores all 3 reference entries: q right twice, r wrong -> EM 2/3
    windows = [("q", ["Paris", "the city of Paris"], "Lyon"), ("q", ["Paris", "the city of Paris"], "Paris"),
               ("r", ["blue"], "blue whale")]
    m = squad_v1_window_metrics(windows)
    assert m["total"] == 3 and m["exact_match"] == pytest.approx(100 * 2 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)  # r: P 1/2, R 1 -> 2/3
    # the other window order: "Lyon" wins and both of q's entries score 0 (question-level: one question, 0)
    m = squad_v1_window_metrics([windows[1], windows[0], windows[2]])
    assert m["exact_match"] == 0.0 and m["f1"] == pytest.approx(100 * (2 / 3) / 3)
    assert squad_v1_window_metrics([]) == {"exact_match": 0.0, "f1": 0.0, "total": 0}


def test_v2_window_metric_counts_a_question_once_with_its_last_window():
    # q: window 1 holds the answer and predicts it; window 2 has no answer (gold "") but predicts "Lyon".
    # evaluate's squad_v2 keys by id: q is scored once, last gold "" vs last prediction "Lyon" -> 0; r: "" vs "" -> 1
    windows = [("q", ["Paris"], "Paris"), ("q", [], "Lyon"), ("r", [], "")]
    m = squad_v2_window_metrics(windows)
    assert m == {"exact": pytest.approx(50.0), "f1": pytest.approx(50.0), "total": 2}
    # last window holds the answer: q counts as answered right, whatever its first window said
    m = squad_v2_window_metrics([("q", [], ""), ("q", ["Paris"], "Paris"), ("r", [], "x")])
    assert m == {"exact": pytest.approx(50.0), "f1": pytest.approx(50.0), "total": 2}
    # the last window's gold and the last prediction are paired even if they came from different "best" windows
    m = squad_v2_window_metrics([("q", ["Paris"], "Paris"), ("q", ["Paris"], "the Paris")])
    assert m["exact"] == 100.0 and m["total"] == 1


def test_paper_code_windows_golds_and_answer_only():
    rows = [{"id": "a", "context": "", "answers": ["x", "y"]}, {"id": "b", "context": "", "answers": []}]
    feats = {"example_idx": [0, 0, 1], "answer_in_window": [0, 1, 0]}
    texts = ["t0", "t1", "t2"]
    assert paper_code_windows(rows, feats, texts, answer_only=False) == [("a", [], "t0"), ("a", ["x", "y"], "t1"),
                                                                        ("b", [], "t2")]
    assert paper_code_windows(rows, feats, texts, answer_only=True) == [("a", ["x", "y"], "t1")]


# --- windows and post-processing -------------------------------------------------------------------

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
CONTEXT = " ".join(f"{w} {i}" for i, w in enumerate(WORDS * 2))  # ~200 tokens with the tiny tokenizer
Q = "Which words?"


@pytest.fixture(scope="module")
def tok():
    from omegaconf import OmegaConf
    return load_tokenizer(OmegaConf.create({"tiny": {"hidden_size": 32}}))


def _windows(tok, max_length, stride):
    f = prepare_features(tok, [{"question": Q, "context": CONTEXT}], max_length, stride, train=False)
    return [(min(o for o in s if o >= 0), max(e for e in ends if e >= 0))
            for s, ends in zip(f["offset_start"], f["offset_end"])]


def _phrase_around(char):
    """Three words of CONTEXT around character ``char`` (a phrase cut by a window edge there)."""
    left = CONTEXT.rfind(" ", 0, CONTEXT.rfind(" ", 0, char))
    right = CONTEXT.find(" ", CONTEXT.find(" ", char + 1) + 1)
    return CONTEXT[left + 1:right], left + 1


def _row(qid, text, start):
    assert CONTEXT[start:start + len(text)] == text
    return {"id": qid, "question": Q, "context": CONTEXT, "answers": [text] if text else [],
            "answer_starts": [start] if text else []}


def test_postprocess_recovers_gold_spans_across_windows(tok):
    max_length, stride = 64, 24
    win = _windows(tok, max_length, stride)
    assert len(win) >= 3 and win[1][0] < win[0][1]  # several overlapping windows
    first = _row("first", "bravo 1", CONTEXT.index("bravo 1"))
    late_text = CONTEXT.split()[-2] + " " + CONTEXT.split()[-1]  # only in the last window
    late = _row("late", late_text, CONTEXT.rindex(late_text))
    cut, cut_start = _phrase_around(win[0][1] - 1)  # straddles window 0's end: whole only in window 1
    straddle = _row("straddle", cut, cut_start)
    ov_start = CONTEXT.index(" ", win[1][0] + 1) + 1  # a word inside the overlap of windows 0 and 1
    ov_text = CONTEXT[ov_start:CONTEXT.index(" ", ov_start)]
    assert win[1][0] <= ov_start and ov_start + len(ov_text) <= win[0][1]
    overlap = _row("overlap", ov_text, ov_start)
    none = _row("none", "", 0)
    rows = [first, late, straddle, overlap, none]
    feats = prepare_features(tok, rows, max_length, stride, train=False)
    train = prepare_features(tok, rows, max_length, stride, train=True)
    rng = np.random.default_rng(0)
    starts, ends, whole_in = [], [], {r["id"]: 0 for r in rows}
    for i, ei in enumerate(feats["example_idx"]):
        r, os_, oe = rows[ei], np.array(feats["offset_start"][i]), np.array(feats["offset_end"][i])
        s, e = rng.normal(0, 1, len(os_)), rng.normal(0, 1, len(os_))  # distractor noise
        s[0] = e[0] = 10.0 if not r["answers"] else 1.0  # CLS: the null score
        st, en = train["start_positions"][i], train["end_positions"][i]
        if r["answers"]:
            a, b = r["answer_starts"][0], r["answer_starts"][0] + len(r["answers"][0])
            wide = oe > os_  # the tiny BPE has zero-width "Ġ" tokens before digits: never a span's edge
            ts, te = np.flatnonzero((os_ == a) & wide), np.flatnonzero((oe == b) & wide)
            if len(ts) and len(te):  # the gold span lies whole in this window: peak there
                s[ts[0]], e[te[0]] = 10.0, 10.0
                whole_in[r["id"]] += 1
                assert (st, en) == (ts[0], te[0])  # training labels point at the same tokens
            else:
                assert (st, en) == (0, 0)  # answer not (wholly) in the window: CLS
        else:
            assert (st, en) == (0, 0)
        starts.append(s)
        ends.append(e)
    assert whole_in["first"] == 1 and whole_in["late"] == 1 and whole_in["straddle"] == 1
    assert whole_in["overlap"] == 2  # in both windows: the best span over windows is the same text
    assert feats["answer_in_window"] == train["answer_in_window"]
    assert sum(feats["answer_in_window"]) == sum(whole_in.values())
    # each window on its own (paper_code): the gold where the window holds it, "" (v2) where CLS peaks
    texts = window_predictions(rows, feats, starts, ends, with_negative=True)
    for i, (ei, inside) in enumerate(zip(feats["example_idx"], feats["answer_in_window"])):
        if inside or not rows[ei]["answers"]:  # elsewhere CLS (1.0) may lose to a noise span
            assert texts[i] == (rows[ei]["answers"][0] if inside else "")
    preds, diffs = postprocess(rows, feats, starts, ends, n_best=20, max_answer_length=30, with_negative=True,
                               null_threshold=0.0)
    assert preds == {"first": "bravo 1", "late": late_text, "straddle": cut, "overlap": ov_text, "none": ""}
    assert diffs["none"] > 0 > diffs["first"]
    # v1 (no null answer): the unanswerable question still gets a span; a large threshold keeps answers
    p1, _ = postprocess(rows, feats, starts, ends, with_negative=False)
    assert p1["none"] != "" and p1["late"] == late_text
    p2, _ = postprocess(rows, feats, starts, ends, with_negative=True, null_threshold=1e9)
    assert p2["none"] != ""
    # max_answer_length: the 3-word straddling phrase is > 2 tokens, so it can no longer be predicted
    p3, _ = postprocess(rows, feats, starts, ends, max_answer_length=2, with_negative=False)
    assert p3["straddle"] != cut


# --- the real SQuAD v1.1 dev file: every gold answer comes back, under both protocols ------------------
# dev-v1.1.json (48 articles, 10,570 questions), every 4th article (12 articles, 2,921 questions: the whole
# file takes ~25 s here, mostly tokenising), windowed by the real BERT-uncased WordPiece tokenizer of
# all-MiniLM-L6-v2 (offsets into the original text) at the paper's 384/128. (The whole file, checked once by
# hand the same way: 10,784 windows, 10,612 holding their question's first answer; EM 100 over the 10,529
# questions a token span can state exactly, standard and paper_code.)
DEV_ARTICLES = slice(None, None, 4)


@pytest.fixture(scope="module")
def real_dev(tmp_path_factory):
    dev, minilm = SHARED / "data" / "squad" / "dev-v1.1.json", SHARED / "models" / "all-MiniLM-L6-v2"
    if not (dev.is_file() and minilm.is_dir()):
        pytest.skip("shared SQuAD v1.1 dev file or MiniLM tokenizer not there")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm))
    doc = json.loads(dev.read_text(encoding="utf-8"))
    assert sum(len(p["qas"]) for a in doc["data"] for p in a["paragraphs"]) == 10570
    doc["data"] = doc["data"][DEV_ARTICLES]
    part = tmp_path_factory.mktemp("squad") / "dev-v1.1.json"
    part.write_text(json.dumps(doc), encoding="utf-8")
    rows = squad_data.from_json(part)  # the official parser, on the subset
    ev = prepare_features(tok, rows, 384, 128, train=False)
    tr = prepare_features(tok, rows, 384, 128, train=True)
    # logits that point exactly at the training labels: the gold span where the window holds it, CLS elsewhere
    starts, ends = [], []
    for ids, s, e in zip(ev["input_ids"], tr["start_positions"], tr["end_positions"]):
        st, en = np.zeros(len(ids)), np.zeros(len(ids))
        st[s], en[e] = 10.0, 10.0
        starts.append(st)
        ends.append(en)
    # the text of the training label's tokens, per question (its first answer-holding window), where the span is
    # at most max_answer_length 30 tokens; "exact": the questions where that text is the first gold answer itself
    # (the others start or end inside a token: "8" of "18", "Japan" of "Japanese")
    label_text = {}
    for i, ei in enumerate(ev["example_idx"]):
        r, s, e = rows[ei], tr["start_positions"][i], tr["end_positions"][i]
        if ev["answer_in_window"][i] and e - s + 1 <= 30:
            label_text.setdefault(r["id"], r["context"][ev["offset_start"][i][s]:ev["offset_end"][i][e]])
    exact = {r["id"] for r in rows if label_text.get(r["id"]) == r["answers"][0]}
    return rows, ev, tr, starts, ends, label_text, exact


def test_real_dev_windows_and_answer_only_training_set(real_dev):
    rows, ev, tr, _, _, label_text, exact = real_dev
    assert len(rows) == 2921
    assert tr["example_idx"] == ev["example_idx"]  # training and dev windows are the same windows
    # does the first gold answer lie inside the window's context? worked out here from the offsets alone
    inside = []
    for ei, os_, oe in zip(ev["example_idx"], ev["offset_start"], ev["offset_end"]):
        r = rows[ei]
        lo, hi = min(o for o in os_ if o >= 0), max(oe)
        inside.append(int(lo <= r["answer_starts"][0] and r["answer_starts"][0] + len(r["answers"][0]) <= hi))
    assert ev["answer_in_window"] == inside == tr["answer_in_window"]
    assert len(set(ev["example_idx"])) == len(rows) < sum(inside) < len(inside)  # repeats and answerless windows
    assert {ei for ei, k in zip(ev["example_idx"], inside) if k} == set(range(len(rows)))  # every answer is in one
    kept = answer_windows(tr)  # task.train_windows=answer_only
    assert len(kept["input_ids"]) == sum(inside)
    assert all(s > 0 and e >= s for s, e in zip(kept["start_positions"], kept["end_positions"]))
    dropped = [(s, e) for s, e, k in zip(tr["start_positions"], tr["end_positions"], inside) if not k]
    assert dropped and set(dropped) == {(0, 0)}  # what answer_only drops is exactly the CLS-labelled windows
    # the labels cover the gold answer; few answers are longer than 30 tokens, few cut through a token
    assert all(r["answers"][0] in label_text[r["id"]] for r in rows if r["id"] in label_text)
    assert len(label_text) >= 0.995 * len(rows) and len(exact) >= 0.99 * len(rows)


def test_real_dev_gold_recovery_standard(real_dev):
    rows, ev, _, starts, ends, label_text, exact = real_dev
    preds, _ = postprocess(rows, ev, starts, ends, n_best=20, max_answer_length=30)
    assert {q: preds[q] for q in label_text} == label_text  # every question's label span comes back
    golds = {r["id"]: r["answers"] for r in rows if r["id"] in exact}
    assert squad_v1_metrics(golds, preds) == {"exact_match": 100.0, "f1": 100.0}
    # v2.0's rules on the same windows: the null score is the minimum over windows, so a question whose
    # answer-free windows peak at CLS still gets its answer
    preds2, diffs = postprocess(rows, ev, starts, ends, with_negative=True)
    assert squad_v1_metrics(golds, preds2) == {"exact_match": 100.0, "f1": 100.0}
    assert all(diffs[q] < 0 for q in exact)


def test_real_dev_gold_recovery_paper_code(real_dev):
    rows, ev, _, starts, ends, _, exact = real_dev
    for v2 in (False, True):
        texts = window_predictions(rows, ev, starts, ends, n_best=20, max_answer_length=30, with_negative=v2)
        windows = paper_code_windows(rows, ev, texts, answer_only=not v2)
        assert len(windows) == (sum(ev["answer_in_window"]) if not v2 else len(texts))
        scored = [w for w in windows if w[0] in exact]
        if not v2:  # v1.1: answer-holding windows only, each scored
            assert squad_v1_window_metrics(scored) == {"exact_match": 100.0, "f1": 100.0, "total": len(scored)}
            assert len(scored) > len(exact)  # some questions count twice
        else:  # every window; one without the answer says "" and its gold is no answer
            assert squad_v2_window_metrics(scored) == {"exact": 100.0, "f1": 100.0, "total": len(exact)}
            assert sum(t == "" for t in texts) == len(texts) - sum(ev["answer_in_window"])


def test_stride_too_large_is_a_config_error(tok):
    with pytest.raises(ConfigError, match="doc_stride"):
        prepare_features(tok, [{"question": Q * 6, "context": CONTEXT}], 32, 28, train=False)


# --- data ------------------------------------------------------------------------------------------

def test_official_json_fixtures_parse():
    dev = squad_data.from_json(FIX / "dev-v2.0.json")
    assert len(dev) == 11 and sum(not r["answers"] for r in dev) == 3
    for r in dev:
        for t, s in zip(r["answers"], r["answer_starts"]):
            assert r["context"][s:s + len(t)] == t
    assert max(len(r["answers"]) for r in dev) == 3  # several annotators
    assert len(squad_data.load_split(1, "train", str(FIX))) == 19


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "dev-v1.1.json"
    bad.write_text('{"data": [ {"paragraphs": ')
    with pytest.raises(DataError, match="dev-v1.1.json"):
        squad_data.load_split(1, "validation", str(tmp_path))
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "1"}]}]}]}))
    with pytest.raises(DataError, match=r"dev-v1.1.json.*missing key 'answers'"):
        squad_data.load_split(1, "validation", str(tmp_path))
    with pytest.raises(DataError, match="train-v2.0.json"):
        squad_data.load_split(2, "train", str(tmp_path))


def test_hub_unreachable_says_pass_data_dir(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="rajpurkar/squad_v2.*data.dir"):
        squad_data.load_split(2, "validation", None)


# --- end to end ------------------------------------------------------------------------------------

def _run(tmp_path, *extra):
    from dynrank.loop import run

    cfg = compose(["model=tiny", f"data.dir={FIX}", f"data.cache_dir={tmp_path / 'cache'}",
                   f"results.store={tmp_path / 'store'}", "train.progress=false", "train.epochs=1",
                   "task.max_length=96", "task.doc_stride=32", *extra])
    return run(cfg, tmp_path / "run")


def _check_v2(res):
    dev = res["best"]["dev"]
    assert res["metric"] == "f1"
    assert dev["n_eval"] == 11 and dev["total"] == 11 and dev["HasAns_total"] == 8 and dev["NoAns_total"] == 3
    for k in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"):
        assert 0 <= dev[k] <= 100, k
    assert dev["f1"] >= dev["exact"]
    # the threshold search passes through the configured threshold (0), so it can only do better
    assert dev["best_f1"] >= dev["f1"] - 1e-9 and dev["best_exact"] >= dev["exact"] - 1e-9
    assert dev["exact"] == pytest.approx((8 * dev["HasAns_exact"] + 3 * dev["NoAns_exact"]) / 11)
    # the authors' window-level scores from the same pass: one per question (its last window)
    assert dev["n_eval@paper_code"] == 11 and 0 <= dev["exact@paper_code"] <= dev["f1@paper_code"] <= 100


def test_squad_v2_lora_end_to_end_with_export(tmp_path):
    res = _run(tmp_path, "task=squad_v2", "method=lora", "train.export=true")
    _check_v2(res)
    assert res["config"]["train"]["lr"] == res["config"]["hparams"]["squad_v2"]["lr"]  # LoRA's own rate
    assert res["config"]["task"]["epochs"] == 14  # Table 8
    stored = json.loads(result_file(tmp_path / "store/tiny/squad_v2/lora-r8").read_text())
    assert stored["best"]["dev"] == res["best"]["dev"]
    cfg = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
    assert cfg["task_type"] == "QUESTION_ANS" and cfg["modules_to_save"] == ["qa_outputs"]
    assert res["params"]["head"] == 32 * 2 + 2  # qa_outputs trains with every method


def test_squad_v1_full_end_to_end(tmp_path):
    res = _run(tmp_path, "task=squad_v1", "method=full", "eval.max_samples=5")
    dev = res["final"]["dev"]
    assert set(dev) == {"exact", "f1", "n_eval", "exact@paper_code", "f1@paper_code", "n_eval@paper_code"}
    assert dev["n_eval"] == 5
    assert 0 <= dev["exact"] <= dev["f1"] <= 100 and 0 <= dev["exact@paper_code"] <= dev["f1@paper_code"] <= 100
    # paper_code scores the answer-holding windows of those 5 questions (v1.1 drops the others)
    rows = squad_data.load_split(1, "validation", str(FIX))[:5]
    tok = load_tokenizer(compose(["model=tiny"]).model)
    feats = prepare_features(tok, rows, 96, 32, train=False)
    assert dev["n_eval@paper_code"] == sum(feats["answer_in_window"]) >= 5
    assert res["params"]["trainable"] == res["params"]["total"]


def test_train_windows_answer_only_drops_answerless_training_windows(tmp_path):
    from dynrank import tasks

    def train_set(*extra):
        cfg = compose(["model=tiny", "task=squad_v1", f"data.dir={FIX}", f"data.cache_dir={tmp_path / 'cache'}",
                       "task.max_length=64", "task.doc_stride=24", *extra])
        return tasks.build(cfg, load_tokenizer(cfg.model)).train_set()

    paper = train_set("protocol=paper_code")  # first, so a cache entry shared with "all" would show below
    std = train_set()
    assert len(paper) == sum(std.columns["answer_in_window"]) < len(std)
    assert all(s > 0 for s in paper.columns["start_positions"])  # no window trains towards CLS
    assert len(train_set("task.train_windows=answer_only")) == len(paper)
    assert compose(["task=squad_v2", "protocol=paper_code"]).task.train_windows == "all"  # v1.1 only
    with pytest.raises(ConfigError, match="train_windows"):
        train_set("task.train_windows=some")


def test_squad_v2_dora_end_to_end(tmp_path):
    pytest.importorskip("dynrank.methods.dora")
    if not (Path(__file__).resolve().parent.parent / "conf/method/dora.yaml").exists():
        pytest.skip("conf/method/dora.yaml not there yet")
    res = _run(tmp_path, "task=squad_v2", "method=dora")
    _check_v2(res)
