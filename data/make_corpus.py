"""Rebuild data/python-docs.jsonl.gz, the small real-text corpus bundled with bigtrain.

Source: the reStructuredText sources of the Python 3.11 documentation as shipped by Debian 12 in the
package ``python3.11-doc`` (``/usr/share/doc/python3.11/html/_sources``), licensed under the PSF
License Agreement (see LICENSE-python-docs.txt beside this file).

How it was produced (no network beyond Debian's package mirror)::

    apt-get download python3.11-doc          # python3.11-doc_3.11.2-6+deb12u8_all.deb
    dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python data/make_corpus.py /tmp/pydoc/usr/share/doc/python3.11/html/_sources data/python-docs.jsonl.gz

The markup is reduced to plain prose: directives, comments, code blocks and tables are dropped,
roles such as :func:`open` become ``open``, paragraphs are unwrapped. Each section (a heading and
its paragraphs) with at least MIN_CHARS characters becomes one JSON line {"text", "source"}. Files
are visited in sorted order and gzip is written with mtime 0, so the output is reproducible.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

FOLDERS = ["tutorial", "howto", "faq", "reference", "library", "whatsnew", "using", "extending"]
MIN_CHARS = 300
MAX_BYTES = 4_000_000  # a few MB of text: quick to train a tokenizer on with 2 cores

_UNDERLINE = re.compile(r"^([=\-~^*#+\"'`.:_])\1{2,}\s*$")
_ROLE = re.compile(r":[a-zA-Z:]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`__?")
_REF = re.compile(r"`([^`]+)`_{1,2}")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPH = re.compile(r"\*\*?([^*]+)\*\*?")
_SUBST = re.compile(r"\|[^|\s][^|]*\|")


def clean_inline(text: str) -> str:
    text = _ROLE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = _SUBST.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def sections(path: Path):
    """Yield (title, [paragraph, ...]) for each section of one .rst.txt file."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    title, paras, cur = path.stem, [], []
    skip_indent = None  # inside a directive/comment/literal block: skip lines indented deeper than this
    i = 0

    def flush():
        if cur:
            p = clean_inline(" ".join(cur))
            if len(p) > 40 and not p.startswith((">>>", "+", "|")):
                paras.append(p.rstrip(":") + ("." if p.endswith("::") else ""))
            cur.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                i += 1
                continue
            skip_indent = None
        if i + 1 < len(lines) and stripped and _UNDERLINE.match(lines[i + 1]) and len(lines[i + 1].strip()) >= len(stripped):
            flush()
            if paras:
                yield title, paras
            title, paras = clean_inline(stripped), []
            i += 2
            continue
        if _UNDERLINE.match(line) or stripped.startswith(("+--", "+==", "===")):
            flush()
            i += 1
            continue
        if stripped.startswith(".."):
            flush()
            skip_indent = indent
            i += 1
            continue
        if not stripped:
            flush()
            i += 1
            continue
        if indent > 0 and not cur:
            # quoted or literal block without a preceding paragraph: drop
            skip_indent = indent - 1
            i += 1
            continue
        cur.append(stripped)
        if stripped.endswith("::"):
            flush()
            skip_indent = indent
        i += 1
    flush()
    if paras:
        yield title, paras


def main(src: str, out: str) -> None:
    root = Path(src)
    written = 0
    docs = 0
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for folder in FOLDERS:
            for path in sorted((root / folder).rglob("*.rst.txt")):
                rel = path.relative_to(root).as_posix()
                for title, paras in sections(path):
                    text = title + "\n\n" + "\n\n".join(paras)
                    if len(text) < MIN_CHARS:
                        continue
                    line = json.dumps({"text": text, "source": f"python-3.11-docs/{rel}#{title}"},
                                      ensure_ascii=False) + "\n"
                    gz.write(line.encode("utf-8"))
                    written += len(text.encode("utf-8"))
                    docs += 1
                    if written >= MAX_BYTES:
                        print(f"{docs} documents, {written} bytes of text")
                        return
    print(f"{docs} documents, {written} bytes of text")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
