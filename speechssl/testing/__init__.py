"""Helpers that build tiny test data (audio, data dirs, models) for tests and docs."""
