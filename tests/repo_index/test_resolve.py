"""Import resolution per language: the module an import names, as a file of the repository."""

from __future__ import annotations

import pytest

from v4.repo_index.parse import Import
from v4.repo_index.resolve import PathTable, resolve_imports

FILES = [
    # Python: a src layout, a flat package, a script directory
    "src/pkg/__init__.py", "src/pkg/core.py", "src/pkg/sub/__init__.py", "src/pkg/sub/leaf.py",
    "scripts/run.py", "scripts/helpers.py", "stubs/typed.pyi",
    # JS/TS
    "web/a.ts", "web/b.tsx", "web/lib/index.ts", "web/esm.ts", "web/plain.js",
    # Go (module in go/)
    "go/go.mod", "go/cmd/main.go", "go/pkg/util/util.go", "go/pkg/util/more.go", "go/pkg/util/util_test.go",
    # Rust
    "rs/src/lib.rs", "rs/src/net/mod.rs", "rs/src/net/tcp.rs", "rs/src/io.rs",
    # Java
    "java/src/com/acme/Shape.java", "java/src/com/acme/Circle.java", "java/src/com/acme/util/Maths.java",
    # C/C++
    "c/include/proj/vec.h", "c/src/vec.c", "c/src/local.h",
]
GO_MODULES = {"go": "example.com/demo"}


@pytest.fixture(scope="module")
def table() -> PathTable:
    return PathTable(FILES)


CASES = [
    ("src/pkg/core.py", "python", Import("pkg.sub.leaf", (), 1), ["src/pkg/sub/leaf.py"]),
    ("src/pkg/core.py", "python", Import("pkg.sub", ("leaf",), 1), ["src/pkg/sub/leaf.py"]),
    ("src/pkg/sub/leaf.py", "python", Import("pkg", ("core", "missing_name"), 1), ["src/pkg/__init__.py", "src/pkg/core.py"]),
    ("src/pkg/sub/leaf.py", "python", Import("..", ("core",), 1), ["src/pkg/core.py"]),
    ("src/pkg/sub/leaf.py", "python", Import(".", ("name",), 1), ["src/pkg/sub/__init__.py"]),
    ("scripts/run.py", "python", Import("helpers", (), 1), ["scripts/helpers.py"]),
    ("scripts/run.py", "python", Import("os", (), 1), []),
    ("web/b.tsx", "tsx", Import("./a", (), 1), ["web/a.ts"]),
    ("web/b.tsx", "tsx", Import("./lib", (), 1), ["web/lib/index.ts"]),
    ("web/b.tsx", "tsx", Import("./esm.js", (), 1), ["web/esm.ts"]),
    ("web/b.tsx", "tsx", Import("./plain.js", (), 1), ["web/plain.js"]),
    ("web/b.tsx", "tsx", Import("react", (), 1), []),
    ("go/cmd/main.go", "go", Import("example.com/demo/pkg/util", (), 1), ["go/pkg/util/more.go", "go/pkg/util/util.go"]),
    ("go/cmd/main.go", "go", Import("fmt", (), 1), []),
    ("rs/src/lib.rs", "rust", Import("net", (), 1, "mod"), ["rs/src/net/mod.rs"]),
    ("rs/src/net/mod.rs", "rust", Import("tcp", (), 1, "mod"), ["rs/src/net/tcp.rs"]),
    ("rs/src/net/tcp.rs", "rust", Import("crate::io::Reader", (), 1), ["rs/src/io.rs"]),
    ("rs/src/net/tcp.rs", "rust", Import("super::super::io::{self, Reader}", (), 1), ["rs/src/io.rs"]),
    ("rs/src/io.rs", "rust", Import("crate::net::{tcp::Stream, self}", (), 1), ["rs/src/net/mod.rs", "rs/src/net/tcp.rs"]),
    ("rs/src/io.rs", "rust", Import("std::io::Read", (), 1), []),
    ("java/src/com/acme/Circle.java", "java", Import("com.acme.util.Maths", (), 1), ["java/src/com/acme/util/Maths.java"]),
    ("java/src/com/acme/util/Maths.java", "java", Import("com.acme", ("*",), 1),
     ["java/src/com/acme/Circle.java", "java/src/com/acme/Shape.java"]),
    ("java/src/com/acme/Circle.java", "java", Import("com.acme.util.Maths.square", (), 1), ["java/src/com/acme/util/Maths.java"]),
    ("c/src/vec.c", "c", Import("local.h", (), 1), ["c/src/local.h"]),
    ("c/src/vec.c", "c", Import("proj/vec.h", (), 1), ["c/include/proj/vec.h"]),
    ("c/src/vec.c", "c", Import("stdio.h", (), 1), []),
]


@pytest.mark.parametrize(("path", "language", "item", "expected"), CASES,
                         ids=[f"{c[1]}:{c[2].source}" for c in CASES])
def test_import_resolves_to_repository_files(table: PathTable, path: str, language: str, item: Import,
                                             expected: list[str]) -> None:
    assert list(resolve_imports(path, language, [item], table, GO_MODULES)) == sorted(expected)


def test_unparsed_languages_resolve_nothing(table: PathTable) -> None:
    assert resolve_imports("README.md", "markdown", [Import("./a", (), 1)], table, GO_MODULES) == ()
