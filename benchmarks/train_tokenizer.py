"""Train the packaged default tokenizer: a byte-level BPE over source code found on this machine.

repo_index counts tokens to fit a repository into a context; with no model checkpoint it needs a
tokenizer that splits code roughly as a code model would. This build-time script (not part of the
runtime package) makes one offline from what is installed locally (Python stdlib, C/C++ headers, node's
global modules, Rust sources or rustdoc source pages, a JDK src.zip, Go), so the shipped
`repo_index/data/tokenizer.json` can be rebuilt without a download:

    python benchmarks/train_tokenizer.py --out repo_index/data/tokenizer.json

The corpus is deterministic: file lists are sorted, then visited in the order of a hash of each file's
path inside its root (a spread over the whole tree rather than its alphabetical head), under a byte cap
per language and in total. Files are read as repo_index reads a repository: its language table and
`.h` rule (`languages.detect_language`), its text decoding and its binary/minified filter (`files.py`).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from v4.repo_index.files import ALWAYS_IGNORED_DIRS, DiscoveryConfig, content_skip_reason, decode_text  # noqa: E402
from v4.repo_index.languages import detect_language  # noqa: E402

SPECIAL_TOKEN = "<|endoftext|>"
MB = 1_000_000

LANGUAGES = (
    "python", "c", "cpp", "javascript", "typescript", "rust", "java", "go",
    "markdown", "toml", "yaml", "shell",
)  # fmt: skip

HEADER = "c|cpp"  # a `.h` file: C or C++, decided by its content once read
# The corpus skips VCS folders as the index does, and installed third-party packages (the stdlib root
# holds site-packages). Nested node_modules stay: node's global packages keep their code there.
SKIP_DIRS = ALWAYS_IGNORED_DIRS | {"site-packages", "dist-packages", "__pycache__"}
# What a corpus file may be (repo_index skips binaries and minified files; generated code is still code).
TEXT_FILTER = DiscoveryConfig(include_generated=True)

_RUSTDOC_CODE = re.compile(r'<pre class="rust"><code>(.*?)</code></pre>', re.DOTALL)
_RUSTDOC_LINE_NUMBER = re.compile(r"<a [^>]*data-nosnippet>\d+</a>")
_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One file that may enter the corpus: where it lives and the language its name suggests."""

    root: str
    relpath: str
    language: str  # a LANGUAGES name, or HEADER for a header decided by content
    size: int


@dataclass(slots=True)
class Corpus:
    """Texts per language, with byte counts, filled under the caps."""

    cap: int
    total_cap: int
    texts: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in LANGUAGES})
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANGUAGES, 0))

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def full(self, language: str) -> bool:
        names = language.split("|")
        return self.total >= self.total_cap or all(self.sizes[name] >= self.cap for name in names)

    def add(self, language: str, text: str) -> None:
        self.texts[language].append(text)
        self.sizes[language] += len(text.encode("utf-8"))


def language_of(relpath: str) -> str | None:
    """The corpus language a file's name implies, by repo_index's table (`.tsx` counts as TypeScript,
    rustdoc `x.rs.html` source pages as Rust, `.h` headers wait for their content)."""
    name = relpath.rsplit("/", 1)[-1]
    if name.endswith(".rs.html"):
        return "rust"
    if name.lower().endswith(".h"):
        return HEADER
    if not os.path.splitext(name)[1]:  # libstdc++ headers (<vector>, <map>, ...) have no extension
        return "cpp" if "c++" in relpath.split("/")[:-1] else None
    language = detect_language(relpath)
    language = "typescript" if language == "tsx" else language
    return language if language in LANGUAGES else None


def rustdoc_source(page: str) -> str | None:
    """The Rust source behind a rustdoc `src/**/*.rs.html` page: line numbers and markup removed."""
    match = _RUSTDOC_CODE.search(page)
    if match is None:
        return None
    return html.unescape(_TAG.sub("", _RUSTDOC_LINE_NUMBER.sub("", match.group(1))))


def _existing(paths: list[str]) -> list[str]:
    """Paths that exist, each once (by real path), in the given order."""
    seen: set[str] = set()
    kept: list[str] = []
    for path in paths:
        real = os.path.realpath(os.path.expanduser(path))
        if os.path.exists(real) and real not in seen:
            seen.add(real)
            kept.append(real)
    return kept


