"""`python -m speechssl ...` (and `torchrun -m speechssl ...`) runs the CLI."""

from speechssl.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
