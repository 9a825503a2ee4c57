"""Tests of the ingest server: storage and sessions in-process, the protocol against the real server."""
