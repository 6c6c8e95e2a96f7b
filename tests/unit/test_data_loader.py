"""Loader over preprocessed shards: determinism, exact resume under a changed DP degree, mixing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from bigtrain.config.job import load_job_config
from bigtrain.data.build import build_loader, build_source
from bigtrain.data.shard_source import MixtureSource, ShardWindowSource
from bigtrain.data.shards import FORMAT, read_shard, shard_bytes
from bigtrain.errors import BigtrainError


def make_dataset(root, n_docs=300, n_shards=5, vocab=1000, seed=0, tok_sha="t" * 64, heldout_docs=20):
    """A dataset directory written the way `bigtrain preprocess` writes it (without Ray)."""
    rng = np.random.default_rng(seed)
    shards = []
    for split, n, count in (("train", n_shards, n_docs), ("heldout", 1, heldout_docs)):
        docs = [rng.integers(4, vocab, rng.integers(5, 200)).astype(np.uint16) for _ in range(count)]
        for d in docs:
            d[-1] = 2  # EOS
        for s in range(n):
            part = [(f"{seed:04d}{split[0]}{s:03d}{i:08d}", d) for i, d in enumerate(docs) if i % n == s]
            rel = f"{split}/shard-{s:05d}.tar"
            (root / split).mkdir(parents=True, exist_ok=True)
            data = shard_bytes(part)
            (root / rel).write_bytes(data)
            shards.append({"path": rel, "split": split, "samples": len(part),
                           "tokens": int(sum(len(d) for _, d in part)),
                           "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": FORMAT, "tokenizer": {"vocab_size": vocab, "sha256": tok_sha}, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    a = make_dataset(tmp_path_factory.mktemp("a"), seed=1)
    b = make_dataset(tmp_path_factory.mktemp("b"), seed=2, n_docs=200, n_shards=3)
    return str(a), str(b)


def job(paths, weights=(), seq_len=32, mbs=2, shuffle_buffer=16, vocab=1000, seed=7):
    return load_job_config(None, [f"data.path={json.dumps(list(paths))}", f"data.weights={json.dumps(list(weights))}",
                                  f"model.seq_len={seq_len}", f"train.micro_batch_size={mbs}",
                                  f"data.shuffle_buffer={shuffle_buffer}", f"model.vocab_size={vocab}",
                                  f"train.seed={seed}"])


def test_windows_cover_the_stream_once_per_epoch(datasets):
    src = ShardWindowSource(datasets[0], seq_len=32, seed=3, shuffle_buffer=16)
    n = src.n_windows
    # concatenated stream of epoch 0 in the seeded shard order
    order, _ = src._epoch(0)
    stream = np.concatenate([read_shard(src.paths[i])[2] for i in order]).astype(np.int64)
    got = {tuple(src.window(i)) for i in range(n)}
    want = {tuple(stream[w * 32: w * 32 + 33]) for w in range(n)}
    assert got == want and len(got) == n
    # shuffled, deterministic, and a fresh epoch has a fresh order
    again = ShardWindowSource(datasets[0], seq_len=32, seed=3, shuffle_buffer=16)
    assert all(np.array_equal(src.window(i), again.window(i)) for i in range(0, 3 * n, 7))
    assert [src._position(i)[1] for i in range(n)] != list(range(n))
    assert [src._position(n + i)[1] for i in range(n)] != [src._position(i)[1] for i in range(n)]
    other = ShardWindowSource(datasets[0], seq_len=32, seed=4, shuffle_buffer=16)
    assert any(not np.array_equal(src.window(i), other.window(i)) for i in range(10))


def _run(jb, dp_size, steps, state=None):
    """Global samples seen over `steps` steps of global batch 4 by `dp_size` ranks (in global order)."""
    loaders = [build_loader(jb, r, dp_size) for r in range(dp_size)]
    if state is not None:
        for ld in loaders:
            ld.load_state_dict(state)
    accum = 4 // (jb.train.micro_batch_size * dp_size)
    seen = []
    for _ in range(steps):
        for _ in range(accum):
            per_rank = [ld.next_batch()[0] for ld in loaders]
            for x in per_rank:
                seen.extend(tuple(row.tolist()) for row in x)
    states = [ld.state_dict() for ld in loaders]
    assert all(s == states[0] for s in states)
    return seen, states[0]


@pytest.mark.parametrize("before,after", [(1, 1), (2, 1), (1, 2)])
def test_resume_exact_across_dp(datasets, before, after):
    jb = job(datasets, weights=[0.5, 0.5])
    full, _ = _run(jb, 1, 12)
    first, state = _run(jb, before, 5)
    assert state == {"consumed_samples": 20}
    rest, _ = _run(jb, after, 7, state=state)
    assert first + rest == full


def test_labels_are_inputs_shifted(datasets):
    ld = build_loader(job(datasets[:1]), 0, 1)
    x, y = ld.next_batch()
    assert x.shape == y.shape == (2, 32) and str(x.dtype) == "torch.int64"
    assert (x[:, 1:] == y[:, :-1]).all()


def test_mixing_weights_within_one_percent(datasets):
    src = build_source(job(datasets, weights=[0.7, 0.3], seq_len=8))
    assert isinstance(src, MixtureSource)
    tokens = np.zeros(2)
    for i in range(50_000):  # tokens trained on per sample: the window's inputs
        d, j = src.locate(i)
        tokens[d] += len(src.sources[d].window(j)) - 1
    share = tokens / tokens.sum()
    assert abs(share[0] - 0.7) < 0.01 and abs(share[1] - 0.3) < 0.01
    # the shares also hold over a short prefix and each source is read in its own order
    ids = [src.sample_id(i) for i in range(1000)]
    assert abs(sum(s.startswith("a") for s in ids) / 1000 - 0.7) < 0.01
    assert [src.locate(i)[1] for i in range(20) if src.locate(i)[0] == 0] == list(
        range(sum(src.locate(i)[0] == 0 for i in range(20))))


def test_heldout_split(datasets):
    ld = build_loader(job(datasets[:1]), 0, 1, split="heldout")
    ld.next_batch()
    assert all("/heldout/" in s for s in ld.last_sample_ids)


def test_vocab_larger_than_model_is_an_error(datasets):
    with pytest.raises(BigtrainError, match="model.vocab_size=500"):
        build_loader(job(datasets[:1], vocab=500), 0, 1)


def test_bad_paths(tmp_path, datasets):
    (tmp_path / "noman").mkdir()
    with pytest.raises(BigtrainError, match="no manifest.json"):
        build_loader(job([str(tmp_path / "noman")]), 0, 1)
    with pytest.raises(BigtrainError, match="cannot be mixed"):
        build_loader(job([datasets[0], "synthetic"], weights=[1, 1]), 0, 1)
    with pytest.raises(BigtrainError, match="does not exist"):
        build_loader(job([str(tmp_path / "missing")]), 0, 1)
    c = make_dataset(tmp_path / "c", tok_sha="u" * 64)
    with pytest.raises(BigtrainError, match="different tokenizers"):
        build_loader(job([datasets[0], str(c)], weights=[1, 1]), 0, 1)


def test_synthetic_and_npy_still_work(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(1000) % 100)
    for path in ("synthetic", str(tmp_path / "t.npy")):
        x, y = build_loader(job([path], vocab=256), 0, 1).next_batch()
        assert x.shape == (2, 32)
