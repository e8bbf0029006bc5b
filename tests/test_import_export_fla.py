"""``longssm import`` / ``export`` of fla's (flash-linear-attention) Hugging Face models, against tiny random
``GatedDeltaNetForCausalLM``, ``DeltaNetForCausalLM`` and ``GLAForCausalLM`` built here (no downloads):

    fla directory -> import (the CLI) -> logits = a float64 re-implementation of fla's layers, written here from fla's
                     definitions and reading fla's state dict under fla's names (independent of longssm's blocks)
                  -> export (the CLI) -> the same tensors under the same names, a config that fla's config class
                     turns into the same architecture

and every fla option we do not implement a one-line error (CLI exit 2) with nothing written.

fla's forward needs its GPU kernels, so the reference here is built from fla's pieces instead: its naive recurrences
(``fla.ops.*.naive``), which compute in float32 only; ``recurrence`` below is their float64 transcription, pinned to
them on random inputs (``test_recurrence_is_fla_naive_recurrence``), so that the logits compare at 1e-10.

``import fla`` registers fla's classes with transformers' Auto classes, also under model_type "mamba" and others; the
``fla`` fixture restores transformers' registries afterwards so that the other tests of this worker see theirs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import assert_one_line_error, longssm
from longssm import cli
from longssm.checkpoint import load_model, read_config, save_run
from longssm.config import DataConfig, ModelConfig, RunConfig
from longssm.convert import export_hf, import_checkpoint
from longssm.errors import UserError
from longssm.models import build_model
from longssm.pretrained import read_pretrained

pytestmark = [
    pytest.mark.filterwarnings("ignore:Triton is not supported on current platform:UserWarning"),
    pytest.mark.filterwarnings("ignore:ShortConvolution is crucial:UserWarning"),
]

TOKENS = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(0))  # > one chunk of 64
TINY = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2)
CLASSES = {"gated_deltanet": "GatedDeltaNet", "delta_net": "DeltaNet", "gla": "GLA"}
CASES = {  # name -> (fla model_type, config arguments besides TINY, CLI in a child process: "import", "both", "")
    "gdn": ("gated_deltanet", dict(head_dim=8, num_heads=4), "both"),  # fla's defaults: output gate, short conv, untied
    "gdn-plain": ("gated_deltanet", dict(head_dim=16, num_heads=2, expand_v=1.5, use_gate=False, use_short_conv=False,
                                         tie_word_embeddings=True, intermediate_size=44, norm_eps=1e-5), ""),
    "deltanet": ("delta_net", dict(num_heads=2, expand_v=2.0, use_gate=True, conv_size=3), "import"),
    "deltanet-plain": ("delta_net", dict(num_heads=4, use_short_conv=False, tie_word_embeddings=True,
                                         hidden_ratio=3), ""),
    "gla": ("gla", dict(num_heads=2, intermediate_size=44), "import"),  # fla's defaults: no short conv, output gate
    "gla-conv": ("gla", dict(num_heads=4, expand_k=1.0, use_short_conv=True, use_output_gate=False,
                             tie_word_embeddings=True), ""),
}
ARCHITECTURE = {  # config attributes that fla's layers read beyond the module shapes (those are compared by repr)
    "gated_deltanet": ("use_gate", "allow_neg_eigval", "num_v_heads", "output_gate_activation"),
    "delta_net": ("use_gate", "allow_neg_eigval", "use_beta", "qk_activation", "qk_norm", "use_output_norm"),
    "gla": ("use_output_gate", "num_kv_heads", "feature_map", "clamp_min", "elementwise_affine", "use_gk", "use_gv"),
}
COMMON = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "use_short_conv", "conv_size", "norm_eps",
          "tie_word_embeddings", "hidden_act", "attn", "attnres_block_size", "fuse_norm")


@pytest.fixture(scope="module")
def fla():
    """fla's model classes and naive recurrences; transformers' Auto registries are restored afterwards."""
    from transformers.models.auto import configuration_auto, modeling_auto

    registries = [configuration_auto.CONFIG_MAPPING, modeling_auto.MODEL_MAPPING,
                  modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING]
    saved = [dict(registry._extra_content) for registry in registries]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Triton is not supported", category=UserWarning)
            models = pytest.importorskip("fla.models")
            from fla.ops.delta_rule.naive import delta_rule_recurrence
            from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
            from fla.ops.gla.naive import naive_recurrent_gla
        yield SimpleNamespace(models=models, delta_rule=delta_rule_recurrence,
                              gated_delta_rule=naive_recurrent_gated_delta_rule, gla=naive_recurrent_gla)
    finally:
        for registry, content in zip(registries, saved, strict=True):
            registry._extra_content.clear()
            registry._extra_content.update(content)


def fla_classes(fla, model_type: str):
    name = CLASSES[model_type]
    return getattr(fla.models, f"{name}Config"), getattr(fla.models, f"{name}ForCausalLM")


def fla_model(fla, model_type: str, seed: int = 0, **kwargs):
    """A tiny fla model with every parameter random (norms around 1, biases, A_log and dt_bias included)."""
    config_class, model_class = fla_classes(fla, model_type)
    model = model_class(config_class(**TINY | kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name:
                param.copy_(1 + 0.3 * noise)
            elif param.ndim >= 2:  # linear, embedding (fan-in scaled) and convolution weights
                param.copy_(noise / param[0].numel() ** 0.5)
            else:  # biases, A_log, dt_bias
                param.copy_(0.5 * noise)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# The reference: fla's layers in float64, from fla's state dict


def recurrence(q, k, v, beta=None, g=None, gk=None):
    """fla's naive recurrences in float64 (its naive ops compute in float32): q, k (b, l, h, K), v (b, l, h, V);
    delta rule with beta (b, l, h), decay exp(g) (b, l, h) per head or exp(gk) (b, l, h, K) per key channel;
    state S (b, h, K, V) from zero. -> o (b, l, h, V)."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    out = []
    for t in range(q.shape[1]):
        if g is not None:
            S = S * g[:, t].exp()[..., None, None]
        if gk is not None:
            S = S * gk[:, t].exp()[..., None]
        kt, vt = k[:, t], v[:, t]
        if beta is not None:
            vt = beta[:, t, :, None] * (vt - torch.einsum("bhk,bhkv->bhv", kt, S))
        S = S + kt[..., None] * vt[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * q.shape[3] ** -0.5, S))
    return torch.stack(out, 1)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def l2_norm(x):  # fla's l2norm (eps 1e-6), applied to q and k in its delta-rule kernels (use_qk_l2norm_in_kernel)
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def short_conv(x, weight):
    """fla's ``ShortConvolution`` (nn.Conv1d(c, c, k, groups=c, padding=k-1), the first l outputs) before its
    activation: x (b, l, c), weight (c, 1, k) -> (b, l, c)."""
    y = F.conv1d(x.transpose(1, 2), weight, padding=weight.shape[-1] - 1, groups=weight.shape[0])
    return y[..., :x.shape[1]].transpose(1, 2)


