"""`python -m training.launch [torchrun args...]`: torchrun that dies with its launcher.

Linux `prctl(PR_SET_PDEATHSIG, SIGTERM)` is set, then torchrun is exec'd in the same process, so
when the process that started it (a Dagster step, a shell) dies - even by SIGKILL - torchrun gets
SIGTERM and, as on any termination, stops every worker rank. Each rank in turn sets its own death
signal (training.runtime.die_with_parent), so no rank outlives torchrun. Elsewhere (macOS) it is plain torchrun.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ppid = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != ppid:  # the parent died before prctl took effect
        sys.exit(143)
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *argv])


if __name__ == "__main__":
    main()
