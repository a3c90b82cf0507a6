"""The character-level language model: its data (pydoc_data/topics.py), the Kneser-Ney
baseline against hand computations, truncated BPTT against one long pass and an
explicitly written windowed objective, seeded sampling, and the --smoke run."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments import char_lm, harness
from jaxseq.data import DataFileError, char_text, vocab
from jaxseq.training import loop

PY311 = "abaa56a64551d8eead1b19cbae3c6db443f99f0cab81df07bed3cb75c0db9346"
PY312_FILE = "/root/.pyenv/versions/3.12.1/lib/python3.12/pydoc_data/topics.py"
RUNNING_311_7 = sys.version_info[:3] == (3, 11, 7)


@pytest.fixture(scope="module")
def splits():
    return char_text.load()


# ----------------------------------------------------------------------------- data


@pytest.mark.data
@pytest.mark.skipif(not RUNNING_311_7, reason="the recorded sizes are Python 3.11.7's")
def test_loader_reads_the_recorded_file_and_splits_it_by_position(splits):
    path = char_text.default_path()
    assert splits.sha256 == PY311 == char_text.check_file(path)
    assert char_text.SHA256[PY311] == "3.11.7"
    text = char_text.read_topics(path)
    assert len(text) == 464_970
    sizes = {name: len(splits.split(name)) for name in char_text.SPLITS}
    assert sizes == {"train": 418_473, "valid": 23_248, "test": 23_249}
    assert sizes == char_text.split_sizes(len(text))
    assert "".join(splits.texts[name] for name in char_text.SPLITS) == text
    assert splits.texts["train"].startswith('The "assert" statement\n')
    for name in char_text.SPLITS:
        ids = splits.split(name)
        assert ids.dtype == np.int32 and ids.shape == (len(splits.texts[name]),)


@pytest.mark.data
def test_vocabulary_is_the_training_characters_with_unk(splits):
    train_counts = {c: splits.texts["train"].count(c) for c in set(splits.texts["train"])}
    kept = {c for c, n in train_counts.items() if n >= 2}
    assert splits.vocab[:2] == (vocab.PAD, vocab.UNK)
    assert set(splits.vocab[2:]) == kept and len(splits.vocab) == len(kept) + 2
    frequencies = [train_counts[c] for c in splits.vocab[2:]]
    assert frequencies == sorted(frequencies, reverse=True)
    assert splits.vocab[2] == " "
    # every character maps to its id or, if rare in train or unseen, to <unk>
    for name in char_text.SPLITS:
        text, ids = splits.texts[name], splits.split(name)
        expected = [splits.vocab.index(c) if c in kept else vocab.UNK_ID for c in text]
        np.testing.assert_array_equal(ids, expected)
        assert vocab.PAD_ID not in ids
    singletons = [c for c, n in train_counts.items() if n == 1]
    assert int((splits.train == vocab.UNK_ID).sum()) == len(singletons) >= 1
    # min_freq=1 keeps them
    every = char_text.load(min_freq=1)
    assert set(every.vocab[2:]) == set(train_counts) and vocab.UNK_ID not in every.train


@pytest.mark.data
def test_unknown_characters_map_to_unk_and_decode_as_replacement(splits):
    ids = char_text.encode("a\u2603b\u00b0", splits.vocab)
    a, b = splits.vocab.index("a"), splits.vocab.index("b")
    np.testing.assert_array_equal(ids, [a, vocab.UNK_ID, b, vocab.UNK_ID])
    assert char_text.decode(ids, splits.vocab) == "a\ufffdb\ufffd"
    assert char_text.decode(splits.valid[:500], splits.vocab) == splits.texts["valid"][:500]
    with pytest.raises(ValueError, match="`ids`"):
        char_text.decode(np.array([len(splits.vocab)]), splits.vocab)


@pytest.mark.data
def test_a_file_with_another_digest_raises_naming_the_versions(tmp_path):
    changed = tmp_path / "topics.py"
    data = bytearray(char_text.default_path().read_bytes())
    index = data.index(b"statement")
    data[index : index + 9] = b"STATEMENT"
    changed.write_bytes(bytes(data))
    running = ".".join(map(str, sys.version_info[:3]))
    with pytest.raises(DataFileError) as error:
        char_text.load(changed)
    message = str(error.value)
    assert f"The running Python is {running}" in message
    assert "Python 3.11.7" in message and "Python 3.12.1" in message and PY311 in message
    # verify=False reads it anyway
    loaded = char_text.load(changed, verify=False)
    assert "STATEMENT" in loaded.texts["train"] and loaded.sha256 not in char_text.SHA256
    with pytest.raises(DataFileError, match="not found"):
        char_text.load(tmp_path / "missing.py")
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="topics"):
        char_text.load(tmp_path / "bad.py", verify=False)


@pytest.mark.data
@pytest.mark.skipif(not os.path.isfile(PY312_FILE), reason="no Python 3.12.1 on this machine")
def test_the_recorded_python_3_12_file_loads(tmp_path):
    copy = tmp_path / "topics.py"
    shutil.copyfile(PY312_FILE, copy)
    loaded = char_text.load(copy)
    assert char_text.SHA256[loaded.sha256] == "3.12.1"
    n = sum(len(t) for t in loaded.texts.values())
    assert [len(loaded.split(s)) for s in char_text.SPLITS] == list(
        char_text.split_sizes(n).values()
    )


# ----------------------------------------------------------------------------- baseline


@pytest.mark.reference
def test_kneser_ney_order_2_matches_a_hand_computation():
    # "abcab" with a 4-symbol vocabulary (d never seen), D = 0.5 at both orders.
    # bigrams (start S): Sa ab bc ca ab -> c(ab) = 2, c(Sa) = c(bc) = c(ca) = 1
    # continuation counts: a <- {S, c}: 2, b <- {a}: 1, c <- {b}: 1; total 4, 3 types
    # P1(w) = (max(N(w) - .5, 0) + .5 * 3 / 4) / 4
    kn = char_lm.KneserNey(np.array([0, 1, 2, 0, 1]), order=2, vocab_size=4, discounts=(0.5, 0.5))
    p1 = {0: (1.5 + 0.375) / 4, 1: (0.5 + 0.375) / 4, 2: (0.5 + 0.375) / 4, 3: 0.375 / 4}
    assert p1 == {0: 0.46875, 1: 0.21875, 2: 0.21875, 3: 0.09375}
    a, d, start = chr(1), chr(4), char_lm.KneserNey.START
    # context a: c(a .) = 2, one type (b): P2(w | a) = (max(c(aw) - .5, 0) + .5 * P1(w)) / 2
    expected_a = [0.5 * p1[0] / 2, (1.5 + 0.5 * p1[1]) / 2, 0.5 * p1[2] / 2, 0.5 * p1[3] / 2]
    np.testing.assert_allclose(kn.distribution(a), expected_a, rtol=1e-14)
    assert kn.prob(a, 1) == pytest.approx(0.8046875, rel=1e-14)
    # context S (start of text): c(S .) = 1, one type (a)
    expected_s = [0.5 + 0.5 * p1[0], 0.5 * p1[1], 0.5 * p1[2], 0.5 * p1[3]]
    np.testing.assert_allclose(kn.distribution(start), expected_s, rtol=1e-14)
    # unseen context d: the unigram level
    np.testing.assert_allclose(kn.distribution(d), list(p1.values()), rtol=1e-14)
    # the scored bits of a text: P(b | a), P(d | b), P(a | d)
    p_d_given_b = 0.5 * p1[3]  # context b: c(b .) = 1 (bc), one type
    bits, count = kn.bits(np.array([0, 1, 3, 0]))
    assert count == 3
    expected = -math.log2(0.8046875) - math.log2(p_d_given_b) - math.log2(p1[0])
    assert bits == pytest.approx(expected, rel=1e-14)
    # estimated discounts n1 / (n1 + 2 n2): order 1 {2, 1, 1}, order 2 {2, 1, 1, 1}
    estimated = char_lm.KneserNey(np.array([0, 1, 2, 0, 1]), order=2, vocab_size=4)
    assert estimated.discounts == (2 / (2 + 2), 3 / (3 + 2))


@pytest.mark.reference
def test_kneser_ney_order_3_matches_a_hand_computation():
    # "abab", V = 2, D = 0.5: padded S S a b a b.
    # order 1 (from the bigrams Sa ab ba; SS predicts nothing): a <- {S, b}, b <- {a}
    # order 2 (from the trigrams SSa Sab aba bab): Sa 1, ab 2 (S, b), ba 1
    kn = char_lm.KneserNey(np.array([0, 1, 0, 1]), order=3, vocab_size=2, discounts=(0.5,) * 3)
    p1 = [(1.5 + 0.5 * 2 / 2) / 3, (0.5 + 0.5 * 2 / 2) / 3]  # 2/3, 1/3
    a, b, s = chr(1), chr(2), char_lm.KneserNey.START
    p2_b = [(0.5 + 0.5 * p1[0]) / 1, 0.5 * p1[1] / 1]  # context b: ba
    p2_a = [0.5 * p1[0] / 2, (1.5 + 0.5 * p1[1]) / 2]  # context a: ab (count 2)
    np.testing.assert_allclose(kn.distribution(s + b), p2_b, rtol=1e-14)  # Sb unseen
    # context ab: c(ab .) = 1 (aba), one type
    np.testing.assert_allclose(
        kn.distribution(a + b), [0.5 + 0.5 * p2_b[0], 0.5 * p2_b[1]], rtol=1e-14
    )
    assert kn.prob(a + b, 0) == pytest.approx(11 / 12, rel=1e-14)
    # context Sa: c(Sa .) = 1 (Sab)
    assert kn.prob(s + a, 1) == pytest.approx(0.5 + 0.5 * p2_a[1], rel=1e-14)
    assert kn.prob(s + a, 1) == pytest.approx(11 / 12, rel=1e-14)


@pytest.mark.reference
def test_kneser_ney_sums_to_one_for_any_context(splits):
    rng = np.random.default_rng(0)
    train = splits.train[:20_000]
    vocab_size = len(splits.vocab)
    assert len(set(train.tolist())) < vocab_size  # some symbols never seen
    for order in (1, 3, 5):
        kn = char_lm.KneserNey(train, order=order, vocab_size=vocab_size)
        assert all(0 < d <= 1 for d in kn.discounts)
        contexts = [kn.context(train, int(t)) for t in rng.integers(0, len(train), 20)]
        contexts += [kn.context(train, t) for t in range(order)]  # the start of the text
        random_ids = rng.integers(0, vocab_size, (20, order - 1))  # mostly unseen
        contexts += [kn.context(ids, order - 1) for ids in random_ids]
        contexts += [kn.context(np.array([vocab.UNK_ID] * order), order - 1)]
        for context in contexts:
            p = kn.distribution(context)
            assert (p > 0).all()
            assert p.sum() == pytest.approx(1.0, abs=1e-12), (order, context)


# ----------------------------------------------------------------------------- TBPTT

MODEL = char_lm.ModelConfig(cell="lstm", hidden_size=6, embed_dim=4, method="scan")


def _params(vocab_size=7, seed=0):
    return char_lm.init_params(jax.random.key(seed), MODEL, vocab_size)


def _stream(length, vocab_size=7, seed=1):
    return np.random.default_rng(seed).integers(2, vocab_size, length).astype(np.int32)


@pytest.mark.variants
def test_carried_windows_equal_one_long_pass():
    params, ids = _params(), _stream(53)
    # evaluation: one stream in windows of 8 (the last padded) == one pass over all of it
    eval_step = char_lm.make_eval_step(MODEL)
    windowed = char_lm.evaluate(eval_step, MODEL, params, ids, 8)
    carry0 = char_lm.initial_carry(char_lm.make_cell(MODEL), params, 1)
    one = np.array([len(ids) - 1], np.int32)
    _, terms = char_lm.window_terms(MODEL, params, carry0, (ids[None, :-1], ids[None, 1:], one))
    assert windowed["loss"] == pytest.approx(float(terms.total / terms.count), rel=1e-5)
    # training: B rows walked in windows of k, the carry passed on == each row in one pass
    windows = char_lm.train_windows(ids, 3, 5)  # rows of 17 steps: 3 windows, 2 dropped
    w_inputs, w_labels, w_lengths, w_fresh = windows
    assert w_inputs.shape == w_labels.shape == (3, 3, 5)
    np.testing.assert_array_equal(w_lengths, np.full((3, 3), 5))
    np.testing.assert_array_equal(w_fresh, [[True] * 3, [False] * 3, [False] * 3])
    inputs, labels = char_lm.stream_rows(ids, 3)
    np.testing.assert_array_equal(inputs[1], ids[17:34])
    np.testing.assert_array_equal(labels[1], ids[18:35])
    for j in range(3):
        np.testing.assert_array_equal(w_inputs[j], inputs[:, 5 * j : 5 * j + 5])
        np.testing.assert_array_equal(w_labels[j], labels[:, 5 * j : 5 * j + 5])
    carry = char_lm.initial_carry(char_lm.make_cell(MODEL), params, 3)
    logits = []
    for j in range(3):
        carry, out = char_lm.apply(MODEL, params, carry, w_inputs[j], w_lengths[j])
        logits.append(out)
    full_carry, full = char_lm.apply(
        MODEL, params, char_lm.initial_carry(char_lm.make_cell(MODEL), params, 3),
        inputs[:, :15], np.full((3,), 15, np.int32),
    )  # fmt: skip
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full, rtol=1e-5, atol=1e-6)
    for c, f in zip(jax.tree.leaves(carry), jax.tree.leaves(full_carry)):
        np.testing.assert_allclose(c, f, rtol=1e-5, atol=1e-6)


def _explicit_window_loss(params, ids_BT, labels_BT, start, k, carry0, *, stop=True):
    """The loss of steps ``start .. start + k - 1`` (mean over tokens) written out step by
    step with the cell itself: the carry is run from ``carry0`` over the earlier steps
    and (``stop``) its gradient stopped at ``start``."""
    cell = char_lm.make_cell(MODEL)
    carry = carry0
    total = jnp.zeros(())
    for t in range(start + k):
        if t == start and stop:
            carry = jax.tree.map(jax.lax.stop_gradient, carry)
        x = params["embed"][ids_BT[:, t]]
        carry = jax.vmap(lambda c, x: cell.step(params["rnn"], c, cell.project(params["rnn"], x)))(
            carry, x
        )
        if t >= start:
            logits = cell.output(carry) @ params["out"]["w"] + params["out"]["b"][None]
            log_p = jax.nn.log_softmax(logits)
            total = total - jnp.take_along_axis(log_p, labels_BT[:, t, None], axis=1).sum()
    return total / (ids_BT.shape[0] * k)


def _window_objective(params, carry, window):
    """The windowed objective of one training window: its mean loss from
    ``tbptt_carry(carry)``, as the experiment's loss function computes it."""
    terms, _ = char_lm.window_loss(MODEL, params, window, carry)
    return terms.total / terms.count


