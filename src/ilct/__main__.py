"""`python -m ilct`: SIGINT/SIGTERM are recorded from the first line (an import cut short would print a
traceback), then ilct.cli.main takes them over."""

import signal
import sys

_received: list[int] = []
for _sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_sig, lambda signum, frame: _received.append(signum))

from ilct.cli import leave, main  # noqa: E402  (after the handlers)

if _received:
    print(f"ilct: interrupted by signal {_received[0]}; nothing was trained", file=sys.stderr)
    sys.exit(128 + _received[0])
leave(main())  # ilct.cli.leave: a clean torchrun rank skips the interpreter teardown
