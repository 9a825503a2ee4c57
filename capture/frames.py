"""The frame cutter lives in uplink/frames.py (the embedding API uses it too); this name stays
for the code and tests that import it from here."""

from uplink.frames import FrameCutter, FrameRing, Tee

__all__ = ["FrameCutter", "FrameRing", "Tee"]
