"""Preparation of public corpora from a local copy into Kaldi data dirs.

Nothing here downloads: each preparer takes the path of a corpus the user
already has and fails at once, naming the expected layout, when it is not there.
"""
