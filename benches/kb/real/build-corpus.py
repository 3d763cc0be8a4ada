#!/usr/bin/env python3
"""Builds a knowledge-base folder of real documents from the Debian packages
installed on this machine: manual pages (rendered with groff, sections 1, 8,
5, 7, then 3) and the packages' own documentation under /usr/share/doc
(README, NEWS, Markdown, text and HTML; no changelogs or copyright files,
which are mostly boilerplate). Nothing is synthesised or mixed.

Documents are taken in a fixed order (the pages the benchmark's questions
need first, then by path) until their estimated chunk count reaches
--chunks, so the same machine and package set give the same corpus. Writes,
besides the documents, `MANIFEST.tsv` (every document, its package and
version, its sha256) and `PACKAGES.tsv` (package, version, documents); the
corpus digest printed last identifies the corpus.

Usage: build-corpus.py --out DIR [--chunks 100000] [--questions FILE]
                       [--jobs 2]
Standard library only; needs groff (man pages) and dpkg-query.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
DOC_ROOT = Path("/usr/share/doc")
# Sections in the order they are taken: commands, admin, formats, overviews,
# then the (many) library pages.
MAN_SECTIONS = ["man1", "man8", "man5", "man7", "man3"]
DOC_NAME = re.compile(r"(?i)^(readme|news|faq|howto|usage|intro)|\.(md|txt|html?|rst)(\.gz)?$")
DOC_SKIP = re.compile(r"(?i)changelog|copyright|license|licence|authors|thanks")
# Chunker defaults (outpost kb ingest): 200-token chunks repeating 32 tokens.
TOKENS_PER_CHUNK = 200 - 32
CHARS_PER_TOKEN = 4.0
HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/&()-]{1,60}$")
PAGE_TITLE = re.compile(r"^\S+\(\w+\)\s{3,}.*\S+\(\w+\)$|^\S.*\s{3,}\S+\(\w+\)$")


def estimate_chunks(text: str) -> int:
    tokens = len(text) / CHARS_PER_TOKEN
    return max(1, int(tokens / TOKENS_PER_CHUNK + 0.999))


def read_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def render_man(path: Path) -> str | None:
    """A man page as Markdown: groff's text rendering, its all-caps section
    lines turned into headings."""
    try:
        source = read_maybe_gz(path)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if source.startswith(b".so "):
        return None  # an alias of another page
    try:
        out = subprocess.run(
            # No hyphenation, no justification, long lines: text for a
            # tokenizer, not a terminal.
            ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rHY=0", "-dAD=l", "-rLL=160n"],
            input=source, capture_output=True, timeout=60,
            env={**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"},
        ).stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return None
    name = path.name.removesuffix(".gz")
    lines = [f"# {name}", ""]
    for line in out.splitlines():
        stripped = line.rstrip()
        if PAGE_TITLE.match(stripped.strip()):
            continue  # the running header and footer
        if HEADING.match(stripped) and not line.startswith(" "):
            lines += ["", f"## {stripped.title()}", ""]
        else:
            lines.append(stripped.strip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
    return text if len(text) > 200 else None


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def render_doc(path: Path) -> tuple[str, str] | None:
    """(extension, text) of a documentation file; HTML is kept as HTML for
    the ingester's own parser, everything else as text."""
    try:
        raw = read_maybe_gz(path).decode("utf-8", "replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    name = path.name.removesuffix(".gz").lower()
    if name.endswith((".html", ".htm")):
        probe = _Text()
        probe.feed(raw)
        if len(" ".join(probe.parts).split()) < 50:
            return None
        return ".html", raw
    if "\x00" in raw or len(raw.split()) < 50:
        return None
    return (".md" if name.endswith(".md") else ".txt"), raw


def owners() -> dict[str, str]:
    """File path -> package, from dpkg's file lists."""
    out: dict[str, str] = {}
    for lst in Path("/var/lib/dpkg/info").glob("*.list"):
        pkg = lst.name.removesuffix(".list").split(":")[0]
        try:
            for line in lst.read_text("utf-8", "replace").splitlines():
                out[line] = pkg
        except OSError:
            pass
    return out


def versions() -> dict[str, str]:
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                         capture_output=True, text=True, check=True)
    return dict(line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line)


