; Tags query for Go (tree-sitter-go). Capture convention: see repo_index/parse.py.

; ---------------------------------------------------------------- definitions

(function_declaration
  name: (identifier) @name) @definition.function

(method_declaration
  name: (field_identifier) @name) @definition.method

; Structs and interfaces: Go has no `body` field to end the signature at, so the name node is the
; definition node and the outline shows the `Name struct {` line only, not the fields.
(type_spec
  name: (type_identifier) @name @definition.class
  type: (struct_type))

(type_spec
  name: (type_identifier) @name @definition.interface
  type: (interface_type))

; Other named types: `type ID int`, `type Handler func(w Writer)`, `type Set[T any] map[T]bool`
(type_spec
  name: (type_identifier) @name
  type: [
    (type_identifier)
    (qualified_type)
    (generic_type)
    (pointer_type)
    (slice_type)
    (array_type)
    (map_type)
    (channel_type)
    (function_type)
    (parenthesized_type)
  ]) @definition.type

; `type A = B`
(type_alias
  name: (type_identifier) @name) @definition.type

; Interface methods
(method_elem
  name: (field_identifier) @name) @definition.method

; `const X = 1` and each name of `const ( A, B = 1, 2 )`
; (no `name:` field in the pattern: with it, only the first name of `A, B = ...` matches)
(const_spec
  (identifier) @name) @definition.constant

; Package-level `var X = ...`
(source_file
  (var_declaration
    (var_spec
      (identifier) @name) @definition.constant))

(source_file
  (var_declaration
    (var_spec_list
      (var_spec
        (identifier) @name) @definition.constant)))

; ---------------------------------------------------------------- imports

; `import "fmt"` and each spec of `import ( str "strings"; "github.com/x/y" )`
(import_spec
  path: (_) @import.source) @import

; ---------------------------------------------------------------- references

(call_expression
  function: (identifier) @name) @reference.call

(call_expression
  function: (selector_expression
    field: (field_identifier) @name)) @reference.call

; Type identifiers in type positions (a type_spec's own name is a definition, not a use).
[
  (type_spec type: (type_identifier) @name)
  (type_alias type: (type_identifier) @name)
  (qualified_type name: (type_identifier) @name)
  (generic_type type: (type_identifier) @name)
  (parameter_declaration (type_identifier) @name)
  (variadic_parameter_declaration (type_identifier) @name)
  (function_declaration (type_identifier) @name)
  (method_declaration (type_identifier) @name)
  (method_elem (type_identifier) @name)
  (func_literal (type_identifier) @name)
  (function_type (type_identifier) @name)
  (field_declaration (type_identifier) @name)
  (const_spec (type_identifier) @name)
  (var_spec (type_identifier) @name)
  (pointer_type (type_identifier) @name)
  (slice_type (type_identifier) @name)
  (array_type (type_identifier) @name)
  (implicit_length_array_type (type_identifier) @name)
  (map_type (type_identifier) @name)
  (channel_type (type_identifier) @name)
  (parenthesized_type (type_identifier) @name)
  (negated_type (type_identifier) @name)
  (type_constraint (type_identifier) @name)
  (type_elem (type_identifier) @name)
  (composite_literal (type_identifier) @name)
  (type_assertion_expression (type_identifier) @name)
  (type_conversion_expression (type_identifier) @name)
  (type_case (type_identifier) @name)
  (argument_list (type_identifier) @name)
] @reference.type
