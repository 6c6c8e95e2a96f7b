"""Hugging Face tokenizers built in-process with the `tokenizers` library (never downloaded), saved as the
directories transformers writes, and the text they are checked on."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tests.helpers import REPO

CORPUS = REPO / "data" / "python-docs.jsonl.gz"

# Llama 3's pre-tokenizer split, then GPT-2's byte-level mapping
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
                 "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
                 "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
                 "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def corpus_docs(n: int | None = None) -> list[str]:
    docs = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if n is not None and len(docs) >= n:
                break
    return docs


def _save(tk, out: Path, **specials) -> Path:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tk, **specials).save_pretrained(str(out))
    return out


def make_byte_level_bpe(out: Path, docs: list[str], vocab_size: int = 1200) -> Path:
    """Like Llama 3 / GPT-2: byte-level BPE, BOS added by the post-processor, a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, EOT, "<|start_header_id|>", "<|end_header_id|>"]
    tk.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tk.token_to_id(BOS))])
    return _save(tk, out, bos_token=BOS, eos_token=EOS, chat_template=CHAT_TEMPLATE)


def make_metaspace_bpe(out: Path, docs: list[str], vocab_size: int = 800) -> Path:
    """Like Llama 2's tokenizer.json: ▁ for spaces with a prefix ▁, BPE with byte fallback (<0x00>…<0xFF>) for
    the characters the small alphabet leaves out."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                                     limit_alphabet=90, show_progress=False))
    # Byte pieces after the specials, as sentencepiece lays them out; merges name tokens, not ids.
    j = json.loads(tk.to_str())
    order = sorted(j["model"]["vocab"], key=j["model"]["vocab"].get)
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    order = order[:3] + byte_pieces + [t for t in order[3:] if t not in set(byte_pieces)]
    j["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    tk = Tokenizer.from_str(json.dumps(j))
    return _save(tk, out, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def make_big_word_level(out: Path, docs: list[str], filler: int = 66_000) -> Path:
    """A word-level tokenizer whose corpus words all have ids above 65,535 (so tokens need 4 bytes), and that
    names no EOS token (its end-of-document token "<eos>" must be given with --eos-token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for d in docs for w in d.split()})
    vocab = {"[UNK]": 0, "<eos>": 1, **{f"<filler{i}>": i + 2 for i in range(filler)}}
    vocab.update({w: len(vocab) + k for k, w in enumerate(words)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _save(tk, out, unk_token="[UNK]")
