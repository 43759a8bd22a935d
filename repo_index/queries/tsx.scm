; Tags query for TSX (tree-sitter-typescript, language_tsx). Capture convention: see repo_index/parse.py.
; The same patterns as typescript.scm, plus JSX component references.

; ---------------------------------------------------------------- definitions

(function_declaration
  name: (identifier) @name) @definition.function

(generator_function_declaration
  name: (identifier) @name) @definition.function

; Overload signatures and `declare function f(): T;`
(function_signature
  name: (identifier) @name) @definition.function

(class_declaration
  name: (type_identifier) @name) @definition.class

(abstract_class_declaration
  name: (type_identifier) @name) @definition.class

; `const Widget = class { ... }`
(variable_declarator
  name: (identifier) @name
  value: (class) @definition.class)

(interface_declaration
  name: (type_identifier) @name) @definition.interface

(type_alias_declaration
  name: (type_identifier) @name) @definition.type

(enum_declaration
  name: (identifier) @name) @definition.enum

; `namespace NS { ... }` / `module NS { ... }`
(internal_module
  name: (identifier) @name) @definition.module

(method_definition
  name: [(property_identifier) (private_property_identifier)] @name) @definition.method

; Interface members `m(a: A): R;` and `abstract m(): R;`
(method_signature
  name: [(property_identifier) (private_property_identifier)] @name) @definition.method

(abstract_method_signature
  name: [(property_identifier) (private_property_identifier)] @name) @definition.method

; `handleClick = () => { ... }` class fields holding functions
(public_field_definition
  name: [(property_identifier) (private_property_identifier)] @name
  value: [(arrow_function) (function_expression) (generator_function)] @definition.method)

; `const f = () => ...`, `let g = function () {}`: the function node is the definition (its `body`
; ends the signature); the name comes from the declarator.
(variable_declarator
  name: (identifier) @name
  value: [(arrow_function) (function_expression) (generator_function)] @definition.function)

; Top-level `const NAME = value` (not a function: those are functions, above), also exported;
; `const x = require('x')` is an import, not a constant.
(program
  (lexical_declaration
    kind: "const"
    (variable_declarator
      name: (identifier) @name
      value: [
        (number) (string) (template_string) (object) (array)
        (new_expression) (identifier) (member_expression)
        (subscript_expression) (true) (false) (null) (undefined)
        (binary_expression) (unary_expression) (ternary_expression) (regex)
        (await_expression) (parenthesized_expression) (as_expression)
        (satisfies_expression) (non_null_expression)
      ]) @definition.constant))

(program
  (export_statement
    declaration: (lexical_declaration
      kind: "const"
      (variable_declarator
        name: (identifier) @name
        value: [
          (number) (string) (template_string) (object) (array)
          (new_expression) (identifier) (member_expression)
          (subscript_expression) (true) (false) (null) (undefined)
          (binary_expression) (unary_expression) (ternary_expression) (regex)
          (await_expression) (parenthesized_expression) (as_expression)
          (satisfies_expression) (non_null_expression)
        ]) @definition.constant)))

(program
  (lexical_declaration
    kind: "const"
    (variable_declarator
      name: (identifier) @name
      value: (call_expression function: (_) @_callee)) @definition.constant)
  (#not-eq? @_callee "require"))

(program
  (export_statement
    declaration: (lexical_declaration
      kind: "const"
      (variable_declarator
        name: (identifier) @name
        value: (call_expression function: (_) @_callee)) @definition.constant))
  (#not-eq? @_callee "require"))

; `exports.f = function () {}`, `Foo.prototype.bar = () => {}`
(assignment_expression
  left: (member_expression
    property: (property_identifier) @name)
  right: [(arrow_function) (function_expression) (generator_function)] @definition.function)

; ---------------------------------------------------------------- imports

; `import x from './a'`, `import {y} from "./b"`, `import type {T} from './t'`, `import './c'`
(import_statement
  source: (string) @import.source) @import

; `import x = require('./legacy')`
(import_require_clause
  source: (string) @import.source) @import

; `export * from './d'`, `export {z} from './e'`
(export_statement
  source: (string) @import.source) @import

; `require('./f')`
(call_expression
  function: (identifier) @_require
  arguments: (arguments . (string) @import.source .)
  (#eq? @_require "require")) @import

; `import('./g')`
(call_expression
  function: (import)
  arguments: (arguments . (string) @import.source)) @import

; ---------------------------------------------------------------- references

(call_expression
  function: (identifier) @name) @reference.call

(call_expression
  function: (member_expression
    property: (property_identifier) @name)) @reference.call

(new_expression
  constructor: [
    (identifier) @name
    (member_expression property: (property_identifier) @name)
  ]) @reference.name

; `class A extends B`, `class A extends mod.B<T>`
(extends_clause
  value: [
    (identifier) @name
    (member_expression property: (property_identifier) @name)
  ]) @reference.name

; Type identifiers in type positions (not the names that declarations introduce).
[
  (type_annotation (type_identifier) @name)
  (type_arguments (type_identifier) @name)
  (generic_type name: (type_identifier) @name)
  (nested_type_identifier name: (type_identifier) @name)
  (implements_clause (type_identifier) @name)
  (extends_type_clause type: (type_identifier) @name)
  (constraint (type_identifier) @name)
  (default_type (type_identifier) @name)
  (union_type (type_identifier) @name)
  (intersection_type (type_identifier) @name)
  (array_type (type_identifier) @name)
  (tuple_type (type_identifier) @name)
  (optional_type (type_identifier) @name)
  (rest_type (type_identifier) @name)
  (readonly_type (type_identifier) @name)
  (parenthesized_type (type_identifier) @name)
  (lookup_type (type_identifier) @name)
  (index_type_query (type_identifier) @name)
  (conditional_type (type_identifier) @name)
  (function_type (type_identifier) @name)
  (constructor_type (type_identifier) @name)
  (type_predicate type: (type_identifier) @name)
  (mapped_type_clause type: (type_identifier) @name)
  (template_type (type_identifier) @name)
  (flow_maybe_type (type_identifier) @name)
  (adding_type_annotation (type_identifier) @name)
  (opting_type_annotation (type_identifier) @name)
  (omitting_type_annotation (type_identifier) @name)
  (as_expression (type_identifier) @name)
  (satisfies_expression (type_identifier) @name)
  (type_alias_declaration value: (type_identifier) @name)
] @reference.type

; JSX components (capitalised names; `<div>` is an intrinsic element) and `<Foo.Bar>`
(jsx_opening_element
  name: (identifier) @name
  (#match? @name "^[A-Z]")) @reference.name

(jsx_self_closing_element
  name: (identifier) @name
  (#match? @name "^[A-Z]")) @reference.name

(jsx_opening_element
  name: (member_expression
    property: (property_identifier) @name)) @reference.name

(jsx_self_closing_element
  name: (member_expression
    property: (property_identifier) @name)) @reference.name
