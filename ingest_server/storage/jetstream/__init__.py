"""NATS JetStream storage backend (`--store nats://...`, docs/scale-out.md).

    link.py     the NATS connection on its own loop and thread; lazy import of nats-py
    records.py  message layout: batches of journal records, position headers, markers
    writer.py   StreamWriter: records buffered until the committer takes them
    publisher.py  Committer: publishes batches (PubAck = durable), fencing, many in flight
    lease.py    owner leases in KV (revision CAS)
    store.py    StreamStorage: create / take / reopen / finalize / delete, lookups for REST
    reader.py   durable audio from a subject: WAV and listener reads
"""

from ..interface import StreamFenced
from .publisher import JetStreamCommitter
from .store import AUDIO_STREAM, META_BUCKET, JetStreamStore, open_jetstream, subject_of
from .writer import JetStreamWriter

__all__ = ["AUDIO_STREAM", "META_BUCKET", "JetStreamCommitter", "JetStreamStore",
           "JetStreamWriter", "StreamFenced", "open_jetstream", "subject_of"]
