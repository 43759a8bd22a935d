"""Tags queries (`repo_index/queries/*.scm`) through `parse_source`: definitions, references,
imports and signature-only outlines for every parsed language."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from v4.repo_index.languages import PARSED_LANGUAGES, tags_query
from v4.repo_index.parse import FileSymbols, Import, parse_source

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "languages"


@dataclass(frozen=True)
class Case:
    """What one fixture must yield. Lines are 1-based, as in an editor."""

    file: str
    defs: set[tuple[str, str]]  # exactly these (name, subkind) definitions
    refs: set[tuple[str, str]]  # at least these (name, subkind) references
    imports: set[tuple[str, tuple[str, ...], str]]  # exactly these (source, names, kind)
    signatures: set[tuple[int, int]]  # outline ranges that must appear exactly (merged ranges)
    body_lines: set[int] = field(default_factory=set)  # lines no outline range may include


CASES: dict[str, Case] = {
    "python": Case(
        file="python/sample.py",
        defs={
            ("MAX_ITEMS", "constant"), ("DEFAULT_NAME", "constant"), ("Entry", "class"),
            ("size", "function"), ("Cache", "class"), ("__init__", "function"), ("name", "function"),
            ("load_many", "function"), ("warm_up", "function"), ("log", "function"),
        },
        refs={
            ("BaseEntry", "name"), ("EntryMeta", "name"), ("Store", "name"), ("dataclass", "name"),
            ("property", "name"), ("fetch", "call"), ("Entry", "call"), ("dumps", "call"),
            ("listdir", "call"), ("log", "call"), ("StorageBackend", "type"), ("Iterable", "type"),
            ("Mapping", "type"), ("Entry", "type"), ("Cache", "type"),
        },
        imports={
            ("os.path", (), "import"), ("json", (), "import"),
            ("collections.abc", ("Iterable", "Mapping"), "import"), (".", ("helpers",), "import"),
            ("..storage", ("Backend",), "import"), ("typing", ("*",), "import"),
        },
        # decorator + class line; the whole multi-line `def load_many(...) -> list[Entry]:`
        signatures={(16, 17), (23, 23), (32, 33), (36, 40), (45, 46)},
        body_lines={18, 20, 24, 29, 34, 41, 42, 47, 49, 50},
    ),
    "javascript": Case(
        file="javascript/sample.js",
        defs={
            ("MAX_TODOS", "constant"), ("createTodo", "function"), ("idGenerator", "function"),
            ("nextId", "function"), ("loadRemote", "function"), ("TodoList", "class"),
            ("onChange", "method"), ("constructor", "method"), ("size", "method"), ("render", "method"),
            ("ids", "constant"), ("store", "constant"), ("helper", "function"),
        },
        refs={
            ("BaseList", "name"), ("Panel", "name"), ("TodoItem", "name"), ("Footer", "name"),
            ("Map", "name"), ("createTodo", "call"), ("nextId", "call"), ("fetchTodos", "call"),
            ("emit", "call"), ("idGenerator", "call"),
        },
        imports={
            ("react", (), "import"), ("./utils/date", (), "import"), ("./styles.css", (), "import"),
            ("../api", (), "import"), ("./constants", (), "import"), ("./store", (), "import"),
            ("path", (), "import"), ("./remote", (), "import"),
        },
        signatures={(13, 13), (17, 17), (22, 22), (24, 24), (29, 29), (31, 31), (44, 44)},
        body_lines={14, 18, 25, 26, 32, 36, 37, 45, 46},
    ),
    "typescript": Case(
        file="typescript/sample.ts",
        defs={
            ("DEFAULT_TIMEOUT", "constant"), ("Identified", "interface"), ("describe", "method"),
            ("Handler", "type"), ("Level", "enum"), ("emitRaw", "function"), ("Repository", "class"),
            ("validate", "method"), ("constructor", "method"), ("save", "method"),
            ("UserRepo", "class"), ("makeHandler", "function"), ("Internal", "module"),
            ("reset", "function"),
        },
        refs={
            ("Summary", "type"), ("Event", "type"), ("Promise", "type"), ("Identified", "type"),
            ("Store", "type"), ("ValidationResult", "type"), ("EventBus", "type"), ("Payload", "type"),
            ("User", "type"), ("Handler", "type"), ("Repository", "name"), ("Map", "name"),
            ("publish", "call"), ("checkUser", "call"), ("info", "call"),
        },
        imports={
            ("events", (), "import"), ("./models", (), "import"), ("./log", (), "import"),
            ("./config", (), "import"), ("./errors", (), "import"), ("./repo", (), "import"),
        },
        # `makeHandler`'s signature ends where the arrow's body (the inner arrow) starts
        signatures={(11, 11), (13, 13), (18, 18), (25, 25), (32, 32), (46, 46)},
        body_lines={12, 19, 26, 33, 34, 47, 48, 49},
    ),
    "tsx": Case(
        file="tsx/sample.tsx",
        defs={
            ("CardProps", "interface"), ("Size", "type"), ("ProfileCard", "function"),
            ("Details", "function"), ("CardList", "class"), ("handleSelect", "method"),
            ("render", "method"),
        },
        refs={
            ("Avatar", "name"), ("Frame", "name"), ("Details", "name"), ("ProfileCard", "name"),
            ("Component", "name"), ("CardProps", "type"), ("Profile", "type"), ("Size", "type"),
            ("DetailsProps", "type"), ("ListProps", "type"), ("useState", "call"),
            ("setState", "call"), ("track", "call"),
        },
        imports={
            ("react", (), "import"), ("./Avatar", (), "import"), ("../types/profile", (), "import"),
            ("./card.css", (), "import"),
        },
        signatures={(7, 7), (12, 12), (14, 14), (28, 28), (33, 33), (36, 36), (40, 40)},
        body_lines={8, 15, 20, 29, 34, 37, 41},
    ),
    "go": Case(
        file="go/sample.go",
        defs={
            ("DefaultSize", "constant"), ("minTTL", "constant"), ("maxTTL", "constant"),
            ("ErrMissing", "constant"), ("Entry", "class"), ("Loader", "interface"), ("Load", "method"),
            ("Key", "type"), ("Cache", "class"), ("New", "function"), ("Get", "method"),
            ("normalize", "function"),
        },
        refs={
            ("Meta", "type"), ("Stringer", "type"), ("Mutex", "type"), ("Entry", "type"),
            ("Loader", "type"), ("Cache", "type"), ("Errorf", "call"), ("Lock", "call"),
            ("Load", "call"), ("normalize", "call"), ("ToLower", "call"),
        },
        imports={
            ("fmt", (), "import"), ("sync", (), "import"), ("strings", (), "import"),
            ("github.com/x/y/pkg", (), "import"),
        },
        # struct and interface headers only (not their fields); interface methods are signatures
        signatures={(22, 22), (28, 29), (35, 35), (40, 40), (44, 44), (54, 54)},
        body_lines={23, 24, 30, 36, 41, 45, 50, 55},
    ),
    "rust": Case(
        file="rust/sample.rs",
        defs={
            ("helpers", "module"), ("clamp", "function"), ("MAX_SHAPES", "constant"),
            ("COUNTER", "constant"), ("Registry", "type"), ("square", "macro"), ("Shape", "interface"),
            ("area", "method"), ("describe", "method"), ("Circle", "class"), ("Kind", "enum"),
            ("Bits", "class"), ("load", "function"),
        },
        refs={
            ("Map", "type"), ("Box", "type"), ("Shape", "type"), ("Point", "type"), ("Circle", "type"),
            ("Registry", "type"), ("Read", "type"), ("Result", "type"), ("clamp", "call"),
            ("square", "call"), ("format", "call"), ("insert", "call"), ("origin", "call"),
            ("new", "call"), ("Ok", "call"),
        },
        imports={
            ("crate::geometry::point::Point", (), "import"), ("super::config", (), "import"),
            ("std::io::{self, Read}", (), "import"), ("std::collections::HashMap", (), "import"),
            ("units", (), "mod"), ("error", (), "mod"),
        },
        # `impl Shape for Circle {` is outlined (no tag) together with its method
        signatures={(10, 11), (21, 21), (27, 29), (35, 35), (50, 51), (56, 56)},
        body_lines={12, 22, 23, 30, 36, 41, 52, 57, 58},
    ),
    "java": Case(
        file="java/Sample.java",
        defs={
            ("Sample", "class"), ("Sample", "method"), ("findAll", "method"), ("Listener", "interface"),
            ("onOrder", "method"), ("Status", "enum"), ("isFinal", "method"), ("Line", "class"),
            ("Audited", "interface"), ("value", "method"),
        },
        refs={
            ("Service", "name"), ("Override", "name"), ("OrderFilter", "name"), ("BaseService", "type"),
            ("OrderApi", "type"), ("Repository", "type"), ("Order", "type"), ("List", "type"),
            ("NotFoundException", "type"), ("requireNonNull", "call"), ("query", "call"),
        },
        imports={
            ("java.util.List", (), "import"), ("java.util", ("*",), "import"),
            ("java.util.Objects.requireNonNull", (), "import"),
            ("com.example.core.Repository", (), "import"),
        },
        # annotation + class line; annotation + the two-line method signature
        signatures={(9, 10), (14, 14), (18, 20), (25, 26), (29, 29)},
        body_lines={11, 12, 15, 21, 22, 30, 31},
    ),
    "c": Case(
        file="c/sample.c",
        defs={
            ("RING_CAPACITY", "macro"), ("RING_NEXT", "macro"), ("ring_size_t", "type"),
            ("ring_error", "type"), ("ring_visitor", "type"), ("ring", "class"),
            ("ring_state", "enum"), ("ring_value", "class"), ("ring_new", "function"),
            ("ring_push", "function"), ("ring_full", "function"),
        },
        refs={
            ("ring", "type"), ("ring_size_t", "type"), ("ring_full", "call"), ("calloc", "call"),
            ("fprintf", "call"), ("RING_NEXT", "call"),
        },
        imports={("ring/buffer.h", (), "import"), ("stdio.h", (), "import"), ("stdlib.h", (), "import")},
        # `static int ring_full(...) {` is one line; a `{` on its own line is not part of it;
        # a parameter list over two lines is
        signatures={(11, 11), (18, 18), (28, 29), (31, 31), (35, 35), (41, 42)},
        body_lines={12, 13, 19, 32, 36, 37, 43, 44},
    ),
    "cpp": Case(
        file="cpp/sample.cpp",
        defs={
            ("scene", "module"), ("Node", "class"), ("Node", "method"), ("~Node", "method"),
            ("accept", "method"), ("value", "method"), ("operator==", "method"), ("Point", "class"),
            ("NodeList", "type"), ("FloatNode", "type"), ("Layer", "enum"), ("clamp", "function"),
            ("draw", "method"), ("SCENE_VERSION", "macro"),
        },
        refs={
            ("Base", "type"), ("Observer", "type"), ("Visitor", "type"), ("vector", "type"),
            ("unique_ptr", "type"), ("Node", "type"), ("Point", "type"), ("Node", "name"),
            ("plot", "call"), ("clamp", "call"), ("min", "call"), ("flush", "call"),
        },
        imports={("scene/node.hpp", (), "import"), ("memory", (), "import"), ("vector", (), "import")},
        # template header + class line; out-of-line constructor with its template header
        signatures={(6, 6), (10, 11), (13, 17), (31, 32), (38, 39), (41, 41)},
        body_lines={20, 21, 33, 42, 43},
    ),
}


def _parse(case: Case) -> FileSymbols:
    path = FIXTURES / case.file
    language = next(name for name, c in CASES.items() if c is case)
    return parse_source(case.file, language, path.read_bytes())


@pytest.mark.parametrize("language", sorted(PARSED_LANGUAGES))
def test_every_parsed_language_has_a_compiling_query_and_a_fixture(language: str) -> None:
    tags_query(language)
    assert language in CASES
    assert (FIXTURES / CASES[language].file).is_file()


@pytest.mark.parametrize("language", sorted(CASES))
def test_definitions(language: str) -> None:
    symbols = _parse(CASES[language])
    defs = {(t.name, t.subkind) for t in symbols.tags if t.kind == "def"}
    assert defs == CASES[language].defs


@pytest.mark.parametrize("language", sorted(CASES))
def test_references(language: str) -> None:
    symbols = _parse(CASES[language])
    refs = {(t.name, t.subkind) for t in symbols.tags if t.kind == "ref"}
    assert CASES[language].refs <= refs, sorted(CASES[language].refs - refs)
    assert all(t.path == CASES[language].file and t.line >= 1 for t in symbols.tags)


@pytest.mark.parametrize("language", sorted(CASES))
def test_imports(language: str) -> None:
    symbols = _parse(CASES[language])
    imports = {(i.source, i.names, i.kind) for i in symbols.imports}
    assert imports == CASES[language].imports


@pytest.mark.parametrize("language", sorted(CASES))
def test_outline_is_signatures_only(language: str) -> None:
    case = CASES[language]
    outline = _parse(case).outline
    for start, end in case.signatures:
        assert (start - 1, end - 1) in outline, (start, end, [(a + 1, b + 1) for a, b in outline])
    covered = {line + 1 for start, end in outline for line in range(start, end + 1)}
    assert not covered & case.body_lines, sorted(covered & case.body_lines)
    assert list(outline) == sorted(outline)
    assert all(end < next_start - 1 for (_, end), (next_start, _) in zip(outline, outline[1:]))


# The import forms the resolver relies on, one statement each.
IMPORT_SNIPPETS: list[tuple[str, str, tuple[Import, ...]]] = [
    ("python", "import a.b\n", (Import("a.b", (), 1),)),
    ("python", "import a.b as c\n", (Import("a.b", (), 1),)),
    ("python", "from a.b import c, d\n", (Import("a.b", ("c", "d"), 1),)),
    ("python", "from a.b import (\n    c as e,\n    d,\n)\n", (Import("a.b", ("c", "d"), 1),)),
    ("python", "from . import x\n", (Import(".", ("x",), 1),)),
    ("python", "from ..m import y\n", (Import("..m", ("y",), 1),)),
    ("python", "from x import *\n", (Import("x", ("*",), 1),)),
    ("javascript", "import x from './a';\n", (Import("./a", (), 1),)),
    ("javascript", 'import {y} from "./b";\n', (Import("./b", (), 1),)),
    ("javascript", "import './c';\n", (Import("./c", (), 1),)),
    ("javascript", "export * from './d';\n", (Import("./d", (), 1),)),
    ("javascript", "export {z} from './e';\n", (Import("./e", (), 1),)),
    ("javascript", "const f = require('./f');\n", (Import("./f", (), 1),)),
    ("javascript", "const g = import('./g');\n", (Import("./g", (), 1),)),
    ("typescript", "import type {T} from './t';\nimport u = require('./u');\n",
     (Import("./t", (), 1), Import("./u", (), 2))),
    ("typescript", "export * from './d';\nconst g = import('./g');\n",
     (Import("./d", (), 1), Import("./g", (), 2))),
    ("tsx", "import {y} from \"./b\";\nconst f = require('./f');\n",
     (Import("./b", (), 1), Import("./f", (), 2))),
    ("go", 'package p\nimport "fmt"\n', (Import("fmt", (), 2),)),
    ("go", 'package p\nimport (\n\t"os"\n\tx "github.com/x/y/pkg"\n)\n',
     (Import("os", (), 3), Import("github.com/x/y/pkg", (), 4))),
    ("rust", "use crate::a::b::C;\n", (Import("crate::a::b::C", (), 1),)),
    ("rust", "use super::x;\n", (Import("super::x", (), 1),)),
    ("rust", "use std::io::{self, Read};\n", (Import("std::io::{self, Read}", (), 1),)),
    ("rust", "mod foo;\nmod bar { fn f() {} }\n", (Import("foo", (), 1, "mod"),)),
    ("java", "import com.foo.Bar;\n", (Import("com.foo.Bar", (), 1),)),
    ("java", "import com.foo.*;\n", (Import("com.foo", ("*",), 1),)),
    ("java", "import static com.foo.Bar.baz;\n", (Import("com.foo.Bar.baz", (), 1),)),
    ("c", '#include "foo/bar.h"\n#include <stdio.h>\n',
     (Import("foo/bar.h", (), 1), Import("stdio.h", (), 2))),
    ("cpp", '#include "foo/bar.h"\n#include <vector>\n',
     (Import("foo/bar.h", (), 1), Import("vector", (), 2))),
]


@pytest.mark.parametrize(("language", "source", "expected"), IMPORT_SNIPPETS)
def test_import_forms(language: str, source: str, expected: tuple[Import, ...]) -> None:
    assert parse_source("snippet", language, source.encode()).imports == expected


def test_rust_mod_with_body_is_a_module_definition() -> None:
    symbols = parse_source("lib.rs", "rust", b"mod foo;\nmod bar {\n    fn f() {}\n}\n")
    assert [(t.name, t.subkind) for t in symbols.tags if t.kind == "def"] == [("bar", "module"), ("f", "function")]


# A valid function that calls `helper`, then a broken definition.
BROKEN: dict[str, str] = {
    "python": "def ok(a):\n    return helper(a)\n\ndef broken(:\n    pass = =\n",
    "javascript": "function ok(a) {\n  return helper(a);\n}\n\nfunction broken( {\n  let = ;\n",
    "typescript": "function ok(a: A): void {\n  helper(a);\n}\n\nclass Broken {\n  m(: {\n",
    "tsx": "function ok(a: A) {\n  return <View>{helper(a)}</View>;\n}\n\nconst broken = (<div>;\n",
    "go": "package p\n\nfunc ok(a int) int {\n\treturn helper(a)\n}\n\nfunc broken( {\n",
    "rust": "fn ok(a: i32) -> i32 {\n    helper(a)\n}\n\nfn broken( {\n",
    "java": "class Ok {\n  void ok() { helper(); }\n  void broken( {\n}\n",
    "c": "int ok(int a) {\n  return helper(a);\n}\n\nint broken( {\n",
    "cpp": "int ok(int a) {\n  return helper(a);\n}\n\nclass Broken { void m( };\n",
}


@pytest.mark.parametrize("language", sorted(BROKEN))
def test_syntax_errors_keep_the_valid_parts(language: str) -> None:
    symbols = parse_source("broken", language, BROKEN[language].encode())
    tags = {(t.name, t.kind) for t in symbols.tags}
    assert {("ok", "def"), ("helper", "ref")} <= tags
    assert symbols.error is None


@pytest.mark.parametrize("language", sorted(PARSED_LANGUAGES))
def test_empty_file_yields_nothing(language: str) -> None:
    assert parse_source("empty", language, b"") == FileSymbols((), (), ())
