"""Kaldi data dirs, audio I/O, datasets and batch sampling."""
