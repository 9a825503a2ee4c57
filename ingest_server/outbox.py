"""The webhook outbox: per URL, the events not yet delivered, in memory and on disk
(docs/webhooks.md "Outbox").

Layout, under the data dir's `.webhooks/`, one directory per URL (named by a hash of the
URL, so no credential in a URL ever becomes a file name):

    <key>/endpoint       scheme://host/path of the URL, for whoever looks (no query, no user)
    <key>/events.jsonl   one line per queued event: {"n": 17, "event": {...payload...}}
    <key>/acked          "n": every event up to and including n is settled

`n` numbers a URL's events in order and never goes back, so an acknowledgement names events
and not file offsets: compaction may rewrite events.jsonl at any time without touching
`acked`. Events and acknowledgements only ever move forward, in that order, which is what
makes the crash cases harmless:

- A line is *queued* once the flush that appended it returned (write + fsync). Every flush
  runs in the IO executor, never on the event loop, and one flush covers everything added
  since the previous one (group commit, like the journals'; docs/storage.md).
- `acked` is replaced (write + rename) without an fsync: losing it in a power cut re-sends
  events the receiver already has. That is at-least-once, which receivers dedupe by id.
- When a URL's queue is empty its events.jsonl is truncated after `acked` was written; a
  crash between the two leaves only lines at or below `acked`, which loading skips.
- A torn or garbled line (a crash mid-append, a bad disk block) is skipped with one log
  line and the file is rewritten from what was readable: start-up never fails on it.

Bounded: at most `limit` unsettled events per URL. Adding to a full queue drops the oldest
(counted, logged): a receiver that stays away costs the server bounded memory and disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"
ACKED = "acked"
ENDPOINT = "endpoint"
# Rewrite events.jsonl once it holds this many settled lines more than live ones: the file
# then stays within a small multiple of the live queue, and rewrites stay rare.
COMPACT_SLACK = 1000
FLUSH_RETRY = 1.0  # seconds between attempts to write the outbox after a disk error


def endpoint_label(url: str) -> str:
    """scheme://host[:port]/path: how a URL appears in logs, stats and on disk. Never the
    query (tokens travel there) nor user:password@."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Entry:
    n: int  # this URL's event number (see the module docstring)
    event_id: str
    body: bytes  # the payload exactly as signed and sent: the same bytes on every attempt

    def line(self) -> bytes:
        # The body is embedded as parsed JSON (readable with jq), re-serialized compactly on
        # load: compact JSON of the same object is the same bytes (payload_bytes).
        return b'{"n":%d,"event":%s}\n' % (self.n, self.body)


