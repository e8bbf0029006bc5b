"""The lm-evaluation-harness adapter: every request type against a direct computation with the model (float64),
the registry, and ``longssm lm-eval`` end to end on local task YAMLs, offline."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from longssm.checkpoint import load_model
from longssm.cli import main
from longssm.data.tokenizer import ByteTokenizer
from longssm.errors import UserError
from longssm.lm_eval_adapter import LongSSMLM
from longssm.models.registry import family_names
from test_generate import make, rerun_argmax, tiny_run

CHUNK = 16
NEWLINE = ord("\n")


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """log q(x_t | x_<t) for t = 1 .. len - 1, from one forward pass over the whole sequence: (len - 1,)."""
    logits, _ = model(torch.tensor([tokens]))
    return logits[0, :-1].log_softmax(-1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.mark.parametrize("family", list(family_names()))
def test_loglikelihood_rolling_is_one_stateful_pass_over_the_whole_document(family, wiki_text):
    model, tok = make(family), ByteTokenizer()
    docs = [wiki_text[:300], wiki_text[1000:1077], "", "x"]  # longer than the chunk, shorter, empty, one token
    lm = LongSSMLM(model, tok, batch_size=3, chunk=CHUNK)
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in docs]), disable_tqdm=True)
    assert all(isinstance(x, float) for x in got)  # one float per request, as HFLM returns
    expected = [float(token_logprobs(model, [NEWLINE, *tok.encode(d)]).sum()) for d in docs]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def greedy_case(model: torch.nn.Module, tok: ByteTokenizer) -> tuple[str, str]:
    """A context and the 3-token greedy continuation of it, both printable ASCII (so text ↔ bytes is exact)."""
    for start in range(ord("a"), ord("z") + 1):
        context = chr(start) + " the"
        continuation = rerun_argmax(model, tok.encode(context), 3)
        if all(32 <= t < 127 for t in continuation):
            return context, tok.decode(continuation)
    raise AssertionError("no context with a printable greedy continuation")


def test_loglikelihood_equals_direct_computation_and_reports_is_greedy(run_dir):
    model, tok = load_model(run_dir)[0].double(), ByteTokenizer()  # trained: its greedy text is printable
    lm = LongSSMLM(model, tok, batch_size=2, chunk=CHUNK)
    context, greedy = greedy_case(model, tok)
    wrong = greedy[:2] + ("x" if greedy[2] != "x" else "y")  # the last token is not the argmax
    long_context = context * 12  # 72 tokens: several chunks before the continuation
    args = [(context, greedy), (context, wrong), (long_context, " and more"), ("", "hello")]
    got = lm.loglikelihood(requests("loglikelihood", args), disable_tqdm=True)
    for (ctx, cont), (logprob, _) in zip(args, got):
        ctx_ids = tok.encode(ctx) or [NEWLINE]  # an empty context is EOT
        direct = token_logprobs(model, ctx_ids + tok.encode(cont))[len(ctx_ids) - 1:]
        assert logprob == pytest.approx(float(direct.sum()), rel=1e-6, abs=1e-6)
    assert [g for _, g in got[:2]] == [True, False]


def test_generate_until_honours_until_and_max_gen_toks():
    model, tok = make("mamba"), ByteTokenizer()
    lm = LongSSMLM(model, tok, chunk=CHUNK, max_gen_toks=12)
    greedy = rerun_argmax(model, tok.encode("Once upon"), 30)
    full = tok.decode(greedy)
    stop = full[20:22]
    args = [("Once upon", {"until": [stop], "max_gen_toks": 30, "do_sample": False}),
            ("Once upon", {"until": ["\x00never"], "max_gen_toks": 5}),
            ("Once upon", {"until": "\x00never"})]
    got = lm.generate_until(requests("generate_until", args), disable_tqdm=True)
    assert got == [full[:full.find(stop)], tok.decode(greedy[:5]), tok.decode(greedy[:12])]


def test_registered_as_longssm_and_built_from_a_run(run_dir):
    assert get_model("longssm") is LongSSMLM
    lm = LongSSMLM.create_from_arg_string(f"run={run_dir},chunk=64", {"batch_size": 2, "device": "cpu"})
    assert (lm.batch_size, lm.chunk, lm.eot_token_id, str(lm.device)) == (2, 64, NEWLINE, "cpu")
    assert LongSSMLM(lm.model, lm.tokenizer, eot=" ").eot_token_id == ord(" ")
    with pytest.raises(UserError, match="2 tokens"):
        LongSSMLM(lm.model, lm.tokenizer, eot="ab")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, wiki_text) -> Path:
    return tiny_run(tmp_path_factory.mktemp("lmeval"), wiki_text)


QUESTIONS = [("The cat sat on the", "mat", "of"), ("In the year", "1990", "the"), ("He was born in", "the", "xq"),
             ("The river flows", "into", "zzz"), ("It is", "a", "qj")]


def write_tasks(folder: Path, docs: list[str], questions: list[dict]) -> None:
    """A perplexity task over ``docs`` (as the harness's wikitext task) and a multiple-choice task of ``questions``
    ({"q", "choices", "label"}; the harness scores each choice as the continuation " " + choice)."""
    folder.mkdir()
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    with open(folder / "choices.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    (folder / "local_ppl.yaml").write_text(f"""task: local_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'docs.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    (folder / "local_choice.yaml").write_text(f"""task: local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'choices.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
""")


@pytest.mark.slow
def test_cli_lm_eval_runs_local_tasks_offline(run_dir, tmp_path, wiki_text, capsys, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    docs = [wiki_text[:3000], wiki_text[5000:5500]]  # the first one is longer than --chunk: several forward calls
    lm = LongSSMLM(str(run_dir), device="cpu")
    questions, expected_acc = labelled_questions(lm)
    write_tasks(tmp_path / "tasks", docs, questions)
    out = tmp_path / "results.json"
    code = main(["lm-eval", str(run_dir), "--tasks", "local_ppl,local_choice", "--include-path",
                 str(tmp_path / "tasks"), "--batch-size", "2", "--chunk", "256", "--device", "cpu",
                 "--output", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    for name in ("local_ppl", "local_choice", "bits_per_byte", "word_perplexity", "acc"):
        assert name in stdout
    results = json.loads(out.read_text())["results"]
    # bits per byte from the harness = the direct sum of log-probabilities with the run's model (float32)
    logprob = sum(float(token_logprobs(lm.model, [NEWLINE, *lm.tok_encode(d)]).sum()) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert results["local_ppl"]["bits_per_byte,none"] == pytest.approx(-logprob / n_bytes / math.log(2), rel=1e-4)
    assert results["local_choice"]["acc,none"] == expected_acc


def labelled_questions(lm: LongSSMLM) -> tuple[list[dict], float]:
    """QUESTIONS labelled from the model's own direct log-likelihoods, and the accuracy the harness must find.

    The choices are ordered so that the one the model prefers (Σ log q of " " + choice after the question) is at
    index PREFERRED[i], and LABELS makes the model right on 4 of 5: accuracy 0.8, where a harness or adapter that
    scores wrongly in any consistent way gets another (always index 0: 0.6, always 1: 0.4, the less likely: 0.2).
    """
    preferred, labels = [0, 1, 0, 1, 1], [0, 1, 0, 1, 0]
    questions = []
    for (q, *choices), want in zip(QUESTIONS, preferred):
        ctx = lm.tok_encode(q)
        logq = [float(token_logprobs(lm.model, ctx + lm.tok_encode(" " + c))[len(ctx) - 1:].sum()) for c in choices]
        assert abs(logq[0] - logq[1]) > 1e-3, (q, logq)  # no near-tie that float32 batching could flip
        best = choices[max(range(2), key=logq.__getitem__)]
        ordered = [best, next(c for c in choices if c != best)]
        questions.append({"q": q, "choices": ordered if want == 0 else ordered[::-1], "label": labels[len(questions)]})
    acc = sum(p == l for p, l in zip(preferred, labels)) / len(labels)
    return questions, acc


def test_cli_lm_eval_without_the_harness_says_how_to_install_it(run_dir, capsys, monkeypatch):
    for name in [m for m in sys.modules if m.partition(".")[0] == "lm_eval"]:  # as if it were not installed
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "longssm.lm_eval_adapter")
    assert main(["lm-eval", str(run_dir), "--tasks", "x"]) == 2
    assert "pip install 'longssm[lmeval]'" in capsys.readouterr().err
