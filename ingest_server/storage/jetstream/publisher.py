"""Publishing writers' batches to JetStream: many publishes in flight on one connection.

The commit path runs once per live stream per 20 ms frame, so its cost per publish is the
JetStream store's capacity (docs/performance.md "Scale-out"). nats-py's `js.publish` is a
request: a fresh reply token (`secrets.token_hex`), a future and an `asyncio.wait_for` (a
task) per call, its PubAck parsed into a dataclass, and here one cross-thread hop each way
per publish (the connection lives on the link's private loop, link.py). This module does
the same work in bulk, without weakening any of it:

- Hops are batched. `submit` (server loop, any thread) appends the job to an inbox and wakes
  the NATS loop only if no wake-up is pending already; one wake-up takes every job queued
  meanwhile. Results go back the same way: one `call_soon_threadsafe` per loop delivers
  every finished job. Nothing waits for company: a job that finds the inbox empty wakes
  the NATS loop at once (no timer holds a frame back); coalescing is only of what is
  already queued.
- Publishes are plain `nc.publish` with a reply subject `<inbox>.<n>` on ONE wildcard
  subscription: the PubAck's token `n` finds its job in a dict. Publishes taken in one
  wake-up leave in one socket write (nats-py's flusher runs after them).
- Timeouts: one timer sweeps the jobs whose PubAck is overdue (PUBLISH_TIMEOUT, checked
  every SWEEP_INTERVAL) instead of a `wait_for` per publish.
- The PubAck is read for what matters: a 503 status (no responders), the `error` object's
  err_code, and `seq`.

What an ack means is unchanged (docs/protocol.md §4, docs/scale-out.md): a job's future
resolves only after the PubAck of every message of its batch, each published with
`Nats-Expected-Last-Subject-Sequence` = the previous one's sequence (so a batch of several
messages publishes them one after another), and after the gap checkpoint if the batch held
a gap. Failures map as before (writer.py): "wrong last sequence" fences the writer
(StreamFenced, 4411); anything else (timeout, refusal, no responders, a lost connection)
makes it STALE and fails the sync with an OSError (1013).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Any

from ..interface import StreamFenced
from .records import WRONG_LAST_SEQUENCE, MessageKind, position_headers
from .writer import BatchMessage, JetStreamWriter, WriterState

if TYPE_CHECKING:
    from .link import NatsLink

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0
SWEEP_INTERVAL = 0.5  # a PubAck is declared lost between PUBLISH_TIMEOUT and + this
EXPECTED_STREAM = "Nats-Expected-Stream"  # what js.publish(stream=...) sent
STATUS = "Status"
NO_RESPONDERS = "503"

GapCheckpoint = Callable[[JetStreamWriter, int], Awaitable[None]]


@dataclass(slots=True)
class PublishJob:
    """One `submit`: a writer's batch, and the future (on the submitter's loop) its
    sync waits on."""

    writer: JetStreamWriter
    batch: list[BatchMessage]
    gaps_before: int
    future: asyncio.Future[None]
    next_message: int = 0  # index into batch of the message to publish next
    deadline: float = field(default=0.0)  # NATS loop time by which the PubAck is due


class Publisher:
    """Runs on the link's NATS loop; `submit` may be called from any thread."""

    def __init__(self, link: NatsLink, stream_name: str, gap_checkpoint: GapCheckpoint,
                 timeout: float = PUBLISH_TIMEOUT) -> None:
        self._link = link
        self._stream_name = stream_name
        self.gap_checkpoint = gap_checkpoint
        self.timeout = timeout
        self._lock = threading.Lock()  # guards the inbox, the outbox and their flags
        self._inbox: list[PublishJob] = []
        self._wake_pending = False
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[PublishJob,
                                                                 BaseException | None]]] = {}
        # NATS loop only:
        self._awaiting: dict[int, PublishJob] = {}  # reply token -> job; publish order
        self._tokens = count(1)
        self._prefix = ""
        self._sub: Any = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # strong references (asyncio docs)
        self._closed = False

    async def start(self) -> None:
        """Subscribe the PubAck inbox (on the NATS loop)."""
        nc = self._link.nc
        self._prefix = nc.new_inbox() + "."
        self._sub = await nc.subscribe(self._prefix + "*", cb=self._on_reply)

    # -- the server's side -------------------------------------------------------------

    def submit(self, job: PublishJob) -> None:
        with self._lock:
            self._inbox.append(job)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._link.loop.call_soon_threadsafe(self._take_inbox)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a submitter's loop: resolve every job finished since the last delivery."""
        with self._lock:
            done = self._outbox.pop(loop, [])
        for job, error in done:
            if job.future.done():  # the caller gave up (a test's wait_for): nothing to say
                continue
            if error is None:
                job.future.set_result(None)
            else:
                job.future.set_exception(error)

    # -- the NATS loop's side ----------------------------------------------------------

    def _take_inbox(self) -> None:
        with self._lock:
            jobs, self._inbox = self._inbox, []
            self._wake_pending = False
        if jobs:
            self._spawn(self._start_all(jobs))

    async def _start_all(self, jobs: list[PublishJob]) -> None:
        for job in jobs:
            try:
                await self._start(job)
            except Exception as e:  # never lose a job: its stream's sync would wait forever
                self._stale(job, OSError(f"JetStream publish failed: {type(e).__name__}"), e)

    async def _start(self, job: PublishJob) -> None:
        writer = job.writer
        if self._closed:
            self._finish(job, OSError("JetStream store closed"))
        elif writer.state is WriterState.FENCED:
            self._finish(job, StreamFenced(f"stream {writer.stream_id} was taken over "
                                           "by another node"))
        elif writer.state is not WriterState.OWNER:
            self._finish(job, OSError(f"stream {writer.stream_id}: writer is "
                                      f"{writer.state.value}"))
        elif not job.batch:
            self._finish(job, None)
        else:
            await self._publish_next(job)

    async def _publish_next(self, job: PublishJob) -> None:
        writer = job.writer
        message = job.batch[job.next_message]
        headers = position_headers(MessageKind.AUDIO, message.first_seq, message.after,
                                   writer.last_subject_seq, writer.owner)
        headers[EXPECTED_STREAM] = self._stream_name
        token = next(self._tokens)
        job.deadline = self._link.loop.time() + self.timeout
        self._awaiting[token] = job
        try:
            await self._link.nc.publish(writer.subject, message.body,
                                        reply=self._prefix + str(token), headers=headers)
        except Exception as e:
            if self._awaiting.pop(token, None) is not None:
                self._stale(job, OSError(f"JetStream publish failed: {type(e).__name__}"), e)
            return
        if self._sweeper is None:
            self._sweeper = self._link.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def _on_reply(self, msg: Any) -> None:
        try:
            token = int(msg.subject[len(self._prefix):])
        except ValueError:
            return
        job = self._awaiting.pop(token, None)
        if job is None:
            return  # overdue and already failed by the sweeper
        try:
            await self._settle(job, msg)
        except Exception as e:  # out of every table now: finish it, or its sync hangs
            self._stale(job, OSError(f"JetStream publish failed: {type(e).__name__}"), e)

    async def _settle(self, job: PublishJob, msg: Any) -> None:
        """The PubAck of the job's current message: fenced, stale, the next message of
        the chain, the gap checkpoint, or done."""
        writer = job.writer
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            self._stale(job, OSError("JetStream publish failed: NoRespondersError"))
            return
        try:
            reply = json.loads(msg.data)
            error: dict[str, Any] = reply.get("error") or {}
            if not isinstance(error, dict):
                raise TypeError("error is not an object")
            seq = 0 if error else int(reply["seq"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._stale(job, OSError("JetStream publish failed: unreadable PubAck"), e)
            return
        if error:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                writer.fence()
                log.warning("stream %s: fenced, another node wrote its subject",
                            writer.stream_id)
                self._finish(job, StreamFenced(f"stream {writer.stream_id} was taken over "
                                               "by another node"))
                return
            self._stale(job, OSError("JetStream refused the publish: "
                                     f"{error.get('description')}"))
            return
        writer.last_subject_seq = seq
        job.next_message += 1
        if job.next_message < len(job.batch):
            await self._publish_next(job)
        elif job.batch[-1].after.gap_count > job.gaps_before:
            # Gaps are rare (after an outage): the KV meta keeps the list, so a takeover
            # reads it instead of walking every message back (store.take). Not awaited
            # here: this callback serves every stream's PubAcks.
            self._spawn(self._checkpoint(job))
        else:
            self._finish(job, None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._link.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _checkpoint(self, job: PublishJob) -> None:
        try:
            await self.gap_checkpoint(job.writer, job.batch[-1].after.gap_count)
        except Exception as e:
            self._finish(job, e)
        else:
            self._finish(job, None)

    def _sweep(self) -> None:
        """Fail the jobs whose PubAck is overdue. `_awaiting` is in publish order, so its
        deadlines are too: stop at the first that is not due."""
        self._sweeper = None
        now = self._link.loop.time()
        overdue: list[int] = []
        for token, job in self._awaiting.items():
            if job.deadline > now:
                break
            overdue.append(token)
        for token in overdue:
            self._stale(self._awaiting.pop(token), OSError("JetStream publish failed: "
                                                           "TimeoutError"))
        if self._awaiting:
            self._sweeper = self._link.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _stale(self, job: PublishJob, error: OSError, cause: BaseException | None = None
               ) -> None:
        """An unknown outcome: the writer publishes nothing more (writer.py)."""
        if cause is not None:
            error.__cause__ = cause
        job.writer.state = WriterState.STALE
        self._finish(job, error)

    def _finish(self, job: PublishJob, error: BaseException | None) -> None:
        loop = job.future.get_loop()
        with self._lock:
            done = self._outbox.setdefault(loop, [])
            done.append((job, error))
            wake = len(done) == 1
        if wake:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(self._deliver, loop)

    async def stop(self) -> None:
        """Fail every job still waiting (the store is closing), and unsubscribe."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        waiting, self._awaiting = self._awaiting, {}
        for job in waiting.values():
            self._stale(job, OSError("JetStream store closed"))
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class JetStreamCommitter:
    """Committer (interface.Committer): `submit(writer)` takes the writer's buffered batch;
    the future resolves once JetStream acked all of it (and the gap checkpoint is written
    if it held a gap). Not cancellable from the caller's side."""

    def __init__(self, link: NatsLink, stream_name: str, gap_checkpoint: GapCheckpoint
                 ) -> None:
        self._link = link
        self.publisher = Publisher(link, stream_name, gap_checkpoint)
        link.call(self.publisher.start())

    def submit(self, writer: JetStreamWriter) -> asyncio.Future[None]:
        gaps_before = writer.unpublished_gap_start
        batch = writer.take_batch()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.publisher.submit(PublishJob(writer, batch, gaps_before, future))
        return future

    def close(self) -> None:
        """Fail what is still waiting; the link itself belongs to the store."""
        if self._link.nc is not None and self._link.loop.is_running():
            with contextlib.suppress(Exception):
                self._link.call(self.publisher.stop(), 5)