def candidates(wanted: list[str]) -> list[tuple[str, Path]]:
    """(kind, path) in the order documents are taken."""
    first, rest = [], []
    wanted_set = set(wanted)
    for section in MAN_SECTIONS:
        d = MAN_ROOT / section
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            key = f"{section}/{p.name.removesuffix('.gz')}"
            (first if key in wanted_set else rest).append(("man", p))
    docs = []
    for dirpath, _, files in os.walk(DOC_ROOT):
        for f in sorted(files):
            if DOC_NAME.search(f) and not DOC_SKIP.search(f):
                docs.append(("doc", Path(dirpath) / f))
    docs.sort(key=lambda kp: str(kp[1]))
    # Interleave documentation files among the library man pages so that a
    # smaller corpus is not all commands: after sections 1, 8, 5 and 7.
    man3 = [kp for kp in rest if kp[1].parent.name == "man3"]
    others = [kp for kp in rest if kp[1].parent.name != "man3"]
    mixed = []
    for i in range(max(len(man3), len(docs))):
        if i < len(docs):
            mixed.append(docs[i])
        if i < len(man3):
            mixed.append(man3[i])
    return first + others + mixed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--chunks", type=int, default=100_000,
                        help="stop once the estimated chunk count reaches this")
    parser.add_argument("--questions", type=Path,
                        help="JSONL with a `source` per question; those pages come first")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    wanted = []
    if args.questions:
        for line in args.questions.read_text().splitlines():
            if line.strip():
                wanted.append(json.loads(line)["source"])
    owner = owners()
    version = versions()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = []
    seen_hashes: set[str] = set()
    estimated = 0
    todo = candidates(wanted)

    def render(kind_path):
        kind, path = kind_path
        if kind == "man":
            text = render_man(path)
            return (kind, path, ".md", text) if text else None
        doc = render_doc(path)
        return (kind, path, doc[0], doc[1]) if doc else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        batch = 4 * args.jobs
        i = 0
        while i < len(todo) and estimated < args.chunks:
            for result in pool.map(render, todo[i:i + batch]):
                if result is None or estimated >= args.chunks:
                    continue
                kind, path, ext, text = result
                digest = hashlib.sha256(text.encode()).hexdigest()
                if digest in seen_hashes:
                    continue
                seen_hashes.add(digest)
                if kind == "man":
                    rel = Path(path.parent.name) / (path.name.removesuffix(".gz") + ext)
                else:
                    rel = Path("doc") / path.relative_to(DOC_ROOT).parent / (
                        re.sub(r"\.(gz|html?|md|txt)$", "", path.name.removesuffix(".gz")) + ext)
                dest = args.out / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text, encoding="utf-8")
                pkg = owner.get(str(path), "?")
                manifest.append((str(rel), str(path), pkg, version.get(pkg, "?"), digest))
                estimated += estimate_chunks(text)
            i += batch

    manifest.sort()
    with open(args.out / "MANIFEST.tsv", "w", encoding="utf-8") as out:
        out.write("document\tfrom\tpackage\tversion\tsha256\n")
        for row in manifest:
            out.write("\t".join(row) + "\n")
    per_pkg: dict[tuple[str, str], int] = {}
    for _, _, pkg, ver, _ in manifest:
        per_pkg[(pkg, ver)] = per_pkg.get((pkg, ver), 0) + 1
    with open(args.out / "PACKAGES.tsv", "w", encoding="utf-8") as out:
        out.write("package\tversion\tdocuments\n")
        for (pkg, ver), n in sorted(per_pkg.items()):
            out.write(f"{pkg}\t{ver}\t{n}\n")
    corpus = hashlib.sha256("".join(r[4] for r in manifest).encode()).hexdigest()
    missing = [w for w in wanted if not (args.out / (w + ".md")).exists()]
    for w in missing:
        print(f"build-corpus: question source {w} is not installed here", file=sys.stderr)
    print(f"{len(manifest)} documents from {len(per_pkg)} packages, "
          f"~{estimated} chunks estimated; corpus sha256 {corpus}", file=sys.stderr)
    print(corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
