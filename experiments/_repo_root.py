"""Puts the repository root on ``sys.path`` for an experiment run as a file.

``python experiments/NAME.py`` puts ``experiments/`` first on ``sys.path``, not the
repository root, so ``from experiments import ...`` would fail. Each experiment
starts with ``if not __package__: import _repo_root`` (true only when run as a
file); ``python -m experiments.NAME`` and imports do not need it.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
