"""What a run folder records about how it was made: versions, commit, devices, command.

:func:`collect` returns one JSON-serialisable dict; ``fit`` writes it to
``<out_dir>/provenance.json`` and the experiments add it to ``config.json``, so a
result can always be traced back to the code, the libraries, the hardware and the
exact command line that produced it::

    {"jaxseq": "0.1.0", "jax": "0.10.2", "jaxlib": "0.10.2", "python": "3.11.7",
     "git_commit": "e9f317a...", "git_dirty": false,
     "devices": {"platform": "cpu", "kind": "cpu", "count": 1, "local_count": 1},
     "processes": {"count": 1, "index": 0},
     "command": [".venv/bin/python", "-m", "experiments.japanese_vowels", "--smoke"],
     "cwd": "/home/me/jaxseq", "hostname": "node-3", "time_utc": "2026-11-29T23:59:00Z"}

``git_commit`` is that of the folder holding the ``jaxseq`` package (a source
checkout) and None when there is none (an installed wheel) or ``git`` is missing;
``git_dirty`` says whether tracked files differ from that commit (None without git).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import jax

import jaxseq

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jaxseq.__file__)))
"""The folder holding the ``jaxseq`` package (a machine-specific path, @private in the API
reference); its git commit is the one recorded."""


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", PACKAGE_ROOT, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout holding ``jaxseq``; ``(None, None)`` outside one."""
    if not os.path.exists(os.path.join(PACKAGE_ROOT, ".git")):  # a folder, or a worktree's file
        return None, None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def collect(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The provenance record of this process (see the module doc).

    Args:
      argv: the command line to record (default ``sys.orig_argv``: the interpreter and
        every argument exactly as given, ``-m module`` included, so the line can be
        re-run).
    """
    devices = jax.devices()
    commit, dirty = git_state()
    command = list(sys.orig_argv) if argv is None else [str(a) for a in argv]
    return {
        "jaxseq": jaxseq.__version__,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "devices": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": jax.device_count(),
            "local_count": jax.local_device_count(),
        },
        "processes": {"count": jax.process_count(), "index": jax.process_index()},
        "command": command,
        "command_line": shlex.join(command),
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "time_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
