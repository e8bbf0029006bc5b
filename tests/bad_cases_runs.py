"""Bad-input cases of issue 20 (safe runs: resume, --init-from, --print-config), run by ``tests/test_bad_inputs.py``
like its own ``CASES``.

``CASES``: (case id, argv as a function of ``Inputs``, text the one error line must contain, exit code).
``make_inputs(root)``: writes the extra input files the cases need into ``root`` (``Inputs.root``), once per module.

The run ``done`` was trained with ``tiny_train_args`` (T=8, B=4, 6 steps, the previous-state scheme, byte
tokenizer); a resume may not change what its step and carried states mean, nor ask for fewer steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CKPT = "/checkpoints/step-00000006"


def resume(i, *extra: str) -> list[str]:
    """``train --resume auto`` of the finished run ``done`` with the flags it was trained with and ``extra``."""
    return i.train("--resume", "auto", *extra, run_dir=i.run())


CASES: list[tuple[str, object, str, int]] = [
    # a resume keeps what fixes the step, the streams and the carried states
    ("resume: another T", lambda i: resume(i, "--train.seq_len", "16"), "train.seq_len is 8 there and 16 here", 2),
    ("resume: another scheme", lambda i: resume(i, "--state.scheme", "zero"),
     "state.scheme is 'previous' there and 'zero' here", 2),
    ("resume: another p_zero", lambda i: resume(i, "--state.p_zero", "0.5"), "state.p_zero is None there", 2),
    ("resume: another reset", lambda i: resume(i, "--state.reset", "document"), "state.reset is 'wrap' there", 2),
    ("resume: another seed", lambda i: resume(i, "--train.seed", "7"), "train.seed is 0 there and 7 here", 2),
    ("resume: another training text", lambda i: resume(i, "--data.train", i.path("existing.txt")), "data.train is", 2),
    ("resume: another tokenizer", lambda i: resume(i, "--data.tokenizer", "gpt2"),
     "data.tokenizer is 'byte' there and 'gpt2' here", 2),
    ("resume: another token budget", lambda i: resume(i, "--train.tokens_per_step", "64"),
     "train.tokens_per_step is None there and 64 here", 2),
    ("resume: two fixed keys named", lambda i: resume(i, "--train.seq_len", "4", "--model.d_state", "8"),
     "model.d_state is 4 there and 8 here, train.seq_len is 8 there and 4 here", 2),
    ("resume: a checkpoint path, another T", lambda i: i.train("--resume", i.run() + CKPT, "--train.seq_len", "4"),
     "train.seq_len is 8 there and 4 here", 2),
    ("resume: fewer steps than the checkpoint's", lambda i: resume(i, "--train.steps", "3"),
     "train.steps=3 is below the step it saved (6)", 2),
    ("resume: a fixed key from --config", lambda i: resume(i, "--config", i.path("zero_scheme.yaml")),
     "state.scheme is 'previous' there and 'zero' here", 2),
    ("resume: finished run, checkpoints deleted", lambda i: i.train("--resume", "auto", run_dir=i.run("no_ckpts")),
     "checkpoints/ are gone", 2),
    # --init-from: the source fixes the model
    ("init-from: another width", lambda i: i.train("--init-from", i.run(), "--model.d_model", "32"),
     "has model.d_model=16 (given 32)", 2),
    ("init-from: another family", lambda i: i.train("--init-from", i.run(), "--model.family", "gru"),
     "model.family='mamba' (given 'gru')", 2),
    ("init-from: another tokenizer", lambda i: i.train("--init-from", i.run(), "--data.tokenizer", "gpt2"),
     "data.tokenizer gpt2 cannot replace it", 2),
    ("init-from: HF directory of vocabulary 1000 without a tokenizer",
     lambda i: i.train("--init-from", i.path("hf_vocab1000"), "--model.d_model", "16"),
     "no tokenizer.json and a vocabulary of 1000", 2),
    ("init-from and a run dir with a checkpoint", lambda i: i.train("--init-from", i.run(), "--resume", "auto",
                                                                      run_dir=i.run()), "drop one of them", 2),
    # --print-config checks what it prints
    ("print-config: missing training text", lambda i: i.train("--data.train", i.path("nope.txt"), "--print-config"),
     "nope.txt is not a file", 2),
    ("print-config: vocabulary below the tokenizer's", lambda i: i.train("--model.vocab_size", "100",
                                                                         "--print-config"), "model.vocab_size=100", 2),
    ("print-config: unknown family", lambda i: i.train("--model.family", "nope", "--print-config"),
     "model.family must be one of", 2),
]
OUTPUTS: tuple[str, ...] = ()
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case."""


def make_inputs(root: Path) -> None:
    """A copy of ``done`` without checkpoints, a config file that changes the state scheme, and a Hugging Face
    Mamba directory with a vocabulary of 1000 and no tokenizer.json."""
    shutil.copytree(root / "runs" / "done", root / "runs" / "no_ckpts")  # under runs/: hashed
    shutil.rmtree(root / "runs" / "no_ckpts" / "checkpoints")
    (root / "zero_scheme.yaml").write_text("state:\n  scheme: zero\n")
    import transformers

    config = transformers.MambaConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, state_size=4,
                                      time_step_rank=1, expand=2, conv_kernel=4)
    transformers.MambaForCausalLM(config).save_pretrained(root / "hf_vocab1000")
