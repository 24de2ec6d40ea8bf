"""`speechssl <command>`: argument parsing only; every command calls the library.

Each module in this package that defines `register(subparsers)` adds one
command; `main` discovers them, so adding a command touches one file.
"""
