"""Convert a batch in worker processes forked after start-up (both cores, no GIL contention).

``run_forked(count, processes, convert_one, on_result)`` forks ``processes`` children that
share the parent's imported modules, options and job list (copy-on-write; nothing is
pickled). The parent puts the job indices into one pipe (a work queue: each child takes
the next index when it is free, so a slow file does not hold up a fixed share), and each
child sends back, per job, ``convert_one(index)``'s result (a tuple of str/None/int) over
its own pipe, framed with ``marshal``.

Results are handed to ``on_result(index, result)`` in index order, exactly as a
sequential loop would, whatever child converted which file. A child that dies while
converting (a signal, a crash inside a decoder) costs only the file it was on, reported as
``ChildDied``; the others go on. An exception in ``convert_one`` that is not one of the
expected refusals is re-raised in the parent as ``WorkerError`` with the child's traceback.

POSIX only (``os.fork``); the caller falls back to threads elsewhere. Fork before starting
any thread: the parent here starts none but the queue feeder, after the fork.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import select
import signal
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_INDEX = struct.Struct("<I")
_LENGTH = struct.Struct("<I")
_TAKEN, _DONE, _BUG = 0, 1, 2


class WorkerError(RuntimeError):
    """``convert_one`` raised something unexpected in a worker (a bug): its traceback."""


class ChildDied(Exception):
    """The worker process converting this job died (e.g. killed by a signal)."""


def available() -> bool:
    """True where worker processes can be forked (POSIX)."""
    return hasattr(os, "fork") and sys.platform != "win32"


def run_forked(
    count: int,
    processes: int,
    convert_one: Callable[[int], Any],
    on_result: Callable[[int, Any | ChildDied], None],
) -> None:
    """Run ``convert_one(i)`` for ``i`` in ``range(count)`` in ``processes`` children."""
    work_r, work_w = os.pipe()
    children: dict[int, int] = {}  # result pipe fd -> pid
    try:
        for _ in range(max(1, min(processes, count))):
            res_r, res_w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                os.close(res_r)
                os.close(work_w)
                for fd in children:
                    os.close(fd)
                _child(work_r, res_w, convert_one)
            os.close(res_w)
            children[res_r] = pid
    except BaseException:
        os.close(work_w)
        _reap(children, kill=True)
        raise
    os.close(work_r)
    feeder = threading.Thread(target=_feed, args=(work_w, count), daemon=True)
    feeder.start()
    try:
        _collect(children, count, on_result)
    except BaseException:
        _reap(children, kill=True)
        raise
    finally:
        feeder.join(timeout=5)
    _reap(children, kill=False)


def _feed(work_w: int, count: int) -> None:
    """Put every index into the work queue (4-byte writes are atomic), then close it."""
    try:
        for index in range(count):
            os.write(work_w, _INDEX.pack(index))
    except OSError:  # every child is gone (the parent is aborting): nothing to feed
        pass
    finally:
        os.close(work_w)


def _child(work_r: int, res_w: int, convert_one: Callable[[int], Any]) -> None:
    code = 0
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent cleans up
        while True:
            raw = os.read(work_r, _INDEX.size)
            if len(raw) < _INDEX.size:
                break  # queue closed and empty
            (index,) = _INDEX.unpack(raw)
            _send(res_w, (_TAKEN, index, None))
            try:
                result = convert_one(index)
            except Exception:  # noqa: BLE001 - a bug: the parent re-raises it
                import traceback  # only now: it costs ~4 ms of start-up

                _send(res_w, (_BUG, index, traceback.format_exc()))
                code = 1
                break
            _send(res_w, (_DONE, index, result))
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        code = 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()  # flush log handlers (os._exit does not)
            sys.stderr.flush()
        os._exit(code)


def _send(fd: int, message: tuple[int, int, Any]) -> None:
    data = marshal.dumps(message)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _collect(
    children: dict[int, int], count: int, on_result: Callable[[int, Any | ChildDied], None]
) -> None:
    buffers = {fd: bytearray() for fd in children}
    taken: dict[int, int | None] = dict.fromkeys(children)  # fd -> index being converted
    ready: dict[int, Any] = {}
    ended = "the worker processes ended"
    next_index = 0
    open_fds = set(children)
    while open_fds:
        readable, _, _ = select.select(list(open_fds), [], [])
        for fd in readable:
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the child has exited (its pipe is closed by _reap)
                open_fds.discard(fd)
                lost = taken[fd]
                if lost is not None:  # died in the middle of a job
                    ended = _exit_status(children[fd])
                    ready[lost] = ChildDied(ended)
                continue
            buf = buffers[fd]
            buf += chunk
            while len(buf) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buf)
                if len(buf) < _LENGTH.size + length:
                    break
                kind, index, payload = marshal.loads(bytes(buf[4 : 4 + length]))
                del buf[: 4 + length]
                if kind == _TAKEN:
                    taken[fd] = index
                elif kind == _DONE:
                    taken[fd] = None
                    ready[index] = payload
                else:
                    raise WorkerError(f"converting job {index} failed in a worker:\n{payload}")
        while next_index in ready:
            on_result(next_index, ready.pop(next_index))
            next_index += 1
    if next_index != count:  # every child died with jobs left (e.g. all killed)
        raise WorkerError(
            f"no worker process left ({ended}): {count - next_index} of {count} files not converted"
        )


def _exit_status(pid: int) -> str:
    """How child ``pid`` ended (it has closed its pipe, so it is exiting)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "the worker process ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"the worker process was killed by {signal.Signals(sig).name}"
        return f"the worker process was killed by signal {sig}"
    return f"the worker process exited with status {os.WEXITSTATUS(status)}"


def _reap(children: dict[int, int], kill: bool) -> None:
    for fd, pid in children.items():
        with contextlib.suppress(OSError):
            os.close(fd)
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
