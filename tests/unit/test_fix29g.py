"""Fixes of review rev29g (tests/unit/test_hostile_rev29g.py): `pickapic build` stops cleanly at a SIGTERM (and a
SIGHUP) wherever it comes, a SIGTERM as a Dagster run returns says "terminated", and a terminal's Ctrl-C in a step
is not echoed by Dagster's compute-log babysitters.

The review's own tests run the real build for SIGTERM and Ctrl-C; here: ``build.signals_seen`` as Dagster leaves the
handlers, the CLI's handlers for the command (in a child process: they are sent to the process itself), the
babysitters' signal mask, and the real build for a SIGHUP as a run returns and between two runs.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project.build import BuildInterrupted, signals_seen
from tests.conftest import default_signals
from tests.fast_tmp import fast_folder
from tests.unit.test_hostile_rev29g import HOOK, _build

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PICKAPIC_FAULT", "PICKAPIC_HOME", "DAGSTER_HOME")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _handlers() -> dict[int, object]:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def _spin() -> None:
    """Run bytecode until a signal's Python handler raises (it runs at the next bytecode boundary)."""
    for _ in range(10 ** 8):
        pass
    pytest.fail("the signal's handler never ran")


def test_a_sigterm_as_dagster_put_sigints_handler_back_is_a_sigterm() -> None:
    """As a run returns, Dagster has put SIGINT's handler (a KeyboardInterrupt) on SIGTERM too: the plain
    KeyboardInterrupt a SIGTERM raises there leaves signals_seen as the SIGTERM it was."""
    before = _handlers()
    stop: BaseException | None = None
    try:   # caught here, whatever it is: a plain KeyboardInterrupt would end pytest's session
        with signals_seen():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.default_int_handler)   # what capture_interrupts leaves
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()
    except KeyboardInterrupt as raised:
        stop = raised
    restored = _handlers()
    for sig, handler in before.items():
        signal.signal(sig, handler)
    assert isinstance(stop, BuildInterrupted) and stop.signum == signal.SIGTERM, repr(stop)
    assert restored == before


def test_a_keyboard_interrupt_no_signal_raised_is_left_as_it_is() -> None:
    with pytest.raises(KeyboardInterrupt) as stop, signals_seen():
        raise KeyboardInterrupt("raised by code")
    assert type(stop.value) is KeyboardInterrupt and str(stop.value) == "raised by code"


def test_the_signal_that_came_first_is_the_one_seen() -> None:
    before = _handlers()
    with signals_seen() as stopped:
        recorded: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: recorded.append(signum))   # Dagster's recording handler
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
            while sig not in recorded:
                pass
        assert stopped() == signal.SIGTERM
    assert _handlers() == before


def test_a_hangup_in_a_run_goes_to_sigints_handler_of_the_moment() -> None:
    """Where the command handles SIGHUP (the CLI's handler), a run hands it to SIGINT's handler (Dagster's during a
    run) and the watch says SIGHUP; under nohup (SIG_IGN) it stays ignored."""
    before = _handlers()

    def commands_own(signum, frame):
        pytest.fail("the command's SIGHUP handler ran inside a Dagster run")

    try:
        signal.signal(signal.SIGHUP, commands_own)
        with signals_seen() as stopped:
            recorded: list[int] = []
            signal.signal(signal.SIGINT, lambda signum, frame: recorded.append(signum))
            os.kill(os.getpid(), signal.SIGHUP)
            while not recorded:
                pass
            assert recorded == [signal.SIGINT] and stopped() == signal.SIGHUP
            signal.signal(signal.SIGINT, signal.default_int_handler)      # Dagster's run over: a KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGHUP)
                _spin()
        assert signal.getsignal(signal.SIGHUP) is commands_own
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with signals_seen():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])
    assert _handlers() == before


