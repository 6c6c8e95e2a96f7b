"""Loader over preprocessed shards: determinism, exact resume under a changed DP degree, mixing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
            per_rank = [ld.next_batch().input_ids for ld in loaders]
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
    b = ld.next_batch()
    x, y = b.input_ids, b.labels
    assert b.doc_ids is None and b.position_ids is None
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
    def text(ids) -> str:
        return "," + ",".join(str(int(t)) for t in ids) + ","

    heldout = text(read_shard(Path(datasets[0]) / "heldout" / "shard-00000.tar")[2])
    batch = build_loader(job(datasets[:1]), 0, 1, split="heldout").next_batch()
    assert batch.input_ids.shape == (2, 32)
    assert all(text(row) in heldout for row in batch.input_ids)  # windows of the held-out stream
    train = build_loader(job(datasets[:1]), 0, 1, split="train").next_batch()
    assert not any(text(row) in heldout for row in train.input_ids)  # and the train split's are not


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
        assert build_loader(job([path], vocab=256), 0, 1).next_batch().input_ids.shape == (2, 32)


def _reference_windows(directory, seq_len, seed, shuffle_buffer, indices, split="train", stream=0):
    """Windows as the module docstring of shard_source defines them, from whole decoded shards: the
    straightforward implementation the mapped reader must reproduce token for token."""
    manifest = json.loads((directory / "manifest.json").read_text())
    shards = [s for s in manifest["shards"] if s["split"] == split and s["tokens"] > 0]
    tokens = [read_shard(directory / s["path"])[2].astype(np.int64) for s in shards]
    n_windows = (sum(map(len, tokens)) - 1) // seq_len
    out = []
    for i in indices:
        epoch, k = divmod(i, n_windows)
        order = (np.random.default_rng([seed, stream, epoch, 1]).permutation(len(shards)) if shuffle_buffer > 0
                 else np.arange(len(shards)))
        stream_tokens = np.concatenate([tokens[o] for o in order])
        if shuffle_buffer > 1:
            block, r = divmod(k, shuffle_buffer)
            lo = block * shuffle_buffer
            size = min(shuffle_buffer, n_windows - lo)
            k = int(np.random.default_rng([seed, stream, epoch, 2, block]).permutation(size)[r]) + lo
        out.append(stream_tokens[k * seq_len:k * seq_len + seq_len + 1])
    return out


def _varied_dataset(root, dtype, seed=0):
    """Shards from a handful of tokens (shorter than a window) to long documents, and one empty shard:
    windows span documents and one, two or more shards."""
    rng = np.random.default_rng(seed)
    high = 1000 if dtype == np.uint16 else 100_000
    docs_per_shard = [[1], [3, 1, 2], [900], [1, 1, 1, 1, 1], [], [50, 400, 7, 2000, 5], [33] * 20, [2]]
    shards = []
    written = {}
    (root / "train").mkdir(parents=True)
    for s, lengths in enumerate(docs_per_shard):
        docs = [(f"{s:04d}{i:028d}", rng.integers(0, high, n).astype(dtype)) for i, n in enumerate(lengths)]
        rel = f"train/shard-{s:05d}.tar"
        data = shard_bytes(docs)
        (root / rel).write_bytes(data)
        written[rel] = docs
        shards.append({"path": rel, "split": "train", "samples": len(docs), "bytes": len(data),
                       "tokens": int(sum(lengths)), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": FORMAT, "tokenizer": {"vocab_size": high, "sha256": "t" * 64}, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, written


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_read_shard_returns_the_written_documents(tmp_path, dtype):
    root, written = _varied_dataset(tmp_path, dtype)
    for rel, docs in written.items():
        keys, lengths, tokens = read_shard(root / rel)
        assert keys == [k for k, _ in docs] and lengths.dtype == np.int64
        assert lengths.tolist() == [len(d) for _, d in docs]
        assert tokens.dtype == np.dtype(dtype if docs else np.uint16)  # an empty shard has no dtype to tell
        assert np.array_equal(tokens, np.concatenate([d for _, d in docs]) if docs else np.zeros(0, dtype))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_mapped_windows_match_whole_shard_reference(tmp_path, monkeypatch, dtype):
    import bigtrain.data.shard_source as shard_source

    root, _ = _varied_dataset(tmp_path, dtype)
    rng = np.random.default_rng(1)
    for seq_len in (1, 4, 31, 256, 1500):
        for shuffle_buffer in (0, 1, 3, 64):
            src = ShardWindowSource(root, seq_len=seq_len, seed=5, shuffle_buffer=shuffle_buffer)
            n = src.n_windows
            order = list(range(3 * n))  # three epochs in order, then random access
            order += rng.integers(0, 5 * n, 200).tolist()
            want = _reference_windows(root, seq_len, 5, shuffle_buffer, order)
            for i, w in zip(order, want):
                got = src.window(i)
                assert got.dtype == np.int64 and np.array_equal(got, w), (seq_len, shuffle_buffer, i)
    # a one-shard cache and a release of the mapped pages at every window change nothing
    monkeypatch.setattr(shard_source, "MAX_OPEN_SHARDS", 1)
    monkeypatch.setattr(shard_source, "RELEASE_WINDOWS", 1)
    src = ShardWindowSource(root, seq_len=31, seed=5, shuffle_buffer=3, cache_shards=1)
    assert src.cache_shards == 1
    idx = rng.integers(0, 4 * src.n_windows, 300).tolist()
    for i, w in zip(idx, _reference_windows(root, 31, 5, 3, idx)):
        assert np.array_equal(src.window(i), w)


def test_shard_hashed_on_first_open_only(tmp_path, monkeypatch):
    import bigtrain.data.shard_source as shard_source
    import bigtrain.data.shards as shards

    root, _ = _varied_dataset(tmp_path, np.uint16)
    hashed, opened = [], []
    real_check, real_open = shards._check_sha256, shard_source.open_shard
    monkeypatch.setattr(shards, "_check_sha256",
                        lambda path, buf, sha: (hashed.append(path.name), real_check(path, buf, sha)))
    monkeypatch.setattr(shard_source, "open_shard",
                        lambda path, sha: (opened.append(path.name), real_open(path, sha))[1])
    monkeypatch.setattr(shard_source, "MAX_OPEN_SHARDS", 1)
    src = ShardWindowSource(root, seq_len=4, seed=0, shuffle_buffer=0, cache_shards=1)
    for i in range(3 * src.n_windows):  # three passes with a one-shard cache: each shard is opened 3 times
        src.window(i)
    assert len(opened) >= 3 * len(set(opened)) >= 3 * 6
    assert sorted(hashed) == sorted(set(opened))
    # a byte changed in place (same size) is refused in one line naming the shard
    target = src.paths[5]
    data = bytearray(target.read_bytes())
    data[512 + 128] ^= 0xFF
    target.write_bytes(bytes(data))
    fresh = ShardWindowSource(root, seq_len=4, seed=0, shuffle_buffer=0)
    with pytest.raises(BigtrainError, match=rf"^{target}: shard's sha256 is not the one in the manifest[^\n]*$"):
        for i in range(fresh.n_windows):
            fresh.window(i)
    target.write_bytes(bytes(data[:-1024]))
    with pytest.raises(BigtrainError, match=rf"^{target}: shard has {len(data) - 1024} bytes, the manifest says"):
        ShardWindowSource(root, seq_len=4, seed=0)
