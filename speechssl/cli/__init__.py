"""`speechssl <command>`: argument parsing only; every command calls the library.

Each module in this package but `common` and `main` is one command, named after it, that its
`register(subparsers)` adds; `main` discovers them, so adding a command touches one file, and
imports only the module of the command it runs.
"""
