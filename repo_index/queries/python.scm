; Tags query for Python (tree-sitter-python). Capture convention: see repo_index/parse.py.

; ---------------------------------------------------------------- definitions

(function_definition
  name: (identifier) @name) @definition.function

(class_definition
  name: (identifier) @name) @definition.class

; Decorators: no name of their own, so no tag, but their lines are in the outline above the def.
(decorated_definition
  (decorator) @definition.decorator)

; Module-level `NAME = value` and `NAME: T = value` (a plain identifier on the left).
(module
  (expression_statement
    (assignment
      left: (identifier) @name) @definition.constant))

; Python 3.12 `type Alias = ...`
(module
  (type_alias_statement
    left: (type (identifier) @name)) @definition.type)

; ---------------------------------------------------------------- imports

; `import a.b`, `import a.b as c` (one import per module of the statement)
(import_statement
  name: [
    (dotted_name) @import.source
    (aliased_import name: (dotted_name) @import.source)
  ]) @import

; `from a.b import c, d as e`, `from . import x`, `from ..m import (y, z)`: all names in one match
(import_from_statement
  module_name: (_) @import.source
  "import"
  name: [
    (dotted_name) @import.name
    (aliased_import name: (dotted_name) @import.name)
  ]
  (","
    name: [
      (dotted_name) @import.name
      (aliased_import name: (dotted_name) @import.name)
    ])*) @import

; `from x import *`
(import_from_statement
  module_name: (_) @import.source
  (wildcard_import) @import.name) @import

; ---------------------------------------------------------------- references

(call
  function: (identifier) @name) @reference.call

(call
  function: (attribute
    attribute: (identifier) @name)) @reference.call

; Class bases and metaclass: `class A(B, mod.C, Generic[T], metaclass=M)`
(class_definition
  superclasses: (argument_list
    [
      (identifier) @name
      (attribute attribute: (identifier) @name)
      (subscript value: [(identifier) @name (attribute attribute: (identifier) @name)])
      (keyword_argument value: [(identifier) @name (attribute attribute: (identifier) @name)])
    ]) @reference.name)

; Decorators without arguments (`@dataclass(...)` is a call, captured above)
(decorator
  [
    (identifier) @name
    (attribute attribute: (identifier) @name)
  ]) @reference.name

; Annotations: `x: Foo`, `-> mod.Bar`, `list[Baz]`
(type
  [
    (identifier) @name
    (attribute attribute: (identifier) @name)
  ]) @reference.type

(generic_type
  (identifier) @name) @reference.type

; Unions in annotations: `Foo | Bar | None` (left-nested; up to four members)
(type
  (binary_operator
    [(identifier) @name (attribute attribute: (identifier) @name)]) @reference.type)

(type
  (binary_operator
    (binary_operator
      [(identifier) @name (attribute attribute: (identifier) @name)]) @reference.type))

(type
  (binary_operator
    (binary_operator
      (binary_operator
        [(identifier) @name (attribute attribute: (identifier) @name)]) @reference.type)))
