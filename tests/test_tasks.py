"""The long-context tasks (``data/tasks.py``), their metrics (``evaluate/tasks.py``) and their training streams
(``data/task_stream.py``): every generator's instances parse back to their answers from their text alone, fit their
length and tokenize piecewise as a whole; an oracle that reads the answer scores 100 % through the metric's own
scoring path, a uniform guesser scores chance; the chunked scoring equals one whole-sequence forward; the streams
are documents of exactly their length, deterministic, sliced like an array."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from longssm.config import EvalConfig, ModelConfig
from longssm.data.task_stream import synthetic_corpus
from longssm.data.tasks import TASKS, instances, load_haystack, score
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError
from longssm.evaluate.tasks import axis_values, predict, score_cell, task_settings
from longssm.models import build_model
from longssm.runtime.distributed import ALONE

LENGTHS = {"mqar": 300, "copy": 160, "variable_tracking": 400, "passkey": 300}


@pytest.fixture(scope="module", params=["byte", "gpt2"])
def tokenizer(request):
    return load_tokenizer(request.param)


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("haystack", ["wikitext", "repeat"])
def test_instances_parse_back_fit_their_length_and_tokenize_as_a_whole(tokenizer, name, haystack):
    task, hay = TASKS[name], load_haystack(haystack, tokenizer)
    length = LENGTHS.get(name, 600)
    for value in task.axis_default:
        made = instances(task, tokenizer, hay, length, value, 3, seed=0)
        for x in made:
            text = "".join(x.texts)
            assert task.parse(text) == x.answer_texts(), (name, value)
            assert length - 40 <= len(x.tokens) <= length
            assert tokenizer.encode(text) == x.tokens  # what an lm-eval export re-tokenizes
            for (a, b), answer in zip(x.spans(), x.answer_texts()):
                assert tokenizer.decode(x.tokens[a:b]) == answer
        again = instances(task, tokenizer, hay, length, value, 3, seed=0)
        assert [x.tokens for x in again] == [x.tokens for x in made]
        other = instances(task, tokenizer, hay, length, value, 3, seed=1)
        assert [x.tokens for x in other] != [x.tokens for x in made]


def test_the_axis_means_what_it_says():
    tok = load_tokenizer("byte")
    hay = load_haystack("wikitext", tok)
    for pairs in (2, 5):
        (x,) = instances(TASKS["mqar"], tok, hay, 400, pairs, 1, seed=0, params={"queries": 9})
        assert len(x.answers) == pairs  # every key asked once
    for depth in (0.0, 1.0):
        (x,) = instances(TASKS["passkey"], tok, hay, 2000, depth, 1, seed=0)
        at = "".join(x.texts).index("The pass key is")
        assert (at < 200) if depth == 0 else (at > 1600)
    for fraction in (0.1, 0.5):
        (x,) = instances(TASKS["copy"], tok, hay, 1000, fraction, 1, seed=0)
        copied = sum(b - a for a, b in x.spans())
        assert abs(copied - fraction * 1000) < 40


def test_an_oracle_scores_everything_and_a_uniform_guesser_scores_chance():
    tok = load_tokenizer("byte")
    hay = load_haystack("repeat", tok)
    settings = {"mqar": {"digits": 1}, "copy": {"letters": 1}, "niah_multivalue": {"digits": 1},
                "variable_tracking": {"digits": 1}}
    rng = np.random.default_rng(0)
    for name, params in settings.items():
        task = TASKS[name]
        made = instances(task, tok, hay, 600, task.axis_default[-1 if name == "mqar" else 0], 300, 0, params)
        assert all(all(score(x, x.answer_texts())) for x in made)
        hits = [h for x in made for h in score(x, [task.guess(rng, **task.check_params(params)) for _ in x.answers])]
        p = task.chance(**task.check_params(params))
        assert abs(np.mean(hits) - p) < 4 * math.sqrt(p * (1 - p) / len(hits)) + 1e-9, (name, np.mean(hits), p)


class Oracle(torch.nn.Module):
    """Reads the answer: its logits at position t put all mass on the row's token t + 1 (a position counter is
    its carried state), so teacher-forced scoring must give it every answer."""

    def __init__(self, rows: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.rows, self.vocab = torch.nn.functional.pad(rows, (0, 1)), vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, state):
        pos = 0 if state is None else int(state["pos"])
        nxt = self.rows[: x.shape[0], pos + 1 : pos + 1 + x.shape[1]]
        return torch.nn.functional.one_hot(nxt, self.vocab).float(), {"pos": torch.tensor(pos + x.shape[1])}


def context(model, cfg: EvalConfig, tok) -> SimpleNamespace:
    return SimpleNamespace(cfg=cfg, model=model, tokenizer=tok, shard=ALONE, tokens_per_forward=1 << 20,
                           device=torch.device("cpu"))


def test_the_metric_gives_an_oracle_every_answer():
    tok = load_tokenizer("byte")
    cfg = EvalConfig(task_trials=5, chunk=13, task_haystack="repeat")
    for name in ("mqar", "niah_multiquery", "copy"):
        task, hay = TASKS[name], load_haystack("repeat", tok)
        params, value = task_settings(cfg, task), axis_values(cfg, task)[0]
        made = instances(task, tok, hay, 700, value, 5, cfg.seed, params)
        rows = torch.zeros(5, max(len(x.tokens) for x in made), dtype=torch.long)
        for i, x in enumerate(made):
            rows[i, : len(x.tokens)] = torch.tensor(x.tokens)
        bar = SimpleNamespace(update=lambda n: None)
        got = score_cell(context(Oracle(rows, 256), cfg, tok), task, hay, 700, value, params, bar)
        assert got["hits"] == got["answers"] == sum(len(x.answers) for x in made) > 0, name


def test_chunked_scoring_equals_one_whole_forward():
    torch.manual_seed(0)
    tok = load_tokenizer("byte")
    model = build_model(ModelConfig(family="mamba", d_model=16, n_layers=2, d_state=4, vocab_size=256)).eval()
    made = instances(TASKS["niah_multivalue"], tok, load_haystack("wikitext", tok), 500, 0.5, 3, seed=0)
    got = predict(model, made, chunk=37, device=torch.device("cpu"))
    for x, answers in zip(made, got):
        with torch.no_grad():
            logits, _ = model(torch.tensor([x.tokens]), None)
        argmax = logits[0].argmax(-1)
        assert answers == [[int(argmax[p - 1]) for p in range(a, b)] for a, b in x.spans()]


def test_a_task_stream_is_documents_of_its_length_deterministic_and_sliced_like_an_array():
    tok = load_tokenizer("byte")
    spec = "synthetic:mqar?length=96&pairs=3&docs=50&haystack=repeat&seed=4"
    corpus = synthetic_corpus(spec, tok)
    assert len(corpus) == 96 * 50 and corpus.doc_starts.tolist() == list(range(0, 96 * 50, 96))
    whole = np.concatenate([corpus.tokens.document(i) for i in range(50)])
    assert (corpus.tokens[0 : len(corpus)] == whole).all()
    assert (corpus.tokens[90:200] == whole[90:200]).all() and len(corpus.tokens[5:5]) == 0
    again = synthetic_corpus(spec, tok)
    assert (again.tokens[0:960] == whole[:960]).all() and again.digest == corpus.digest
    for i in range(5):
        text = tok.decode(corpus.tokens.document(i).tolist())
        asked = TASKS["mqar"].parse(text)
        assert len(asked) == 3 and text.endswith(asked[-1])  # the last answer ends the document
    other = synthetic_corpus(spec.replace("seed=4", "seed=5"), tok)
    assert other.digest != corpus.digest and not (other.tokens[0:96] == whole[:96]).all()
    assert synthetic_corpus(spec.replace("pairs=3", "pairs=4"), tok).digest != corpus.digest


@pytest.mark.parametrize("spec, message", [
    ("synthetic:mqar?length=0", "length must be >= 1"),
    ("synthetic:copy?fraction=abc", "fraction must be a number"),
    ("synthetic:mqar?pairs=2.5", "pairs must be an integer"),
    ("synthetic:passkey?haystack=/no/such/file.txt", "haystack file not found"),
])
def test_bad_task_streams_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        synthetic_corpus(spec, load_tokenizer("byte"))
