"""`python -m invoke_repl`: the same program as the `invoke-repl` console script."""

try:
    from invoke_repl.cli import main
except KeyboardInterrupt:  # Ctrl-C while the program itself is still being imported
    raise SystemExit(130) from None

if __name__ == "__main__":
    raise SystemExit(main())
