"""The kernel log as a second witness of GPU faults.

NVML's event set misses faults when the GPU is already gone or the agent was down; the NVIDIA
kernel driver still writes ``NVRM: Xid ...`` lines. :func:`parse_kmsg_line` turns one line into
an :class:`~agent.sample.XidEvent` or :class:`~agent.sample.BusFault`, and
:class:`KmsgFollower` tails ``/dev/kmsg`` (or a plain log file) on a daemon thread.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from agent.sample import BusFault, XidEvent
from gpuwarden_common import logs

log = structlog.get_logger(__name__)

KernelFault = XidEvent | BusFault

# domain:bus:device[.function], in the kernel's "0000:3b:00" or NVML's "00000000:3B:00.0" form
_PCI = r"(?:PCI:)?(?P<pci>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2}(?:\.[0-7])?)"
_PCI_RE = re.compile(rf"^{_PCI}$")
_XID_RE = re.compile(rf"NVRM: Xid \({_PCI}\): (?P<xid>\d+)(?P<rest>.*)$")
# The kernel repeats a fallen-off-the-bus GPU without an XID, e.g. after the XID 79 line or
# when the driver notices it first: "NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus."
_BUS_RE = re.compile(rf"NVRM: GPU (?:at )?{_PCI}:.*fallen off the bus", re.IGNORECASE)
_NVRM = "NVRM: "


def pci_key(bus_id: str) -> str | None:
    """``"0000:3b:00"`` for any spelling of a PCI address, so kernel and NVML ids compare.

    The function number is dropped: the kernel's XID line names the device, not a function.
    None when ``bus_id`` is not a PCI address.
    """
    match = _PCI_RE.match(bus_id.strip())
    if match is None:
        return None
    domain, bus, device = match.group("pci").split(".")[0].split(":")
    return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(device, 16):02x}"


def parse_kmsg_line(line: str, now: float) -> KernelFault | None:
    """One kernel-log line -> the fault it reports, or None.

    Accepts the bare message, a ``/dev/kmsg`` record (``6,1234,5678,-;NVRM: ...``), a ``dmesg``
    line (``[ 123.456] NVRM: ...``) and ``journalctl -k`` lines. ``gpu_index`` is left None:
    the caller resolves the PCI id. ``now`` becomes the event time, since the kernel's own
    timestamps count from boot.
    """
    start = line.find(_NVRM)
    if start < 0:
        return None
    message = line[start:].rstrip("\r\n")
    text = message[len(_NVRM) :]
    xid = _XID_RE.search(message)
    if xid is not None:
        code = int(xid.group("xid"))
        if code == 0:
            return None
        return XidEvent(
            xid=code,
            ts=now,
            source="kmsg",
            gpu_index=None,
            pci_bus_id=pci_key(xid.group("pci")),
            text=text,
        )
    bus = _BUS_RE.search(message)
    if bus is not None:
        return BusFault(ts=now, pci_bus_id=pci_key(bus.group("pci")), gpu_index=None, text=text)
    return None


class _LineSource(Protocol):
    def lines(self, timeout_s: float) -> list[str]:
        """New lines, waiting at most ``timeout_s`` for some."""
        ...

    def close(self) -> None: ...


# Records are at most a few KiB (message plus dictionary); a short buffer gives EINVAL.
_KMSG_RECORD_MAX = 16 * 1024


class KmsgRecords:
    """``/dev/kmsg``: one ``read`` returns one record; old records are skipped at open."""

    def __init__(self, fd: int, read: Callable[[int, int], bytes] = os.read) -> None:
        self._fd = fd
        self._read = read

    @classmethod
    def open(cls, path: str) -> KmsgRecords:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            # SEEK_END on /dev/kmsg means "after the newest record": history is not news.
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            raise
        return cls(fd)

    def lines(self, timeout_s: float) -> list[str]:
        readable, _, _ = select.select([self._fd], [], [], timeout_s)
        if not readable:
            return []
        out: list[str] = []
        while True:
            try:
                record = self._read(self._fd, _KMSG_RECORD_MAX)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    # the ring buffer overwrote records we had not read yet; the next read
                    # continues from the oldest record still there
                    log.warning("kmsg_overrun", detail="kernel ring buffer overran the reader")
                    continue
                raise
            if not record:
                return out
            # continuation lines of a record (" SUBSYSTEM=pci") carry no message
            out.append(record.decode("utf-8", "replace").split("\n", 1)[0])

    def close(self) -> None:
        os.close(self._fd)


class FollowedFile:
    """A regular file that grows (``journalctl -k -f > file``): start at its end, poll."""

    def __init__(self, path: str, wait: Callable[[float], object]) -> None:
        self._path = path
        self._wait = wait
        self._file = open(path, "rb")  # noqa: SIM115 - held open across polls, closed in close()
        self._file.seek(0, os.SEEK_END)
        self._inode = os.fstat(self._file.fileno()).st_ino
        self._partial = b""

    def lines(self, timeout_s: float) -> list[str]:
        chunk = self._file.read()
        if not chunk:
            self._follow_rotation()
            self._wait(timeout_s)
            return []
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        return [raw.decode("utf-8", "replace") for raw in complete]

    def _follow_rotation(self) -> None:
        try:
            current = os.stat(self._path)
        except OSError:
            return  # rotated away and not yet recreated: keep the old file until it is
        if current.st_ino != self._inode:
            self._file.close()
            self._file = open(self._path, "rb")  # noqa: SIM115
            self._inode = current.st_ino
            self._partial = b""
        elif current.st_size < self._file.tell():
            self._file.seek(0)  # truncated in place (copytruncate)
            self._partial = b""

    def close(self) -> None:
        self._file.close()


class KmsgFollower:
    """Follows the kernel log on a daemon thread and reports NVIDIA faults through ``on_fault``.

    ``pci_to_index`` maps a PCI key (see :func:`pci_key`) to a GPU index, or None when no known
    GPU sits there. A path that cannot be opened logs one warning and leaves the follower off.
    """

    def __init__(
        self,
        on_fault: Callable[[KernelFault], None],
        pci_to_index: Callable[[str], int | None],
        path: str = "/dev/kmsg",
        *,
        poll_interval_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._on_fault = on_fault
        self._pci_to_index = pci_to_index
        self._path = path
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Open the log and start following it; False (after one warning) if it cannot."""
        try:
            source = self._open()
        except OSError as exc:
            log.warning(
                "kmsg_unavailable",
                path=self._path,
                error=str(exc),
                hint="XIDs are still caught through NVML events; mount /dev/kmsg to add "
                "the kernel log as a source",
            )
            return False
        self._stop.clear()
        self._thread = threading.Thread(
            target=logs.in_this_context(self._run), args=(source,), name="kmsg-follower",
            daemon=True,
        )
        self._thread.start()
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _open(self) -> _LineSource:
        if stat.S_ISCHR(os.stat(self._path).st_mode):
            return KmsgRecords.open(self._path)
        return FollowedFile(self._path, self._stop.wait)

    def _run(self, source: _LineSource) -> None:
        try:
            while not self._stop.is_set():
                try:
                    lines = source.lines(self._poll_interval_s)
                except OSError as exc:
                    # e.g. a container that may open /dev/kmsg but not read it: say so once
                    log.warning("kmsg_read_failed", path=self._path, error=str(exc))
                    return
                for line in lines:
                    self._handle(line)
        finally:
            source.close()

    def _handle(self, line: str) -> None:
        fault = parse_kmsg_line(line, self._clock())
        if fault is None:
            return
        try:
            if fault.pci_bus_id is not None:
                index = self._pci_to_index(fault.pci_bus_id)
                fault = dataclasses.replace(fault, gpu_index=index)
            self._on_fault(fault)
        except Exception:
            # a broken consumer must not silence the kernel log for the rest of the run
            log.exception("kmsg_callback_failed", fault=repr(fault))
