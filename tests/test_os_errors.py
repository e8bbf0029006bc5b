"""Operating-system and resource errors through the real command line, in real processes: a full disk while a
training saves (``RLIMIT_FSIZE``), a closed stdout (a real pipe), a window too large for memory, a Hugging Face
directory given to ``eval``; and the errno -> message mapping (``errors.os_error_line``) for the errors a test
cannot provoke here. Each CLI case: its exit code, one error line, no traceback, no ``[Errno N]``, and the files of
an existing run unchanged. The one-line cases that fit ``tests/test_bad_inputs.py`` are in ``bad_cases_os.py``.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_one_line_error, file_hashes, longssm, tiny_train_args
from longssm import cli
from longssm.errors import OperationFailed, allocation_failure, os_error_line


def longssm_limited(file_size: int, *args: str) -> subprocess.CompletedProcess:
    """``longssm ARGS`` in a child process that may write no file beyond ``file_size`` bytes: a write past it fails
    with EFBIG (SIGXFSZ ignored), as a full disk fails with ENOSPC."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "longssm", *args], capture_output=True, text=True, env=env,
                          preexec_fn=limit, timeout=300)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr and "[Errno" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if "error" in line]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, wiki_text) -> tuple[Path, Path, Path]:
    """(corpus, token cache, a finished 6-step run with checkpoints step-2, 4, 6 and final/)."""
    root = tmp_path_factory.mktemp("os_errors")
    corpus = root / "corpus.txt"
    corpus.write_text(wiki_text[:20_000], encoding="utf-8")
    run = root / "done"
    proc = longssm(*tiny_train_args(corpus, root / "cache", run, "--train.checkpoint_every", "2"))
    assert proc.returncode == 0, proc.stderr
    return corpus, root / "cache", run


# A checkpoint of the tiny model: model.safetensors ~26 KB, states.safetensors ~9 KB, trainer.pt ~67 KB; the run's
# config.yaml, run.json and metrics.jsonl are under 2 KB.
LIMIT_IN_TRAINER = 40_000
"""The weights and states fit, ``trainer.pt`` does not: the failure is a plain file write."""
LIMIT_IN_WEIGHTS = 16_384
"""``model.safetensors`` does not fit: the failure is inside safetensors (``File too large (os error 27)``)."""


def test_full_disk_on_resume_is_one_line_and_leaves_every_checkpoint_byte_identical(inputs, tmp_path):
    corpus, cache, done = inputs
    run = tmp_path / "run"
    shutil.copytree(done, run)
    before = file_hashes(run)
    old_metrics, old_record = (run / "metrics.jsonl").read_text(), json.loads((run / "run.json").read_text())
    proc = longssm_limited(LIMIT_IN_TRAINER, *tiny_train_args(corpus, cache, run, "--train.checkpoint_every", "2",
                                                              "--resume", "auto", "--train.steps", "10"))
    assert proc.returncode == 1, proc.stderr
    assert error_lines(proc) == [proc.stderr.splitlines()[-1]], proc.stderr  # before it only "resumed from ..."
    assert (f"cannot write checkpoint {run}/checkpoints/step-00000008: file too large (file size limit)"
            in proc.stderr), proc.stderr
    after = file_hashes(run)
    assert sorted(after) == sorted(before), "a file was added or removed (a partial checkpoint, a .tmp-*)"
    # What a resume rewrites at its start: the config (train.steps only), the run record (one more history
    # entry), the metrics (appended). Every checkpoint, final/ included, is untouched.
    changed = {name for name in before if after[name] != before[name]}
    assert changed <= {"config.yaml", "run.json", "metrics.jsonl"}, changed
    assert not any(name.startswith(("checkpoints", "final")) for name in changed)
    old_cfg = yaml.safe_load((done / "config.yaml").read_text())
    old_cfg["train"]["steps"] = 10
    assert yaml.safe_load((run / "config.yaml").read_text()) == old_cfg
    assert (run / "metrics.jsonl").read_text().startswith(old_metrics)
    assert json.loads((run / "run.json").read_text())["history"][:-1] == old_record["history"]


def test_full_disk_while_a_new_training_saves_its_first_checkpoint(inputs, tmp_path):
    corpus, cache, _ = inputs
    run = tmp_path / "fresh"
    proc = longssm_limited(LIMIT_IN_WEIGHTS, *tiny_train_args(corpus, cache, run, "--train.checkpoint_every", "2"))
    assert_one_line_error(proc, f"cannot write checkpoint {run}/checkpoints/step-00000002: file too large (file "
                                f"size limit)", 1)
    assert "os error" not in proc.stderr and "[Errno" not in proc.stderr
    assert not (run / "checkpoints").exists() or list((run / "checkpoints").iterdir()) == []
    assert not (run / "final").exists()


