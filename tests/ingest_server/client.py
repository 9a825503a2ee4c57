"""A minimal, explicit protocol v1 test client over websockets' sync API.

Deliberately not the uplink: these tests pin the server's side of docs/protocol.md, and
they need to send what a correct client never would.
"""

from __future__ import annotations

import random
from types import TracebackType

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from uplink.audio import AudioFormat, SampleType
from uplink.wire import (
    Ack,
    Control,
    End,
    Ended,
    Hello,
    Ping,
    Pong,
    Resume,
    Welcome,
    decode_control,
    encode_audio,
    encode_control,
    encode_gap,
)

FMT = AudioFormat(16000, 1, SampleType.INT16)
FRAME = 320  # 20 ms at 16 kHz
TIMEOUT = 10.0


def frames(n: int, seed: int, fmt: AudioFormat = FMT, frame_samples: int = FRAME) -> list[bytes]:
    """`n` frames of deterministic noise, so misplaced or duplicated audio cannot compare equal."""
    rng = random.Random(seed)
    return [rng.randbytes(frame_samples * fmt.block_align) for _ in range(n)]


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class Client:
    def __init__(self, url: str, token: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if token is not None:
            extra["Authorization"] = f"Bearer {token}"
        self.ws: ClientConnection = connect(url, legacy=True, compression=None,
                                            open_timeout=TIMEOUT, close_timeout=5,
                                            ping_interval=None, max_size=None, proxy=None,
                                            additional_headers=extra or None)
        self.acked = (0, 0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.ws.close()

    # -- raw -----------------------------------------------------------------------------

    def send(self, message: str | bytes) -> None:
        self.ws.send(message)

    def recv(self, timeout: float = TIMEOUT) -> Control:
        """Next control message; a close becomes `Closed` with the server's code."""
        try:
            text = self.ws.recv(timeout)
        except ConnectionClosed as e:
            raise Closed(e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "") from e
        msg = decode_control(text)
        if isinstance(msg, Ack):
            self.acked = (msg.next_seq, msg.next_sample)
        return msg

    def expect_close(self, timeout: float = TIMEOUT) -> Closed:
        """Read (and drop acks) until the server closes; return the close."""
        while True:
            try:
                self.recv(timeout)
            except Closed as c:
                return c

    # -- protocol ------------------------------------------------------------------------

    def hello(self, stream_id: str, resume: Welcome | None = None, fmt: AudioFormat = FMT,
              frame_samples: int = FRAME) -> Welcome:
        res = Resume(resume.epoch, resume.credential) if resume else None
        self.send(encode_control(Hello(stream_id, fmt, frame_samples, res)))
        msg = self.recv()
        assert isinstance(msg, Welcome), msg
        self.acked = (msg.next_seq, msg.next_sample)
        return msg

    def audio(self, seq: int, sample_pos: int, payload: list[bytes], epoch: int = 1) -> None:
        self.send(encode_audio(epoch, seq, sample_pos, len(payload), b"".join(payload)))

    def gap(self, seq: int, count: int, sample_pos: int, end_sample: int) -> None:
        self.send(encode_gap(1, seq, sample_pos, count, end_sample))

    def wait_acked(self, next_seq: int) -> Ack:
        """Read until an ack covers every seq below `next_seq`."""
        while True:
            msg = self.recv()
            if isinstance(msg, Ack) and msg.next_seq >= next_seq:
                return msg
            assert isinstance(msg, Ack), msg

    def stream(self, first_seq: int, payload: list[bytes], frame_samples: int = FRAME) -> None:
        """Send frames one per message from `first_seq` and wait until all are acked."""
        for i, frame in enumerate(payload):
            self.audio(first_seq + i, (first_seq + i) * frame_samples, [frame])
        self.wait_acked(first_seq + len(payload))

    def end(self, next_seq: int, next_sample: int) -> Ended:
        self.send(encode_control(End(next_seq, next_sample)))
        while True:
            msg = self.recv()
            if isinstance(msg, Ended):
                closed = self.expect_close()
                assert closed.code == 1000, closed
                return msg
            assert isinstance(msg, Ack), msg

    def ping(self, t: float) -> Pong:
        self.send(encode_control(Ping(t)))
        while True:
            msg = self.recv()
            if isinstance(msg, Pong):
                return msg
