"""`python -m invoke_repl`: the same program as the `invoke-repl` console script."""

from invoke_repl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
