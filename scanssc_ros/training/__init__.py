"""Training, evaluation and data plumbing behind the scanssc-train / scanssc-eval commands (no ROS)."""
