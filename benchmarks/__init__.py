"""Speed and memory of jaxseq against PyTorch and flax, side by side in one run.

``python -m benchmarks.rnn_train_step`` (``make bench``) is the suite; see its
docstring. ``python -m benchmarks.levers`` measures the fast path's levers one
at a time (A/B against the plain scan and PyTorch in the same process).
"""