def _assert_trees_close(actual, desired, **tolerances):
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
        np.testing.assert_allclose(a, d, **tolerances)


@pytest.mark.reference
def test_tbptt_gradient_is_the_windowed_objectives():
    # two rows of 11 steps: the first window reads the characters 2..4 only, the rest 5..8
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.integers(2, 5, (2, 5)), rng.integers(5, 9, (2, 6))], axis=1)
    ids = np.append(rows.ravel(), 5).astype(np.int32)
    params, k, batch = _params(vocab_size=9), 5, 2
    windows = char_lm.train_windows(ids, batch, k)  # 2 windows, 1 step dropped
    first, second = (tuple(x[j] for x in windows) for j in range(2))
    inputs, labels = char_lm.stream_rows(ids, batch)
    zero = char_lm.initial_carry(char_lm.make_cell(MODEL), params, batch)
    # the train step with SGD(1): its update is minus the gradient
    step = char_lm.make_train_step(MODEL, optax.sgd(1.0))
    key = jax.random.key(0)

    def state_of(p):  # the step donates its state: start from a copy of the params
        return harness.steps.create_train_state(jax.tree.map(jnp.copy, p), optax.sgd(1.0))

    state1, carry1, sums = step(state_of(params), zero, first, key)
    assert float(sums["loss"].count) == batch * k
    grad0 = jax.grad(_explicit_window_loss)(params, inputs, labels, 0, k, zero)
    minus_update = jax.tree.map(lambda old, new: old - new, params, state1.params)
    _assert_trees_close(minus_update, grad0, rtol=2e-4, atol=1e-6)
    # the first window is `fresh`: any incoming carry restarts from zero (a new epoch)
    junk = jax.tree.map(lambda c: jnp.full_like(c, 3.0), zero)
    state1_junk, carry1_junk, _ = step(state_of(params), junk, first, key)
    _assert_trees_close(state1_junk.params, state1.params, rtol=0, atol=0)
    _assert_trees_close(carry1_junk, carry1, rtol=0, atol=0)
    # the carry passed on is the first window's final carry (computed with the old params)
    carry, _ = char_lm.apply(MODEL, params, zero, first[0], first[2])
    _assert_trees_close(carry1, carry, rtol=1e-6)
    # the second update: the gradient of the second window's loss from that carry, a constant
    params1 = jax.tree.map(jnp.copy, state1.params)
    state2, _, _ = step(state1, carry1, second, key)
    explicit = jax.grad(
        lambda p: _explicit_window_loss(p, inputs[:, k:], labels[:, k:], 0, k, carry1)
    )(params1)
    minus_update = jax.tree.map(lambda old, new: old - new, params1, state2.params)
    _assert_trees_close(minus_update, explicit, rtol=2e-4, atol=1e-6)
    # with the carry recomputed from the stream's start, the window's gradient is the one
    # of the objective written over the whole stream with the stop at step k ...
    carry_p1, _ = char_lm.apply(MODEL, params1, zero, first[0], first[2])
    windowed = jax.grad(lambda p: _window_objective(p, carry_p1, second))
    cut = jax.grad(lambda p: _explicit_window_loss(p, inputs, labels, k, k, zero))
    _assert_trees_close(windowed(params1), cut(params1), rtol=2e-4, atol=1e-6)
    # ... which differs from the untruncated gradient (through the first window too)
    through = jax.grad(lambda p: _explicit_window_loss(p, inputs, labels, k, k, zero, stop=False))
    w_cut, w_through = (np.asarray(g["embed"]) for g in (cut(params1), through(params1)))
    np.testing.assert_array_equal(inputs, rows)
    only_in_first = sorted(set(inputs[:, :k].ravel().tolist()))  # read in window 1 only
    assert not np.any(w_cut[only_in_first]) and np.all(np.any(w_through[only_in_first], axis=1))
    # and no gradient flows into the incoming carry
    carry_grad = jax.grad(lambda c: _window_objective(params1, c, second))
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(carry_grad(carry1)))