def _command_output(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def default_roots() -> list[str]:
    """Directories (and JDK src.zip archives) on this machine that hold source code worth learning from."""
    home = os.path.expanduser("~")
    python = [sysconfig.get_paths()["stdlib"], "/root/.pyenv/versions/3.11.7/lib/python3.11"]
    headers = ["/usr/include", "/usr/local/include"]
    node = ["/usr/lib/node_modules", "/usr/local/lib/node_modules"]
    if npm_root := _command_output("npm", "root", "-g"):
        node.append(npm_root)
    toolchains = sorted(glob.glob(f"{home}/.rustup/toolchains/*"), key=lambda p: ("stable" not in p, p))
    rust = [f"{home}/.cargo/registry/src"]
    rust += [f"{t}/lib/rustlib/src" for t in toolchains]
    rust += [f"{t}/share/doc/rust/html/src" for t in toolchains]
    java = sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip") + glob.glob("/usr/lib/jvm/*/src.zip"))
    if java_home := os.environ.get("JAVA_HOME"):
        java.insert(0, f"{java_home}/lib/src.zip")
    go = ["/usr/local/go/src", "/usr/lib/go/src", f"{home}/go/pkg/mod"]
    if goroot := _command_output("go", "env", "GOROOT"):
        go.insert(0, f"{goroot}/src")
    java = [path for path in java if os.path.isfile(path)]  # drops dangling src.zip links
    return _existing(python + headers + node + rust + java + go)


def candidates(root: str, max_bytes: int) -> Iterator[Candidate]:
    """The files under one root (a directory or a .zip) whose names name a corpus language, sorted."""
    if os.path.isfile(root) and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                language = language_of(info.filename)
                if language and not info.is_dir() and info.file_size <= max_bytes:
                    yield Candidate(root, info.filename, language, info.file_size)
        return
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        for name in sorted(files):
            path = os.path.join(directory, name)
            relpath = os.path.relpath(path, root).replace(os.sep, "/")
            language = language_of(relpath)
            if language is None or not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if size <= max_bytes:
                yield Candidate(root, relpath, language, size)


def _read(candidate: Candidate, archives: dict[str, zipfile.ZipFile]) -> bytes:
    if candidate.root in archives:
        return archives[candidate.root].read(candidate.relpath)
    return Path(candidate.root, candidate.relpath).read_bytes()


def collect(roots: list[str], cap: int, total_cap: int, max_bytes: int) -> Corpus:
    """Fill a corpus from roots: files visited in path-hash order, skipped when oversized, not UTF-8,
    binary or already seen (same path inside another root, or same content)."""
    found = [c for root in roots for c in candidates(root, max_bytes)]
    order = {root: index for index, root in enumerate(roots)}
    found.sort(key=lambda c: (hashlib.sha256(c.relpath.encode()).digest(), order[c.root]))
    corpus = Corpus(cap=cap, total_cap=total_cap)
    seen_paths: set[tuple[str, str]] = set()
    seen_texts: set[bytes] = set()
    zips = [root for root in roots if os.path.isfile(root) and zipfile.is_zipfile(root)]
    archives = {root: zipfile.ZipFile(root) for root in zips}
    try:
        for candidate in found:
            if corpus.total >= total_cap:
                break
            key = (candidate.language, candidate.relpath)
            if key in seen_paths or corpus.full(candidate.language):
                continue
            seen_paths.add(key)
            try:
                data = _read(candidate, archives)
                text = decode_text(data)
            except (OSError, UnicodeDecodeError, KeyError, zipfile.BadZipFile):
                continue
            if candidate.relpath.endswith(".rs.html"):
                text = rustdoc_source(text) or ""
            elif content_skip_reason(data, TEXT_FILTER) is not None:
                continue
            if not text.strip() or "\x00" in text or len(text.encode("utf-8")) > max_bytes:
                continue
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            if digest in seen_texts:
                continue
            seen_texts.add(digest)
            language = candidate.language
            if language == HEADER:
                language = detect_language(candidate.relpath, text)
            if corpus.sizes[language] < cap:
                corpus.add(language, text)
    finally:
        for archive in archives.values():
            archive.close()
    return corpus


def train(corpus: Corpus, vocab_size: int, min_frequency: int, max_token_length: int | None) -> Tokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenization, every byte in the alphabet) trained on the corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=max_token_length,  # else vocab goes to base64 blobs and 80-column rulers
    )
    texts = [text for language in LANGUAGES for text in corpus.texts[language]]
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "repo_index" / "data" / "tokenizer.json")
    parser.add_argument("--root", action="append", dest="roots", metavar="PATH",
                        help="a directory or .zip of sources; repeatable; replaces the default roots")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--max-token-length", type=int, default=32, help="0: unlimited")
    parser.add_argument("--cap-mb", type=float, default=15.0, help="bytes per language, in MB")
    parser.add_argument("--total-mb", type=float, default=100.0, help="bytes in all, in MB")
    parser.add_argument("--max-file-kb", type=int, default=1024, help="larger files are skipped")
    args = parser.parse_args(argv)

    roots = _existing(args.roots) if args.roots else default_roots()
    if not roots:
        parser.error("no corpus roots exist")
    started = time.monotonic()
    corpus = collect(roots, int(args.cap_mb * MB), int(args.total_mb * MB), args.max_file_kb * 1024)
    collected = time.monotonic()
    print("roots:\n" + "\n".join(f"  {root}" for root in roots))
    print(f"{'language':<12}{'files':>8}{'bytes':>14}")
    for language in LANGUAGES:
        print(f"{language:<12}{len(corpus.texts[language]):>8}{corpus.sizes[language]:>14,}")
    print(f"{'total':<12}{sum(map(len, corpus.texts.values())):>8}{corpus.total:>14,}")
    print(f"collected in {collected - started:.1f}s")
    if corpus.total == 0:
        print("error: the corpus is empty", file=sys.stderr)
        return 1

    tokenizer = train(corpus, args.vocab_size, args.min_frequency, args.max_token_length or None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out), pretty=False)
    print(f"trained in {time.monotonic() - collected:.1f}s: vocab {tokenizer.get_vocab_size()}, "
          f"{args.out} {args.out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
