"""Real, offline haystack text: prose paragraphs from the docstrings of Python's standard library.

Every Python installation ships these sources, so synthetic long-context tasks can be generated
on any machine without downloads. Paragraphs are read with :mod:`ast` (no module is imported),
from a fixed, sorted module list, and deduplicated: the corpus is deterministic for a given
Python minor version (docstrings differ slightly between 3.10, 3.11 and 3.12, so generated
samples are reproducible per Python version, not across versions).
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Modules with long, prose-heavy docstrings that exist in CPython 3.10-3.13. Missing ones are
# skipped, so a trimmed-down distribution still works (with a smaller corpus).
STDLIB_MODULES = tuple(
    sorted(
        """
        _pydecimal _pyio argparse ast asyncio.base_events asyncio.events asyncio.streams
        asyncio.tasks bisect calendar cmd code codecs collections collections.abc
        concurrent.futures._base configparser contextlib copy csv dataclasses difflib doctest
        email.message email.utils enum fractions ftplib functools getopt gettext glob gzip heapq
        hmac http.client http.cookiejar http.server imaplib importlib.metadata inspect ipaddress
        json json.decoder json.encoder locale logging logging.handlers mailbox mimetypes
        multiprocessing.pool numbers operator optparse os pathlib pdb pickle pkgutil platform
        poplib pprint profile pydoc queue random re sched selectors shlex shutil smtplib socket
        socketserver ssl statistics string subprocess tarfile tempfile textwrap threading timeit
        tokenize trace traceback turtle typing unittest.case unittest.mock urllib.parse
        urllib.request uuid warnings weakref xml.dom.minidom xml.etree.ElementTree xmlrpc.client
        zipfile
        """.split()
    )
)

MIN_PARAGRAPH_CHARS = 80
MIN_ALPHA_RATIO = 0.85  # rejects tables, signatures and code fragments


def stdlib_source(module: str, stdlib_dir: Path) -> Path | None:
    """Path of a stdlib module's source file (plain module or package), or None if absent."""
    base = stdlib_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _statement_lists(node: ast.AST) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        block = getattr(node, name, None)
        if isinstance(block, list):
            yield block
    for handler in getattr(node, "handlers", ()):
        yield handler.body


def _defs(node: ast.AST) -> Iterator[ast.AST]:
    # Statements only (docstrings never live inside expressions): ~3x faster than ast.walk.
    for block in _statement_lists(node):
        for stmt in block:
            if isinstance(stmt, _DEFS):
                yield stmt
            if isinstance(stmt, (*_DEFS, ast.If, ast.Try, ast.With)):
                yield from _defs(stmt)


def docstrings(source: str) -> list[str]:
    """All module, class and function docstrings of a source file, in source order."""
    tree = ast.parse(source)
    found = (ast.get_docstring(node) for node in (tree, *_defs(tree)))
    return [doc for doc in found if doc]


def prose_paragraphs(doc: str) -> list[str]:
    """Paragraphs of a docstring that read as prose, each collapsed onto one line."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        if ">>>" in block or "::" in block:
            continue
        text = " ".join(block.split())
        if len(text) < MIN_PARAGRAPH_CHARS:
            continue
        alpha = sum(ch.isalpha() or ch == " " for ch in text) / len(text)
        if alpha >= MIN_ALPHA_RATIO:
            out.append(text)
    return out


@functools.lru_cache(maxsize=1)
def load_paragraphs() -> tuple[str, ...]:
    """The deduplicated corpus of stdlib prose paragraphs (cached for the process)."""
    stdlib_dir = Path(sysconfig.get_paths()["stdlib"])
    paragraphs: list[str] = []
    for module in STDLIB_MODULES:
        path = stdlib_source(module, stdlib_dir)
        if path is None:
            continue
        for doc in docstrings(path.read_text(encoding="utf-8", errors="replace")):
            paragraphs.extend(prose_paragraphs(doc))
    unique = tuple(dict.fromkeys(paragraphs))
    if len(unique) < 100:
        raise RuntimeError(
            f"only {len(unique)} docstring paragraphs found under {stdlib_dir}; "
            "the Python standard library sources seem to be missing"
        )
    return unique


def haystack_paragraphs(rng: random.Random, min_chars: int) -> list[str]:
    """Consecutive corpus paragraphs from a random start, totalling at least ``min_chars``.

    Consecutive paragraphs keep the local flow of real documentation. The corpus holds about
    half a megabyte (~120K tokens for common tokenizers); longer haystacks wrap around.
    """
    corpus = load_paragraphs()
    start = rng.randrange(len(corpus))
    out: list[str] = []
    total = 0
    index = start
    while total < min_chars:
        paragraph = corpus[index % len(corpus)]
        out.append(paragraph)
        total += len(paragraph) + 2
        index += 1
    return out
