"""The linter is part of the suite: `ruff check` over the whole repository must be clean."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    proc = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_extensionless_scripts_compile():
    # ruff only lints *.py; the installed executables have no extension
    for path in (REPO / "scripts").iterdir():
        if path.is_file() and path.read_text().startswith("#!/usr/bin/env python"):
            compile(path.read_text(), str(path), "exec", dont_inherit=True)
