"""Write a tokenizer as a Hugging Face tokenizer directory, and check transformers' ids against bigtrain's.

A Hugging Face tokenizer is copied unchanged. A sentencepiece model is rebuilt with the ``tokenizers`` library
from its own proto (pieces, scores, byte fallback, normaliser settings) so that ids are equal, not just close:

* normaliser: a ``▁`` in front (sentencepiece's dummy prefix) and every space as ``▁``;
* pre-tokeniser: sentencepiece cuts the text into words before it merges, a word starting at the beginning and at
  each ``▁`` that follows a character other than ``▁``, so a run of spaces sticks to the word after it
  (``▁▁▁▁return``). ``Metaspace(split=True)`` would instead cut before every ``▁`` (``▁``, ``▁``, ``▁``,
  ``▁return``), which loses the whitespace pieces a model trained on code has. The regex ``▁+[^▁]*|[^▁]+``
  reproduces sentencepiece's words (``▁[^▁]*|[^▁]+`` when whitespace-only pieces are not allowed);
* model: BPE with merges ordered by piece score (sentencepiece merges the best-scoring pair first), or Unigram
  with the same scores; byte fallback as in the model. BPE (what ``bigtrain tokenizer train`` makes by default)
  comes out exact; Unigram can still differ where two segmentations score the same (the two Viterbi searches
  break ties differently) and on a literal "<s>"-like string whose first character the model does not cover;
* special pieces are never read from the text (``split_special_tokens``), as in sentencepiece;
* decoder: ``▁`` back to spaces, byte pieces fused, the dummy prefix's space dropped.

``verify_hf_tokenizer`` is the proof: on a sample of real and generated documents, transformers' ids and decoding
must equal bigtrain's.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from bigtrain.errors import BigtrainError
from bigtrain.tokenizer.base import first_line

SPACE = "\u2581"
MAX_DOC_CHARS = 20_000  # long documents are cut so that a check of hundreds of them stays quick
# sentencepiece_model.proto piece types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


# ------------------------------------------------------------------------------------------- writing
def save_hf_tokenizer(tok, out_dir: Path, model_max_length: int) -> None:
    """Write ``tok`` into ``out_dir`` so that ``AutoTokenizer.from_pretrained(out_dir)`` gives the same ids.

    A Hugging Face tokenizer's files are copied byte for byte. A sentencepiece tokenizer becomes tokenizer.json +
    tokenizer_config.json (bos/eos/pad/unk tokens; BOS added by ``tok(text)`` as Llama does) + tokenizer.model,
    loaded by transformers as a ``PreTrainedTokenizerFast``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tok.kind == "hf":
        for f in tok.files():
            shutil.copyfile(f, out_dir / f.name)
        return
    if tok.kind != "sentencepiece":
        raise BigtrainError(f"{tok.path}: cannot export a {tok.kind!r} tokenizer")
    from transformers import PreTrainedTokenizerFast

    backend = sentencepiece_to_tokenizers(tok)
    specials = {f"{name}_token": tok.id_to_piece(i) for name in ("bos", "eos", "unk", "pad")
                if (i := getattr(tok, f"{name}_id")) >= 0}
    # split_special_tokens: sentencepiece never reads "<s>" in the text as BOS, so transformers must not either
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, split_special_tokens=True,
                                   chat_template=tok.chat_template, **specials)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fast.save_pretrained(tmp)
        cfg_file = Path(tmp) / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        # The class name both transformers 4 and 5 map to the plain tokenizers-backed tokenizer, which keeps this
        # pipeline (LlamaTokenizer would rebuild its own).
        cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tok.bos_id >= 0,
                    "add_eos_token": False})
        for key in ("is_local", "name_or_path"):
            cfg.pop(key, None)
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        for f in Path(tmp).iterdir():
            shutil.move(str(f), out_dir / f.name)
    (out_dir / "tokenizer.model").write_bytes(tok.model_bytes)


