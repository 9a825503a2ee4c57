"""Test helpers shared by the test packages (real server subprocess, ...)."""