@pytest.mark.parametrize("command", ["generate", "help", "eval help"])
def test_closed_stdout_exits_quietly_with_141(inputs, command):
    """``longssm generate ... | head -c1`` (the text streamed, the reader gone after one byte) and ``| true`` (gone
    before the command writes: the final flush fails): nothing on stderr, exit code 141 like any Unix tool."""
    _, _, run = inputs
    argv, reader = {
        "generate": (["generate", str(run), "--prompt", "The", "--max-new-tokens", "3000", "--temperature", "1"],
                     "head -c1 >/dev/null"),
        "help": (["--help"], "true"),
        "eval help": (["eval", "--help"], "true"),
    }[command]
    line = " ".join(f"'{a}'" for a in [sys.executable, "-m", "longssm", *argv])
    proc = subprocess.run(["bash", "-c", f"{line} | {reader}; echo ${{PIPESTATUS[0]}}"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == "141", proc.stdout


def test_a_window_too_large_for_memory_names_the_size_and_the_config(inputs, tmp_path):
    """The model fits; its activations at train.seq_len=10^6 with a wide state do not (the B/C projections alone
    hold T * 2N floats): one line with the allocation in GiB and the settings that sized it, exit 1."""
    _, cache, _ = inputs
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(0, 256, 1_000_001).astype(np.uint16))
    args = tiny_train_args(tokens, cache, tmp_path / "run", "--train.batch_size", "1", "--train.seq_len", "1000000",
                           "--model.d_state", "125000")
    proc = longssm(*args)
    assert_one_line_error(proc, "out of memory (model.family=mamba, model.d_model=16, model.n_layers=1, "
                                "model.d_state=125000", 1)
    assert "train.batch_size=1, train.seq_len=1000000" in proc.stderr and " GiB" in proc.stderr, proc.stderr


def test_hugging_face_directory_points_at_import(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=256, hidden_size=16, num_hidden_layers=1, state_size=4, expand=2, time_step_rank=1))
    hf.save_pretrained(tmp_path / "hf")
    before = file_hashes(tmp_path / "hf")
    proc = longssm("eval", str(tmp_path / "hf"), "--no-progress")
    assert_one_line_error(proc, f"{tmp_path / 'hf'} is a Hugging Face checkpoint directory, not a longssm run: "
                                f"convert it with `longssm import {tmp_path / 'hf'} --out RUN`", 2)
    assert file_hashes(tmp_path / "hf") == before
    # the advice works (in this process: the error above is what needed a fresh one)
    assert cli.main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--tokenizer", "byte"]) == 0


# --- the errno -> message mapping ---------------------------------------------------------------------------------
# We run as root, so a permission error cannot be provoked with chmod: EACCES and the other errors not provoked
# above are checked on constructed OSErrors, as the system raises them (errno, strerror, filename).

@pytest.mark.parametrize("code, expected", [
    (errno.EACCES, ("permission denied: /data/x.txt", 2)),
    (errno.EPERM, ("operation not permitted: /data/x.txt", 2)),
    (errno.ENOENT, ("no such file or directory: /data/x.txt", 2)),
    (errno.EISDIR, ("/data/x.txt is a directory", 2)),
    (errno.ENOSPC, ("no space left on device writing /data/x.txt", 1)),
    (errno.EDQUOT, ("disk quota exceeded writing /data/x.txt", 1)),
    (errno.EFBIG, ("file too large writing /data/x.txt (file size limit)", 1)),
    (errno.EROFS, ("read-only file system: /data/x.txt", 1)),
    (errno.EBUSY, ("device or resource busy: /data/x.txt", 1)),
])
def test_os_error_line_in_plain_words_with_the_exit_code(code, expected):
    error = OSError(code, os.strerror(code), "/data/x.txt")
    assert os_error_line(error) == expected
    assert "Errno" not in os_error_line(error)[0]


def test_os_error_line_of_a_real_failure_names_the_part_of_the_path_at_fault(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, expected in [(tmp_path / "file" / "sub" / "x", f"a part of the path is not a directory ({tmp_path}/file "
                                                              f"is a file)"),
                           (tmp_path / ("n" * 300) / "x", "(300 bytes; a name may have at most 255)"),
                           (tmp_path / "file", f"{tmp_path}/file already exists (a file)")]:
        with pytest.raises(OSError) as caught:
            path.mkdir() if path.name == "file" else path.open("w")
        line, code = os_error_line(caught.value)
        assert expected in line and code == 2, line


def test_operation_failed_reads_what_was_done_and_why():
    error = OperationFailed("cannot write checkpoint runs/x/final", OSError(errno.ENOSPC, "No space left on device"))
    assert str(error) == "cannot write checkpoint runs/x/final: no space left on device"
    assert (error.errno, os_error_line(error)[1]) == (errno.ENOSPC, 1)


def test_allocation_failure_reads_the_size_of_torch_and_numpy_errors():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**40, dtype=torch.float32)  # 4 TiB: refused at once
    assert allocation_failure(caught.value) == "tried to allocate 4096.0 GiB"
    with pytest.raises(MemoryError) as caught_np:
        np.empty(2**41, dtype=np.uint8)
    assert allocation_failure(caught_np.value) == "tried to allocate 2048.0 GiB"
    cuda = RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB")
    assert allocation_failure(cuda) == "tried to allocate 20.0 GiB"
    assert allocation_failure(RuntimeError("shapes cannot be multiplied")) is None
