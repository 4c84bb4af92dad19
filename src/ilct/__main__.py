"""`python -m ilct`: SIGINT/SIGTERM are recorded from the first line (an import cut short would print a
traceback), then ilct.cli.main takes them over."""

import os
import signal
import sys

_received: list[int] = []
for _sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_sig, lambda signum, frame: _received.append(signum))

from ilct.cli import main  # noqa: E402  (after the handlers)

if _received:
    print(f"ilct: interrupted by signal {_received[0]}; nothing was trained", file=sys.stderr)
    sys.exit(128 + _received[0])
code = main()
if code == 0 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # A rank of a torchrun job that finished cleanly (its checkpoint written, the ranks past their last barrier
    # and out of the process group) leaves without the interpreter's teardown: on the CPU, FSDP2 ranks now and
    # then aborted there ("terminate called without an active exception", exit -6) after every file was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
sys.exit(code)
