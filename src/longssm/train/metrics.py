"""What a run reports: ``metrics.jsonl`` (+ TensorBoard), the records of its log steps and its progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..files import write_text_atomic
from ..models.base import State, map_state, state_norms
from ..runtime.distributed import Shard


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl``; mirrors scalars to TensorBoard when it is installed. Disabled
    (``enabled`` False: the processes other than rank 0), it touches no file."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl" if enabled else None
        self.tb = None
        if self.path is None:
            return
        if self.path.exists():  # drop records a crashed run wrote after its last checkpoint (all, from step 0)
            kept = [json.dumps(r) for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # tensorboard is an optional extra
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
            for k, v in record.get("state_max_abs", {}).items():
                self.tb.add_scalar(f"state_max_abs/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line that is not a JSON object (a crash mid-write, an edit) is left out
    with one warning naming it."""
    records, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = "bad"
        if isinstance(record, dict) and isinstance(record.get("step", 0), int):
            records.append(record)
        elif record is not None:
            bad.append(number)
    if bad:
        print(f"warning: {path} line {', '.join(map(str, bad[:5]))} is not a metrics record; left out",
              file=sys.stderr)
    return records


def last_logged_loss(run_dir: Path) -> float | None:
    """The ``loss`` of the last training record of ``run_dir/metrics.jsonl`` (None: no record, or every step of
    its window was skipped)."""
    path = run_dir / "metrics.jsonl"
    losses = [r["loss"] for r in read_records(path) if "loss" in r] if path.is_file() else []
    return losses[-1] if losses else None


class LogWindow:
    """The steps since the last metrics record: how many, since when, and their finite losses (as read back)."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.losses: list[float] = []
        self.steps = 0
        self.since = time.perf_counter()

    def record(self, step: int, lr: float, final: State, shard: Shard) -> dict[str, Any]:
        """The metrics record of log step ``step``, which closes the window: the mean finite loss (None when every
        step since the last record was skipped), the learning rate, tokens seen, throughput, the largest absolute
        value of each final state tensor (over every process) and the number of processes."""
        now = time.perf_counter()
        tok_s = self.steps * self.tokens_per_step / max(now - self.since, 1e-9)
        mean_loss = sum(self.losses) / len(self.losses) if self.losses else None
        record = {
            "step": step,
            "loss": mean_loss,
            "lr": lr,
            "tokens": step * self.tokens_per_step,
            "tokens_per_s": tok_s,
            "state_max_abs": state_norms(map_state(lambda v: shard.max(v.detach().abs().amax()), final)),
            "world_size": shard.world,
        }
        self.since, self.steps = now, 0
        self.losses.clear()
        return record


def progress_bar(cfg: RunConfig, start: int, shard: Shard) -> Any:
    """A tqdm bar over the run's steps from ``start``, shown by rank 0 when ``train.progress`` is on."""
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc=cfg.name,
                disable=not (cfg.train.progress and shard.is_main), dynamic_ncols=True)
