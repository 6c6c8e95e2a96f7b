"""Train a sentencepiece tokenizer (byte fallback, fixed special ids) from raw-text inputs.

Large inputs are not read whole: at most ``max_input_bytes`` of text is read (split evenly over the
inputs, each read from its start), and at most ``max_sentences`` lines of it are kept by seeded
reservoir sampling. Sentencepiece treats each line as a sentence.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from bigtrain.errors import BigtrainError
from bigtrain.tokenizer.model import BOS_ID, EOS_ID, META_FILE, MODEL_FILE, PAD_ID, UNK_ID, load_tokenizer

MAX_LINE_BYTES = 8192


def sample_sentences(inputs: list[Path], text_field: str = "text", max_sentences: int = 1_000_000,
                     max_input_bytes: int = 1 << 30, seed: int = 0) -> tuple[list[str], dict]:
    from bigtrain.data.readers import iter_documents

    rng = random.Random(seed)
    budget = max(1, max_input_bytes // max(1, len(inputs)))
    sample: list[str] = []
    seen = docs = 0
    for path in inputs:
        read = 0
        for text, _reason in iter_documents(path, text_field):
            if text is None:
                continue
            docs += 1
            for line in text.split("\n"):
                line = line.strip()
                if not line:
                    continue
                if len(line) > MAX_LINE_BYTES:
                    line = line[:MAX_LINE_BYTES]
                read += len(line)
                seen += 1
                if len(sample) < max_sentences:
                    sample.append(line)
                else:
                    j = rng.randrange(seen)
                    if j < max_sentences:
                        sample[j] = line
            if read >= budget:
                break
    return sample, {"documents": docs, "lines_seen": seen, "lines_used": len(sample)}


def train_tokenizer(inputs: list[str | Path], vocab_size: int, output: str | Path, model_type: str = "bpe",
                    text_field: str = "text", max_sentences: int = 1_000_000, max_input_bytes: int = 1 << 30,
                    threads: int | None = None, seed: int = 0, verbose: bool = False):
    """Train and write ``output/tokenizer.model`` + ``output/tokenizer.json``; return the Tokenizer."""
    import sentencepiece as spm

    from bigtrain import __version__
    from bigtrain.data.readers import expand_inputs

    if model_type not in ("bpe", "unigram"):
        raise BigtrainError(f"--model-type: expected bpe or unigram, got {model_type!r}")
    if vocab_size < 300:
        raise BigtrainError(f"--vocab-size {vocab_size}: must be at least 300 (256 byte-fallback pieces, "
                            "4 special pieces and some merges)")
    files = expand_inputs([str(p) for p in inputs])
    t0 = time.time()
    sentences, stats = sample_sentences(files, text_field, max_sentences, max_input_bytes, seed)
    if not sentences:
        raise BigtrainError(f"{', '.join(map(str, files))}: no text to train a tokenizer on")
    if verbose:
        print(f"tokenizer: {stats['documents']} documents, {stats['lines_used']} of {stats['lines_seen']} "
              f"lines sampled ({time.time() - t0:.1f}s)", flush=True)
    buf = io.BytesIO()
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed + 1)
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, byte_fallback=True, character_coverage=0.9995,
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, pad_piece="<pad>",
            normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
            allow_whitespace_only_pieces=True, max_sentence_length=MAX_LINE_BYTES * 4,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=threads or os.cpu_count() or 1,
            minloglevel=0 if verbose else 2)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "training failed"
        raise BigtrainError(f"sentencepiece could not train a {model_type} tokenizer with --vocab-size "
                            f"{vocab_size} on this input ({msg}); use a smaller vocabulary or more text") from None
    model_bytes = buf.getvalue()
    from bigtrain.tokenizer.model import Tokenizer, sha256_bytes

    tok = Tokenizer(model_bytes)
    meta = {"type": "sentencepiece", "model_type": model_type, "vocab_size": tok.vocab_size,
            "unk_id": tok.unk_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
            "byte_fallback": True, "sha256": sha256_bytes(model_bytes), "bigtrain_version": __version__,
            "trained_on": {"inputs": [str(f) for f in files], "text_field": text_field, **stats}}
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / MODEL_FILE).write_bytes(model_bytes)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            if not out.is_dir():
                raise BigtrainError(f"--output {out}: exists and is not a directory")
            for name in (MODEL_FILE, META_FILE):  # replace file by file, model first
                os.replace(tmp / name, out / name)
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out)
