"""``longssm import`` / ``export`` against tiny random Hugging Face models built here (no downloads): HF and original
``mamba_ssm`` directories in, logits equal to HF's; HF directories out, loaded by ``from_pretrained``; every bad input
a one-line ``UserError`` (CLI exit 2) with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import tiny_overrides
from longssm import cli
from longssm.checkpoint import load_model, read_config, read_weights
from longssm.config import load_config
from longssm.convert import export_hf, import_checkpoint
from longssm.data.corpus import load_corpus
from longssm.data.streams import StreamLoader
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError
from longssm.train import train

transformers = pytest.importorskip("transformers")

V, PADDED_FROM = 264, 259  # vocabulary (a multiple of 8) and the unpadded size a mamba_ssm config states
TOKENS = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))


def hf_model(family: str, tie: bool = True, vocab_size: int = V):
    """A tiny random ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` with every parameter away from its init value."""
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=4,
                  layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True, tie_word_embeddings=tie)
    if family == "mamba":
        model = transformers.MambaForCausalLM(transformers.MambaConfig(time_step_rank=3, **common))
    else:
        model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
            head_dim=8, num_heads=4, n_groups=2, chunk_size=8, use_cache=False, **common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias")):
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


def hf_logits(model, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, use_cache=False).logits


def our_logits(run: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    model, _, _ = load_model(run)
    with torch.no_grad():
        return model(tokens)[0]


def write_mamba_ssm_dir(hf, path: Path, bin_file: bool) -> Path:
    """``hf``'s weights in the original layout: unpadded vocab_size + pad_vocab_size_multiple, ssm_cfg, key
    ``backbone.embedding.weight``, no tied head; ``pytorch_model.bin`` or ``model.safetensors``."""
    path.mkdir()
    cfg = hf.config
    ssm_cfg = {"d_state": cfg.state_size, "expand": cfg.expand, "d_conv": cfg.conv_kernel}
    if cfg.model_type == "mamba":
        ssm_cfg["dt_rank"] = cfg.time_step_rank
    else:
        ssm_cfg |= {"layer": "Mamba2", "headdim": cfg.head_dim, "ngroups": cfg.n_groups, "chunk_size": cfg.chunk_size}
    config = {"d_model": cfg.hidden_size, "d_intermediate": 0, "n_layer": cfg.num_hidden_layers,
              "vocab_size": PADDED_FROM, "ssm_cfg": ssm_cfg, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}
    (path / "config.json").write_text(json.dumps(config))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone()
             for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    if bin_file:
        torch.save(state, path / "pytorch_model.bin")
    else:
        save_file(state, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("family,tie,shard", [("mamba", True, False), ("mamba2", False, False), ("mamba", True, True),
                                              ("mamba2", True, True)])
def test_hf_directory_imports_with_hf_logits(tmp_path, family, tie, shard):
    hf = hf_model(family, tie)
    hf.save_pretrained(tmp_path / "hf", **({"max_shard_size": "20KB"} if shard else {}))
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == shard
    run = import_checkpoint(tmp_path / "hf", tmp_path / "run", tokenizer="byte")
    torch.testing.assert_close(our_logits(run), hf_logits(hf), atol=1e-5, rtol=1e-5)
    cfg = read_config(run / "final")
    assert (cfg.model.family, cfg.model.tie_embeddings, cfg.data.tokenizer) == (family, tie, "byte")
    assert json.loads((run / "source.json").read_text())["format"] == "hf"


@pytest.mark.parametrize("family,bin_file", [("mamba", True), ("mamba2", False)])
def test_mamba_ssm_directory_imports_with_hf_logits(tmp_path, family, bin_file):
    hf = hf_model(family)
    run = import_checkpoint(write_mamba_ssm_dir(hf, tmp_path / "orig", bin_file), tmp_path / "run", tokenizer="byte")
    assert read_config(run / "final").model.vocab_size == V  # 259 padded to the multiple of 8
    torch.testing.assert_close(our_logits(run), hf_logits(hf), atol=1e-5, rtol=1e-5)


def test_directory_tokenizer_is_copied_into_the_run(tmp_path):
    from tokenizers import Tokenizer, models

    hf_model("mamba").save_pretrained(tmp_path / "hf")
    word_level = models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")
    Tokenizer(word_level).save(str(tmp_path / "hf" / "tokenizer.json"))
    run = import_checkpoint(tmp_path / "hf", tmp_path / "run")
    assert read_config(run / "final").data.tokenizer == str((tmp_path / "run" / "tokenizer.json").resolve())
    assert (run / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("family,tie", [("mamba", True), ("mamba2", False)])
def test_export_loads_in_transformers_and_reimports_bit_exactly(tmp_path, family, tie):
    hf_model(family, tie).save_pretrained(tmp_path / "hf")
    run = import_checkpoint(tmp_path / "hf", tmp_path / "run", tokenizer="byte")
    exported = export_hf(run, tmp_path / "exported")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    torch.testing.assert_close(hf_logits(loaded), our_logits(run), atol=1e-5, rtol=1e-5)

    again = import_checkpoint(exported, tmp_path / "again", tokenizer="byte")
    first = read_weights(run / "final" / "model.safetensors")
    second = read_weights(again / "final" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert read_config(again / "final").model == read_config(run / "final").model


def test_cli_import_eval_export(tmp_path, capsys):
    hf_model("mamba").save_pretrained(tmp_path / "hf")
    (tmp_path / "text.txt").write_text("hello world, " * 20)
    assert cli.main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--tokenizer", "byte"]) == 0
    assert cli.main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "text.txt"), "--lengths", "16,64",
                     "--no-progress"]) == 0
    assert cli.main(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


class NotATensor:
    pass


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))


def _edit_weights(path: Path, edit) -> None:
    weights = load_file(str(path / "model.safetensors"))
    edit(weights)
    save_file(weights, str(path / "model.safetensors"))


BAD_INPUTS = {
    "unknown model_type": (lambda d: _edit_config(d, model_type="llama"), "model_type 'llama' is not supported"),
    "unsupported option": (lambda d: _edit_config(d, use_bias=True), "use_bias=True is not supported"),
    "not mamba at all": (lambda d: (d / "config.json").write_text('{"hidden": 3}'), "neither a Hugging Face"),
    "missing config": (lambda d: (d / "config.json").unlink(), "has no config.json"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
    "missing tensor": (lambda d: _edit_weights(d, lambda w: w.pop("backbone.norm_f.weight")),
                       "missing backbone.norm_f.weight"),
    "unexpected tensor": (lambda d: _edit_weights(d, lambda w: w.update(extra=torch.zeros(2))), "unexpected extra"),
    "wrong shape": (lambda d: _edit_config(d, state_size=8), "wrong shape backbone.layers.0.mixer.A_log (32, 4)"),
    "tokenizer larger than the embedding": (lambda d: _edit_weights(d, lambda w: w.update(
        {"backbone.embeddings.weight": w["backbone.embeddings.weight"][:40]})) or _edit_config(d, vocab_size=40),
        "has 256 tokens, more than the embedding's 40"),
    "bin with an object": (lambda d: ((d / "model.safetensors").unlink(), torch.save(
        {"backbone.norm_f.weight": NotATensor()}, d / "pytorch_model.bin")),
        "holds something other than plain tensors"),
    "bin with a list": (lambda d: ((d / "model.safetensors").unlink(), torch.save([torch.zeros(1)],
                                                                                  d / "pytorch_model.bin")),
                        "holds a list, not a dict"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    break_it, message = BAD_INPUTS[case]
    hf_model("mamba").save_pretrained(tmp_path / "hf")
    break_it(tmp_path / "hf")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_checkpoint(tmp_path / "hf", tmp_path / "run", tokenizer="byte")
    capsys.readouterr()
    assert cli.main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--tokenizer", "byte"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_existing_output_is_not_overwritten(tmp_path):
    hf_model("mamba").save_pretrained(tmp_path / "hf")
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="exists"):
        import_checkpoint(tmp_path / "hf", tmp_path / "run", tokenizer="byte")


def test_export_refuses_a_family_without_hf_class(tmp_path, corpus_file):
    cfg = load_config(None, tiny_overrides(corpus_file, tmp_path / "cache", model__family="gru", train__steps=1))
    train(cfg, tmp_path / "gru")
    with pytest.raises(UserError, match="no Hugging Face class"):
        export_hf(tmp_path / "gru", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# Post-training: train --init-from


@pytest.mark.parametrize("source", ["imported run", "hf directory"])
def test_train_init_from_starts_from_exactly_the_imported_weights(tmp_path, corpus_file, source):
    hf_model("mamba").save_pretrained(tmp_path / "hf")
    run = import_checkpoint(tmp_path / "hf", tmp_path / "run", tokenizer="byte")
    cfg = load_config(None, tiny_overrides(corpus_file, tmp_path / "cache", train__steps=2))
    losses: list[float] = []
    init_from = run if source == "imported run" else tmp_path / "hf"
    train(cfg, tmp_path / "post", on_step=lambda step, loss: losses.append(loss), init_from=init_from)

    model, _, _ = load_model(run)
    corpus = load_corpus(str(corpus_file), load_tokenizer("byte"), tmp_path / "cache")
    batch = StreamLoader(corpus.tokens, cfg.train.batch_size, cfg.train.seq_len, corpus.doc_starts).batch(0)
    with torch.no_grad():
        expected = F.cross_entropy(model(batch.x)[0].flatten(0, 1), batch.y.flatten()).item()
    assert losses[0] == pytest.approx(expected, abs=1e-6)
    assert read_config(tmp_path / "post" / "final").model == read_config(run / "final").model
    assert json.loads((tmp_path / "post" / "source.json").read_text())["init_from"] == str(
        (run / "final" if source == "imported run" else tmp_path / "hf").resolve())
    with pytest.raises(UserError, match="--init-from starts a new run"):
        train(cfg, tmp_path / "post", resume="auto", init_from=init_from)
