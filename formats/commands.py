"""Running a command-line entry point the way every ``pickapic`` command and ``python -m`` stage module ends.

* An ordinary mistake (a day typed wrong, a missing input, a refused path, a full disk) is one error on stderr,
  ``PROG: error: ...``, and exit 1, without a traceback (:func:`run_command`, :data:`KNOWN_ERRORS`); anything
  else is a bug and keeps its traceback, a RuntimeError the interpreter raised included (``RecursionError``,
  ``NotImplementedError``, ``dictionary changed size during iteration``: :func:`known_error`), in a worker
  process too, and a failed ``assert`` or a bare ``raise`` with nothing to re-raise (review rev25k).
* A reader that stops early (``| head``, ``| less`` quit) ends the command quietly, exit 0: stdout's pipe closed
  under a write, or under the last flush, is not an error (:func:`stdout_closed`, :func:`quiet_stdout`). stdout
  is then pointed at ``/dev/null``, the recipe of Python's ``signal`` documentation (note on SIGPIPE), so the
  interpreter's own final flush does not print ``Exception ignored ... BrokenPipeError``.
"""
from __future__ import annotations

import errno
import os
import select
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# what a stage refuses or finds wrong (a missing input, a bad value, a path it will not write, a damaged file):
# one error naming what and where; anything else is a bug and keeps its traceback
KNOWN_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, RuntimeError, PermissionError)
# RuntimeErrors that only the interpreter raises, always a bug (review rev25h): never one line
INTERPRETER_ERRORS = (RecursionError, NotImplementedError)


# the project's own packages (pyproject.toml's packages), its code wherever it is installed (site-packages too)
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_PROJECT_DIRS = tuple(os.path.join(_PROJECT_ROOT, name) + os.sep for name in (
    "dagster_project", "formats", "pipelines", "schemas", "sql", "data_contracts", "training", "simulator"))


def _library_file(filename: str) -> bool:
    """Whether a code object's file is the standard library's or an installed package's (concurrent.futures,
    multiprocessing, Beam's runner), not the project's: a ``raise`` there re-raises what went wrong elsewhere,
    it decides nothing."""
    if not filename or filename.startswith("<"):
        return False
    if os.path.isabs(filename) and os.path.realpath(filename).startswith(_PROJECT_DIRS):
        return False
    if not os.path.isabs(filename):      # a compiled package names its files relative (apache_beam/runners/...)
        module = sys.modules.get(filename.split("/", 1)[0].split(".", 1)[0])
        filename = getattr(module, "__file__", None) or ""
        if not filename:
            return False
    if "site-packages" in filename or "dist-packages" in filename:
        return True
    import sysconfig

    path = os.path.realpath(filename)
    roots = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(root and path.startswith(os.path.realpath(root) + os.sep) for root in roots)


def _origin(exc: BaseException) -> BaseException:
    """The exception first raised where ``exc``'s traceback ends: an exception built in an ``except`` block and
    given the caught one's traceback (Beam's ``RuntimeError('AssertionError [while running ...]')``) was not
    raised at that frame; the one it replaced was."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen or _innermost(inner) is None \
                or _innermost(inner) != _innermost(exc):
            return exc
        seen.add(id(inner))
        exc = inner


def _innermost(exc: BaseException) -> tuple[object, int] | None:
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame, tb.tb_lasti


def _remote_raise(text: str) -> bool:
    """Whether a worker process's traceback text (concurrent.futures' / multiprocessing's RemoteTraceback) ends at
    a ``raise EXC`` statement of code outside the standard library and the installed packages."""
    import re

    frames = re.findall(r'^  File "([^"\n]*)", line \d+, in [^\n]*\n(?:    ([^\n]*)\n)?', text, re.MULTILINE)
    if not frames:
        return False
    filename, source = frames[-1]
    statement = source.strip()
    return statement.startswith("raise ") and not statement.startswith("raise AssertionError") \
        and not _library_file(filename)


def raised_by_a_raise(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a ``raise EXC`` statement of the project's code (Python code that chose to
    raise it), not from inside the interpreter or a C extension (``dictionary changed size during iteration`` at a
    ``for``, a generator's ``StopIteration`` turned RuntimeError, a bare ``raise`` with no exception being
    handled), nor an ``assert``. Read from the instruction its traceback stopped at, of the exception first raised
    there (:func:`_origin`). An exception from a worker process (its ``__cause__`` a RemoteTraceback) is read from
    the worker's traceback text; one whose traceback ends in the standard library or an installed package (a
    re-raise: ``raise self._exception``) is not the project's (review rev25k)."""
    import dis

    remote = exc.__cause__
    if type(remote).__name__ in ("_RemoteTraceback", "RemoteTraceback") and isinstance(getattr(remote, "tb", None), str):
        return _remote_raise(remote.tb)
    origin = _origin(exc)
    if isinstance(origin, AssertionError):
        return False
    tb = origin.__traceback__
    if tb is None:
        return True      # never raised (built and handed over): nothing says it is the interpreter's
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if _library_file(code.co_filename):
        return False
    try:
        instructions = list(dis.get_instructions(code))
    except (TypeError, ValueError):
        return False
    for i, ins in enumerate(instructions):
        if ins.offset == tb.tb_lasti:
            if ins.opname == "RERAISE":
                return True
            if ins.opname != "RAISE_VARARGS" or ins.arg == 0:      # a bare raise with nothing to re-raise
                return False
            # an assert: LOAD_ASSERTION_ERROR before its raise, only the message's code between
            for prev in reversed(instructions[:i]):
                if prev.opname == "LOAD_ASSERTION_ERROR":
                    return False
                if prev.opname in ("RAISE_VARARGS", "RERAISE", "RETURN_VALUE") or "JUMP" in prev.opname \
                        or prev.is_jump_target:
                    break
            return True
    return False


