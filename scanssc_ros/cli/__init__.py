"""Command-line entry points (scanssc-train, scanssc-eval, scanssc-infer): argument parsing only."""
