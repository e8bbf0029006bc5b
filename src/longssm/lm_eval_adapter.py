"""lm-evaluation-harness (0.4.x) adapter: a longssm run as the harness model ``longssm``.

Importing this module registers ``LongSSMLM`` under the name ``longssm``, so that besides ``longssm lm-eval``

    import longssm.lm_eval_adapter, lm_eval
    lm_eval.simple_evaluate(model="longssm", model_args="run=runs/m,device=cpu", tasks=["lambada_openai"])

works too. Every request is one stateful pass of the chunked recurrence (chunks of ``chunk`` tokens, the state
carried): no rolling windows and no truncation, at any length, where the harness's own Mamba wrapper cuts
documents into 2048-token windows.

    loglikelihood          context + continuation fed once, right-padded into batches (the recurrence is causal,
                           so padding after a row never reaches its scores); the log-probabilities of the
                           continuation tokens summed; is_greedy = every continuation token is the argmax
    loglikelihood_rolling  [EOT] + the whole document fed once; the sum of the log-probabilities of all its
                           tokens: one float per request, as the harness's reference model (HFLM) returns
    generate_until         the context consumed with the recurrence, then one token at a time from the carried
                           state (``longssm.generate``) until one of the ``until`` strings or ``max_gen_toks``

End of text (EOT): longssm's tokenizers have no end-of-text token that its models were trained with (the
corpora are plain text whose documents follow a newline), so EOT is by default the token of ``"\n"`` (``eot``
names another, e.g. ``"<|endoftext|>"`` for a checkpoint imported from a model trained with it). It is the
context of a request with an empty context and of a rolling document's first token, where HFLM uses the
tokenizer's BOS/EOS. It is *not* a stop string of ``generate_until``, where a newline is ordinary text: only the
task's ``until`` strings stop generation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .data.tokenizer import Tokenizer
from .errors import UserError
from .generate import Sampler, generate_text, load_for_generation
from .outputs import check_file, write_texts
from .runtime.feed import feed

try:
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "lm_eval":
        raise
    raise UserError("lm-evaluation-harness 0.4 is not installed: pip install 'longssm[lmeval]'") from None


@torch.no_grad()
def score_tokens(model: nn.Module, rows: Sequence[Sequence[int]], starts: Sequence[int],
                 chunk: int) -> list[tuple[float, bool]]:
    """Score the tokens ``rows[i][starts[i]:]`` given the tokens before them, all rows in one batch.

    Each row is fed once in chunks of ``chunk`` tokens with the state carried; rows are right-padded to the
    longest, n tokens: inputs (b, n - 1), targets (b, n - 1) = the inputs shifted by one. Returns per row
    (Σ log q(x_t | x_<t) over the scored tokens, in float64; whether every scored token is the argmax of q).
    ``starts[i] ≥ 1``: the first token of a row is context only.
    """
    device = next(model.parameters()).device
    b, n = len(rows), max(len(r) for r in rows)
    tokens = torch.zeros(b, n, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    t = torch.arange(n - 1)
    lengths, first = torch.tensor([len(r) for r in rows]), torch.tensor(starts)
    scored = (t >= first[:, None] - 1) & (t < lengths[:, None] - 1)  # (b, n - 1): input position t predicts x_{t+1}
    tokens, scored = tokens.to(device), scored.to(device)
    logprob = torch.zeros(b, dtype=torch.float64, device=device)
    greedy = torch.ones(b, dtype=torch.bool, device=device)
    for t0, t1, logits, _ in feed(model, tokens[:, :-1], None, chunk):
        row, pos = scored[:, t0:t1].nonzero(as_tuple=True)
        picked, target = logits[row, pos], tokens[row, t0 + pos + 1]  # (k, V), (k,)
        logq = picked.log_softmax(-1, dtype=torch.promote_types(picked.dtype, torch.float32))
        logprob.index_add_(0, row, logq.gather(-1, target[:, None])[:, 0].double())
        greedy[row[picked.argmax(-1) != target]] = False
    return list(zip(logprob.tolist(), greedy.tolist()))


@register_model("longssm")
class LongSSMLM(TemplateLM):
    """A longssm model for lm-evaluation-harness (see the module docstring for what each request type does).

    Args:
        run: a run or checkpoint directory, or a model already built (then ``tokenizer`` is required and the model
            stays on its device, in its dtype).
        tokenizer: the tokenizer of ``run`` when ``run`` is a model.
        device: auto, cpu, cuda or cuda:N (for a directory).
        batch_size: requests scored together by ``loglikelihood`` and ``loglikelihood_rolling``.
        chunk: tokens per forward call; with ``batch_size`` it bounds the logits held at once (rows × chunk × V).
        max_gen_toks: ``generate_until``'s token budget when a task does not set one.
        eot: the text of the end-of-text token (one token; see the module docstring).
    """

    def __init__(self, run: str | Path | nn.Module, tokenizer: Tokenizer | None = None, device: str = "auto",
                 batch_size: int | str = 8, chunk: int = 1024, max_gen_toks: int = 256, eot: str = "\n") -> None:
        super().__init__()
        if isinstance(run, nn.Module):
            if tokenizer is None:
                raise UserError("LongSSMLM(model, tokenizer): a model needs its tokenizer")
            self.model, self.tokenizer = run.eval(), tokenizer
        else:
            self.model, self.tokenizer = load_for_generation(run, device)
        self._device = next(self.model.parameters()).device
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise UserError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.batch_size, self.chunk, self.max_gen_toks = int(batch_size), chunk, max_gen_toks
        eot_ids = self.tokenizer.encode(eot)
        if len(eot_ids) != 1:
            raise UserError(f"the tokenizer encodes eot={eot!r} as {len(eot_ids)} tokens; lm-eval needs one token")
        self._eot = eot_ids[0]

    @property
    def eot_token_id(self) -> int:
        return self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (longssm's tokenizers add no special tokens)."""
        return self.tokenizer.encode(string)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """((context, continuation), context ids, continuation ids) -> (log q(continuation | context), is_greedy)."""
        rows = [context + continuation for _, context, continuation in requests]
        return self._score(rows, [len(context) for _, context, _ in requests], "loglikelihood", disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """(document,) -> log q(document | EOT), the whole document in one stateful pass."""
        rows = [[self.eot_token_id, *self.tok_encode(document)] for (document,) in (r.args for r in requests)]
        return [logprob for logprob, _ in self._score(rows, [1] * len(rows), "loglikelihood_rolling", disable_tqdm)]

    def _score(self, rows: list[list[int]], starts: list[int], desc: str,
               disable_tqdm: bool) -> list[tuple[float, bool]]:
        """``score_tokens`` over batches of ``batch_size`` rows of similar length (longest first); input order."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        for k in tqdm(range(0, len(order), self.batch_size), desc=desc, disable=disable_tqdm):
            batch = order[k:k + self.batch_size]
            scores = score_tokens(self.model, [rows[i] for i in batch], [starts[i] for i in batch], self.chunk)
            for i, score in zip(batch, scores):
                results[i] = score
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """(context, generation kwargs) -> the continuation, cut before the first ``until`` string.

        Greedy unless the task sets ``do_sample`` (then ``temperature``, ``top_k``, ``top_p``, drawn with torch's
        global RNG, which ``simple_evaluate`` seeds); an empty context starts from EOT.
        """
        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], desc="generate_until", disable=disable_tqdm):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            temperature = float(kwargs.get("temperature", 1.0)) if kwargs["do_sample"] else 0.0  # HF's defaults
            sampler = Sampler(temperature, kwargs.get("top_k"), kwargs.get("top_p"))
            prompt = self.tok_encode(context) or [self.eot_token_id]
            out.append(generate_text(self.model, self.tokenizer, prompt, kwargs["max_gen_toks"], sampler,
                                     chunk=self.chunk, until=kwargs["until"]))
        return out


def check_limit(limit: float | None) -> None:
    """``UserError`` unless ``limit`` (examples per task: a count, or below 1 a fraction of each task) is None or
    a finite number > 0."""
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise UserError(f"--limit must be > 0 (a count, or a fraction below 1); got {limit:g}")


def evaluate_tasks(lm: LongSSMLM, tasks: list[str], include_path: str | None = None, limit: float | None = None,
                   output: str | None = None, force: bool = False) -> dict:
    """Run the harness's tasks (names or task YAML paths) on ``lm`` with ``lm_eval.simple_evaluate``; with
    ``output``, write the results JSON (checked first, by the rules of ``outputs.py``; ``force``: overwrite a file
    longssm did not write).

    When every task is a YAML path or a task of ``include_path`` (a folder of task YAMLs), the harness's ~15,000
    built-in tasks are not indexed (that takes about 10 s); otherwise they are indexed too.
    """
    check_limit(limit)
    if output:
        check_file(output, "--output", force)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    manager = TaskManager(include_path=include_path, include_defaults=False)
    if _unknown_tasks(manager, tasks):
        manager = TaskManager(include_path=include_path)
    unknown = _unknown_tasks(manager, tasks)
    if unknown:
        raise UserError(f"unknown lm-eval task(s): {', '.join(unknown)} (see `lm-eval ls tasks`, or --include-path)")
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    if output:
        write_texts({Path(output): json.dumps(results, indent=2, default=handle_non_serializable,
                                              ensure_ascii=False)}, "--output", force)
    return results


def _unknown_tasks(manager: Any, tasks: list[str]) -> list[str]:
    """The tasks that are neither a task, group or tag that ``manager`` (a ``TaskManager``) knows nor a file."""
    return sorted(t for t in tasks if t not in manager.all_tasks and not Path(t).is_file())


def results_table(results: dict) -> str:
    """The harness's Markdown table of the results (and of the groups, when a task is a group)."""
    from lm_eval.utils import make_table

    return make_table(results) + (("\n" + make_table(results, "groups")) if results.get("groups") else "")
