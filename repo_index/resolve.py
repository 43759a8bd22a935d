"""Import resolution: the module an import names, turned into files of this repository.

Pure functions of the file list and the parsed imports. What cannot be resolved to a file of the
repository (the standard library, third-party packages) is dropped: it has no place in the order.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping

from .parse import Import

JS_EXTENSIONS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")
PY_SUFFIXES = (".py", ".pyi")


class PathTable:
    """Lookups over the repository's file list that every resolver needs."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        self.by_dir: dict[str, list[str]] = defaultdict(list)
        self.by_name: dict[str, list[str]] = defaultdict(list)
        for path in sorted(self.paths):
            self.by_dir[posixpath.dirname(path)].append(path)
            self.by_name[posixpath.basename(path)].append(path)
        # A Python source root is the parent of a top-level package (a dir with __init__.py whose
        # parent has none); the repository root always is one.
        roots = {""}
        for path in self.paths:
            if posixpath.basename(path) == "__init__.py":
                package = posixpath.dirname(path)
                parent = posixpath.dirname(package)
                if posixpath.join(parent, "__init__.py") not in self.paths:
                    roots.add(parent)
        self.python_roots = sorted(roots)
        # Dotted module name -> file, under every source root (the first root, in sorted order, wins).
        self.python_modules: dict[str, str] = {}
        for root in self.python_roots:
            prefix = root + "/" if root else ""
            for path in sorted(self.paths):
                if path.startswith(prefix) and path.endswith(PY_SUFFIXES):
                    parts = path[len(prefix):].rsplit(".", 1)[0].split("/")
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    if parts and all(part.isidentifier() for part in parts):
                        self.python_modules.setdefault(".".join(parts), path)
        # Every directory and every Python file without its suffix: a module path whose first part
        # is neither cannot resolve, which settles most standard-library imports at once.
        self.python_prefixes = {posixpath.dirname(p) for p in self.paths} | {
            p.rsplit(".", 1)[0] for p in self.paths if p.endswith(PY_SUFFIXES)}
        self.memo: dict[tuple, list[str]] = {}  # resolutions, valid for as long as this file list

    def first(self, candidates: Iterable[str]) -> str | None:
        """The first candidate path that is a file of the repository."""
        for candidate in candidates:
            normal = posixpath.normpath(candidate)
            if normal in self.paths:
                return normal
        return None

    def with_suffix(self, suffix: str, near: str) -> list[str]:
        """Files whose path ends with `suffix` at a directory boundary, nearest to `near` first."""
        name = posixpath.basename(suffix)
        found = [p for p in self.by_name.get(name, ()) if p == suffix or p.endswith("/" + suffix)]
        return sorted(found, key=lambda p: (-_common_prefix_len(p, near), p))


def resolve_imports(
    path: str, language: str, imports: Iterable[Import], table: PathTable, go_modules: Mapping[str, str]
) -> tuple[str, ...]:
    """The files of the repository that `path`'s imports name, sorted, without `path` itself."""
    resolver = _RESOLVERS.get(language)
    if resolver is None:
        return ()
    # What an import resolves to depends on the importing file's directory only (Rust: on the file).
    where = path if language == "rust" else posixpath.dirname(path)
    targets: set[str] = set()
    for item in imports:
        key = (resolver, where, item.source, item.names, item.kind)
        found = table.memo.get(key)
        if found is None:
            found = table.memo[key] = resolver(path, item, table, go_modules)
        targets.update(found)
    targets.discard(path)
    return tuple(sorted(targets))


def _python(path: str, item: Import, table: PathTable, _: Mapping[str, str]) -> list[str]:
    spec = item.source
    names = [n for n in item.names if n != "*"]
    if spec.startswith("."):
        dots = len(spec) - len(spec.lstrip("."))
        base = posixpath.dirname(path)
        for _ in range(dots - 1):
            base = posixpath.dirname(base)
        parts = [p for p in spec[dots:].split(".") if p]

        def lookup(module: list[str]) -> str | None:
            return _python_module(table, base, module)
    else:
        parts = spec.split(".")
        script_dir = posixpath.dirname(path)  # a script imports its neighbours by bare name

        def lookup(module: list[str]) -> str | None:
            return table.python_modules.get(".".join(module)) or _python_module(table, script_dir, module)

    # `from a import b`: b may be a submodule; only when some name is not, the edge goes to `a`.
    found = [hit for name in names if (hit := lookup([*parts, name]))]
    if len(found) < len(names) or not names:
        hit = lookup(parts)
        if hit:
            found.append(hit)
    return found


def _python_module(table: PathTable, base: str, parts: list[str]) -> str | None:
    if parts and posixpath.join(base, parts[0]) not in table.python_prefixes:
        return None
    stem = posixpath.join(base, *parts) if parts else base
    candidates = [stem + s for s in PY_SUFFIXES] + [posixpath.join(stem, "__init__" + s) for s in PY_SUFFIXES]
    return table.first(c for c in candidates if c and not c.startswith("../"))