def fla_mixer(cfg, p: dict, x):
    """fla's ``GatedDeltaNet`` / ``DeltaNet`` / ``GatedLinearAttention`` layer: ``p`` its state dict (fla's names),
    x (b, l, d) -> (b, l, d)."""

    def linear(name, y):
        return y @ p[f"{name}.weight"].T + p.get(f"{name}.bias", 0)

    h, delta = cfg.num_heads, cfg.model_type != "gla"
    q, k, v = (linear(f"{n}_proj", x) for n in "qkv")
    if cfg.use_short_conv:  # SiLU inside the convolutions (qk_activation silu)
        q, k, v = (F.silu(short_conv(y, p[f"{n}_conv1d.weight"])) for n, y in zip("qkv", (q, k, v), strict=True))
    elif delta:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    q, k, v = (y.unflatten(-1, (h, -1)) for y in (q, k, v))
    if delta:
        beta = torch.sigmoid(linear("b_proj", x))
        g = None
        if cfg.model_type == "gated_deltanet":
            g = -p["A_log"].exp() * F.softplus(linear("a_proj", x) + p["dt_bias"])
        o = recurrence(l2_norm(q), l2_norm(k), v, beta=beta, g=g)
        gated, norm = cfg.use_gate, p["o_norm.weight"]
    else:
        gk = F.logsigmoid(linear("gk_proj.1", linear("gk_proj.0", x))).unflatten(-1, (h, -1)) / 16
        o = recurrence(q, k, v, gk=gk)
        gated, norm = cfg.use_output_gate, p.get("g_norm_swish_gate.weight", p.get("g_norm.weight"))
    o = rms_norm(o, norm, cfg.norm_eps)
    if gated:
        o = o * F.silu(linear("g_proj", x).unflatten(-1, (h, -1)))
    return linear("o_proj", o.flatten(-2))


