"""Research experiments on real data: one file per experiment, all on one harness.

* :mod:`experiments.config`: the configs, the command line and ``--method``;
* :mod:`experiments.harness`: train, evaluate, report; the run folder and the
  metrics schema;
* :mod:`experiments.tasks`: classification and labeling on data set splits;
* :mod:`experiments.plots`: the figures.

``python -m experiments.run_all`` runs the default configurations and prints one
results table; each experiment also runs on its own, as a module or as a file,
e.g. ``python -m experiments.japanese_vowels --smoke`` or
``python experiments/japanese_vowels.py --smoke``.
"""