# ----------------------------------------------------------------------------- sampling


@pytest.mark.determinism
def test_sampling_is_seeded():
    params = _params(vocab_size=9)
    prime = np.array([3, 4, 5], np.int32)

    def draw(seed, temperature=0.8):
        return char_lm.sample(
            MODEL, params, prime, 40, key=jax.random.key(seed), temperature=temperature
        )

    first = draw(0)
    assert first.shape == (40,) and first.dtype == np.int32
    np.testing.assert_array_equal(first, draw(0))
    assert not np.array_equal(first, draw(1))
    assert not set(first.tolist()) & {vocab.PAD_ID, vocab.UNK_ID}
    assert set(first.tolist()) <= set(range(2, 9))
    # near-zero temperature: the argmax of each step's logits, the carry passed on
    greedy = draw(5, temperature=1e-4)
    cell = char_lm.make_cell(MODEL)
    carry = char_lm.initial_carry(cell, params, 1)
    carry, logits = char_lm.apply(MODEL, params, carry, prime[None], np.array([3], np.int32))
    for char in greedy[:10]:
        allowed = np.asarray(logits[0, -1]).copy()
        allowed[[vocab.PAD_ID, vocab.UNK_ID]] = -np.inf
        assert char == int(np.argmax(allowed))
        carry, logits = char_lm.apply(
            MODEL, params, carry, np.array([[char]], np.int32), np.ones((1,), np.int32)
        )
    with pytest.raises(ValueError, match="`temperature`"):
        draw(0, temperature=0.0)


