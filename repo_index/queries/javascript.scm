; Tags query for JavaScript and JSX (tree-sitter-javascript). Capture convention: see repo_index/parse.py.

; ---------------------------------------------------------------- definitions

(function_declaration
  name: (identifier) @name) @definition.function

(generator_function_declaration
  name: (identifier) @name) @definition.function

(class_declaration
  name: (identifier) @name) @definition.class

; `const Widget = class { ... }`
(variable_declarator
  name: (identifier) @name
  value: (class) @definition.class)

(method_definition
  name: [(property_identifier) (private_property_identifier)] @name) @definition.method

; `handleClick = () => { ... }` class fields holding functions
(field_definition
  property: [(property_identifier) (private_property_identifier)] @name
  value: [(arrow_function) (function_expression) (generator_function)] @definition.method)

; `const f = () => ...`, `let g = function () {}`, `var h = function* () {}`: the function node is
; the definition (its `body` ends the signature); the name comes from the declarator.
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
        (await_expression) (parenthesized_expression)
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
          (await_expression) (parenthesized_expression)
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

; `import x from './a'`, `import {y} from "./b"`, `import './c'`
(import_statement
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

; `class A extends B`, `class A extends mod.B`
(class_heritage
  [
    (identifier) @name
    (member_expression property: (property_identifier) @name)
  ]) @reference.name

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