def sentencepiece_to_tokenizers(tok):
    """A ``tokenizers.Tokenizer`` whose ids equal the sentencepiece model's (see the module docstring)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    m = pb.ModelProto()
    m.ParseFromString(tok.model_bytes)
    ts, ns = m.trainer_spec, m.normalizer_spec
    for bad, what in ((ts.treat_whitespace_as_suffix, "treat_whitespace_as_suffix"),
                      (ns.remove_extra_whitespaces, "remove_extra_whitespaces")):
        if bad:
            raise BigtrainError(f"{tok.path}: sentencepiece models with {what}=true cannot be exported to "
                                "Hugging Face format with equal ids")
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    byte_fallback = bool(ts.byte_fallback)
    if ts.model_type == pb.TrainerSpec.BPE:
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        normal = {p for p, _, t in pieces if t == _NORMAL}
        # Every split of a piece into two pieces is a merge; ranked by the merged piece's id (= score order).
        merges = sorted((vocab[p], vocab[p[:k]], vocab[p[k:]], p[:k], p[k:])
                        for p in normal for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal)
        model = models.BPE(vocab, [(a, b) for *_, a, b in merges], unk_token=pieces[ts.unk_id][0],
                           byte_fallback=byte_fallback, fuse_unk=True)
    elif ts.model_type == pb.TrainerSpec.UNIGRAM:
        # Sentencepiece never matches control, <unk> or byte pieces in the text; the Hugging Face lattice holds every
        # piece, so give those a score no segmentation picks (an unknown character's penalty is on every path).
        never = min(s for _, s, t in pieces if t == _NORMAL) - 1e6
        model = models.Unigram([(p, s if t in (_NORMAL, _USER_DEFINED) else never) for p, s, t in pieces],
                               unk_id=ts.unk_id, byte_fallback=byte_fallback)
    else:
        raise BigtrainError(f"{tok.path}: sentencepiece model type {pb.TrainerSpec.ModelType.Name(ts.model_type)} "
                            "cannot be exported (expected BPE or UNIGRAM)")
    t = Tokenizer(model)
    norm = [normalizers.Precompiled(ns.precompiled_charsmap)] if ns.precompiled_charsmap else []
    if ns.add_dummy_prefix:
        norm.append(normalizers.Prepend(SPACE))
    norm.append(normalizers.Replace(" ", SPACE))
    t.normalizer = normalizers.Sequence(norm)
    if ts.split_by_whitespace:
        run = "+" if ts.allow_whitespace_only_pieces else ""
        word = f"{SPACE}{run}[^{SPACE}]*|[^{SPACE}]+"
        t.pre_tokenizer = pre_tokenizers.Split(Regex(word), behavior="isolated")
    dec = [decoders.Replace(SPACE, " ")] + ([decoders.ByteFallback()] if byte_fallback else []) + [decoders.Fuse()]
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    t.decoder = decoders.Sequence(dec)
    t.add_special_tokens([AddedToken(p, special=True, normalized=False)
                          for p, _, kind in pieces if kind in (_CONTROL, _UNKNOWN)])
    t.add_tokens([AddedToken(p, special=False, normalized=False) for p, _, kind in pieces if kind == _USER_DEFINED])
    if tok.bos_id >= 0:
        bos = tok.id_to_piece(tok.bos_id)
        t.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                         special_tokens=[(bos, tok.bos_id)])
    return t


# ------------------------------------------------------------------------------------------- sample
def sample_texts(tok, n: int = 300) -> list[str]:
    """Documents to check an export on: up to ``n`` documents of the data the tokenizer was trained on (when its
    metadata names readable inputs), then ``n`` generated ones (code with indentation, tabs, runs of spaces and
    blank lines, numbers, unicode, leading/trailing spaces, strings that look like special tokens)."""
    return training_texts(tok, n) + generated_texts(n)


def training_texts(tok, n: int) -> list[str]:
    trained = (getattr(tok, "meta", None) or {}).get("trained_on") or {}
    return documents_of([Path(p) for p in trained.get("inputs") or []], n, trained.get("text_field", "text"))


def documents_of(inputs: list[Path], n: int, text_field: str = "text") -> list[str]:
    """Up to ``n`` documents spread over the readable ``inputs`` (raw jsonl / parquet / text files)."""
    from bigtrain.data.readers import iter_documents

    inputs = [p for p in inputs if p.is_file()]
    texts: list[str] = []
    for k, path in enumerate(inputs):
        want = (n - len(texts)) // (len(inputs) - k)  # spread over the inputs
        try:
            for text, _reason in iter_documents(path, text_field):
                if len(texts) >= n or want <= 0:
                    break
                if text:
                    texts.append(text[:MAX_DOC_CHARS])
                    want -= 1
        except (BigtrainError, OSError):
            continue  # the data moved or changed: the generated sample still runs
    return texts


_WORDS = ("value result index count total name items data config path line token batch size offset parse "
          "render check update self other error default buffer stream").split()
_UNICODE = ["café", "naïve", "straße", "Ελληνικά", "кириллица", "中文字符", "日本語のテキスト", "한국어", "שלום",
            "مرحبا", "🎉", "👩‍💻", "e\u0301", "∑ x² ≤ ∞", "«quotes»", "\u00a0nbsp", "—", "…", "ﬁ", "𝔘𝔫𝔦"]
_SPECIALISH = ["<s>", "</s>", "<unk>", "<pad>", "<|endoftext|>", "<|begin_of_text|>", "<0x41>", "[INST]",
               "<|im_start|>"]


def generated_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` varied documents, the same for a given seed."""
    rng = random.Random(seed)
    makers = [_python, _tabbed, _aligned, _prose, _data, _whitespace]
    return [makers[i % len(makers)](rng) for i in range(n)]


def _w(rng) -> str:
    return rng.choice(_WORDS)


def _num(rng) -> str:
    return rng.choice([str(rng.randint(0, 10 ** rng.randint(1, 9))), f"{rng.uniform(-1e3, 1e3):.{rng.randint(1, 6)}f}",
                       hex(rng.randint(0, 1 << 32)), f"{rng.randint(1, 9)}e-{rng.randint(1, 12)}", "2024-01-31",
                       "1,234,567", "007"])