# ----------------------------------------------------------------------------- smoke run


@pytest.mark.training_smoke
def test_smoke_run_writes_its_run_folder(tmp_path):
    out = tmp_path / "run"
    result = char_lm.EXPERIMENT.main(["--smoke", "--out-dir", str(out)])
    saved = json.loads((out / "result.json").read_text())
    assert saved["experiment"] == "char_lm" and saved["metric"] == "bpc"
    assert saved["higher_is_better"] is False and saved["jaxseq"] == saved["test"]["bpc"]
    assert saved["baseline"] == saved["test"]["ngram_bpc"] == result.baseline
    assert 0 < saved["jaxseq"] < 8 and 0 < saved["baseline"] < 8
    assert saved["test"]["bpc"] == saved["test"]["loss"] / math.log(2)
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "smoke" and config["provenance"]["jaxseq"]
    total = config["resolved"]["total_steps"]
    assert total == result.step == 12
    records = loop.read_metrics(out / "metrics.jsonl")
    for r in records:
        assert tuple(r)[: len(harness.SCHEMA)] == harness.SCHEMA
        assert r["epoch"] == r["step"] / config["resolved"]["steps_per_epoch"]
    assert [r["split"] for r in records].count("test") == 1 and records[-1]["split"] == "test"
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["step"] == total and train[-1]["loss"] < train[0]["loss"]
    assert {r["split"] for r in records} == {"train", "dev", "test"}
    text = (out / "sample.txt").read_text()
    assert text.startswith("The ") and len(text) == len("The ") + 60 + 1
    assert os.path.getsize(out / "curves.png") > 0
    mngr = ocp.CheckpointManager(os.path.abspath(out / "checkpoints"))
    assert mngr.latest_step() == total
    mngr.close()
    # the folder refuses a second run without --resume / --overwrite
    with pytest.raises(SystemExit, match="already holds results"):
        char_lm.EXPERIMENT.main(["--smoke", "--out-dir", str(out)])


@pytest.mark.roundtrip
@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_params(tmp_path):
    def latest(folder):
        mngr = ocp.CheckpointManager(os.path.abspath(folder / "checkpoints"))
        step = mngr.latest_step()
        state = mngr.restore(step, args=ocp.args.StandardRestore())
        mngr.close()
        return step, state

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    char_lm.EXPERIMENT.main(["--smoke", "--out-dir", str(whole)])
    char_lm.EXPERIMENT.main(["--smoke", "--out-dir", str(parts), "--train.stop-after", "5"])
    assert latest(parts)[0] == 5  # mid-epoch: the carry is in the checkpoint
    char_lm.EXPERIMENT.main(["--smoke", "--out-dir", str(parts), "--resume"])
    (step, a), (step_whole, b) = latest(parts), latest(whole)
    assert step == step_whole == 12 and set(a) == {"step", "params", "opt_state", "carry"}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    evaluated = [
        [r for r in loop.read_metrics(f / "metrics.jsonl") if r["split"] != "train"]
        for f in (parts, whole)
    ]
    assert evaluated[0] == evaluated[1]
    assert (parts / "sample.txt").read_text() == (whole / "sample.txt").read_text()
