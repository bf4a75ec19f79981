"""`rayrelay run`'s signal handling (``local.command._Stopper``), in this very process.

Real signals are sent to the test process (``os.kill``): SIGINT and SIGTERM
both interrupt, the exit code is 128 + the signal, and once tearing down a
signal is noted instead of interrupting the teardown. The end-to-end case --
``rayrelay run`` as a subprocess taking its Ray head down -- is
``tests/faults/test_clean_shutdown.py``.
"""

from __future__ import annotations

import io
import os
import signal

import pytest
from rich.console import Console

from rayrelay_operator.local.command import _Stopper


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_both_signals_interrupt_and_name_the_exit_code(sig: signal.Signals) -> None:
    out = io.StringIO()
    stopper = _Stopper(Console(file=out))
    previous = stopper.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)  # Python runs the handler right after the call returns
        assert 128 + stopper.signum == 128 + int(sig)
        with pytest.raises(KeyboardInterrupt):  # a second one before the teardown still stops
            os.kill(os.getpid(), sig)
        stopper.tearing_down = True
        os.kill(os.getpid(), signal.SIGTERM)  # noted, not raised
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        stopper.restore(previous)
    assert (
        "SIGTERM: still shutting down" in out.getvalue() and "SIGINT: still shutting down" in out.getvalue()
    )
    assert signal.getsignal(signal.SIGTERM) == previous[int(signal.SIGTERM)]
