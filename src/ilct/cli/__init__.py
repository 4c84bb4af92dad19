"""`ilct <subcommand>`: autoencoder, train, sample, schedule, encode, analyze, eval, clips, demo.

The parser lives in ilct.cli.parser, each command in its own module (ilct.cli.sample, ...): its arguments, their
ranges, a call into the library and the lines it prints. Here: `main`, which records signals while the heavy
modules load, dispatches, and turns every user error into one line `ilct: error: ...` with exit status 2
(signals: 128 + N).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import NoReturn

from ilct.cli.parser import build_parser
from ilct.errors import IlctError
from ilct.training.preempt import RECEIVED, Interrupted, interrupt, lost_interrupts, record

__all__ = ["main", "console", "leave", "build_parser"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Signals:
    """SIGINT/SIGTERM before a command runs: recorded while the heavy modules load (an import cut short
    would leave them half made), then checked; while the command runs they raise preempt.Interrupted (the
    training loop replaces this with its own handling, ilct.training.preempt). Either way: one line, 128 + signal."""

    def __init__(self) -> None:
        self.raising = False
        self.active = threading.current_thread() is threading.main_thread()
        self._lost = lost_interrupts()
        if self.active:
            self._lost.__enter__()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        record(signum)
        if self.raising:
            interrupt(signum)

    def start_raising(self) -> None:
        self.raising = True
        if RECEIVED:
            raise Interrupted(RECEIVED[0])

    def restore(self) -> None:
        if self.active:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._lost.__exit__()


# What a signal before the end leaves, by command (the others write their outputs only at the end, atomically).
AFTER_SIGNAL = {"train": "nothing was trained", "autoencoder": "nothing was saved",
                "encode": "the finished shards are kept: the same command resumes",
                "demo": "its finished parts are kept: run it again to go on"}


def _report_error(e: IlctError | OSError) -> int:
    """One line on stderr for an error the user can fix; the exit status."""
    if RECEIVED:  # a signal inside C code can surface as a "damaged file": it was the signal
        print(f"ilct: interrupted by signal {RECEIVED[0]}", file=sys.stderr)
        return 128 + RECEIVED[0]
    if isinstance(e, IlctError):
        print(f"ilct: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    # the filesystem said no (read-only, full, not a folder, permissions): the user's to fix
    where = f"{e.filename}: " if e.filename else ""
    print(f"ilct: error: {where}{_one_line(e.strerror or str(e))}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    RECEIVED.clear()  # the signals ilct's handlers (here and ilct.training.preempt) see during this command
    signals = _Signals()
    args = None
    try:
        args = build_parser().parse_args(argv)  # loads torch (through the config) with signals recorded
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for results files' provenance
        # heavy (torch): imported only now that the signal handlers are in place
        from ilct.training.accel import flush_denormals

        flush_denormals()  # before torch's first parallel operation: its worker threads take the main thread's mode
        signals.start_raising()
        return args.func(args)
    except (IlctError, OSError) as e:
        return _report_error(e)
    except Interrupted as e:
        print(f"ilct: {e}; {AFTER_SIGNAL.get(getattr(args, 'command', None), 'nothing was written')}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("ilct: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if RECEIVED:  # whatever a signal cut short (a module half imported): still one line
            print(f"ilct: interrupted by signal {RECEIVED[0]}", file=sys.stderr)
            return 128 + RECEIVED[0]
        raise
    finally:
        signals.restore()


def leave(code: int) -> NoReturn:
    """Exit the process with `code`. A rank of a torchrun job (WORLD_SIZE > 1) that finished cleanly (its
    checkpoint written, the ranks past their last barrier and out of the process group) leaves without the
    interpreter's teardown: on the CPU, FSDP2 ranks now and then aborted there ("terminate called without an
    active exception", exit -6) after every file was written. Both entry points (`ilct`, `python -m ilct`) end here."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:  # not a torchrun launch: an ordinary exit with the command's status
        world = 1
    if code == 0 and world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)


def console() -> NoReturn:
    """The `ilct` console script."""
    leave(main())
