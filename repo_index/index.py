"""RepoIndex: the one object the agent and the watcher hold; `plan(budget)` and `update(paths)`.

It keeps every file's text, hash and parse in memory, backed by the on-disk cache, so a new process
re-parses nothing that did not change, and an update re-reads only the paths it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .budget import FULL, OMITTED, OUTLINE, OUTLINE_SHARE, RankCache, all_fit, choose_modes, rank_files
from .cache import IndexCache
from .files import (Candidate, DiscoveryConfig, Skipped, content_skip_reason, decode_text, discover, find_secret,
                    ignored_paths, is_unnamable, path_skip_reason, secret_reason, shown_name, stat_candidate)
from .graph import FileFacts, context_order, dependency_edges, git_stability, mtime_stability, order_key
from .history import commit_counts, head_commit
from .languages import detect_language, is_parsed
from .parse import EMPTY_SUMMARY, FileSummary, Import, ParseError, parse_many
from .plan import ContextPlan, Segment, markdown_outline, render_full, render_outline
from .resolve import PathTable, resolve_imports

DEFAULT_BUDGET = 1_000_000
# Source code runs 2.5-4.5 bytes per token under code tokenizers; twice the densest is a safe floor
# for deciding that a file is not worth counting because it cannot fit in what is left.
PLAUSIBLE_BYTES_PER_TOKEN = 8
TOKENIZE_BATCH = 128  # files per tokenizer call when counting lazily
Progress = Callable[[str, int, int], None]  # (phase, done, total)


class Encoder(Protocol):
    """All repo_index knows of a tokenizer."""

    fingerprint: str

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """How a repository is indexed."""

    discovery: DiscoveryConfig = DiscoveryConfig()
    use_cache: bool = True


@dataclass(slots=True)
class FileEntry:
    """One indexed file: its text and what its parse found."""

    path: str
    language: str
    sha256: str
    text: str
    tracked: bool
    mtime_ns: int
    num_bytes: int
    summary: FileSummary | None  # None: included unparsed
    facts: FileFacts | None = field(default=None)  # derived; reset when the file list changes


class RepoIndex:
    """A repository turned into ContextPlans, kept current by `update`."""

    def __init__(self, root: str | os.PathLike, *, tokenizer: Encoder | None = None,
                 config: IndexConfig = IndexConfig(), progress: Progress | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a directory: {self.root}")
        self.root = self.root.resolve()
        if tokenizer is None:
            from .tokens import load_tokenizer

            tokenizer = load_tokenizer(None)
        self.tokenizer = tokenizer
        self.config = config
        self.progress = progress
        self._cache_warnings: list[str] = []
        self._cache = IndexCache(self.root if config.use_cache else None, self._cache_warnings.append)
        self._parse_errors: dict[str, str] = {}  # path -> why its grammar failed (it is included unparsed)
        self._entries: dict[str, FileEntry] = {}
        self._skipped: dict[str, Skipped] = {}
        self._secrets: dict[str, str] = {}  # path -> what matched, for files kept by --include-secrets
        self._unnamable: set[str] = set()  # files whose names are not UTF-8: left out, one warning each
        self._is_git = False
        self._loaded = False
        self._table: PathTable | None = None
        self._tokens: dict[str, tuple[int, ...]] = {}
        self._texts: dict[str, str] = {}  # rendered segments, by the same key as their tokens
        self._history: dict[str, int] = {}
        # The order and the ranks depend only on the files' facts and history; most edits change
        # neither (a body edit keeps every name), so they are kept until a version moves.
        self._facts_seen: dict[str, FileFacts] = {}
        self._graph_version = 0  # moves when any file's facts change: the ranks are stale
        self._order_version = 0  # moves when any file's order key changes: the order is stale
        self._order_memo: tuple[int, list[str]] | None = None
        self._rank_memo: tuple[int, dict[str, float]] | None = None
        self._rank_cache = RankCache()
        self._position_memo: tuple[list[str], dict[str, int]] | None = None

    @property
    def warnings(self) -> list[str]:
        """Problems that did not stop indexing: an unusable cache, files with names that are not
        UTF-8, files whose grammar failed."""
        names = [f"skipped {shown_name(p)}: its name is not valid UTF-8" for p in sorted(self._unnamable)]
        return self._cache_warnings + names + [self._parse_errors[p] for p in sorted(self._parse_errors)
                                               if p in self._entries]

    # -- loading -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Discover and (re)read every file; unchanged content is not parsed again."""
        listing = discover(self.root, self.config.discovery)
        self._is_git = listing.is_git
        self._skipped = {s.path: s for s in listing.skipped}
        self._secrets = {}
        self._unnamable = set(listing.unnamable)
        self._entries = {}
        self._parse_errors = {}
        self._ingest(listing.candidates)
        live = {f"{e.sha256}:{p}" for p, e in self._entries.items()}  # drop what no file has any more
        self._tokens = {k: v for k, v in self._tokens.items() if k.split(":", 2)[2] in live}
        self._texts = {k: v for k, v in self._texts.items() if k.split(":", 2)[2] in live}
        self._history = self._load_history() if self._is_git else {}
        self._table = None
        self._graph_version += 1  # history and tracked flags may have moved
        self._order_version += 1
        self._loaded = True

    def update(self, paths: Iterable[str | os.PathLike]) -> None:
        """Re-read just `paths` (changed, added or deleted; absolute, or relative to the root);
        everything else stays as it was. Paths outside the root are ignored."""
        paths = list(paths)
        if not self._loaded or any(Path(p).name == ".gitignore" for p in paths):
            self.refresh()  # ignore rules changed: which files exist for us may change anywhere
            return
        wanted = self._expand(paths)
        for rel in [rel for rel in wanted if is_unnamable(rel)]:  # a watcher passes such names on
            wanted.discard(rel)
            if os.path.lexists(self.root / rel):
                self._unnamable.add(rel)
            else:
                self._unnamable.discard(rel)
        new = [rel for rel in wanted if rel not in self._entries]
        ignored = ignored_paths(self.root, new, self._is_git) if new else set()
        candidates = []
        for rel in sorted(wanted):
            old = self._entries.pop(rel, None)
            had = old is not None
            if old is not None:  # a long watch session must not keep every version of a file
                for mode in (FULL, OUTLINE):
                    self._tokens.pop(self._token_key(rel, mode, old.sha256), None)
                    self._texts.pop(self._token_key(rel, mode, old.sha256), None)
            self._skipped.pop(rel, None)
            self._secrets.pop(rel, None)
            self._parse_errors.pop(rel, None)
            reason = "" if rel in ignored else path_skip_reason(rel, self.config.discovery)
            info = None
            if reason is None:
                reason, info = stat_candidate(self.root, rel, self.config.discovery)
            if info is not None:
                tracked = old.tracked if old is not None else False
                candidates.append(Candidate(rel, tracked, info.st_mtime_ns, info.st_size))
            elif reason:
                self._skipped[rel] = Skipped(rel, reason)
            if had != (info is not None):
                self._table = None  # the file list changed: imports resolve anew
        self._ingest(candidates)

    def _expand(self, paths: Iterable[str | os.PathLike]) -> set[str]:
        """The files behind `paths`: a directory stands for the files under it, whether it was
        just moved in (listed the way `refresh` lists) or just deleted (what we held under it)."""
        files: set[str] = set()
        listing = None
        for raw in paths:
            rel = self._relative(raw)
            if rel is None:
                continue
            full = self.root / rel
            if full.is_dir() and not full.is_symlink():
                listing = listing or discover(self.root, self.config.discovery)
                prefix = rel + "/"
                files.update(c.path for c in listing.candidates if c.path.startswith(prefix))
                files.update(s.path for s in listing.skipped if s.path.startswith(prefix))
            elif not full.exists() and not full.is_symlink() and rel not in self._entries:
                prefix = rel + "/"
                files.update(p for p in [*self._entries, *self._skipped] if p.startswith(prefix))
                files.add(rel)
            else:
                files.add(rel)
        return files

    def _relative(self, raw: str | os.PathLike) -> str | None:
        path = Path(raw)
        if path.is_absolute():
            try:
                path = path.relative_to(self.root)
            except ValueError:
                return None
        rel = path.as_posix()
        return None if rel.startswith("../") or rel in ("", ".") else rel

    def _ingest(self, candidates: list[Candidate]) -> None:
        pending: list[tuple[Candidate, str, str, bytes, str]] = []
        for candidate in candidates:
            try:
                data = (self.root / candidate.path).read_bytes()
            except OSError as exc:
                self._skipped[candidate.path] = Skipped(candidate.path, f"unreadable: {exc.strerror or exc}")
                continue
            reason = content_skip_reason(data, self.config.discovery)
            if reason is None:
                try:
                    text = decode_text(data)
                except UnicodeDecodeError as exc:
                    reason = f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            if reason is None and (secret := find_secret(candidate.path, text)) is not None:
                if self.config.discovery.include_secrets:
                    self._secrets[candidate.path] = secret.describe()
                else:
                    reason = secret_reason(secret)
            if reason is not None:
                self._skipped[candidate.path] = Skipped(candidate.path, reason)
                continue
            language = detect_language(candidate.path, text[:4096])
            pending.append((candidate, language, hashlib.sha256(data).hexdigest(), data, text))
        wanted = [(sha, language) for _, language, sha, _, _ in pending if is_parsed(language)]
        cached = self._cache.symbols(wanted) if wanted else {}
        summaries: dict[str, FileSummary] = {}
        jobs: list[tuple[str, str, bytes]] = []
        for candidate, language, sha, data, _ in pending:
            if is_parsed(language):
                stored = cached.get((sha, language))
                summary = _summary_from_json(stored) if stored is not None else None
                if summary is None:
                    jobs.append((candidate.path, language, data))
                else:
                    summaries[candidate.path] = summary
        reused = len(pending) - len(jobs)

        def report(done: int) -> None:
            if self.progress:
                self.progress("parse", reused + done, len(pending))

        fresh = []
        by_path = {c.path: (sha, language) for c, language, sha, _, _ in pending}
        for (path, _, _), result in zip(jobs, parse_many(jobs, report)):
            if isinstance(result, ParseError):  # not cached: the next run tries again
                self._parse_errors[path] = str(result)
                summaries[path] = FileSummary((), (), (), (), (), error=str(result))
                continue
            summaries[path] = result
            fresh.append((*by_path[path], _summary_to_json(result)))
        if fresh:
            self._cache.put_symbols(fresh)
        for candidate, language, sha, data, text in pending:
            self._entries[candidate.path] = FileEntry(candidate.path, language, sha, text, candidate.tracked,
                                                      candidate.mtime_ns, len(data),
                                                      summaries.get(candidate.path))

    def _load_history(self) -> dict[str, int]:
        head = head_commit(self.root)
        # The counts are relative to the root, and one cache serves every root and worktree of a repository.
        key = f"history:{head}:{shown_name(str(self.root))}"
        if head is not None:
            stored = self._cache.meta(key)
            if stored is not None:
                try:
                    return {str(k): int(v) for k, v in json.loads(stored).items()}
                except (ValueError, AttributeError, TypeError, OverflowError, RecursionError):
                    pass
        counts = commit_counts(self.root)
        if head is not None:
            self._cache.put_meta(key, json.dumps(counts))
        return counts

    # -- planning ------------------------------------------------------------------------------

    def plan(self, budget: int = DEFAULT_BUDGET, *, outline_share: float = OUTLINE_SHARE) -> ContextPlan:
        """The repository in context order, fitted to `budget` tokens; when it does not fit, outlines
        take at most `outline_share` of the budget (budget.choose_modes)."""
        if budget <= 0:
            raise ValueError(f"budget must be a positive number of tokens, got {budget}")
        started = time.perf_counter()
        if not self._loaded:
            self.refresh()
        facts = self._facts()
        order = self._order(facts)
        if all_fit(order, lambda p: len(self._ids(p, FULL, order)), budget, self._full_lower_bound):
            modes = dict.fromkeys(order, FULL)
        else:
            ranks = self._ranks(facts)
            ranked = sorted(order, key=lambda p: (-ranks.get(p, 0.0), p))
            with_outline = [p for p in ranked if self._outline_ranges(p)]
            modes = choose_modes(
                ranked,
                lambda p: len(self._ids(p, FULL, [p])),  # no read-ahead: most full files are never asked for
                lambda p: len(self._ids(p, OUTLINE, with_outline)) if self._outline_ranges(p) else None,
                budget,
                self._full_floor,
                outline_share,
            )
        segments = []
        for path in order:
            entry, mode = self._entries[path], modes[path]
            ids = () if mode == OMITTED else self._ids(path, mode, [path])
            text = "" if mode == OMITTED else self._render(path, mode)
            full = self._tokens.get(self._token_key(path, FULL))
            segments.append(Segment(path, entry.language, mode, entry.sha256, text, ids,
                                    None if full is None else len(full)))
        skipped = [self._skipped[p] for p in sorted(self._skipped)]
        secrets = [Skipped(p, self._secrets[p]) for p in sorted(self._secrets) if p in self._entries]
        return ContextPlan(str(self.root), budget, segments, skipped, self.tokenizer.fingerprint,
                           time.perf_counter() - started, self.warnings, secrets)

    def files(self) -> dict[str, FileEntry]:
        """Every indexed file by path (indexing first if needed): the index's own entries, to read only."""
        if not self._loaded:
            self.refresh()
        return dict(self._entries)

    def ranks(self) -> dict[str, float]:
        """Each indexed file's rank, the one the planner fits the budget by (budget.rank_files)."""
        if not self._loaded:
            self.refresh()
        return dict(self._ranks(self._facts()))

    def _ranks(self, facts: dict[str, FileFacts]) -> dict[str, float]:
        if self._rank_memo is None or self._rank_memo[0] != self._graph_version:
            self._rank_memo = (self._graph_version, rank_files(facts, self._rank_cache))
        return self._rank_memo[1]

    def _order(self, facts: dict[str, FileFacts]) -> list[str]:
        if self._order_memo is None or self._order_memo[0] != self._order_version:
            if self._is_git:
                tracked = {p: e.tracked for p, e in self._entries.items()}
                stability = git_stability(list(facts), self._history, tracked)
            else:
                stability = mtime_stability({p: e.mtime_ns / 1e9 for p, e in self._entries.items()})
            groups = context_order(dependency_edges(facts), stability)
            self._order_memo = (self._order_version, [p for group in groups for p in group])
        return self._order_memo[1]

    def _facts(self) -> dict[str, FileFacts]:
        """Every file's facts; bumps the graph version when any file's facts differ from last time."""
        if self._table is None:
            self._table = PathTable(self._entries)
            for entry in self._entries.values():
                entry.facts = None
        go_modules = self._go_modules()
        facts = {}
        changed = reordered = len(self._facts_seen) != len(self._entries)
        for path in sorted(self._entries):
            entry = self._entries[path]
            if entry.facts is None:
                summary = entry.summary or EMPTY_SUMMARY
                imports = resolve_imports(path, entry.language, summary.imports, self._table, go_modules)
                entry.facts = FileFacts(path, entry.language, imports, summary.definitions, summary.references,
                                        summary.bare_references)
                before = self._facts_seen.get(path)
                if before != entry.facts:
                    changed = True
                    reordered = reordered or before is None or order_key(before) != order_key(entry.facts)
            facts[path] = entry.facts
        if changed:
            self._graph_version += 1
        if reordered:
            self._order_version += 1
        self._facts_seen = facts
        return facts

    def _go_modules(self) -> dict[str, str]:
        modules = {}
        for path, entry in self._entries.items():
            if path == "go.mod" or path.endswith("/go.mod"):
                for line in entry.text.splitlines():
                    if line.startswith("module "):
                        modules[os.path.dirname(path)] = line.split()[1].strip('"')
                        break
        return modules

    def _outline_ranges(self, path: str) -> tuple[tuple[int, int], ...]:
        entry = self._entries[path]
        if entry.summary is not None:
            return entry.summary.outline
        return markdown_outline(entry.text) if entry.language == "markdown" else ()

    def _render(self, path: str, mode: str) -> str:
        key = self._token_key(path, mode)
        text = self._texts.get(key)
        if text is None:
            entry = self._entries[path]
            if mode == OUTLINE:
                text = render_outline(path, entry.text, self._outline_ranges(path))
            else:
                text = render_full(path, entry.text)
            self._texts[key] = text
        return text

    def _token_key(self, path: str, mode: str, sha256: str | None = None) -> str:
        sha256 = sha256 or self._entries[path].sha256
        return f"{self.tokenizer.fingerprint}:{mode}:{sha256}:{path}"

    def _full_lower_bound(self, path: str) -> int:
        """Fewest tokens the full segment can have: no token covers more bytes than the longest."""
        max_bytes = getattr(self.tokenizer, "max_token_bytes", 0)
        return self._entries[path].num_bytes // max_bytes if max_bytes else 0

    def _full_floor(self, path: str) -> int:
        """A plausible minimum of the full cost, for skipping files that cannot fit (budget.choose_modes)."""
        return max(self._full_lower_bound(path), self._entries[path].num_bytes // PLAUSIBLE_BYTES_PER_TOKEN)

    def _ids(self, path: str, mode: str, sequence: list[str]) -> tuple[int, ...]:
        """Token ids of `path`'s segment in `mode`. On a miss, the next files of `sequence` (the order
        they will be asked for in) are counted with it, one batch for the tokenizer's threads."""
        key = self._token_key(path, mode)
        ids = self._tokens.get(key)
        if ids is not None:
            return ids
        start = self._positions(sequence).get(path, 0)
        window = [p for p in sequence[start : start + TOKENIZE_BATCH] if self._token_key(p, mode) not in self._tokens]
        if path not in window:
            window.insert(0, path)
        keys = {p: self._token_key(p, mode) for p in window}
        for stored_key, stored in self._cache.tokens(list(keys.values())).items():
            self._tokens[stored_key] = tuple(stored)
        todo = [p for p in window if keys[p] not in self._tokens]
        if todo:
            texts = [self._render(p, mode) for p in todo]
            encode_batch = getattr(self.tokenizer, "encode_batch", None)
            encoded = encode_batch(texts) if encode_batch else [self.tokenizer.encode(t) for t in texts]
            for p, token_ids in zip(todo, encoded):
                self._tokens[keys[p]] = tuple(token_ids)
            self._cache.put_tokens((keys[p], token_ids) for p, token_ids in zip(todo, encoded))
        return self._tokens[key]

    def _positions(self, sequence: list[str]) -> dict[str, int]:
        if self._position_memo is None or self._position_memo[0] is not sequence:
            self._position_memo = (sequence, {p: i for i, p in enumerate(sequence)})
        return self._position_memo[1]

    def close(self) -> None:
        self._cache.close()


def _summary_to_json(summary: FileSummary) -> dict:
    return {
        "definitions": [list(d) for d in summary.definitions],
        "references": [list(r) for r in summary.references],
        "bare": list(summary.bare_references),
        "imports": [[i.source, list(i.names), i.line, i.kind] for i in summary.imports],
        "outline": [list(r) for r in summary.outline],
        "error": summary.error,
    }


def _summary_from_json(data: object) -> FileSummary | None:
    """A cached summary, or None when the row is not what this version wrote (then it is re-parsed)."""
    try:
        definitions = tuple((str(name), str(kind)) for name, kind in data["definitions"])
        references = tuple((str(name), int(count)) for name, count in data["references"])
        bare = tuple(str(name) for name in data["bare"])
        imports = tuple(Import(str(src), tuple(map(str, names)), int(line), str(kind))
                        for src, names, line, kind in data["imports"])
        outline = tuple((int(a), int(b)) for a, b in data["outline"])
        error = data["error"]
        return FileSummary(definitions, references, bare, imports, outline, None if error is None else str(error))
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(Infinity)
        return None