def fla_logits(model, tokens=TOKENS):
    """fla's ``*ForCausalLM`` forward in float64 from its state dict: pre-norm mixer and SwiGLU MLP sublayers."""
    cfg = model.config
    sd = {name: t.double() for name, t in model.state_dict().items()}
    x = sd["model.embeddings.weight"][tokens]
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        attn = {name[len(pre) + 5:]: t for name, t in sd.items() if name.startswith(pre + "attn.")}
        x = x + fla_mixer(cfg, attn, rms_norm(x, sd[pre + "attn_norm.weight"], cfg.norm_eps))
        y = rms_norm(x, sd[pre + "mlp_norm.weight"], cfg.norm_eps)
        gate, up = y @ sd[pre + "mlp.gate_proj.weight"].T, y @ sd[pre + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ sd[pre + "mlp.down_proj.weight"].T
    return rms_norm(x, sd["model.norm.weight"], cfg.norm_eps) @ sd["lm_head.weight"].T


def our_logits(run: Path, tokens=TOKENS):
    model, _, _ = load_model(run)
    with torch.no_grad():
        return model.double()(tokens)[0]


@pytest.mark.parametrize("kind", ["gated_delta_rule", "delta_rule", "gla"])
def test_recurrence_is_fla_naive_recurrence(fla, kind):
    gen = torch.Generator().manual_seed(1)
    b, l, h, dk, dv = 2, 9, 3, 4, 5
    q, k = (torch.randn(b, l, h, dk, generator=gen) for _ in range(2))
    v = torch.randn(b, l, h, dv, generator=gen)
    beta = torch.rand(b, l, h, generator=gen)
    g = -torch.rand(b, l, h, generator=gen)
    gk = -torch.rand(b, l, h, dk, generator=gen)
    if kind == "gated_delta_rule":
        theirs, _ = fla.gated_delta_rule(q, k, v, beta, g, initial_state=None, output_final_state=True)
        ours = recurrence(q.double(), k.double(), v.double(), beta=beta.double(), g=g.double())
    elif kind == "delta_rule":  # head-first layout (b, h, l, .)
        theirs, _ = fla.delta_rule(*(t.transpose(1, 2) for t in (q, k, v, beta)))
        theirs = theirs.transpose(1, 2)
        ours = recurrence(q.double(), k.double(), v.double(), beta=beta.double())
    else:
        theirs, _ = fla.gla(q, k, v, gk, initial_state=None, output_final_state=True)
        ours = recurrence(q.double(), k.double(), v.double(), gk=gk.double())
    torch.testing.assert_close(ours.float(), theirs, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Import, logits, export


def run_cli(child: bool, *args: str) -> None:
    """The command line: in a child process (``conftest.longssm``), or in this one (``cli.main``, faster)."""
    if child:
        proc = longssm(*args)
        assert proc.returncode == 0, proc.stderr
    else:
        assert cli.main(list(args)) == 0


@pytest.mark.parametrize("case", CASES)
def test_import_has_fla_logits_and_export_gives_back_the_same_files(fla, tmp_path, case):
    model_type, kwargs, child = CASES[case]
    model = fla_model(fla, model_type, **kwargs)
    model.save_pretrained(tmp_path / "fla")
    run_cli(child != "", "import", str(tmp_path / "fla"), "--out", str(tmp_path / "run"), "--tokenizer", "byte")
    torch.testing.assert_close(our_logits(tmp_path / "run"), fla_logits(model), atol=1e-10, rtol=1e-10)
    assert json.loads((tmp_path / "run" / "source.json").read_text())["format"] == "hf"

    run_cli(child == "both", "export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "out"))
    original = load_file(tmp_path / "fla" / "model.safetensors")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[name], original[name]) for name in original), case
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == (model_type, [type(model).__name__])

    config_class, model_class = fla_classes(fla, model_type)
    again = config_class.from_pretrained(tmp_path / "out")
    rebuilt = model_class(again)
    assert repr(rebuilt) == repr(model)  # every module, size, kernel width, eps and gate activation
    for key in COMMON + ARCHITECTURE[model_type]:
        assert getattr(again, key) == getattr(model.config, key), key
    exported.setdefault("lm_head.weight", exported["model.embeddings.weight"])
    rebuilt.load_state_dict(exported, strict=True)
    assert (rebuilt.lm_head.weight is rebuilt.model.embeddings.weight) == model.config.tie_word_embeddings


def test_gla_without_fused_norm_imports_its_g_norm(fla, tmp_path):
    """fla names GLA's output norm g_norm without fuse_norm (g_norm_swish_gate with it and the output gate)."""
    model = fla_model(fla, "gla", num_heads=2, fuse_norm=False, seed=3)
    assert "model.layers.0.attn.g_norm.weight" in model.state_dict()
    model.save_pretrained(tmp_path / "fla")
    run = import_checkpoint(tmp_path / "fla", tmp_path / "run", tokenizer="byte")
    torch.testing.assert_close(our_logits(run), fla_logits(model), atol=1e-10, rtol=1e-10)


def test_equivalent_spellings_and_init_from_read(fla, tmp_path):
    """num_v_heads = num_heads (no grouping) and output_gate_activation silu (fla's alias of swish) are ours."""
    fla_model(fla, "gated_deltanet", head_dim=16, num_heads=2, num_v_heads=2,
              output_gate_activation="silu").save_pretrained(tmp_path / "fla")
    pretrained = read_pretrained(tmp_path / "fla")  # what train --init-from reads
    assert (pretrained.model.family, pretrained.model.n_heads, pretrained.model.v_head_dim) == ("gated_deltanet", 2,
                                                                                                 32)
    assert pretrained.model.mlp_expand == 256 / 32 and pretrained.source["format"] == "hf"


@pytest.mark.parametrize("family,tie", [("gated_deltanet", False), ("deltanet", True), ("gla", False)])
def test_longssm_run_exports_to_fla_with_our_logits(fla, tmp_path, family, tie):
    """A run of ours (n_heads, v_head_dim from head_dim; a fractional mlp_expand) loads in fla's class with
    ``from_pretrained``, and fla's layers (the reference above) compute our logits."""
    model = ModelConfig(family=family, vocab_size=256, d_model=24, n_layers=2, head_dim=8, v_head_dim=12,
                        mlp_expand=1.5, short_conv=family != "gla", tie_embeddings=tie)
    ours = build_model(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen) / (param[0].numel() ** 0.5 if param.ndim > 1
                                                                          else 1))
    save_run(tmp_path / "run", ours, RunConfig(name="run", model=model, data=DataConfig(tokenizer="byte")), {})
    export_hf(tmp_path / "run", tmp_path / "out")
    model_type = json.loads((tmp_path / "out" / "config.json").read_text())["model_type"]
    theirs = fla_classes(fla, model_type)[1].from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(fla_logits(theirs), our_logits(tmp_path / "run"), atol=1e-10, rtol=1e-10)
    assert theirs.config.tie_word_embeddings == tie and theirs.model.layers[0].mlp.intermediate_size == 36


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