def payload_bytes(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """What one flush writes for one URL, decided on the event loop, done in a thread."""

    directory: Path
    ack: int | None  # new `acked` value, if it moved
    append: bytes  # lines to append (and fsync)
    rewrite: bytes | None  # the whole file's new content (replaces `append`)
    truncate: bool  # nothing live: empty the file (after `acked` is written)
    written_through: int  # the highest n on disk once this plan is done
    lines: int  # lines in the file once this plan is done


@dataclass(frozen=True, slots=True)
class Loaded:
    entries: list[Entry]
    acked: int
    next_n: int
    lines: int  # readable lines in the file (settled ones included)
    unreadable: int
    rewrite: bool


class UrlQueue:
    """One URL's outbox. Event-loop only, except `load` and `FlushPlan` execution."""

    def __init__(self, url: str, root: Path, limit: int) -> None:
        self.url = url
        self.label = endpoint_label(url)
        self.directory = root / url_key(url)
        self.limit = limit
        self.entries: deque[Entry] = deque()
        self.next_n = 1
        self.acked = 0  # settled through this n (in memory)
        self.acked_on_disk = 0
        self.written_through = 0  # highest n appended and fsynced
        self.lines_on_disk = 0
        self.must_rewrite = False  # the file has a torn line, or a write failed midway
        self.dropped = 0
        self.unreadable = 0

    # -- loading (IO thread, at start) ---------------------------------------------------------

    def load(self) -> Loaded:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        endpoint = d / ENDPOINT
        if not endpoint.exists():
            endpoint.write_text(self.label + "\n")
        acked = _read_acked(d / ACKED, self.label)
        entries: list[Entry] = []
        unreadable, lines, rewrite, last_n = 0, 0, False, acked
        try:
            raw = (d / EVENTS).read_bytes()
        except FileNotFoundError:
            raw = b""
        if raw and not raw.endswith(b"\n"):
            rewrite = True  # a torn tail: appending after it would garble the next line
        for line in raw.splitlines():
            entry = _parse_line(line)
            if entry is None or entry.n <= last_n and entry.n > acked:
                unreadable += 1
                continue
            lines += 1
            last_n = max(last_n, entry.n)
            if entry.n > acked:
                entries.append(entry)
        if unreadable:
            rewrite = True
            log.warning("webhook outbox %s: skipped %d unreadable lines (a write torn by a "
                        "crash?); %d events kept", self.label, unreadable, len(entries))
        return Loaded(entries, acked, last_n + 1, lines, unreadable, rewrite)

    def loaded(self, result: Loaded) -> None:
        """Apply `load`'s result on the event loop."""
        self.entries = deque(result.entries)
        self.acked = self.acked_on_disk = result.acked
        self.next_n = result.next_n
        self.written_through = result.next_n - 1
        self.lines_on_disk = result.lines
        self.must_rewrite = result.rewrite
        self.unreadable = result.unreadable
        over = len(self.entries) - self.limit
        if over > 0:
            self._drop(over, "at start-up")

    # -- the queue (event loop) ----------------------------------------------------------------

    def add(self, event_id: str, body: bytes) -> None:
        self.entries.append(Entry(self.next_n, event_id, body))
        self.next_n += 1
        if len(self.entries) > self.limit:
            self._drop(len(self.entries) - self.limit, "outbox full")

    def head(self) -> Entry | None:
        return self.entries[0] if self.entries else None

    def settle(self, entry: Entry) -> None:
        """`entry` is done (delivered, or failed for good). A no-op if it was dropped."""
        if self.entries and self.entries[0] is entry:
            self.entries.popleft()
            self.acked = max(self.acked, entry.n)

    def _drop(self, count: int, why: str) -> None:
        for _ in range(count):
            self.acked = max(self.acked, self.entries.popleft().n)
        self.dropped += count
        log.error("webhook %s: %s, dropped the %d oldest undelivered events (%d dropped so "
                  "far; limit %d)", self.label, why, count, self.dropped, self.limit,
                  extra={"ctx": {"webhook": self.label, "dropped": self.dropped}})

    # -- flushing ------------------------------------------------------------------------------

    def plan(self) -> FlushPlan | None:
        """What to write now; None if the disk is up to date."""
        ack = self.acked if self.acked != self.acked_on_disk else None
        top = self.entries[-1].n if self.entries else self.written_through
        unwritten = [e for e in reversed(self.entries) if e.n > self.written_through]
        unwritten.reverse()
        if not self.entries and self.lines_on_disk == 0 and not self.must_rewrite:
            return None if ack is None else FlushPlan(self.directory, ack, b"", None, False,
                                                     self.written_through, 0)
        if not self.entries:
            return FlushPlan(self.directory, ack if ack is not None else self.acked, b"", None,
                             True, max(top, self.written_through), 0)
        if self.must_rewrite or self.lines_on_disk > 2 * len(self.entries) + COMPACT_SLACK:
            content = b"".join(e.line() for e in self.entries)
            return FlushPlan(self.directory, ack, b"", content, False, top, len(self.entries))
        if ack is None and not unwritten:
            return None
        return FlushPlan(self.directory, ack, b"".join(e.line() for e in unwritten), None,
                         False, top, self.lines_on_disk + len(unwritten))

    def flushed(self, plan: FlushPlan) -> None:
        if plan.ack is not None:
            self.acked_on_disk = plan.ack
        self.written_through = max(self.written_through, plan.written_through)
        self.lines_on_disk = plan.lines
        if plan.rewrite is not None or plan.truncate:
            self.must_rewrite = False

    def flush_failed(self) -> None:
        # A failed append may have left half a line: the next flush writes the file whole.
        self.must_rewrite = True


def execute(plan: FlushPlan, fsync: bool = True) -> None:
    """Carry out one plan (IO thread). Raises OSError; the caller retries with a rewrite."""
    d = plan.directory
    if plan.ack is not None:
        _replace(d / ACKED, b"%d\n" % plan.ack, fsync=False)
    if plan.truncate:
        with open(d / EVENTS, "wb"):
            pass
    elif plan.rewrite is not None:
        _replace(d / EVENTS, plan.rewrite, fsync=fsync)
    elif plan.append:
        with open(d / EVENTS, "ab") as f:
            f.write(plan.append)
            f.flush()
            if fsync:
                os.fsync(f.fileno())


def execute_all(plans: Iterable[FlushPlan], fsync: bool = True,
                on_error: Callable[[FlushPlan, OSError], None] | None = None) -> list[bool]:
    """Every plan, each on its own (one URL's disk trouble does not stop another's)."""
    done: list[bool] = []
    for plan in plans:
        try:
            execute(plan, fsync)
            done.append(True)
        except OSError as e:
            if on_error is not None:
                on_error(plan, e)
            done.append(False)
    return done


def _replace(path: Path, data: bytes, *, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_acked(path: Path, label: str) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as e:
        log.warning("webhook outbox %s: cannot read %s (%s): re-sending every queued event",
                    label, ACKED, e)
        return 0
    with contextlib.suppress(ValueError):
        return max(0, int(text))
    log.warning("webhook outbox %s: %s is unreadable: re-sending every queued event", label,
                ACKED)
    return 0


def _parse_line(line: bytes) -> Entry | None:
    try:
        obj = json.loads(line)
        n, event = obj["n"], obj["event"]
        event_id = event["id"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(n, int) or n < 1 or not isinstance(event_id, str):
        return None
    return Entry(n, event_id, payload_bytes(event))


class Outbox:
    """Every URL's queue, and the one task that writes them to disk.

    `add` is synchronous and cheap (the bus consumer must keep up with the bus); the flush
    task notices and writes everything added since its last flush in one executor call.
    `sync()` waits until everything added before it is on disk.
    """

    def __init__(self, urls: Sequence[str], root: Path, limit: int, executor: Executor, *,
                 fsync: bool = True) -> None:
        self.root = root
        self.queues = [UrlQueue(url, root, limit) for url in urls]
        self.executor = executor
        self.fsync = fsync
        self.flush_errors = 0
        self._changes = 0  # adds and settlements so far (a generation number for `sync`)
        self._durable = 0  # `_changes` as of the start of the last complete flush
        self._dirty = asyncio.Event()
        self._flushed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self._load_all)
        for queue, result in zip(self.queues, results, strict=True):
            queue.loaded(result)
            if queue.entries:
                log.info("webhook %s: %d undelivered events from before the restart will be "
                         "re-sent", queue.label, len(queue.entries),
                         extra={"ctx": {"webhook": queue.label}})
        self._dirty.set()  # torn files are rewritten, drops at load recorded

    def _load_all(self) -> list[Loaded]:
        results = [q.load() for q in self.queues]
        known = {q.directory.name for q in self.queues}
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and d.name not in known and (d / EVENTS).exists() \
                    and (d / EVENTS).stat().st_size:
                log.warning("webhook outbox %s holds events for a URL no longer configured "
                            "(%s); they are kept, not sent", d, _endpoint_of(d))
        return results

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-outbox")

    def add(self, event_id: str, body: bytes) -> None:
        for queue in self.queues:
            queue.add(event_id, body)
        self._changes += 1
        self._dirty.set()
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    async def wait_for_events(self) -> None:
        """Until the next `add` (delivery tasks wait here when their queue is empty)."""
        await self._arrived.wait()

    def changed(self) -> None:
        """Something was settled: let the next flush record it."""
        self._changes += 1
        self._dirty.set()

    @property
    def size(self) -> int:
        return sum(len(q.entries) for q in self.queues)

    async def sync(self) -> None:
        """Wait until every change so far is on disk (or the outbox closed)."""
        target = self._changes
        self._dirty.set()
        while self._durable < target and self._task is not None and not self._task.done():
            await self._flushed.wait()

    async def close(self) -> None:
        """A last flush, then the task ends (no flush thread is left running)."""
        self._closing = True
        self._dirty.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            ok = await self._flush_once()
            if self._closing:
                if ok and self._dirty.is_set():
                    continue  # added while that flush ran: the last flush must cover it
                if not ok:
                    log.error("webhook outbox: the last flush failed; events since the "
                              "previous one are lost")
                return
            if not ok:
                await asyncio.sleep(FLUSH_RETRY)
                self._dirty.set()

    async def _flush_once(self) -> bool:
        generation = self._changes
        plans = [(q, plan) for q in self.queues if (plan := q.plan()) is not None]
        ok = True
        if plans:
            done = await asyncio.get_running_loop().run_in_executor(
                self.executor, execute_all, [p for _, p in plans], self.fsync, self._log_error)
            for (queue, plan), good in zip(plans, done, strict=True):
                if good:
                    queue.flushed(plan)
                else:
                    queue.flush_failed()
            ok = all(done)
        if ok:
            self._durable = generation
        else:
            self.flush_errors += 1
        flushed, self._flushed = self._flushed, asyncio.Event()
        flushed.set()
        return ok

    @staticmethod
    def _log_error(plan: FlushPlan, e: OSError) -> None:
        log.error("webhook outbox %s: write failed (%s); retrying in %g s", plan.directory,
                  e.strerror or e, FLUSH_RETRY)


def _endpoint_of(d: Path) -> str:
    try:
        return (d / ENDPOINT).read_text().strip()
    except OSError:
        return "?"
