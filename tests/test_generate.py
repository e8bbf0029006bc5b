"""``longssm generate`` and ``longssm.generate``: greedy decoding from the carried state equals argmax decoding by
re-running the whole sequence, for every family; sampling (seeds, temperature, top-k, top-p); streaming UTF-8
text; stop strings; the command line end to end on a tiny trained run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from longssm.cli import main
from longssm.config import ModelConfig, load_config
from longssm.data.tokenizer import ByteTokenizer
from longssm.errors import UserError
from longssm.generate import Sampler, decode_pieces, generate_from_run, generate_ids, generate_text, prefill
from longssm.models import build_model
from longssm.models.registry import family_names
from longssm.train import train

SIZES = dict(vocab_size=256, d_model=16, n_layers=2, d_state=8, head_dim=8, chunk_size=4)


def make(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(family=family, **SIZES)).double().eval()


@torch.no_grad()
def rerun_argmax(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """The oracle: each next token is the argmax of a fresh pass over the whole sequence so far."""
    seq = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("family", list(family_names()))
def test_greedy_from_carried_state_equals_argmax_of_full_rerun(family):
    model = make(family)
    prompt = torch.randint(0, 256, (11,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = rerun_argmax(model, prompt, 20)
    # the prompt is consumed in chunks of 4 (three forward calls), then 20 single-token steps
    assert list(generate_ids(model, prompt, 20, Sampler(temperature=0), chunk=4)) == expected


def test_prefill_in_chunks_equals_one_pass():
    model = make("mamba")
    tokens = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, state = model(tokens)
    last, carried = prefill(model, tokens, chunk=5)
    torch.testing.assert_close(last, logits[:, -1], rtol=1e-12, atol=1e-12)
    for key, value in state.items():
        torch.testing.assert_close(carried[key], value, rtol=1e-12, atol=1e-12)
    with pytest.raises(UserError, match="empty"):
        prefill(model, tokens[:, :0])


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = make("mamba")
    sampler = Sampler(temperature=1.5)

    def draw(seed: int) -> list[int]:
        return list(generate_ids(model, [1, 2, 3], 30, sampler, torch.Generator().manual_seed(seed)))

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampler_filters():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert (Sampler(temperature=0)(logits) == 1).all()
    assert (Sampler(top_k=1)(logits, g) == 1).all()
    assert set(Sampler(top_k=2)(logits, g).tolist()) == {1, 2}
    # probabilities ∝ e^(0, 3, 2, 1, -1) ≈ (.03, .64, .24, .09, .01): top-p 0.8 keeps tokens 1 and 2 (0.64 < 0.8)
    assert set(Sampler(top_p=0.8)(logits, g).tolist()) == {1, 2}
    assert set(Sampler(top_p=0.5)(logits, g).tolist()) == {1}
    assert set(Sampler(temperature=1.0)(logits, g).tolist()) == {0, 1, 2, 3, 4}
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(UserError):
            Sampler(**bad)


def test_decode_pieces_waits_for_whole_utf8_characters():
    tok = ByteTokenizer()
    text = "a é € 𝄞 b"
    pieces = list(decode_pieces(tok, tok.encode(text)))
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    # an invalid byte is released (as U+FFFD) after at most 4 pending tokens, not held back forever
    assert "".join(decode_pieces(tok, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, ord("x")])) == "\ufffd" * 5 + "x"


def test_generate_text_stops_before_the_first_until_string_and_streams():
    model, tok = make("mamba"), ByteTokenizer()
    prompt = tok.encode("The ")
    full = tok.decode(rerun_argmax(model, prompt, 40))
    stop = full[25:27]
    out = io.StringIO()
    text = generate_text(model, tok, prompt, 40, Sampler(temperature=0), until=["\x00never", stop], out=out)
    assert text == full[:full.find(stop)]
    assert out.getvalue().startswith(text)
    assert generate_text(model, tok, prompt, 40, Sampler(temperature=0), out=out) == full


def tiny_run(root: Path, text: str) -> Path:
    """Train conftest's tiny Mamba for a few steps on 20 KB of ``text`` (one torch thread); its run directory."""
    corpus = root / "corpus.txt"
    corpus.write_text(text[:20_000], encoding="utf-8")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, tiny_overrides(corpus, root / "cache")), root / "run")
    finally:
        torch.set_num_threads(before)
    return root / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, wiki_text) -> Path:
    return tiny_run(tmp_path_factory.mktemp("generate"), wiki_text)


def test_cli_generate_streams_the_greedy_text_and_is_seeded(run_dir, tmp_path, capsys):
    greedy = generate_from_run(run_dir, "The history", 24, Sampler(temperature=0), device="cpu")
    assert main(["generate", str(run_dir), "--prompt", "The history", "--max-new-tokens", "24",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == greedy + "\n"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("The history", encoding="utf-8")
    sampled = []
    for seed in (3, 3, 4):
        assert main(["generate", str(run_dir), "--prompt-file", str(prompt_file), "--max-new-tokens", "24",
                     "--top-k", "20", "--top-p", "0.95", "--seed", str(seed)]) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1] != sampled[2]


@pytest.mark.parametrize("args, message", [
    (["--prompt", "x"], "missing argument: run"),
    (["RUN"], "exactly one of --prompt"),
    (["RUN", "--prompt", "x", "--prompt-file", "f"], "exactly one of --prompt"),
    (["RUN", "--prompt", "x", "--temperature", "-1"], "--temperature must be"),
    (["RUN", "--prompt", "", "--max-new-tokens", "3"], "the prompt is empty"),
])
def test_cli_generate_bad_input_is_one_line(run_dir, capsys, args, message):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
