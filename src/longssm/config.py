"""Every setting of longssm, declared once: nested dataclasses whose fields carry type, default, range and help.

A field is declared as ``name: type = spec(default, ge=..., gt=..., le=...)`` followed by its one-line docstring.
From this single declaration come
- the command line (``longssm train --help`` lists every ``--model.*``, ``--state.*``, ``--train.*`` key with its
  type, default, range and docstring; built with jsonargparse in ``cli.py``),
- YAML config files (``--config FILE``; they mirror the dataclasses: ``model:``, ``state:``, ``data:``, ``train:``),
- validation: types are checked by the parser, ranges and choices by :meth:`Checked.__post_init__` — for every
  construction, from the CLI, YAML, a run's ``config.yaml`` or Python. Errors are ``UserError`` naming the
  dotted key the user typed.

``RunConfig`` describes a training run (saved as ``<run>/config.yaml``); ``EvalConfig`` the evaluation settings
shared by ``longssm eval``, ``compare``, ``quickstart`` and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import UserError

SCHEMES = ("zero", "previous", "random_noise", "fitted_noise", "state_passing")
DEFAULT_LENGTHS = tuple(16 * 2**i for i in range(12))
"""Evaluation lengths 16, 32, ..., 32768 (LongSSM's grid)."""


def spec(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge: float | None = None,
         gt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field with an optional range: ``ge`` (>=), ``gt`` (>) and ``le`` (<=) bounds, checked on
    construction and shown in ``--help``. ``None`` values of optional fields are not range-checked."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    return field(default=default, default_factory=factory, metadata={"bounds": bounds})


def range_text(bounds: dict[str, float]) -> str:
    """``{"ge": 1}`` -> ``">= 1"``; ``{"ge": 0, "le": 1}`` -> ``"in [0, 1]"``."""
    if set(bounds) == {"ge", "le"}:
        return f"in [{bounds['ge']:g}, {bounds['le']:g}]"
    ops = {"ge": ">=", "gt": ">", "le": "<="}
    return " and ".join(f"{ops[k]} {v:g}" for k, v in bounds.items())


@dataclass
class Checked:
    """Mixin: validates every field's range (from ``spec``) and ``Literal`` choices, then calls ``check()``.

    Subclasses set ``SECTION`` (the dotted prefix of their keys: ``"model"``, ``"train"``, ...) so that errors
    name the key as the user typed it, and override ``check()`` for constraints between fields.
    """

    SECTION: typing.ClassVar[str] = ""

    def key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else f"--{name.replace('_', '-')}"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            bounds = f.metadata.get("bounds", {})
            if value is None or isinstance(value, bool):
                continue
            choices = literal_choices(hints[f.name])
            if choices and value not in choices:
                raise UserError(f"{self.key(f.name)} must be one of {', '.join(map(str, choices))}; got {value!r}")
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if not isinstance(v, (int, float)):
                    continue
                if (("ge" in bounds and not v >= bounds["ge"]) or ("gt" in bounds and not v > bounds["gt"])
                        or ("le" in bounds and not v <= bounds["le"])):
                    what = "every value of " if isinstance(value, (list, tuple)) else ""
                    raise UserError(f"{what}{self.key(f.name)} must be {range_text(bounds)}; got {value!r}")
        self.check()

    def check(self) -> None:
        """Constraints between fields (override)."""


def literal_choices(tp: Any) -> tuple[Any, ...]:
    """The allowed values of ``Literal[...]`` (also inside ``Optional``), else ``()``."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


@dataclass
class ModelConfig(Checked):
    """Architecture of the language model (model.*)."""

    SECTION: typing.ClassVar[str] = "model"

    family: str = "mamba"
    """Model family: mamba, mamba2, s5, gru, lstm, a name given to longssm.register_family, or module:BlockClass."""
    vocab_size: int | None = spec(None, ge=2)
    """Vocabulary size V; null = taken from the tokenizer."""
    d_model: int = spec(128, ge=1)
    """Residual stream width D."""
    n_layers: int = spec(2, ge=1)
    """Number of residual blocks."""
    d_state: int = spec(16, ge=1)
    """State size per channel N (Mamba-1/2); number of state dimensions P for S5; ignored for GRU/LSTM."""
    expand: int = spec(2, ge=1)
    """Inner width E = expand * d_model (Mamba-1/2)."""
    d_conv: int = spec(4, ge=1)
    """Causal depthwise convolution width K (Mamba-1/2)."""
    dt_rank: int | None = spec(None, ge=1)
    """Rank R of the Δ projection (Mamba-1); null = ceil(d_model / 16)."""
    head_dim: int = spec(32, ge=1)
    """Head size P (Mamba-2): heads H = expand * d_model / head_dim."""
    n_groups: int = spec(1, ge=1)
    """Number of B/C groups (Mamba-2)."""
    chunk_size: int = spec(64, ge=1)
    """Chunk length of the chunked scans (Mamba-2 SSD, S5); the Mamba-1 chunked scan sizes its blocks itself."""
    scan: Literal["auto", "chunked", "reference", "triton", "mamba_ssm"] = "auto"
    """Scan: chunked (fast), reference (loop), triton (Mamba-1 GPU kernel), mamba_ssm (Mamba-2 kernel of the mamba-ssm
    package); a kernel the family lacks runs chunked. auto: on CUDA triton (after a self-check) / mamba_ssm if
    installed, else chunked."""
    norm_eps: float = spec(1e-5, gt=0)
    """RMSNorm / LayerNorm epsilon."""
    dropout: float = spec(0.0, ge=0, le=1)
    """Dropout (S5, GRU, LSTM)."""
    dt_min: float = spec(0.001, gt=0)
    """Smallest initial time step Δ (Mamba-1/2, S5)."""
    dt_max: float = spec(0.1, gt=0)
    """Largest initial time step Δ (Mamba-1/2, S5)."""
    tie_embeddings: bool = True
    """The output head is the embedding matrix (false: a separate matrix, as some imported checkpoints have)."""
    delta_scale: list[float] | None = spec(None, gt=0)
    """Per-layer multiplier of Δ, one value per layer (Mamba-1/2; set by longssm calibrate); null = 1."""
    a_scale: list[float] | None = spec(None, gt=0)
    """Per-layer multiplier of A, one value per layer (Mamba-1/2; set by longssm calibrate); null = 1."""

    def check(self) -> None:
        from .models.registry import family_names, is_known_family

        if not is_known_family(self.family):
            raise UserError(f"model.family must be one of {', '.join(family_names())} (or module:BlockClass); "
                            f"got {self.family!r}")
        if self.dt_min > self.dt_max:
            raise UserError(f"model.dt_min must be <= model.dt_max; got {self.dt_min} > {self.dt_max}")
        for name in ("delta_scale", "a_scale"):
            scales = getattr(self, name)
            if scales is not None and len(scales) != self.n_layers:
                raise UserError(f"model.{name} needs one value per layer ({self.n_layers}); got {len(scales)}")
            if scales is not None and self.family not in ("mamba", "mamba2"):
                raise UserError(f"model.{name} applies to the mamba and mamba2 families only; got {self.family!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


@dataclass
class StateConfig(Checked):
    """Initial hidden state of each training window (state.*)."""

    SECTION: typing.ClassVar[str] = "state"

    scheme: Literal["zero", "previous", "random_noise", "fitted_noise", "state_passing"] = "previous"
    """Initial hidden state of each training window: zero, previous, random_noise, fitted_noise, state_passing.
    Default: previous (with p_zero 0.1: the recipe that RESULTS.md measured best at both short and long context)."""
    noise_std: float = spec(1.0, ge=0)
    """Standard deviation of random_noise."""
    p_zero: float | None = spec(None, ge=0, le=1)
    """Probability that a window starts from zero instead of the scheme's state (per stream); null: 0.1 with
    previous, 0 with the other schemes (``zero_start_probability``)."""
    reset: Literal["wrap", "document"] = "wrap"
    """When a stream's carried state is zeroed: wrap (epoch wrap only) or document (also at article starts)."""
    fit_momentum: float = spec(0.99, ge=0, le=1)
    """Momentum of the running mean/std of final states that fitted_noise samples from."""

    @property
    def zero_start_probability(self) -> float:
        """``p_zero`` as given, else ``DEFAULT_P_ZERO`` for previous and 0 for every other scheme (whose
        interventions are studied pure)."""
        if self.p_zero is not None:
            return self.p_zero
        return DEFAULT_P_ZERO if self.scheme == "previous" else 0.0


DEFAULT_P_ZERO = 0.1
"""p_zero of the default recipe (previous state, one window in ten from zero): RESULTS.md, 'Recommended default'."""


@dataclass
class DataConfig(Checked):
    """Training and validation data and the tokenizer (data.*)."""

    SECTION: typing.ClassVar[str] = "data"

    train: str = "builtin:wikitext-103/wiki.train.prefix.tokens"
    """Training text (or .npy/.bin token file). 'builtin:' paths name the data shipped inside the package."""
    valid: str = "builtin:wikitext-103/wiki.valid.tokens"
    """Validation text used by periodic validation and evaluation."""
    tokenizer: str = "byte"
    """byte (vocab 256), gpt2 (shipped GPT-2 BPE) or a path to a Hugging Face tokenizer.json."""
    cache_dir: str = ".cache/longssm"
    """Where token-id memmaps are cached (keyed by a hash of the text file and the tokenizer)."""


@dataclass
class TrainConfig(Checked):
    """Optimisation, hardware, logging and checkpoints (train.*)."""

    SECTION: typing.ClassVar[str] = "train"

    seq_len: int = spec(16, ge=1)
    """Window length T (truncated-BPTT length)."""
    batch_size: int | None = spec(32, ge=1)
    """Parallel contiguous streams B; null = tokens_per_step // seq_len."""
    tokens_per_step: int | None = spec(None, ge=1)
    """Token budget per step, held constant across T (sets batch_size when batch_size is null)."""
    steps: int = spec(2000, ge=0)
    """Optimizer steps."""
    lr: float = spec(2e-3, gt=0)
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = spec(0.1, ge=0, le=1)
    """Cosine schedule floor as a fraction of lr."""
    warmup_steps: int = spec(100, ge=0)
    """Linear warmup steps."""
    weight_decay: float = spec(0.1, ge=0)
    """AdamW weight decay (not applied to norms, biases, A_log, D, embeddings)."""
    beta1: float = spec(0.9, ge=0, le=1)
    """AdamW β1."""
    beta2: float = spec(0.95, ge=0, le=1)
    """AdamW β2."""
    grad_clip: float = spec(1.0, ge=0)
    """Clip the global gradient norm to this value (0 = off)."""
    grad_accum: int = spec(1, ge=1)
    """Micro-batches per step: each process's streams run in this many groups, each from its own carried states."""
    world_size: int = spec(1, ge=1)
    """Processes training the run: recorded by train from torchrun's WORLD_SIZE (a value given here is replaced)."""
    seed: int = 0
    """Seed of weights, noise and every random choice."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Autocast dtype on CUDA: float32 (off), bfloat16 or float16."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    threads: int | None = spec(None, ge=1)
    """torch CPU threads; null = leave torch's default."""
    log_every: int = spec(20, ge=1)
    """Steps between metrics.jsonl records."""
    eval_every: int = spec(0, ge=0)
    """Steps between validations at the training length (0 = off)."""
    eval_tokens: int = spec(16384, ge=1)
    """Validation tokens used by periodic validation."""
    checkpoint_every: int = spec(0, ge=0)
    """Steps between checkpoints (0 = only the final one)."""
    keep_last: int = spec(2, ge=1)
    """Checkpoints kept in <run>/checkpoints (older ones are pruned)."""
    max_bad_steps: int = spec(5, ge=1)
    """Stop after this many consecutive non-finite steps (each is skipped)."""
    progress: bool = True
    """Show a progress bar."""

    def check(self) -> None:
        if self.batch_size is None and self.tokens_per_step is None:
            raise UserError("set train.batch_size or train.tokens_per_step")
        if self.tokens_per_step is not None and self.tokens_per_step < self.seq_len:
            raise UserError(f"train.tokens_per_step must be >= train.seq_len; got {self.tokens_per_step}")
        groups = self.world_size * self.grad_accum
        if self.batch_size is not None and self.batch_size % groups:
            raise UserError(f"train.batch_size={self.batch_size} must be a multiple of train.grad_accum x processes = "
                            f"{self.grad_accum} x {self.world_size} = {groups}")

    @property
    def resolved_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return max(1, self.tokens_per_step // self.seq_len)


@dataclass
class RunConfig(Checked):
    """A training run: saved resolved as <run>/config.yaml."""

    name: str = "run"
    """Run name (the run directory defaults to runs/<name>)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    state: StateConfig = field(default_factory=StateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class EvalConfig(Checked):
    """How a trained model is evaluated (``longssm eval``, ``compare``, ``quickstart``, the benchmarks)."""

    data: str | None = None
    """Text or .npy token file to evaluate on; null = the run's validation file."""
    metrics: list[str] = spec(factory=lambda: ["ppl_vs_length"])
    """Comma-separated metrics (ppl_vs_length, position_ppl, effective_remembrance, passkey, state_stats) or all."""
    lengths: list[int] | None = spec(None, ge=1)
    """Comma-separated evaluation lengths; null = 16, 32, ..., 32768 up to what the data holds."""
    max_tokens: int | None = spec(None, ge=1)
    """Use at most this many evaluation tokens per length; null = all the data."""
    chunk: int = spec(1024, ge=1)
    """Tokens per chunk of the chunked recurrence (memory is flat in the length)."""
    batch_tokens: int | None = spec(None, ge=1)
    """Rows x chunk tokens per forward call; null = chosen from the vocabulary size."""
    state: Literal["zero", "previous"] = "zero"
    """Initial state of each evaluation sequence: zero, or the previous sequence's final state."""
    order: Literal["consecutive", "shuffled"] = "consecutive"
    """Sequence order within the carried-state streams (with state previous)."""
    seed: int = 0
    """Seed of the shuffled order and the passkeys."""
    position_length: int | None = spec(None, ge=1)
    """L of position_ppl and state_stats; null = the longest length."""
    effrem_length: int | None = spec(None, ge=1)
    """Context T of effective_remembrance; null = min(longest length, 2048)."""
    effrem_sequences: int = spec(8, ge=1)
    """Sequences averaged by effective_remembrance."""
    passkey_lengths: list[int] | None = spec(None, ge=1)
    """Comma-separated passkey context lengths; null = the evaluation lengths up to 8192."""
    passkey_depths: list[float] = spec(factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], ge=0, le=1)
    """Comma-separated needle depths in [0, 1]."""
    passkey_trials: int = spec(4, ge=1)
    """Random keys per (length, depth) cell."""
    passkey_digits: int = spec(5, ge=1)
    """Digits of each passkey."""
    cache_dir: str | None = None
    """Evaluation cache directory; null = <run>/eval_cache."""
    use_cache: bool = True
    """Read and write the evaluation cache."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int | None = spec(None, ge=1)
    """torch CPU threads; null = torch's default (1 is fastest on a busy machine)."""

    def check(self) -> None:
        from .evaluate.registry import metric_names

        known = metric_names()
        if self.metrics == ["all"]:
            self.metrics = list(known)
        unknown = [m for m in self.metrics if m not in known]
        if unknown or not self.metrics:
            raise UserError(f"--metrics must be a comma-separated subset of {','.join(known)} (or all); "
                            f"got {','.join(self.metrics) or 'nothing'}")
        self.metrics = [m for m in known if m in self.metrics]  # canonical order
        if self.lengths is not None:
            self.lengths = sorted(set(self.lengths))
        if self.passkey_lengths is not None:
            self.passkey_lengths = sorted(set(self.passkey_lengths))
        if not self.passkey_depths:
            raise UserError("passkey_depths must hold at least one depth in [0, 1]")


# ----------------------------------------------------------------------------------------------------------
# Reading configs: YAML files, dicts and dotted overrides all go through the one jsonargparse parser.


def config_parser(cls: type = RunConfig):
    """A jsonargparse parser whose options are the fields of ``cls`` (``--model.d_model`` ...) plus ``--config``."""
    from .cli_parsing import dataclass_parser

    return dataclass_parser(cls)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a nested dict (as read from YAML); unknown keys, wrong types and out-of-range
    values raise ``UserError`` naming the dotted key."""
    from .cli_parsing import parse_into

    if not isinstance(data, dict):
        raise UserError(f"config must be a mapping; got {data!r}")
    return parse_into(cls, data=data)


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (optional; a path or a shipped config name) and apply overrides: a list of dotted
    command-line arguments (``["--train.lr", "1e-3"]``) or a nested dict. Returns a validated ``RunConfig``."""
    from .cli_parsing import parse_into

    args: list[str] = [] if path is None else ["--config", str(path)]
    if isinstance(overrides, dict):
        return parse_into(RunConfig, args=args, data=overrides)
    return parse_into(RunConfig, args=args + list(overrides or []))