@pytest.fixture(scope="module")
def fla_dirs(fla, tmp_path_factory):
    """One saved tiny fla directory per model type, copied by each bad-input case."""
    root = tmp_path_factory.mktemp("fla_dirs")
    for model_type in CLASSES:
        heads = dict(head_dim=16, num_heads=2) if model_type == "gated_deltanet" else dict(num_heads=2)
        fla_model(fla, model_type, **heads).save_pretrained(root / model_type)
    return root


def broken(fla_dirs: Path, tmp_path: Path, model_type: str, **changes) -> Path:
    path = tmp_path / "fla"
    shutil.copytree(fla_dirs / model_type, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))
    return path


HYBRID = {"layers": [1], "num_heads": 2}
REFUSED = {  # case -> (model_type, config changes, expected message)
    "negative eigenvalues": ("gated_deltanet", dict(allow_neg_eigval=True), "allow_neg_eigval=True is not supported"),
    "hybrid attention": ("gated_deltanet", dict(attn=HYBRID), "attn={'layers': [1]"),
    "grouped value heads": ("gated_deltanet", dict(num_v_heads=4), "num_v_heads=4 is not supported"),
    "sigmoid gate": ("gated_deltanet", dict(output_gate_activation="sigmoid"), "output_gate_activation='sigmoid'"),
    "conv bias": ("gated_deltanet", dict(conv_bias=True), "conv_bias=True is not supported"),
    "attention residuals": ("gated_deltanet", dict(attnres_block_size=2), "attnres_block_size=2 is not supported"),
    "value size not an integer": ("gated_deltanet", dict(expand_v=0.3), "expand_v=0.3 gives head_dim * expand_v"),
    "other MLP activation": ("gated_deltanet", dict(hidden_act="powlu"), "hidden_act='powlu' is not supported"),
    "no beta": ("delta_net", dict(use_beta=False), "use_beta=False is not supported"),
    "relu keys": ("delta_net", dict(qk_activation="relu"), "qk_activation='relu' is not supported"),
    "sum norm": ("delta_net", dict(qk_norm="sum"), "qk_norm='sum' is not supported"),
    "no output norm": ("delta_net", dict(use_output_norm=False), "use_output_norm=False is not supported"),
    "delta negative eigenvalues": ("delta_net", dict(allow_neg_eigval=True), "allow_neg_eigval=True"),
    "key size not an integer": ("delta_net", dict(expand_k=0.3), "expand_k=0.3 gives hidden_size * expand_k = 9.6"),
    "heads do not divide": ("delta_net", dict(num_heads=3), "not a positive multiple of num_heads = 3"),
    "gate normaliser": ("gla", dict(gate_logit_normalizer=8), "gate_logit_normalizer=8 is not supported"),
    "gate rank": ("gla", dict(gate_low_rank_dim=8), "gate_low_rank_dim=8 is not supported"),
    "clamped gate": ("gla", dict(clamp_min=-1.0), "clamp_min=-1.0 is not supported"),
    "feature map": ("gla", dict(feature_map="relu"), "feature_map='relu' is not supported"),
    "grouped key heads": ("gla", dict(num_kv_heads=1), "num_kv_heads=1 is not supported"),
    "no norm weight": ("gla", dict(elementwise_affine=False), "elementwise_affine=False is not supported"),
    "value gate": ("gla", dict(use_gv=True), "use_gv=True is not supported"),
    "infinite ratio": ("delta_net", dict(expand_v=float("inf")), "expand_v must be a positive number; got inf"),
    "MLP too wide": ("gla", dict(intermediate_size=32 * 65), "intermediate_size 2080 is more than 64 * hidden_size"),
    "not a number": ("gla", dict(hidden_size="32"), "hidden_size must be a positive number; got '32'"),
    "not a width": ("gla", dict(intermediate_size=4.5), "intermediate_size must be a positive integer; got 4.5"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_unsupported_fla_option_is_refused(fla_dirs, tmp_path, case):
    model_type, changes, message = REFUSED[case]
    path = broken(fla_dirs, tmp_path, model_type, **changes)
    with pytest.raises(UserError, match=re.escape(message)):
        import_checkpoint(path, tmp_path / "run", tokenizer="byte")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["rwkv7", "hybrid attention"])
def test_cli_refuses_in_one_line_and_writes_nothing(fla, fla_dirs, tmp_path, case):
    if case == "rwkv7":  # an fla model type we do not read
        path = tmp_path / "fla"
        fla.models.RWKV7Config(**TINY).save_pretrained(path)
        message = "model_type 'rwkv7' is not supported"
    else:
        model_type, changes, message = REFUSED[case]
        path = broken(fla_dirs, tmp_path, model_type, **changes)
    proc = longssm("import", str(path), "--out", str(tmp_path / "run"), "--tokenizer", "byte")
    assert proc.returncode == 2
    assert_one_line_error(proc, message, code=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change,message", [(dict(mlp_expand=0.0), "always have an MLP sublayer"),
                                            (dict(gate_rank=8), "always builds gate_low_rank_dim 16")])
def test_export_refuses_what_fla_cannot_express(tmp_path, change, message):
    model = dataclasses.replace(ModelConfig(family="gla", vocab_size=256, d_model=16, n_layers=1, head_dim=8,
                                            mlp_expand=2.0), **change)
    save_run(tmp_path / "run", build_model(model), RunConfig(name="run", model=model,
                                                              data=DataConfig(tokenizer="byte")), {})
    with pytest.raises(UserError, match=message):
        export_hf(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert read_config(tmp_path / "run" / "final").model == model
