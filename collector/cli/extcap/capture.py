"""``podcap-extcap --capture``: one podcap capture, live into Wireshark's fifo, stopped when Wireshark stops.

The capture is an ordinary one: ``StartCapture`` (same authorization, audit and storage as ``podcap start``),
then ``Follow`` of its packets, written to the fifo as pcapng (``extcap_stream``). It ends in one of three ways:

- Wireshark stops: SIGTERM (what dumpcap sends), SIGINT, or the fifo's reader goes away (noticed by a watcher
  thread even while no packet flows, or by a failed write). The capture is stopped — unless the user chose to keep
  it, then it runs on and is stored as any other capture.
- The capture ends by itself (someone ran ``podcap stop``, a limit): the stream ends and so does Wireshark's
  capture.
- A failure: one line on stderr — the same text the ``podcap`` CLI prints for it — and exit status 1, which
  Wireshark shows in its error dialog (tshark: "Error by extcap pipe"). dumpcap waits until the extcap opens the
  fifo before it looks at the extcap at all, so the fifo is opened first, whatever happened; that open gives up
  after ``FIFO_OPEN_TIMEOUT_S`` so that nothing waits forever for a reader that is gone.

Signals are held back while a start or a stop is on the wire (``StopSignals``): a stop that arrives during the
start then stops the capture the start made instead of orphaning it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import IO

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.errors import one_line
from podcap.collector.cli.extcap.options import (
    CaptureOptions,
    CollectorSettings,
    start_request,
    wireshark_hint,
)
from podcap.collector.cli.live.order import TICK_S, ticking
from podcap.collector.cli.live.stream import PcapngStream
from podcap.errors import PodcapError
from podcap.tls import TlsFiles
from podcap.v1 import control_pb2

FIFO_OPEN_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WiresharkStoppedError(BaseException):
    """Wireshark stopped the capture (a signal, or the fifo's reader went away). Not an error: a BaseException so
    that no ``except Exception`` on the way swallows it."""


def client_for(settings: CollectorSettings, *, timeout: float) -> CollectorClient:
    """A client with these settings. Raises ExtcapOptionError (an unreadable token file)."""
    return CollectorClient(settings.address, timeout=timeout, tls=TlsFiles(ca=settings.tls_ca) if settings.tls_ca
                           else None, token=settings.bearer_token())


class StopSignals:
    """SIGTERM and SIGINT as ``WiresharkStoppedError`` in the main thread — except while ``held``: a signal that
    arrives while a start or a stop is on the wire is only noted (``pending``), so that the capture the start made
    is known and stopped instead of orphaned. (A flag, not ``pthread_sigmask``: the signal may be delivered to
    one of gRPC's threads, which the main thread's mask does not cover, and Python runs the handler anyway.)"""

    def __init__(self) -> None:
        self._held = 0
        self.pending = ""

    def install(self) -> dict[int, object]:
        return {s: signal.signal(s, self._handle) for s in _STOP_SIGNALS}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._held:
            self.pending = name
            return
        raise WiresharkStoppedError(name)

    @contextmanager
    def held(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def raise_pending(self) -> None:
        if self.pending:
            raise WiresharkStoppedError(self.pending)


def open_fifo(path: str, timeout: float = FIFO_OPEN_TIMEOUT_S) -> int:
    """Open Wireshark's fifo (or a plain file, for use by hand) for writing; wait at most ``timeout`` for the
    reader. Raises OSError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CREAT, 0o600)
        except OSError as e:
            if e.errno == errno.ENXIO and time.monotonic() < deadline:  # a fifo without a reader (yet)
                time.sleep(0.05)
                continue
            raise
        os.set_blocking(fd, True)
        return fd


