"""The CLI's signal handling."""

from __future__ import annotations

import gc
import signal
import sys
import time
import weakref

from dmesr import cli


def test_a_sigterm_dropped_inside_a_weakref_callback_is_delivered_again():
    """When the handler's exception is raised inside a weakref callback, Python only prints
    it; the CLI's unraisable hook must deliver the signal again, or `kill` is lost."""
    got: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    hook = sys.unraisablehook
    sys.unraisablehook = cli._redeliver_interrupts
    try:
        class Item:
            pass

        def callback(ref: object) -> None:  # as if the signal handler had run here
            raise cli.Terminated("signal 15")

        item = Item()
        ref = weakref.ref(item, callback)
        del item
        gc.collect()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [signal.SIGTERM] and ref() is None
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGTERM, before)


def test_other_unraisable_exceptions_still_reach_the_default_hook(capsys):
    hook = sys.unraisablehook
    sys.unraisablehook = cli._redeliver_interrupts
    try:
        class Item:
            pass

        def callback(ref: object) -> None:
            raise ValueError("boom")

        item = Item()
        ref = weakref.ref(item, callback)
        del item
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert ref() is None and "ValueError: boom" in capsys.readouterr().err
