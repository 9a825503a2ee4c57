"""Owner leases in the KV bucket (docs/scale-out.md "Ownership").

A lease is the KV key `lease.<stream id>` holding who owns the stream and when it last
renewed. Every change is a compare-and-set on the key's revision, so of two nodes taking a
stream at once exactly one wins. The lease says who *should* write; the fence (records.py)
is what makes a stale writer's bytes impossible. A node renews its leases every
lease_seconds / 3; a renewal that finds another revision means the stream was taken over:
its writer is fenced at once, before it tries to publish.

`expired` is pure (a wall time in, a verdict out), so tests drive it with a fake clock.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lease:
    node: str
    token: str  # this take's identity: a node that takes the same stream twice gets a new one
    renewed: float  # the holder's wall clock (POSIX seconds) at its last renewal

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "token": self.token,
                           "renewed": self.renewed}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Lease:
        obj = json.loads(raw)
        return cls(str(obj["node"]), str(obj["token"]), float(obj["renewed"]))

    @classmethod
    def new(cls, node: str, now: float) -> Lease:
        return cls(node, secrets.token_hex(8), now)

    def renewed_at(self, now: float) -> Lease:
        return Lease(self.node, self.token, now)

    @property
    def owner_tag(self) -> str:
        """What each message's Ep-Owner header says: node and this take's token."""
        return f"{self.node}/{self.token}"


def expired(lease: Lease, now: float, lease_seconds: float) -> bool:
    """No renewal for `lease_seconds` by the holder's clock as recorded, read with ours:
    node clocks must agree to well within lease_seconds (NTP), docs/scale-out.md."""
    return now - lease.renewed >= lease_seconds


def renew_interval(lease_seconds: float) -> float:
    return lease_seconds / 3
