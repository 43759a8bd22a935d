"""Which files are source code, and the tree-sitter grammar wheel that parses each language.

Grammars come from per-language wheels (`tree-sitter-python`, ...), never from a run-time download,
so indexing works offline. Tags queries are data: `queries/<language>.scm`, loaded by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import PurePosixPath

from tree_sitter import Language, Query


@dataclass(frozen=True, slots=True)
class LanguageSpec:
    """A parsed language: its grammar wheel, the function that returns the grammar, and its query file."""

    name: str
    module: str
    function: str
    query: str


PARSED_LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec("python", "tree_sitter_python", "language", "python"),
        LanguageSpec("javascript", "tree_sitter_javascript", "language", "javascript"),
        LanguageSpec("typescript", "tree_sitter_typescript", "language_typescript", "typescript"),
        LanguageSpec("tsx", "tree_sitter_typescript", "language_tsx", "tsx"),
        LanguageSpec("go", "tree_sitter_go", "language", "go"),
        LanguageSpec("rust", "tree_sitter_rust", "language", "rust"),
        LanguageSpec("java", "tree_sitter_java", "language", "java"),
        LanguageSpec("c", "tree_sitter_c", "language", "c"),
        LanguageSpec("cpp", "tree_sitter_cpp", "language", "cpp"),
    )
}

EXTENSION_LANGUAGE: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".h++": "cpp", ".ipp": "cpp", ".tpp": "cpp", ".inl": "cpp",
    ".h": "c",  # refined to cpp by content, see `detect_language`
}

# Text files included unparsed; the name is shown to the model as the segment's language.
TEXT_LANGUAGES: dict[str, str] = {
    ".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".jsonc": "json",
    ".ini": "ini", ".cfg": "ini", ".conf": "ini", ".xml": "xml", ".html": "html", ".htm": "html",
    ".css": "css", ".scss": "scss", ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".fish": "shell", ".ps1": "powershell", ".bat": "batch", ".sql": "sql", ".proto": "protobuf",
    ".graphql": "graphql", ".gradle": "gradle", ".kt": "kotlin", ".kts": "kotlin",
    ".swift": "swift", ".rb": "ruby", ".php": "php", ".cs": "csharp", ".scala": "scala",
    ".lua": "lua", ".pl": "perl", ".r": "r", ".jl": "julia", ".ex": "elixir", ".exs": "elixir",
    ".erl": "erlang", ".hs": "haskell", ".ml": "ocaml", ".zig": "zig", ".dart": "dart",
    ".vue": "vue", ".svelte": "svelte", ".cmake": "cmake", ".mk": "make", ".tf": "terraform",
    ".scm": "scheme", ".tcss": "css", ".csv": "csv", ".lock": "text", ".cu": "cuda",
    ".cuh": "cuda", ".mojo": "mojo", ".nix": "nix", ".el": "elisp", ".vim": "vim",
}
TEXT_FILENAMES: dict[str, str] = {
    "Makefile": "make", "makefile": "make", "GNUmakefile": "make", "Dockerfile": "dockerfile",
    "CMakeLists.txt": "cmake", "LICENSE": "text", "LICENCE": "text", "COPYING": "text",
    "README": "text", "NOTICE": "text", "AUTHORS": "text", "CODEOWNERS": "text",
    "Containerfile": "dockerfile", "Jenkinsfile": "groovy", "Gemfile": "ruby", "Rakefile": "ruby",
    "Procfile": "text", "go.mod": "gomod", "go.sum": "text", ".gitignore": "text",
    ".gitattributes": "text", ".editorconfig": "ini", ".dockerignore": "text",
}

_CPP_HEADER_MARKERS = ("class ", "namespace ", "template<", "template <", "std::", "public:", "private:")


def detect_language(path: str, head: str = "") -> str:
    """Name the language of `path` ('' for an unknown kind of text); `head` disambiguates `.h`."""
    pure = PurePosixPath(path)
    suffix = pure.suffix.lower()
    language = EXTENSION_LANGUAGE.get(suffix)
    if language == "c" and suffix == ".h" and any(marker in head for marker in _CPP_HEADER_MARKERS):
        return "cpp"
    if language:
        return language
    if pure.name in TEXT_FILENAMES:
        return TEXT_FILENAMES[pure.name]
    if pure.name.startswith("Dockerfile"):
        return "dockerfile"
    if head.startswith("#!"):
        first = head.split("\n", 1)[0]
        if "python" in first:
            return "python"
        if "node" in first:
            return "javascript"
        return "shell"
    return TEXT_LANGUAGES.get(suffix, "")


def is_parsed(language: str) -> bool:
    """True when tree-sitter parses `language`; other text is included unparsed."""
    return language in PARSED_LANGUAGES


@cache
def grammar(language: str) -> Language:
    """The tree-sitter `Language` for `language`, from its grammar wheel."""
    spec = PARSED_LANGUAGES[language]
    module = importlib.import_module(spec.module)
    return Language(getattr(module, spec.function)())


@cache
def tags_query(language: str) -> Query:
    """The compiled tags query `queries/<language>.scm` (definitions, references, imports)."""
    return Query(grammar(language), query_source(PARSED_LANGUAGES[language].query))


def query_source(name: str) -> str:
    """The text of `queries/<name>.scm`, preceded by the files it names in `; inherits: a, b` lines
    (a dialect's query adds its own patterns to its base language's, as in nvim-treesitter)."""
    source = resources.files("v4.repo_index").joinpath("queries", f"{name}.scm").read_text("utf-8")
    parents = [p.strip() for line in source.splitlines() if line.startswith("; inherits:")
               for p in line.split(":", 1)[1].split(",") if p.strip()]
    return "".join(query_source(parent) + "\n" for parent in parents) + source
