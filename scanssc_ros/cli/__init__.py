"""Command-line entry points (scanssc-train, scanssc-eval, scanssc-infer, scanssc-synth): argument parsing only."""
