"""invoke-repl: an interactive `invoke>` command line for Stable Diffusion."""

__version__ = "0.1.0"
