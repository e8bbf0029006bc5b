"""Run configuration: nested dataclasses, read from YAML, overridden by dotted command-line keys.

A config file mirrors the dataclasses (``model:``, ``state:``, ``train:``, ``data:``); an unknown key or a
value of the wrong type is a ``UserError`` that names the dotted key the user typed. Derived fields (the
vocabulary size from the tokenizer, the batch size from a token budget) are resolved in ``train.py``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

FAMILIES = ("mamba", "mamba2", "s5", "gru", "lstm")
SCHEMES = ("zero", "previous", "random_noise", "fitted_noise", "state_passing")


@dataclass
class ModelConfig:
    family: str = "mamba"
    """Model family: one of mamba, mamba2, s5, gru, lstm."""
    vocab_size: int | None = None
    """Vocabulary size V; None = taken from the tokenizer."""
    d_model: int = 128
    """Residual stream width D."""
    n_layers: int = 2
    """Number of residual blocks."""
    d_state: int = 16
    """State size per channel N (Mamba-1/2); number of state dimensions P for S5; ignored for GRU/LSTM."""
    expand: int = 2
    """Inner width E = expand * d_model (Mamba-1/2)."""
    d_conv: int = 4
    """Causal depthwise convolution width K (Mamba-1/2)."""
    dt_rank: int | None = None
    """Rank R of the Δ projection (Mamba-1); None = ceil(d_model / 16)."""
    head_dim: int = 32
    """Head size P (Mamba-2): heads H = expand * d_model / head_dim."""
    n_groups: int = 1
    """Number of B/C groups (Mamba-2)."""
    chunk_size: int = 64
    """Chunk length of the chunked scans (Mamba-2 SSD, S5); the Mamba-1 fast scan sizes its blocks itself."""
    scan: str = "fast"
    """Which scan implementation runs: fast (chunked) or reference (sequential loop, for debugging)."""
    norm_eps: float = 1e-5
    """RMSNorm / LayerNorm epsilon."""
    dropout: float = 0.0
    """Dropout (S5, GRU, LSTM)."""
    dt_min: float = 0.001
    """Smallest initial time step Δ (Mamba-1/2, S5)."""
    dt_max: float = 0.1
    """Largest initial time step Δ (Mamba-1/2, S5)."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"model.family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if self.scan not in ("fast", "reference"):
            raise UserError(f"model.scan must be 'fast' or 'reference'; got {self.scan!r}")
        for name in ("d_model", "n_layers", "d_state", "expand", "d_conv", "head_dim", "n_groups", "chunk_size"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be >= 1; got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise UserError(f"model.vocab_size must be >= 2; got {self.vocab_size}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


@dataclass
class StateConfig:
    scheme: str = "zero"
    """Initial hidden state of each training window: zero, previous, random_noise, fitted_noise, state_passing."""
    noise_std: float = 1.0
    """Standard deviation of random_noise."""
    p_zero: float = 0.0
    """Probability that a window starts from zero instead of the scheme's state (per stream)."""
    reset: str = "wrap"
    """When a stream's carried state is zeroed: 'wrap' (epoch wrap only) or 'document' (also at article starts)."""
    fit_momentum: float = 0.99
    """Momentum of the running mean/std of final states that fitted_noise samples from."""

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise UserError(f"state.scheme must be one of {', '.join(SCHEMES)}; got {self.scheme!r}")
        if self.reset not in ("wrap", "document"):
            raise UserError(f"state.reset must be 'wrap' or 'document'; got {self.reset!r}")
        if not 0.0 <= self.p_zero <= 1.0:
            raise UserError(f"state.p_zero must be in [0, 1]; got {self.p_zero}")
        if self.noise_std < 0:
            raise UserError(f"state.noise_std must be >= 0; got {self.noise_std}")


@dataclass
class DataConfig:
    train: str = "builtin:wikitext-103/wiki.train.prefix.tokens"
    """Training text (or .npy/.bin token file). 'builtin:' paths point into the repository's data/ folder."""
    valid: str = "builtin:wikitext-103/wiki.valid.tokens"
    """Validation text used by periodic validation and evaluation."""
    tokenizer: str = "byte"
    """byte (vocab 256), gpt2 (shipped GPT-2 BPE) or a path to a Hugging Face tokenizer.json."""
    cache_dir: str = ".cache/longssm"
    """Where token-id memmaps are cached (keyed by a hash of the text file and the tokenizer)."""


@dataclass
class TrainConfig:
    seq_len: int = 16
    """Window length T (truncated-BPTT length)."""
    batch_size: int | None = 32
    """Parallel contiguous streams B; None = tokens_per_step // seq_len."""
    tokens_per_step: int | None = None
    """Token budget per step, held constant across T (sets batch_size when batch_size is None)."""
    steps: int = 2000
    """Optimizer steps."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to norms, biases, A_log, D, embeddings)."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    seed: int = 0
    """Seed of weights, noise and every random choice."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "float32"
    """Autocast dtype on CUDA: float32 (off), bfloat16 or float16."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    threads: int | None = None
    """torch CPU threads; None = leave torch's default."""
    log_every: int = 20
    """Steps between metrics.jsonl records."""
    eval_every: int = 0
    """Steps between validations at the training length (0 = off)."""
    eval_tokens: int = 16384
    """Validation tokens used by periodic validation."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0 = only the final one)."""
    keep_last: int = 2
    """Checkpoints kept in runs/<name>/checkpoints (older ones are pruned)."""
    max_bad_steps: int = 5
    """Stop after this many consecutive non-finite steps (each is skipped)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise UserError(f"train.seq_len must be >= 1; got {self.seq_len}")
        if self.steps < 0:
            raise UserError(f"train.steps must be >= 0; got {self.steps}")
        if self.batch_size is None and self.tokens_per_step is None:
            raise UserError("set train.batch_size or train.tokens_per_step")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"train.batch_size must be >= 1; got {self.batch_size}")
        if self.tokens_per_step is not None and self.tokens_per_step < self.seq_len:
            raise UserError(f"train.tokens_per_step must be >= train.seq_len; got {self.tokens_per_step}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"train.dtype must be float32, bfloat16 or float16; got {self.dtype!r}")
        if self.lr <= 0:
            raise UserError(f"train.lr must be > 0; got {self.lr}")

    @property
    def resolved_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return max(1, self.tokens_per_step // self.seq_len)


@dataclass
class RunConfig:
    name: str = "run"
    """Run name (the run directory defaults to runs/<name>)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    state: StateConfig = field(default_factory=StateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------------------
# Building dataclasses from nested dicts, with errors that name the dotted key.


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key} must be an integer; got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key} must be a number; got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{key} must be a string; got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ``UserError``."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"unknown config key {dotted!r} (known: {', '.join(prefix + k for k in fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, prefix=f"{dotted}.")
        else:
            kwargs[key] = _check_type(value, tp, dotted)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it: ``3`` -> 3, ``1e-3`` -> 0.001, ``true``, ``null``, strings."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value.lower() not in ("nan", "inf") else value
        except ValueError:
            return value
    return value


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"cannot set {dotted!r}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.lr", "1e-3", "model.d_model=64"]`` -> ``{"train": {"lr": 0.001}, "model": {"d_model": 64}}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if "=" in arg:
            key, text = arg.split("=", 1)
            i += 1
        else:
            key = arg
            if i + 1 >= len(args):
                raise UserError(f"override {arg!r} has no value")
            text = args[i + 1]
            i += 2
        key = key.lstrip("-")
        if not key or "." not in key and key != "name":
            raise UserError(f"override {arg!r} is not a dotted config key such as --train.lr 1e-3")
        set_dotted(out, key, parse_value(text))
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (optional) and apply dotted overrides; returns a validated ``RunConfig``."""
    data = load_yaml(path) if path is not None else {}
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = merge(data, extra)
    return from_dict(RunConfig, data)