# `pickapic build` whose command body sends the process SIGNAL (after printing the handlers it runs under); the
# handlers after main returns are printed too
CLI_SIGNALLED = r"""
import os, signal, sys
from dagster_project import cli
sig = os.environ["FIX29G_SIG"]
if os.environ.get("FIX29G_IGNORE"):
    signal.signal(getattr(signal, os.environ["FIX29G_IGNORE"]), signal.SIG_IGN)
def body(args):
    print("during", [signal.getsignal(s) == cli._terminate for s in (signal.SIGTERM, signal.SIGHUP)], flush=True)
    if sig != "none":
        os.kill(os.getpid(), getattr(signal, sig))
        for _ in range(10 ** 8):
            pass
    return 0
cli._cmd_build = body
code = cli.main(["build", "--home", "/nonexistent-fix29g"])
print("after", [signal.Handlers(signal.getsignal(s)).name for s in (signal.SIGTERM, signal.SIGHUP)], code, flush=True)
"""


@pytest.mark.parametrize("sig, ignore, code, line", [
    ("SIGTERM", "", 143, "terminated"),
    ("SIGHUP", "", 129, "hung up"),
    ("none", "", 0, None),
    ("none", "SIGHUP", 0, None),
])
def test_build_command_ends_at_sigterm_and_sighup_with_its_line(sig: str, ignore: str, code: int,
                                                                line: str | None) -> None:
    env = {**_env(), "FIX29G_SIG": sig, "FIX29G_IGNORE": ignore}
    proc = subprocess.run([sys.executable, "-c", CLI_SIGNALLED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False, preexec_fn=default_signals)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"during [True, {not ignore}]", proc.stdout
    # the handlers are the default again once the command is over (an ignored one stays ignored)
    hup = "SIG_IGN" if ignore else "SIG_DFL"
    assert lines[1] == f"after ['SIG_DFL', '{hup}'] {code}", proc.stdout
    assert proc.stderr.strip() == (line or ""), proc.stderr


def _sigint_blocked(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        blocked = next(int(row.split()[1], 16) for row in status if row.startswith("SigBlk:"))
    return bool(blocked & (1 << (signal.SIGINT - 1)))


@pytest.mark.parametrize("deaf", [True, False])
def test_dagsters_step_helpers_start_with_sigint_blocked(tmp_path: Path, deaf: bool) -> None:
    """The compute-log tail and its babysitter Dagster starts for a step have SIGINT blocked (a terminal's Ctrl-C
    reaches the whole process group: the babysitter printed a KeyboardInterrupt traceback), and only while the build
    runs its Dagster runs; the build's own thread has it unblocked again."""
    from dagster._core.execution import compute_logs

    from dagster_project.build import _helpers_deaf_to_ctrl_c

    original = compute_logs.execute_posix_tail
    log = tmp_path / "step.log"
    log.write_text("")
    # (the patched function is looked up once the first context is entered)
    with _helpers_deaf_to_ctrl_c() if deaf else contextlib.nullcontext(), \
            compute_logs.execute_posix_tail(str(log), None) as (tail, watcher):
        assert _sigint_blocked(tail) is deaf and _sigint_blocked(watcher) is deaf
        assert not _sigint_blocked(os.getpid())
    assert compute_logs.execute_posix_tail is original
    for pid in (tail, watcher):
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)   # Dagster reaped both


@pytest.mark.parametrize("at", ["returned", "between"])
def test_sighup_in_a_build_says_hung_up(tmp_path: Path, at: str) -> None:
    """A hangup (the terminal closed) as a Dagster run returns or between two runs: the build stops there, says
    "hung up" and exits 129, nothing published, as for SIGTERM."""
    with fast_folder(tmp_path) as folder:
        sent = folder / "sent"
        home, code, output = _build(folder, HOOK, REV29G_SIG="SIGHUP", REV29G_AT=at, REV29G_SENT=str(sent))
        assert sent.read_text() == "sent", "the hook never signalled the build"
        assert code == 128 + signal.SIGHUP, f"exit {code}:\n{output[-3000:]}"
        assert output.rstrip().splitlines()[-1:] == ["hung up"] and "Traceback" not in output, output[-3000:]
        assert "built" not in output and not os.path.lexists(home.datasets / "latest"), output[-3000:]
