"""Live progress of ``podcap get`` on stderr: bytes, rate and time left for the pod being downloaded and for the
whole download, with rich (as ``start --wait`` shows its capture table).

Only when stderr is a terminal: piped or redirected, ``get`` stays quiet (its stdout may be the merged pcapng, and
a log file wants no progress bars). The collector announces each pod's file with its exact size, so the pod's
line knows its end; the total is known before the download starts when the capture's status gives every pod's
stored size (no ``--since/--until/--filter``); otherwise the total line shows bytes and rate, and no time left.
A pod's line goes away when the pod is complete (a capture may have hundreds); the total line counts the pods.
``get --merge`` downloads its pods side by side (``pod_streams``): then each of them has its line meanwhile.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from podcap.collector.cli.get.download import DownloadedFile
from podcap.collector.cli.terminal import console as make_console
from podcap.units import human_bytes
from podcap.v1 import common_pb2


def stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or replaced by something without a descriptor
        return False


class DownloadProgress:
    """A ``DownloadObserver`` drawing the progress (a context manager: the display lives inside ``with``).

    ``total_bytes``/``pods``: what will be fetched, when known (None: unknown). ``console`` is for tests; by
    default stderr, and nothing at all is drawn unless stderr is a terminal.
    """

    def __init__(self, *, total_bytes: int | None, pods: int | None, note: str = "",
                 console: Console | None = None) -> None:
        self.enabled = console is not None or stderr_is_terminal()
        self._pods_total = pods
        self._pods_done = 0
        self._note = note
        self._progress = Progress(
            TextColumn("{task.description}", justify="left", markup=False), BarColumn(),
            SizeColumn(), RateColumn(), TimeRemainingColumn(),
            console=console or make_console(stderr=True),
            refresh_per_second=4, disable=not self.enabled)
        self._total: TaskID | None = None
        self._total_bytes = total_bytes
        self._pods: dict[tuple[str, str, str], TaskID] = {}

    def __enter__(self) -> DownloadProgress:
        if self.enabled:
            self._progress.start()
            self._total = self._progress.add_task(self._total_text(), total=self._total_bytes)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self._progress.stop()

    def _total_text(self) -> str:
        of = f"/{self._pods_total}" if self._pods_total is not None else ""
        return f"all ({self._pods_done}{of} pods{self._note})"

    def file_started(self, pod: common_pb2.Pod, size: int) -> None:
        if self.enabled:
            self._pods[_key(pod)] = self._progress.add_task(f"{pod.namespace}/{pod.name}", total=size)

    def received(self, pod: common_pb2.Pod, n: int) -> None:
        if not self.enabled:
            return
        task = self._pods.get(_key(pod))
        if task is not None:
            self._progress.advance(task, n)
        if self._total is not None:
            self._progress.advance(self._total, n)

    def file_done(self, done: DownloadedFile) -> None:
        if not self.enabled:
            return
        self._pods_done += 1
        task = self._pods.pop(_key(done.pod), None)
        if task is not None:
            self._progress.remove_task(task)
        if self._total is not None:
            self._progress.update(self._total, description=self._total_text())


class SizeColumn(ProgressColumn):
    """Bytes so far (of the total, when known), as every other size the CLI prints (``340.8 KiB/1.0 MiB``)."""

    def render(self, task: Task) -> Text:
        done = human_bytes(int(task.completed))
        return Text(f"{done}/{human_bytes(int(task.total))}" if task.total is not None else done,
                    style="progress.download")


class RateColumn(ProgressColumn):
    """The transfer rate in the units of every other size the CLI prints (``12.3 MiB/s``; rich's own
    ``TransferSpeedColumn`` says MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{human_bytes(int(speed))}/s", style="progress.data.speed")


def _key(pod: common_pb2.Pod) -> tuple[str, str, str]:
    return pod.uid, pod.namespace, pod.name
