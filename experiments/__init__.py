"""Research experiments on real data: one file per experiment, the harness in ``common``.

``python -m experiments.run_all`` runs the default configurations and prints one
results table; each experiment also runs on its own, e.g.
``python -m experiments.japanese_vowels --smoke``.
"""
