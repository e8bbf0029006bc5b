"""Shared fixtures: a small real text corpus cut from the shipped WikiText slice, and tiny run configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from longssm.data.paths import resolve_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def wiki_text() -> str:
    """The first ~60 KB of the shipped WikiText-103 training slice (several whole articles)."""
    text = resolve_path("builtin:wikitext-103/wiki.train.prefix.tokens").read_text(encoding="utf-8")
    return text[:60_000]


@pytest.fixture()
def corpus_file(tmp_path: Path, wiki_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(wiki_text, encoding="utf-8")
    return path


def tiny_overrides(corpus: Path, cache: Path, **extra) -> dict:
    """A config dict for a ~10k-parameter Mamba trained for a few steps on ``corpus``."""
    cfg = {
        "name": "tiny",
        "model": {"family": "mamba", "d_model": 16, "n_layers": 1, "d_state": 4},
        "data": {"train": str(corpus), "valid": str(corpus), "tokenizer": "byte", "cache_dir": str(cache)},
        "train": {"seq_len": 8, "batch_size": 4, "steps": 12, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                  "progress": False, "threads": 1},
    }
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        cfg.setdefault(section, {})[key] = value
    return cfg
