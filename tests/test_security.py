"""Nothing in ``src/`` runs code from a file or a string: weights through safetensors, ``.pt``/``.bin`` through
``torch.load(weights_only=True)``, YAML through ``safe_load``, no pickle, ``eval``, ``exec`` or shell. The scan reads
the syntax tree (not text), so comments, docstrings and methods that happen to be called ``eval`` do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_overrides
from longssm import checkpoint as ckpt_io
from longssm.config import RunConfig, from_dict
from longssm.errors import UserError
from longssm.train import train

SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def dotted(node: ast.expr) -> str:
    """``pickle.load`` for ``pickle.load``, ``torch.load`` for ``torch.load``, ``''`` for other expressions."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def forbidden_calls(source: str) -> list[str]:
    """``line: what`` for every unsafe call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "dill", "marshal", "shelve"):
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if "load" in a.name]
        if not isinstance(node, ast.Call):
            continue
        name, why = dotted(node.func), None
        if name.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve") and "load" in name:
            why = "unpickling"
        elif name == "torch.load" and not is_true(keyword(node, "weights_only")):
            why = "torch.load without weights_only=True"
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            why = "an unsafe YAML loader"
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                why = "yaml.load without SafeLoader"
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            why = "eval/exec"
        elif name.startswith("subprocess.") and is_true(keyword(node, "shell")):
            why = "subprocess with shell=True"
        elif name in ("os.system", "os.popen"):
            why = "a shell command"
        elif name in ("np.load", "numpy.load") and is_true(keyword(node, "allow_pickle")):
            why = "np.load with allow_pickle=True"
        if why:
            found.append(f"{node.lineno}: {name}: {why}")
    return found


SOURCES = sorted((REPO / "src").rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO / "src")) for p in SOURCES])
def test_source_makes_no_unsafe_call(path: Path):
    assert forbidden_calls(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(f)", "import pickle\npickle.loads(b)", "from pickle import load",
    "torch.load(p)", "torch.load(p, weights_only=False)", "yaml.load(text)", "yaml.load(text, Loader=yaml.Loader)",
    "yaml.unsafe_load(text)", "yaml.full_load(text)", "eval(s)", "exec(s)", "subprocess.run(cmd, shell=True)",
    "subprocess.Popen(cmd, shell=True)", "os.system(cmd)", "np.load(p, allow_pickle=True)",
])
def test_the_scan_finds_each_unsafe_call(snippet: str):
    assert len(forbidden_calls(snippet)) == 1


@pytest.mark.parametrize("snippet", [
    "torch.load(p, map_location='cpu', weights_only=True)", "yaml.safe_load(text)",
    "yaml.load(text, Loader=yaml.SafeLoader)", "model.eval()", "subprocess.run([sys.executable, '-m', 'x'])",
    "np.load(p, mmap_mode='r')", "x = pickle.UnpicklingError",
])
def test_the_scan_lets_safe_calls_through(snippet: str):
    assert forbidden_calls(snippet) == []


def test_trainer_state_reads_back_with_weights_only(tmp_path, corpus_file):
    """The optimizer, scheduler, scaler and RNG states ``train`` saves are plain tensors and data:
    ``torch.load(weights_only=True)`` reads them whole."""
    torch.set_num_threads(1)
    cfg = from_dict(RunConfig, tiny_overrides(corpus_file, tmp_path / "cache", train__steps=2))
    train(cfg, tmp_path / "run")
    trainer = ckpt_io.load_trainer(ckpt_io.latest_checkpoint(tmp_path / "run"))
    assert trainer["step"] == 2 and isinstance(trainer["torch_rng"], torch.Tensor)
    assert trainer["optimizer"]["state"] and trainer["scheduler"]["last_epoch"] == 2
    moments = [s["exp_avg"] for s in trainer["optimizer"]["state"].values()]
    assert all(isinstance(m, torch.Tensor) and torch.isfinite(m).all() for m in moments)


def test_a_trainer_file_holding_an_object_is_refused(tmp_path):
    torch.save({"step": 1, "payload": Path("/etc")}, tmp_path / "trainer.pt")  # an arbitrary object: not loaded
    with pytest.raises(UserError, match="holds more than tensors and plain data"):
        ckpt_io.load_trainer(tmp_path)
