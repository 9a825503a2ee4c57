"""Audio capture: sources (WAV file, microphone) and the frame cutter feeding the uplink ring."""
