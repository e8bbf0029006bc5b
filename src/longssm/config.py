"""Every setting of longssm, declared once: nested dataclasses whose fields carry type, default, range and help.

A field is declared as ``name: type = spec(default, ge=..., gt=..., le=...)`` followed by its one-line docstring.
From this single declaration come
- YAML config files (``--config FILE``; they mirror the dataclasses: ``model:``, ``state:``, ``data:``, ``train:``)
  and dicts, read by :func:`from_dict` / :func:`load_config` with this module's own typed coercion (:func:`coerce`);
- the command line (``longssm train --help`` lists every ``--model.*``, ``--state.*``, ``--train.*`` key with its
  type, default, range and docstring; built from :func:`leaf_fields` by ``cli_options.py``);
- validation: types are checked on reading, ranges and ``Literal`` choices by :meth:`Checked.__post_init__` — for
  every construction, from the CLI, YAML, a run's ``config.yaml`` or Python. Errors are ``errors.ConfigError``
  naming the dotted key (``train.lr must be a number; got 'fast'``) with the key, expected type and value as fields.

Names that only a registry knows (``model.family``, ``EvalConfig.metrics``) are checked where they are used (the
models' ``get_family``, the evaluation's ``normalise_metrics``), so that this module imports neither torch nor a
registry: it is a leaf (``errors``, ``paths``, yaml, the standard library).

``RunConfig`` describes a training run (saved as ``<run>/config.yaml``); ``EvalConfig`` the evaluation settings
shared by ``longssm eval``, ``compare``, ``quickstart`` and the benchmarks.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import inspect
import itertools
import math
import re
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UNKNOWN_KEY, ConfigError, UserError, first_line
from .paths import MAX_NAME_BYTES, is_plain_name, resolve_config_file

SCHEMES = ("zero", "previous", "random_noise", "fitted_noise", "state_passing")
DEFAULT_LENGTHS = tuple(16 * 2**i for i in range(12))
"""Evaluation lengths 16, 32, ..., 32768 (LongSSM's grid)."""
SEED_MAX = 2**32 - 1
"""Largest seed: every seed is in [0, 2^32 - 1] (numpy's generators take no negative seed, torch's none >= 2^64)."""
FINITE = "a finite number"
"""``ConfigError.expected`` of a float given as inf or nan (``1e400`` reads as inf)."""
PLAIN_NAME = "a plain name (no path separators, not empty)"
"""``ConfigError.expected`` of a ``name`` that is not a plain name (``paths.is_plain_name``)."""


def spec(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with an optional range: ``ge`` (>=), ``gt`` (>), ``le`` (<=) and ``lt`` (<) bounds, checked
    on construction and shown in ``--help``. ``None`` values of optional fields are not range-checked."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, default_factory=factory, metadata={"bounds": bounds})


def range_text(bounds: dict[str, float]) -> str:
    """``{"ge": 1}`` -> ``">= 1"``; ``{"ge": 0, "le": 1}`` -> ``"in [0, 1]"``; ``{"ge": 0, "lt": 1}`` ->
    ``"in [0, 1)"`` (an interval whenever there is a lower and an upper bound)."""
    low = next(((k, v) for k, v in bounds.items() if k in ("ge", "gt")), None)
    high = next(((k, v) for k, v in bounds.items() if k in ("le", "lt")), None)
    if low and high and len(bounds) == 2:
        return (f"in {'[' if low[0] == 'ge' else '('}{_bound_text(low[1])}, {_bound_text(high[1])}"
                f"{']' if high[0] == 'le' else ')'}")
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{ops[k]} {_bound_text(v)}" for k, v in bounds.items())


def _bound_text(value: float) -> str:
    """A bound as typed: ``1``, ``0.5``, ``4294967295`` (an integer in full, not ``4.29497e+09``)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else f"{value:g}"


def in_bounds(value: float, bounds: dict[str, float]) -> bool:
    """``value`` satisfies every bound of ``bounds`` (NaN satisfies none)."""
    return (("ge" not in bounds or value >= bounds["ge"]) and ("gt" not in bounds or value > bounds["gt"])
            and ("le" not in bounds or value <= bounds["le"]) and ("lt" not in bounds or value < bounds["lt"]))


@dataclass
class Checked:
    """Mixin: validates every field's range (from ``spec``), that its floats are finite, and its ``Literal``
    choices, then calls ``check()``.

    Subclasses set ``SECTION`` (the dotted prefix of their keys: ``"model"``, ``"train"``, ...) so that errors
    name the key as it is written in YAML, and override ``check()`` for constraints between fields.
    """

    SECTION: typing.ClassVar[str] = ""

    def key(self, name: str) -> str:
        """The dotted key of field ``name``: ``"train.lr"``; flat (``"max_tokens"``) without a ``SECTION``."""
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            bounds = f.metadata.get("bounds", {})
            if value is None or isinstance(value, bool):
                continue
            choices = literal_choices(hints[f.name])
            if choices and value not in choices:
                raise ConfigError(self.key(f.name), choice_text(choices), value)
            is_list = isinstance(value, (list, tuple))
            for v in value if is_list else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(self.key(f.name), FINITE, value, every=is_list)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not in_bounds(v, bounds):
                    raise ConfigError(self.key(f.name), range_text(bounds), value, every=is_list)
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


def choice_text(choices: tuple[Any, ...]) -> str:
    return "one of " + ", ".join(map(str, choices))


@dataclass
class ModelConfig(Checked):
    """Architecture of the language model (model.*)."""

    SECTION: typing.ClassVar[str] = "model"

    family: str = "mamba"
    """Model family: mamba, mamba2, mamba3, s5, gru, lstm, deltanet, gated_deltanet, gla, swa, a name given to
    longssm.register_family, or module:BlockClass."""
    vocab_size: int | None = spec(None, ge=2)
    """Vocabulary size V; null = taken from the tokenizer."""
    d_model: int = spec(128, ge=1)
    """Residual stream width D."""
    n_layers: int = spec(2, ge=1)
    """Number of residual blocks."""
    d_state: int = spec(16, ge=1)
    """State size per channel N (Mamba-1/2/3); number of state dimensions P for S5; ignored for GRU/LSTM and the
    linear-attention families (their state per head is head_dim x v_head_dim)."""
    expand: int = spec(2, ge=1)
    """Inner width E = expand * d_model (Mamba-1/2/3)."""
    d_conv: int = spec(4, ge=1)
    """Causal depthwise convolution width K (Mamba-1/2; the short convolutions of deltanet, gated_deltanet, gla)."""
    dt_rank: int | None = spec(None, ge=1)
    """Rank R of the Δ projection (Mamba-1); null = ceil(d_model / 16)."""
    head_dim: int = spec(32, ge=1)
    """Head size P (Mamba-2/3: heads H = expand * d_model / head_dim); the key/query size K per head of deltanet,
    gated_deltanet, gla and swa."""
    n_heads: int | None = spec(None, ge=1)
    """Heads H of deltanet, gated_deltanet, gla and swa; null = d_model / head_dim (head_dim must divide d_model)."""
    v_head_dim: int | None = spec(None, ge=1)
    """Value size V per head of deltanet, gated_deltanet and gla (state per head: head_dim x v_head_dim); null =
    head_dim."""
    short_conv: bool = True
    """Short causal convolutions (width d_conv) on q, k and v of deltanet, gated_deltanet and gla; their states are
    carried like Mamba's."""
    output_gate: bool = True
    """The output gate silu(g_proj(x)) after the per-head output norm (deltanet, gated_deltanet, gla)."""
    gate_rank: int = spec(16, ge=1)
    """Rank of GLA's forget-gate projection (d_model -> gate_rank -> keys)."""
    window: int = spec(64, ge=1, le=16384)
    """Sliding-window attention (swa): a query attends to itself and the window tokens before it; the carried state
    of a layer is those tokens' keys and values (at most 16384: the cache is window x d_model floats per layer)."""
    layers: list[str] | None = None
    """A hybrid: the families of the layers, repeated to n_layers (e.g. [mamba, swa]: Mamba, SWA, Mamba, SWA, ...);
    each layer has its family's mixer and pre-norm, the final norm is model.family's. null = every layer
    model.family."""
    mlp_expand: float = spec(0.0, ge=0, le=64)
    """A SwiGLU MLP sublayer after every mixer (norm -> mixer -> norm -> MLP, as in fla's models), hidden width
    round(mlp_expand * d_model); 0 = none (one sublayer per block). Any family."""
    n_groups: int = spec(1, ge=1)
    """Number of B/C groups (Mamba-2, Mamba-3)."""
    rope_fraction: float = 0.5
    """Fraction of the state dimensions of B and C that Mamba-3 rotates (its complex-valued state): 0.5 or 1."""
    chunk_size: int = spec(64, ge=1)
    """Chunk length of the chunked scans (Mamba-2 SSD, Mamba-3, S5, the delta rule, GLA); the Mamba-1 chunked scan
    sizes its blocks itself."""
    scan: Literal["auto", "chunked", "reference", "triton", "mamba_ssm", "fla"] = "auto"
    """Scan: chunked (fast), reference (loop), triton (Mamba-1 GPU kernel), mamba_ssm (Mamba-2 and Mamba-3 kernels of
    the mamba-ssm package; Mamba-3's computes in bfloat16), fla (the kernels of fla-core for deltanet, gated_deltanet,
    gla); a kernel the family lacks runs chunked. auto: on CUDA triton / fla / Mamba-3's (after a self-check) or
    Mamba-2's mamba_ssm if installed, else chunked."""
    norm_eps: float = spec(1e-5, gt=0)
    """RMSNorm / LayerNorm epsilon."""
    dropout: float = spec(0.0, ge=0, le=1)
    """Dropout (S5, GRU, LSTM)."""
    dt_min: float = spec(0.001, gt=0)
    """Smallest initial time step Δ (Mamba-1/2/3, S5)."""
    dt_max: float = spec(0.1, gt=0)
    """Largest initial time step Δ (Mamba-1/2/3, S5)."""
    tie_embeddings: bool = True
    """The output head is the embedding matrix (false: a separate matrix, as some imported checkpoints have)."""
    delta_scale: list[float] | None = spec(None, gt=0)
    """Per-layer multiplier of Δ, one value per layer (Mamba-1/2; set by longssm calibrate); null = 1."""
    a_scale: list[float] | None = spec(None, gt=0)
    """Per-layer multiplier of A, one value per layer (Mamba-1/2; set by longssm calibrate); null = 1."""

    def check(self) -> None:
        # model.family is checked where it is used (models.registry.get_family): only the registry knows the names
        if self.layers is not None and (not self.layers or not all(isinstance(f, str) and f for f in self.layers)):
            raise ConfigError("model.layers", "a non-empty list of family names or null", self.layers)
        if self.rope_fraction not in (0.5, 1.0):
            raise ConfigError("model.rope_fraction", "0.5 or 1", self.rope_fraction)
        if self.mlp_expand and round(self.mlp_expand * self.d_model) < 1:
            raise ConfigError("model.mlp_expand", "0 or a width round(mlp_expand * d_model) >= 1", self.mlp_expand)
        if self.dt_min > self.dt_max:
            raise ConfigError("model.dt_min", "<= model.dt_max", self.dt_min, got=f"{self.dt_min} > {self.dt_max}")
        for name in ("delta_scale", "a_scale"):
            scales = getattr(self, name)
            if scales is not None and len(scales) != self.n_layers:
                raise UserError(f"model.{name} needs one value per layer ({self.n_layers}); got {len(scales)}")
            if scales is not None and (self.family not in ("mamba", "mamba2") or self.layers):
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
    """Training data: a prepared dataset directory (longssm prepare; its train split), a text file (prepared into
    the cache on first use), a .npy token file, or a stream of long-context task instances,
    synthetic:<task>?length=256&<key>=<value>... (mqar, copy, niah_*, variable_tracking, passkey; README "Long-context
    tasks"). 'builtin:' paths name the data shipped inside the package."""
    valid: str = "builtin:wikitext-103/wiki.valid.tokens"
    """Validation data used by periodic validation and evaluation: the same kinds (a prepared directory: its valid
    split, or name DIR/train)."""
    tokenizer: str = "byte"
    """byte (vocab 256), gpt2 (shipped GPT-2 BPE) or a path to a Hugging Face tokenizer.json."""
    cache_dir: str | None = None
    """Where text files given as data are prepared (keyed by a hash of the file and the tokenizer); null = the user's
    cache directory: $LONGSSM_CACHE_DIR, else $XDG_CACHE_HOME/longssm, else ~/.cache/longssm
    (``paths.user_cache_dir``)."""

    def check(self) -> None:
        if self.cache_dir is not None and not self.cache_dir.strip():
            raise ConfigError("data.cache_dir", "a directory or null (the user's cache directory)", self.cache_dir)


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
    beta1: float = spec(0.9, ge=0, lt=1)
    """AdamW β1."""
    beta2: float = spec(0.95, ge=0, lt=1)
    """AdamW β2."""
    grad_clip: float = spec(1.0, ge=0)
    """Clip the global gradient norm to this value (0 = off)."""
    grad_accum: int = spec(1, ge=1)
    """Micro-batches per step: each process's streams run in this many groups, each from its own carried states."""
    world_size: int = spec(1, ge=1)
    """Processes training the run: recorded by train from torchrun's WORLD_SIZE (a value given here is replaced)."""
    seed: int = spec(0, ge=0, le=SEED_MAX)
    """Seed of weights, noise and every random choice."""
    seeds: int = spec(1, ge=1, le=100)
    """Seeds that longssm sweep trains every cell with: train.seed and the ones after it (a single run uses
    train.seed alone; the seeds option of longssm sweep overrides it)."""
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
    """Run name (the run directory defaults to runs/<name>): a plain name, no path separators, not empty."""
    model: ModelConfig = field(default_factory=ModelConfig)
    state: StateConfig = field(default_factory=StateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        size = len(self.name.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME_BYTES:
            raise ConfigError("name", f"a plain name of at most {MAX_NAME_BYTES} bytes (a file name)", self.name,
                              got=f"{size} bytes")
        if not is_plain_name(self.name):
            raise ConfigError("name", PLAIN_NAME, self.name)


@dataclass
class EvalConfig(Checked):
    """How a trained model is evaluated (``longssm eval``, ``compare``, ``quickstart``, the benchmarks)."""

    data: str | None = None
    """Text file, .npy token file or prepared dataset (longssm prepare; its valid split, or DIR/train) to evaluate
    on; null = the run's data.valid."""
    metrics: list[str] = spec(factory=lambda: ["ppl_vs_length"])
    """Comma-separated metrics (ppl_vs_length, position_ppl, effective_remembrance, passkey, state_stats, mqar,
    copy, niah_multikey, niah_multivalue, niah_multiquery, variable_tracking), all (every one but the long-context
    tasks) or tasks (those six); the evaluation runs them in that order."""
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
    seed: int = spec(0, ge=0, le=SEED_MAX)
    """Seed of the shuffled order, the passkeys and the long-context task instances."""
    ci: Literal["bootstrap", "none"] = "bootstrap"
    """Confidence intervals of ppl_vs_length over the evaluated text: bootstrap (blocks of 4096 targets, resampled;
    see longssm.stats) or none."""
    confidence: float = spec(0.95, gt=0, lt=1)
    """Confidence level of every interval (evaluation, seeds, paired differences)."""
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
    task_lengths: list[int] | None = spec(None, ge=1)
    """Comma-separated lengths of the long-context tasks (mqar, copy, niah_*, variable_tracking); null = the
    evaluation lengths up to 8192 that hold each task's content."""
    task_trials: int = spec(8, ge=1)
    """Instances per (length, axis value) cell of each task."""
    task_haystack: str = "wikitext"
    """Filler of the tasks: wikitext (the shipped validation text), repeat (passkey's sentences) or a text file."""
    task_depths: list[float] = spec(factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], ge=0, le=1)
    """Comma-separated depths in [0, 1] of the first relevant needle (niah_*, variable_tracking)."""
    mqar_pairs: list[int] = spec(factory=lambda: [4, 8, 16], ge=1)
    """Comma-separated numbers of key-value pairs of mqar (its grid axis)."""
    mqar_queries: int = spec(4, ge=1)
    """Keys of mqar asked for (at most the pairs)."""
    mqar_digits: int = spec(3, ge=1)
    """Digits of each mqar value."""
    mqar_echo: int = spec(0, ge=0, le=1)
    """1: mqar asks its queries once more, unscored, right after the pairs (the format of mqar training data made
    with echo=1)."""
    mqar_terse: int = spec(0, ge=0, le=1)
    """1: mqar's markers are P:, C:, R: instead of words (instances short enough for byte-level windows of 16)."""
    mqar_key_letters: int = spec(3, ge=1)
    """Letters of each mqar key (26^letters keys exist: more pairs than that is an error)."""
    copy_fractions: list[float] = spec(factory=lambda: [0.1, 0.25, 0.5], gt=0, le=0.5)
    """Comma-separated fractions of the length taken by the words to copy (copy's grid axis; the copy takes as
    much again, filler the rest)."""
    copy_letters: int = spec(5, ge=1)
    """Longest random word of copy (1 .. letters letters each)."""
    niah_needles: int = spec(4, ge=1)
    """Needles (distinct keys) of niah_multikey and niah_multiquery."""
    niah_values: int = spec(3, ge=1)
    """Values of the one key of niah_multivalue."""
    niah_queries: int = spec(2, ge=1)
    """Keys asked for by niah_multiquery (at most the needles)."""
    niah_digits: int = spec(5, ge=1)
    """Digits of each needle's value."""
    niah_key_letters: int = spec(6, ge=1)
    """Letters of each needle's key."""
    vt_hops: int = spec(4, ge=1)
    """Assignments in variable_tracking's chain (X1 = value, X2 = X1, ...)."""
    vt_chains: int = spec(2, ge=1)
    """Chains in variable_tracking (one asked for, the others distractors with other values)."""
    vt_digits: int = spec(5, ge=1)
    """Digits of each chain's value."""
    vt_name_letters: int = spec(5, ge=1)
    """Letters of each variable name."""
    cache_dir: str | None = None
    """Evaluation cache directory; null = <run>/eval_cache."""
    use_cache: bool = True
    """Read and write the evaluation cache."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int | None = spec(None, ge=1)
    """torch CPU threads; null = torch's default (1 is fastest on a busy machine)."""

    def check(self) -> None:
        # metric names are checked, 'all' expanded and put in canonical order by the evaluation, which registers
        # them (evaluate.registry.normalise_metrics)
        if self.lengths is not None:
            self.lengths = sorted(set(self.lengths))
        if self.passkey_lengths is not None:
            self.passkey_lengths = sorted(set(self.passkey_lengths))
        if not self.passkey_depths:
            raise ConfigError("passkey_depths", "at least one depth in [0, 1]", self.passkey_depths)
        if self.task_lengths is not None:
            self.task_lengths = sorted(set(self.task_lengths))
        for key in ("task_depths", "mqar_pairs", "copy_fractions"):
            if not getattr(self, key):
                raise ConfigError(key, "at least one value", getattr(self, key))


# ----------------------------------------------------------------------------------------------------------
# Typed coercion: a value read from YAML, a dict or the command line's text -> the field's type.

NULL_TEXTS = frozenset({"null", "Null", "NULL", "~", "None"})
"""Text that means ``None`` for an optional field (YAML's null spellings, and Python's)."""
BOOL_TEXTS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
"""Text of a boolean (YAML 1.1's spellings, any case)."""
_INT_TEXT = re.compile(r"[-+]?\d+")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NON_FINITE_TEXT = re.compile(r"[-+]?\.?(inf|infinity|nan)", re.IGNORECASE)
"""inf, -Infinity, nan, YAML's .inf / .nan: read as the float, then refused as not finite."""
_SCALAR_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def type_text(tp: Any) -> str:
    """How an error names what a type takes: ``int`` -> "an integer", ``list[int]`` -> "comma-separated integers
    such as 16,64,256", ``int | None`` -> "an integer or null"."""
    choices = literal_choices(tp)
    if choices:
        return choice_text(choices)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    list_type = tp if typing.get_origin(tp) is list else next((a for a in args if typing.get_origin(a) is list), None)
    if list_type is not None:
        inner = typing.get_args(list_type)[0]
        plural = {int: "integers", float: "numbers", str: "names"}.get(inner, "values")
        return f"comma-separated {plural} such as " + {int: "16,64,256", float: "0,0.5,1"}.get(inner, "a,b")
    if args and is_optional(tp):
        return " or ".join(_SCALAR_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args) + " or null"
    return _SCALAR_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def strip_optional(tp: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if is_optional(tp) and len(args) == 1 else tp


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (that of config key ``key``), from YAML, a dict or command-line text.

    Accepted: ``int`` (an integer, or its text), ``float`` (a number, an integer included, or its text: ``1e-3``),
    ``bool`` (true/false, or the text true/false/yes/no/on/off), ``str`` (a string, as given), ``Literal`` (one of
    its choices), ``list[int | float | str]`` (a list, comma-separated text ``16,64``, or YAML text ``[16, 64]``)
    and ``X | None`` (also ``None`` or the text ``null``). Anything else raises ``ConfigError(key, type_text(tp),
    value)``; a float that is not finite (``inf``, ``nan``, ``1e400``) ``ConfigError(key, FINITE, value)``.
    """
    if is_optional(tp):
        if value is None or (isinstance(value, str) and value.strip() in NULL_TEXTS):
            return None
        try:
            return coerce(value, strip_optional(tp), key)
        except ConfigError as e:
            if e.expected == FINITE:
                raise
            raise ConfigError(key, type_text(tp), value, every=e.every) from None
    if literal_choices(tp):
        if isinstance(value, str) and value.strip() in literal_choices(tp):
            return value.strip()
        raise ConfigError(key, type_text(tp), value)
    if typing.get_origin(tp) is list:
        items = _list_items(value)
        try:
            if items is None:
                raise ConfigError(key, type_text(tp), value)
            return [_scalar(item, typing.get_args(tp)[0], key) for item in items]
        except ConfigError as e:
            raise ConfigError(key, FINITE if e.expected == FINITE else type_text(tp), value,
                              every=e.expected == FINITE) from None
    return _scalar(value, tp, key)


def _list_items(value: Any) -> list[Any] | None:
    """A list value's items: a list or tuple as is, text split at commas (``[...]`` read as YAML)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            return None
        return parsed if isinstance(parsed, list) else None
    return [item.strip() for item in text.split(",")]


def _scalar(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the scalar type ``tp`` (``int``, ``float``, ``bool``, ``str``)."""
    text = value.strip() if isinstance(value, str) else None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in BOOL_TEXTS:
            return BOOL_TEXTS[text.lower()]
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and _INT_TEXT.fullmatch(text):
            return int(text)
    elif tp is float:
        number = _read_float(value, text)
        if number is not None and not math.isfinite(number):
            raise ConfigError(key, FINITE, number)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config key {key}: unsupported field type {tp!r}")
    raise ConfigError(key, type_text(tp), value)


def _read_float(value: Any, text: str | None) -> float | None:
    """A number (an integer included) or its text (``1e-3``, ``inf``, YAML's ``.inf``) as a float, None for anything
    else; an integer too large for a float (YAML ``lr: 1000...0``) is inf, as its text would be."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if text is not None and _FLOAT_TEXT.fullmatch(text):
        return float(text)
    if text is not None and _NON_FINITE_TEXT.fullmatch(text):
        return float(text.replace(".", ""))  # YAML's .inf is Python's inf
    return None


# ----------------------------------------------------------------------------------------------------------
# The schema, field by field: what the command line and --help are built from.


@dataclass(frozen=True)
class FieldInfo:
    """One leaf field of a config dataclass, as the command line and ``--help`` show it."""

    key: str
    """Dotted key (``"train.lr"``; ``"max_tokens"`` for a flat dataclass such as ``EvalConfig``)."""
    type: Any
    default: Any
    """The default value (that of the field's factory for lists)."""
    bounds: dict[str, float]
    doc: str
    """The field's attribute docstring, on one line."""
    owner: type
    """The dataclass that declares the field (its docstring titles the field's section of ``--help``)."""


def leaf_fields(cls: type, prefix: str = "") -> list[FieldInfo]:
    """Every leaf field of dataclass ``cls``, nested sections flattened in declaration order."""
    out: list[FieldInfo] = []
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(FieldInfo(f"{prefix}{f.name}", tp, default, f.metadata.get("bounds", {}), docs.get(f.name, ""),
                             cls))
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its attribute docstring (the string literal below the field), whitespace collapsed."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (a frozen build): no docs
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def suggest_key(key: str, known: list[str]) -> str | None:
    """The known key closest to the mistyped ``key``, if one is close."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def known_keys(cls: type) -> list[str]:
    """Every dotted key of ``cls``: its leaf fields and its sections."""
    hints = typing.get_type_hints(cls)
    sections = [f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return [f.key for f in leaf_fields(cls)] + sections


# ----------------------------------------------------------------------------------------------------------
# Reading configs: YAML files, dicts and dotted overrides, all through from_dict.


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a nested dict (as read from YAML); values are coerced to the field types
    (:func:`coerce`). Unknown keys, wrong types and out-of-range values raise ``ConfigError`` naming the dotted
    key (an unknown one with the closest known key)."""
    if not isinstance(data, dict):
        raise UserError(f"config must be a mapping; got {data!r}")
    return _build(cls, data, "", cls)


def _build(cls: type, data: dict[str, Any], prefix: str, root: type) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            while isinstance(value, dict) and len(value) == 1:  # {"modle": {"d_model": 3}}: name modle.d_model
                (inner, value), = value.items()
                key = f"{key}.{inner}"
            raise ConfigError(key, UNKNOWN_KEY, value, suggestion=suggest_key(key, known_keys(root)))
        tp = hints[name]
        if not dataclasses.is_dataclass(tp):
            kwargs[name] = coerce(value, tp, key)
        elif value is None:  # an empty section (``model:`` with every key commented out)
            continue
        elif isinstance(value, dict):
            kwargs[name] = _build(tp, value, f"{key}.", root)
        else:
            raise ConfigError(key, f"a mapping of {key}.* keys", value)
    return cls(**kwargs)


def read_config_file(name: str | Path) -> dict[str, Any]:
    """The mapping in the YAML config ``name`` (a path or a shipped config's name, see
    ``paths.resolve_config_file``); one-line ``UserError`` for a path that is not a file (a directory, a device),
    invalid YAML or another top-level value."""
    given = Path(name).expanduser()
    try:
        path = resolve_config_file(name)
    except UserError:
        if given.is_dir():
            raise UserError(f"config file {name} is a directory, not a YAML file") from None
        if given.exists():
            raise UserError(f"config file {name} is not a regular file (give a YAML file)") from None
        raise
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML: {getattr(e, 'problem', None) or first_line(e)}"
                        f"{where}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping (model:, state:, data:, train: ...) at the top "
                        f"level; got a {type(data).__name__}")
    return data


Overrides = list[str] | dict[str, Any]
"""Dotted overrides: command-line arguments (``["--train.lr", "1e-3", "model.d_model=64"]``) or a dict, nested
(``{"train": {"lr": 1e-3}}``) or dotted (``{"train.lr": "1e-3"}``)."""


def parse_overrides(args: list[str], cls: type = RunConfig) -> dict[str, str]:
    """``["--train.lr", "1e-3", "model.d_model=64", "--train.compile"]`` -> ``{"train.lr": "1e-3",
    "model.d_model": "64", "train.compile": "true"}``: ``--KEY VALUE``, ``--KEY=VALUE`` or ``KEY=VALUE`` (dotted);
    a boolean key of ``cls`` without a value means true. The values stay text (:func:`coerce` reads them)."""
    types = {f.key: f.type for f in leaf_fields(cls)}
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") and not (eq and "." in key):
            raise UserError(f"override {arg!r} is not --KEY VALUE or KEY=VALUE")
        i += 1
        if not eq:
            if i < len(args) and not args[i].startswith("--"):
                value, i = args[i], i + 1
            elif types.get(key) is bool:
                value = "true"
            else:
                raise UserError(f"--{key} needs a value")
        out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Overrides | None) -> dict[str, Any]:
    """A copy of the nested config dict ``data`` with ``overrides`` (see ``Overrides``) applied; later wins."""
    out = copy.deepcopy(data)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for name, value in (overrides or {}).items():
        *sections, leaf = str(name).split(".")
        target = out
        for section in sections:
            if not isinstance(target.get(section), dict):
                target[section] = {}
            target = target[section]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            target[leaf] = apply_overrides(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None = None, overrides: Overrides | None = None) -> RunConfig:
    """Read a YAML config (optional; a path or a shipped config's name) and apply overrides: a list of dotted
    command-line arguments (``["--train.lr", "1e-3"]`` or ``"train.lr=1e-3"``) or a nested dict. Returns a
    validated ``RunConfig``."""
    data = read_config_file(path) if path is not None else {}
    return from_dict(RunConfig, apply_overrides(data, overrides))