def _javascript(path: str, item: Import, table: PathTable, _: Mapping[str, str]) -> list[str]:
    spec = item.source
    if not spec.startswith("."):
        return []
    stem = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec))
    stems = [stem]
    if posixpath.splitext(stem)[1] in (".js", ".jsx", ".mjs", ".cjs"):  # TS ESM: './x.js' means x.ts
        stems.append(posixpath.splitext(stem)[0])
    candidates = [stem]
    for base in stems:
        candidates += [base + ext for ext in JS_EXTENSIONS]
        candidates += [posixpath.join(base, "index" + ext) for ext in JS_EXTENSIONS]
    hit = table.first(candidates)
    return [hit] if hit else []


def _go(path: str, item: Import, table: PathTable, go_modules: Mapping[str, str]) -> list[str]:
    for module_dir, module_path in sorted(go_modules.items(), key=lambda kv: -len(kv[1])):
        if item.source == module_path or item.source.startswith(module_path + "/"):
            package_dir = posixpath.normpath(posixpath.join(module_dir, item.source[len(module_path) + 1:]))
            package_dir = "" if package_dir == "." else package_dir
            return [p for p in table.by_dir.get(package_dir, ())
                    if p.endswith(".go") and not p.endswith("_test.go")]
    return []


def _rust(path: str, item: Import, table: PathTable, _: Mapping[str, str]) -> list[str]:
    directory, name = posixpath.split(path)
    if item.kind == "mod":
        base = directory if name in ("mod.rs", "lib.rs", "main.rs") else posixpath.join(directory, name[:-3])
        hit = table.first([posixpath.join(base, item.source + ".rs"), posixpath.join(base, item.source, "mod.rs")])
        return [hit] if hit else []
    crate_src = _rust_crate_src(path, table)
    if crate_src is None:
        return []
    found = []
    for segments in _rust_use_paths(item.source):
        head = segments[0]
        if head == "crate":
            module = segments[1:]
        elif head in ("self", "super"):
            module = _rust_module_path(path, crate_src)
            while segments and segments[0] in ("self", "super"):
                if segments[0] == "super" and module:
                    module = module[:-1]
                segments = segments[1:]
            module = module + segments
        else:
            continue  # another crate: std, a dependency
        for end in range(len(module), 0, -1):  # longest prefix that is a module file
            stem = posixpath.join(crate_src, *module[:end])
            hit = table.first([stem + ".rs", posixpath.join(stem, "mod.rs")])
            if hit:
                found.append(hit)
                break
    return found


def _rust_crate_src(path: str, table: PathTable) -> str | None:
    directory = posixpath.dirname(path)
    while True:
        if table.first([posixpath.join(directory, "lib.rs"), posixpath.join(directory, "main.rs")]):
            if posixpath.basename(directory) == "src" or directory == "":
                return directory
        if not directory:
            return None
        directory = posixpath.dirname(directory)


def _rust_module_path(path: str, crate_src: str) -> list[str]:
    rel = posixpath.relpath(path, crate_src or ".")
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return [p for p in parts if p and p != "."]


def _rust_use_paths(spec: str) -> list[list[str]]:
    """`a::{b, c::d}` -> [[a, b], [a, c, d]] (one level of braces; `self` in braces means `a`)."""
    spec = "".join(spec.split())
    if "{" not in spec:
        return [[s for s in spec.split("::") if s and s != "*"]]
    prefix, inner = spec.split("{", 1)
    inner = inner.rsplit("}", 1)[0]
    items, depth, current = [], 0, ""
    for char in inner:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    base = [s for s in prefix.split("::") if s]
    paths = []
    for entry in items:
        tail = [s for s in entry.split("{")[0].split("::") if s and s not in ("self", "*")]
        paths.append(base + tail)
    return [p for p in paths if p]


def _java(path: str, item: Import, table: PathTable, _: Mapping[str, str]) -> list[str]:
    parts = item.source.split(".")
    if "*" in item.names:
        suffix = "/".join(parts)
        return [p for d, files in table.by_dir.items() if d == suffix or d.endswith("/" + suffix)
                for p in files if p.endswith(".java")]
    for end in (len(parts), len(parts) - 1):  # `import static a.B.c`: the class is one up
        if end > 0:
            hits = table.with_suffix("/".join(parts[:end]) + ".java", path)
            if hits:
                return hits[:1]
    return []


def _c_include(path: str, item: Import, table: PathTable, _: Mapping[str, str]) -> list[str]:
    local = table.first([posixpath.join(posixpath.dirname(path), item.source)])
    if local:
        return [local]
    hits = table.with_suffix(posixpath.normpath(item.source), path)
    return hits[:1]


def _common_prefix_len(a: str, b: str) -> int:
    return len(posixpath.commonprefix([a.split("/"), b.split("/")]))


_RESOLVERS = {
    "python": _python,
    "javascript": _javascript,
    "typescript": _javascript,
    "tsx": _javascript,
    "go": _go,
    "rust": _rust,
    "java": _java,
    "c": _c_include,
    "cpp": _c_include,
}
