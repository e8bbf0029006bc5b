"""The kernel's own account of a child process's peak memory (Linux), to check the peak RSS a program reports
about itself.

``kernel_measured(argv, log)`` is ``argv`` started through a small launcher: the launcher forks, the child execs
``argv``, and the launcher appends the child's ``ru_maxrss`` from ``wait4`` to ``log`` as one JSON line
``{"argv": [...], "maxrss_mb": MB}``. Linux carries ``ru_maxrss`` over ``execve`` from the process that forked,
so a child forked by the test process itself would report the test process's peak; forked by the launcher it can
inherit only the launcher's few MB. The launcher passes stdin, stdout, stderr and the exit status through.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SLACK_MB = 4.0
"""What may separate two accounts of the same process's peak: the memory a process adds after it reads its own
VmHWM (printing a line, exiting: measured up to 1.1 MB) and differences between two processes doing the same work
(measured: 0.3 MB)."""

LAUNCHER = r"""
import json, os, sys
log, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execvp(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(log, "a", encoding="utf-8") as f:
    f.write(json.dumps({"argv": argv, "maxrss_mb": usage.ru_maxrss / 1024}) + "\n")  # Linux: kB
sys.exit(os.waitstatus_to_exitcode(status))
"""


def kernel_measured(argv: list[str], log: Path) -> list[str]:
    """The command line that runs ``argv`` and appends its kernel-measured peak RSS to ``log``."""
    return [sys.executable, "-c", LAUNCHER, str(log), *argv]


def read_log(log: Path) -> list[dict]:
    """The records of ``log``, in the order the children ended; [] when none ended."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
