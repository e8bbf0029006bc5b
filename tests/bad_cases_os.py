"""Bad-input cases of issue 20 (os), run by ``tests/test_bad_inputs.py`` like its own ``CASES``.

``CASES``: (case id, argv as a function of ``Inputs``, text the one error line must contain, exit code).
``make_inputs(root)``: writes the extra input files the cases need into ``root`` (``Inputs.root``), once per module.

Operating-system errors in plain words, never ``[Errno N]``: a path that is not a regular file (``/dev/null``, a
named pipe, a directory as ``--config``), a name too long, an existing file where a directory is needed (EEXIST), a
path under a regular file (ENOTDIR), a directory where a file is needed (EISDIR), Hugging Face / mamba_ssm
checkpoint directories given where a longssm run is expected, and a model too large for memory. The cases that need
real processes with limits or pipes (a full disk, a closed stdout, a too-large window) are in
``tests/test_os_errors.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

LONG = "n" * 300
"""A file name longer than any file system allows (255 bytes)."""
HF_ADVICE = "is a Hugging Face checkpoint directory, not a longssm run: convert it with `longssm import "

CASES: list[tuple[str, object, str, int]] = [
    # paths that exist but are not regular files
    ("data is /dev/null", lambda i: i.train("--data.train", os.devnull),
     "data file /dev/null is a character device, not a regular file", 2),
    ("valid data is /dev/null", lambda i: i.train("--data.valid", os.devnull, "--train.eval_every", "2"),
     "/dev/null is a character device", 2),
    ("data is a named pipe", lambda i: i.train("--data.train", i.path("fifo.txt")), "fifo.txt is a named pipe", 2),
    ("calibrate data is /dev/null", lambda i: ["calibrate", i.run(), "--method", "delta_scale", "--target-length", "64",
                                               "--data", os.devnull, "--out", i.path("cal")],
     "/dev/null is a character device", 2),
    ("--config is a directory", lambda i: i.train("--config", i.path("a_directory")),
     "a_directory is a directory, not a YAML file", 2),
    ("--config is /dev/null", lambda i: i.train("--config", os.devnull), "/dev/null is not a regular file", 2),
    ("sweep --config is a directory", lambda i: ["sweep", "--config", i.path("a_directory"), "--grid",
                                                 "train.seq_len=8,16", "--out", i.path("sw")],
     "a_directory is a directory, not a YAML file", 2),
    ("eval of a file", lambda i: ["eval", i.path("a_file")], "a_file is a file, not a run or checkpoint directory", 2),
    # checkpoints of other programs where a longssm run is expected
    ("eval of a Hugging Face directory", lambda i: ["eval", i.path("hf_mamba"), "--no-progress"], HF_ADVICE, 2),
    ("export of a Hugging Face directory", lambda i: ["export", i.path("hf_mamba"), "--out", i.path("exported")],
     HF_ADVICE, 2),
    ("generate from a Hugging Face directory", lambda i: ["generate", i.path("hf_mamba"), "--prompt", "a"],
     HF_ADVICE, 2),
    ("eval of a mamba_ssm directory", lambda i: ["eval", i.path("mamba_ssm_dir"), "--no-progress"],
     "mamba_ssm_dir is a mamba_ssm checkpoint directory, not a longssm run", 2),
    # name too long (ENAMETOOLONG)
    ("--run-dir name too long", lambda i: i.train(run_dir=i.path(LONG)), "file name too long: ", 2),
    ("--json name too long", lambda i: ["eval", i.run(), "--json", i.path(LONG + ".json"), "--no-progress"],
     "file name too long: ", 2),
    ("--data.cache_dir name too long", lambda i: i.train("--data.cache_dir", i.path(LONG)), "(300 bytes", 2),
    # a file where a directory is needed (EEXIST, ENOTDIR) and a directory where a file is needed (EISDIR)
    ("--data.cache_dir is a file", lambda i: i.train("--data.cache_dir", i.path("a_file")),
     "a_file is a file", 2),
    ("--data.cache_dir under a file", lambda i: i.train("--data.cache_dir", i.path("a_file/cache")),
     "a part of the path is not a directory", 2),
    ("--run-dir under a file", lambda i: i.train(run_dir=i.path("a_file/run")),
     "a part of the path is not a directory", 2),
    ("--plots under a file", lambda i: ["eval", i.run(), "--plots", i.path("a_file/plots"), "--no-progress",
                                         "--no-cache"],
     "a_file is a file", 2),
    ("--prompt-file is a directory", lambda i: ["generate", i.run(), "--prompt-file", i.path("a_directory")],
     "a_directory is a directory", 2),
    # memory
    ("model too large for memory", lambda i: i.train("--model.d_model", "1000000"),
     "out of memory building the mamba model on cpu (model.d_model=1000000, model.n_layers=1", 1),
]
OUTPUTS: tuple[str, ...] = ("exported",)
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case (the names
too long cannot exist)."""


def make_inputs(root: Path) -> None:
    """A named pipe; a directory as ``save_pretrained`` writes a Hugging Face Mamba (``config.json`` with
    ``model_type``, ``model.safetensors``) and one as mamba_ssm writes it (``d_model``, ``n_layer``, ``ssm_cfg``)."""
    os.mkfifo(root / "fifo.txt")
    (root / "hf_mamba").mkdir()
    (root / "hf_mamba" / "config.json").write_text(json.dumps({
        "architectures": ["MambaForCausalLM"], "model_type": "mamba", "vocab_size": 256, "hidden_size": 16,
        "num_hidden_layers": 1, "state_size": 4, "expand": 2, "conv_kernel": 4, "time_step_rank": 1}))
    save_file({"backbone.embeddings.weight": torch.zeros(256, 16)}, str(root / "hf_mamba" / "model.safetensors"))
    (root / "mamba_ssm_dir").mkdir()
    (root / "mamba_ssm_dir" / "config.json").write_text(json.dumps({
        "d_model": 16, "n_layer": 1, "vocab_size": 256, "ssm_cfg": {"d_state": 4}, "pad_vocab_size_multiple": 8}))
    torch.save({"backbone.embedding.weight": torch.zeros(256, 16)}, root / "mamba_ssm_dir" / "pytorch_model.bin")