class ReaderWatch:
    """Notices that the fifo's reader went away while nothing is written (a pipe's write end reports POLLERR
    then), and stops the capture as a SIGTERM would: the main thread gets the signal."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            self._thread = threading.Thread(target=self._run, name="fifo-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, 0)  # POLLERR and POLLHUP are always reported
        while not self._done.is_set():
            if poller.poll(200):
                if not self._done.is_set():
                    os.kill(os.getpid(), signal.SIGTERM)
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1)


def failure_line(e: PodcapError) -> str:
    """The line for ``e`` in Wireshark's error dialog: the message ``podcap start`` prints, with what to do in
    Wireshark."""
    return "podcap: " + one_line(str(e), wireshark_hint(e))


class ExtcapCapture:
    """One run of ``--capture``."""

    def __init__(self, opts: CaptureOptions, fifo: str, capture_filter: str, *, stderr: IO[str] | None = None,
                 connect: Callable[[CollectorSettings], CollectorClient] | None = None) -> None:
        self.opts = opts
        # Where the collector client comes from (a fake in the unit tests).
        self.connect = connect or (lambda s: client_for(s, timeout=CALL_TIMEOUT_S))
        self.fifo = fifo
        self.capture_filter = capture_filter
        self.stderr = stderr or sys.stderr
        self.signals = StopSignals()
        self._fd: int | None = None

    def run(self) -> int:
        """The exit status for Wireshark: 0 when the capture ran and ended, 1 (with the line on stderr) on error."""
        previous = self.signals.install()
        try:
            return self._run()
        except WiresharkStoppedError:
            return 0  # stopped before anything started
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)  # type: ignore[arg-type]

    def _run(self) -> int:
        try:
            req = start_request(self.opts, self.capture_filter)
            with self.connect(self.opts.collector) as client:
                with self.signals.held():
                    status = client.start(req)
                try:
                    self._stream(client, status)
                except BaseException:
                    if not self.opts.keep:
                        self._stop_quietly(client, status.id)
                    raise
                if not self.opts.keep:
                    with self.signals.held():
                        client.stop(status.id)
        except PodcapError as e:
            return self._fail(failure_line(e))
        except OSError as e:
            return self._fail(f"podcap: cannot write to Wireshark's fifo {self.fifo}: {e.strerror}")
        finally:
            if self._fd is not None:
                os.close(self._fd)
        return 0

    def _stream(self, client: CollectorClient, status: control_pb2.CaptureStatus) -> None:
        """Follow the capture into the fifo until it ends or Wireshark stops."""
        out: IO[bytes] | None = None
        watch: ReaderWatch | None = None
        try:
            self.signals.raise_pending()  # Wireshark stopped while the start was on the wire
            self._fd = open_fifo(self.fifo)
            out = open(self._fd, "wb", buffering=1 << 16, closefd=False)  # noqa: SIM115 (closed below)
            watch = ReaderWatch(self._fd)
            stream = PcapngStream(out, status, one_copy=not self.opts.all_copies)
            try:
                for msg in ticking(client.follow(status.id), TICK_S):
                    if msg is None:
                        stream.tick()
                    else:
                        stream.write(msg)
            finally:
                try:
                    stream.finish()  # what the view still holds, also when Wireshark stops (it reads to the end)
                except OSError:
                    pass  # the reader is gone
                stream.close()
        except (WiresharkStoppedError, BrokenPipeError):
            pass  # Wireshark stopped: the normal end
        finally:
            if watch is not None:
                watch.close()
            if out is not None:
                try:
                    out.close()
                except OSError:
                    pass  # the reader is gone: what was buffered has nobody to go to

    def _stop_quietly(self, client: CollectorClient, capture_id: str) -> None:
        """Stop the capture on the way out of a failure (the failure is what gets reported)."""
        with self.signals.held():
            try:
                client.stop(capture_id)
            except CollectorError:
                pass

    def _fail(self, line: str) -> int:
        fd, self._fd = self._fd, None
        return report_failure(self.fifo, line, fd=fd, stderr=self.stderr)


def report_failure(fifo: str, line: str, *, fd: int | None = None, stderr: IO[str] | None = None) -> int:
    """Report a failure as Wireshark wants it: the fifo opened (dumpcap waits for that; ``fd`` if it already is),
    the line on stderr, exit status 1 (returned). Closes ``fd``.

    The fifo is closed empty on purpose: dumpcap then fails the capture, so tshark exits non-zero (with a section
    header in it the capture would "succeed" with no packets, exit status 0). Its price is a bare ``tshark:`` line
    before ours (dumpcap's own empty pipe error). A second bare ``tshark:`` line after every run, failed or not,
    is tshark 4.0's for any extcap (its Wireshark-made ``randpktdump`` prints it too): nothing an extcap can change.
    """
    if fd is None:
        try:
            fd = open_fifo(fifo)
        except OSError:
            pass  # no reader within the timeout, or it went away: the line goes to stderr all the same
    err = stderr or sys.stderr
    err.write(line + "\n")
    err.flush()
    if fd is not None:
        os.close(fd)
    return 1