def _python(rng) -> str:
    lines = [f"def {_w(rng)}_{_w(rng)}({_w(rng)}, {_w(rng)}={_num(rng)}):",
             f'    """{_w(rng).capitalize()} the {_w(rng)}."""']
    depth = 1
    for _ in range(rng.randint(3, 25)):
        ind = "    " * depth
        r = rng.random()
        if r < 0.2 and depth < 5:
            lines.append(f"{ind}{rng.choice(['if', 'for', 'while', 'with'])} {_w(rng)} in {_w(rng)}s:")
            depth += 1
        elif r < 0.3 and depth > 1:
            depth -= 1
            lines.append("")
        elif r < 0.45:
            lines.append(f"{ind}{_w(rng)} = {_num(rng)}{' ' * rng.randint(1, 4)}# {_w(rng)} {rng.choice(_UNICODE)}")
        elif r < 0.55:
            lines.append(" " * rng.randint(0, 3) if rng.random() < 0.5 else ind)  # blank lines with spaces
        else:
            call = f"{_w(rng)}.{_w(rng)}({_w(rng)}[{rng.randint(0, 99)}], {_num(rng)})"
            lines.append(f"{ind}{call}{' ' * rng.randint(0, 2)}")
    lines.append(f"    return {_w(rng)}")
    return "\n".join(lines) + "\n" * rng.randint(0, 3)


def _tabbed(rng) -> str:
    out = [f"func {_w(rng)}() {{"]
    for _ in range(rng.randint(2, 12)):
        out.append("\t" * rng.randint(1, 3) + f"{_w(rng)} := {_num(rng)}" + rng.choice(["", "\t// " + _w(rng), "  "]))
    out += ["}", "", f"{_w(rng)}:\n\t$(CC) -o {_w(rng)} {_w(rng)}.c\t\t# {_w(rng)}"]
    return "\n".join(out)


def _aligned(rng) -> str:
    rows = [f"{_w(rng):<{rng.randint(8, 20)}}= {_num(rng):>{rng.randint(6, 14)}}    {rng.choice(_SPECIALISH)}"
            for _ in range(rng.randint(2, 10))]
    return " " * rng.randint(1, 8) + "\n".join(rows) + " " * rng.randint(0, 5)


def _prose(rng) -> str:
    words = [rng.choice(_WORDS + _UNICODE + _SPECIALISH[:2]) if rng.random() < 0.9 else _num(rng)
             for _ in range(rng.randint(5, 80))]
    seps = [rng.choice([" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n", "   "]) for _ in words]
    return rng.choice(["", " ", "  ", "\n"]) + "".join(w + s for w, s in zip(words, seps)).capitalize()


def _data(rng) -> str:
    items = ", ".join(f'"{_w(rng)}": {rng.choice([_num(rng), chr(34) + rng.choice(_UNICODE) + chr(34), "null"])}'
                      for _ in range(rng.randint(1, 8)))
    return rng.choice([f"{{{items}}}", f"| {_w(rng)} | {_num(rng)} |\r\n|---|---|\r\n| {rng.choice(_UNICODE)} | x |",
                       f"<div class=\"{_w(rng)}\">\n  <s>{_w(rng)}</s>\n</div>"])


def _whitespace(rng) -> str:
    parts = [rng.choice([" " * rng.randint(1, 40), "\t" * rng.randint(1, 6), "\n" * rng.randint(1, 5), " \t ",
                         "\r\n", "\u3000", _w(rng), _num(rng), rng.choice(_UNICODE), SPACE])
             for _ in range(rng.randint(3, 30))]
    return "".join(parts)


# ------------------------------------------------------------------------------------------- check
def verify_hf_tokenizer(out_dir: Path, tok, texts: list[str]) -> None:
    """transformers' AutoTokenizer on ``out_dir`` must give ``tok``'s ids (no added specials) and decode them to
    ``tok``'s text on every document; else BigtrainError naming the first document and position that differ."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(out_dir))
    except Exception as e:  # transformers raises many types for an unusable directory
        raise BigtrainError(f"{out_dir}: transformers cannot load the exported tokenizer ({first_line(e)})") from None
    hf.model_max_length = 1 << 62  # no "longer than the model" warnings: these are whole documents
    ours = tok.encode_batch(texts)
    theirs = hf(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            j = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            raise BigtrainError(
                f"{out_dir}: transformers' ids differ from bigtrain's ({tok.kind}) on document {i} of {len(texts)} "
                f"at token {j}: {[tok.id_to_piece(x) for x in a[j:j + 3]]} vs "
                f"{hf.convert_ids_to_tokens(b[j:j + 3])}")
        mine = tok.decode(a)
        back = hf.decode(b, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if back != mine:
            k = next((k for k in range(min(len(mine), len(back))) if mine[k] != back[k]), min(len(mine), len(back)))
            raise BigtrainError(f"{out_dir}: transformers decodes document {i} of {len(texts)} differently from "
                                f"bigtrain ({tok.kind}) at character {k}: {mine[k:k + 12]!r} vs {back[k:k + 12]!r}")
