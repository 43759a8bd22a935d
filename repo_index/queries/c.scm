; Tags query for C (tree-sitter-c). Capture convention: see repo_index/parse.py.

; ---------------------------------------------------------------- definitions

; `int f(int a) {`, `char *f(void) {`, `int **f(void) {`: the name is inside the declarator
(function_definition
  declarator: [
    (function_declarator declarator: (identifier) @name)
    (pointer_declarator declarator: (function_declarator declarator: (identifier) @name))
    (pointer_declarator declarator: (pointer_declarator declarator: (function_declarator declarator: (identifier) @name)))
  ]) @definition.function

; Prototypes: `int f(int a);`, `static char *g(void);`
(declaration
  declarator: [
    (function_declarator declarator: (identifier) @name)
    (pointer_declarator declarator: (function_declarator declarator: (identifier) @name))
    (pointer_declarator declarator: (pointer_declarator declarator: (function_declarator declarator: (identifier) @name)))
  ]) @definition.function

; `struct s { ... }`, `union u { ... }`, `enum e { ... }` (with a body; `struct s *p` is a use)
(struct_specifier
  name: (type_identifier) @name
  body: (_)) @definition.class

(union_specifier
  name: (type_identifier) @name
  body: (_)) @definition.class

(enum_specifier
  name: (type_identifier) @name
  body: (_)) @definition.enum

; `typedef struct { ... } name;`: the struct is the definition node (its `body` ends the
; signature), named by the typedef.
(type_definition
  type: [(struct_specifier body: (_)) (union_specifier body: (_)) (enum_specifier body: (_))] @definition.type
  declarator: [
    (type_identifier) @name
    (pointer_declarator declarator: (type_identifier) @name)
  ])

; Other typedefs: `typedef unsigned long size_type;`, `typedef struct node *node_p;`,
; `typedef int (*callback)(int);`, `typedef char buf_t[16];`
(type_definition
  type: [
    (primitive_type)
    (type_identifier)
    (sized_type_specifier)
    (macro_type_specifier)
    (struct_specifier !body)
    (union_specifier !body)
    (enum_specifier !body)
  ]
  declarator: [
    (type_identifier) @name
    (pointer_declarator declarator: (type_identifier) @name)
    (pointer_declarator declarator: (pointer_declarator declarator: (type_identifier) @name))
    (array_declarator declarator: (type_identifier) @name)
    (function_declarator declarator: (parenthesized_declarator (pointer_declarator declarator: (type_identifier) @name)))
    (function_declarator declarator: (type_identifier) @name)
  ]) @definition.type

; Macros: `#define MAX 10` (with a value: include guards are left out), `#define SQR(x) ...`.
; No `body` field, so the name node is the definition node: the outline shows the first line only.
(preproc_def
  name: (identifier) @name @definition.macro
  value: (_))

(preproc_function_def
  name: (identifier) @name @definition.macro)

; ---------------------------------------------------------------- imports

; `#include "foo/bar.h"`, `#include <stdio.h>`
(preproc_include
  path: [(string_literal) (system_lib_string)] @import.source) @import

; ---------------------------------------------------------------- references

(call_expression
  function: (identifier) @name) @reference.call

; `obj->fn(x)`, `obj.fn(x)`
(call_expression
  function: (field_expression
    field: (field_identifier) @name)) @reference.call

; Type names in type positions; `struct s *p` (a struct without a body) uses `s`.
[
  (declaration type: (type_identifier) @name)
  (field_declaration type: (type_identifier) @name)
  (parameter_declaration type: (type_identifier) @name)
  (function_definition type: (type_identifier) @name)
  (type_descriptor type: (type_identifier) @name)
  (type_definition type: (type_identifier) @name)
  (struct_specifier name: (type_identifier) @name !body)
  (union_specifier name: (type_identifier) @name !body)
  (enum_specifier name: (type_identifier) @name !body)
] @reference.type