def known_error(exc: BaseException) -> bool:
    """An ordinary mistake (one line, no traceback): one of :data:`KNOWN_ERRORS`, except a RuntimeError the
    interpreter raised (:data:`INTERPRETER_ERRORS`, or a plain RuntimeError not raised by a ``raise`` statement of
    the project's code, :func:`raised_by_a_raise`), and except what an ``assert`` raised, whoever wrapped it:
    those are bugs, and keep their traceback."""
    if not isinstance(exc, KNOWN_ERRORS) or isinstance(exc, INTERPRETER_ERRORS):
        return False
    if isinstance(exc, RuntimeError) and not isinstance(exc, (ValueError, OSError)):
        return raised_by_a_raise(exc)
    return True


def stdout_closed() -> bool:
    """True when stdout is a pipe (or socket) whose reader has gone: a BrokenPipeError was stdout's, not
    another pipe's (a child process, a socket), which would be a failure to report."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def quiet_stdout() -> None:
    """Point stdout's descriptor at ``/dev/null``: what is still buffered, and anything written later, is dropped
    without another BrokenPipeError (nor the interpreter's ``Exception ignored`` at exit)."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def flush_stdout() -> None:
    """Flush stdout now, while a closed pipe can still be answered (a BrokenPipeError propagates)."""
    if sys.stdout is not None:
        sys.stdout.flush()


def answer_closed_stdout() -> None:
    """Called in an ``except BrokenPipeError:`` block: re-raise it unless it was stdout's reader that went away
    (:func:`stdout_closed`); then point stdout at ``/dev/null`` (:func:`quiet_stdout`) so nothing more fails."""
    if not stdout_closed():
        raise
    quiet_stdout()


def progress_line(message: str) -> None:
    """Print one progress line to stdout now. A reader gone (``| head -1``, a log pipe closed) drops this line and
    the later ones (stdout pointed at ``/dev/null``) and the work goes on: progress is not what a stage is run for,
    and a closed stdout must never turn unfinished work into success (review rev25h: the features stage stopped
    at its first progress line and exited 0 with nothing written)."""
    try:
        print(message, flush=True)
    except BrokenPipeError:
        answer_closed_stdout()


def error_message(exc: BaseException, where: Sequence[Path] = (), databases: Path | None = None,
                  redact: bool = False) -> str | None:
    """The one-line error an ordinary mistake is reported as, or None for a bug (keeps its traceback). ``where`` and
    ``databases``: the folders a full disk is looked for in (:func:`formats.files.no_space_message`); ``redact``:
    a URL's credential the error quotes is hidden (:func:`formats.text.redact_credentials`, as ``pickapic`` does)."""
    from formats.files import no_space_message
    from formats.text import redact_credentials, terminal_text

    full = no_space_message(exc, where, databases=databases)
    too_long = isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG   # a path given that no file can have
    if full is None and not too_long and not known_error(exc):
        return None
    # an error may quote what it refused (a table row, a file name): shown, never acting on the terminal
    text = str(full or exc)
    return terminal_text(redact_credentials(text) if redact else text, keep="\n")


def run_command(prog: str, main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """``main(argv)`` as a command's exit status: its own int status (anything else is 0); 1 and ``PROG: error:
    ...`` on stderr for an ordinary mistake (:func:`error_message`); 130 for Ctrl-C; a closed stdout ends it
    quietly with the status it had (0 if it was cut short). argparse's own exits pass through."""
    code: int | None = None
    try:
        outcome = main(argv)
        code = outcome if isinstance(outcome, int) and not isinstance(outcome, bool) else 0
        flush_stdout()
        return code
    except BrokenPipeError:
        answer_closed_stdout()
        return code or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = error_message(exc, redact=True)   # never a URL's credential the error quotes
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
