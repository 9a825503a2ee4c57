"""tools/ingest_process.py: the command line it logs beside the data dir holds no credential."""

from __future__ import annotations

from tools.ingest_process import redacted_command


def test_every_credential_is_hidden_in_the_logged_command() -> None:
    cmd = ["python", "-m", "ingest_server", "--token", "tok-aaaaaaaaaaaaaaaa",
           "--token=tok-bbbbbbbbbbbbbbbb", "--webhook-secret", "sec-cccccccccccccccc",
           "--nats-token=nt-dddddddddddddddd",
           "--webhook", "https://user:pw-eeee@hooks.example:8443/in?key=k-ffff",
           "--webhook=http://127.0.0.1:9/x?sig=k-gggg", "--store", "nats://u:p-hhhh@n1:4222,n2:4222",
           "--port", "8765"]
    logged = " ".join(redacted_command(cmd))
    for secret in ("tok-a", "tok-b", "sec-c", "nt-d", "pw-eeee", "k-ffff", "k-gggg", "p-hhhh"):
        assert secret not in logged
    assert "https://hooks.example:8443/in" in logged and "--webhook=http://127.0.0.1:9/x" in logged
    assert "nats://n1:4222,n2:4222" in logged and logged.endswith("--port 8765")
