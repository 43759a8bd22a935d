; Tags query for C++ (tree-sitter-cpp). Capture convention: see repo_index/parse.py.
; The C patterns (c.scm) adapted to C++, plus classes, namespaces, methods, aliases, templates
; (a template's class or function is captured by its own pattern).

; ---------------------------------------------------------------- definitions

; Free functions: `int f(int a) {`, `char *f() {`, `T &f() {`
(function_definition
  declarator: [
    (function_declarator declarator: [(identifier) (operator_name)] @name)
    (pointer_declarator declarator: (function_declarator declarator: [(identifier) (operator_name)] @name))
    (pointer_declarator declarator: (pointer_declarator declarator: (function_declarator declarator: [(identifier) (operator_name)] @name)))
    (reference_declarator (function_declarator declarator: [(identifier) (operator_name)] @name))
  ]) @definition.function

; Methods defined in a class body (`int size() const {`, `~Box() {}`)
(function_definition
  declarator: [
    (function_declarator declarator: [(field_identifier) (destructor_name)] @name)
    (pointer_declarator declarator: (function_declarator declarator: (field_identifier) @name))
    (reference_declarator (function_declarator declarator: (field_identifier) @name))
  ]) @definition.method

; Methods defined out of line: `void Box::draw() {`, `Box<T>::~Box() {}`, `void ns::Box::f() {`:
; the final name of the qualified identifier (up to three qualifiers deep).
(function_definition
  declarator: [
    (function_declarator declarator: (qualified_identifier name: [(identifier) (destructor_name) (operator_name)] @name))
    (function_declarator declarator: (qualified_identifier name: (qualified_identifier name: [(identifier) (destructor_name) (operator_name)] @name)))
    (function_declarator declarator: (qualified_identifier name: (qualified_identifier name: (qualified_identifier name: [(identifier) (destructor_name) (operator_name)] @name))))
    (pointer_declarator declarator: (function_declarator declarator: (qualified_identifier name: [(identifier) (operator_name)] @name)))
    (pointer_declarator declarator: (function_declarator declarator: (qualified_identifier name: (qualified_identifier name: [(identifier) (operator_name)] @name))))
    (reference_declarator (function_declarator declarator: (qualified_identifier name: [(identifier) (operator_name)] @name)))
    (reference_declarator (function_declarator declarator: (qualified_identifier name: (qualified_identifier name: [(identifier) (operator_name)] @name))))
  ]) @definition.method

; Prototypes of free functions: `int f(int a);`, `static char *g();`, `friend void h(S&);`
; (`type:` is required: a constructor declared in a class body has none, see below).
(declaration
  type: (_)
  declarator: [
    (function_declarator declarator: [(identifier) (operator_name)] @name)
    (pointer_declarator declarator: (function_declarator declarator: [(identifier) (operator_name)] @name))
    (reference_declarator (function_declarator declarator: [(identifier) (operator_name)] @name))
  ]) @definition.function

; Method declarations in a class body: `virtual void draw() const = 0;`, `T &get();`
(field_declaration
  declarator: [
    (function_declarator declarator: [(field_identifier) (operator_name)] @name)
    (pointer_declarator declarator: (function_declarator declarator: [(field_identifier) (operator_name)] @name))
    (reference_declarator (function_declarator declarator: [(field_identifier) (operator_name)] @name))
  ]) @definition.method

; Constructor and destructor declarations in a class body: `explicit Box(T v);`, `virtual ~Box();`
(field_declaration_list
  (declaration
    !type
    declarator: (function_declarator
      declarator: [(identifier) (destructor_name)] @name)) @definition.method)

(class_specifier
  name: [
    (type_identifier) @name
    (template_type name: (type_identifier) @name)
  ]
  body: (_)) @definition.class

(struct_specifier
  name: [
    (type_identifier) @name
    (template_type name: (type_identifier) @name)
  ]
  body: (_)) @definition.class

(union_specifier
  name: (type_identifier) @name
  body: (_)) @definition.class

(enum_specifier
  name: (type_identifier) @name
  body: (_)) @definition.enum

(namespace_definition
  name: (namespace_identifier) @name) @definition.module

; `namespace a::b {`: the innermost name
(namespace_definition
  name: (nested_namespace_specifier
    (namespace_identifier) @name .)) @definition.module

; `using Alias = std::map<K, V>;`
(alias_declaration
  name: (type_identifier) @name) @definition.type

; `template <typename T> concept Number = ...;`
(concept_definition
  name: (identifier) @name) @definition.type

; `typedef struct { ... } name;`: the struct is the definition node (its `body` ends the
; signature), named by the typedef.
(type_definition
  type: [
    (struct_specifier body: (_))
    (union_specifier body: (_))
    (enum_specifier body: (_))
    (class_specifier body: (_))
  ] @definition.type
  declarator: [
    (type_identifier) @name
    (pointer_declarator declarator: (type_identifier) @name)
  ])

; Other typedefs: `typedef Box<int> IntBox;`, `typedef struct node *node_p;`,
; `typedef int (*callback)(int);`, `typedef char buf_t[16];`
(type_definition
  type: [
    (primitive_type)
    (type_identifier)
    (sized_type_specifier)
    (template_type)
    (qualified_identifier)
    (dependent_type)
    (decltype)
    (struct_specifier !body)
    (union_specifier !body)
    (enum_specifier !body)
    (class_specifier !body)
  ]
  declarator: [
    (type_identifier) @name
    (pointer_declarator declarator: (type_identifier) @name)
    (pointer_declarator declarator: (pointer_declarator declarator: (type_identifier) @name))
    (reference_declarator (type_identifier) @name)
    (array_declarator declarator: (type_identifier) @name)
    (function_declarator declarator: (parenthesized_declarator (pointer_declarator declarator: (type_identifier) @name)))
    (function_declarator declarator: (type_identifier) @name)
  ]) @definition.type

; `template <typename T>` on its own line: no name of its own, so no tag, but the line is in the outline
; (the class or function it declares is captured by its own pattern).
(template_declaration
  parameters: (template_parameter_list) @definition.template)

; Macros: `#define MAX 10` (with a value: include guards are left out), `#define SQR(x) ...`.
; No `body` field, so the name node is the definition node: the outline shows the first line only.
(preproc_def
  name: (identifier) @name @definition.macro
  value: (_))

(preproc_function_def
  name: (identifier) @name @definition.macro)

; ---------------------------------------------------------------- imports

; `#include "widget.hpp"`, `#include <vector>`
(preproc_include
  path: [(string_literal) (system_lib_string)] @import.source) @import

; ---------------------------------------------------------------- references

(call_expression
  function: [
    (identifier) @name
    (template_function name: (identifier) @name)
  ]) @reference.call

; `obj.f()`, `ptr->f()`, `obj.template f<T>()`
(call_expression
  function: (field_expression
    field: [
      (field_identifier) @name
      (template_method name: (field_identifier) @name)
    ])) @reference.call

; `std::sort(...)`, `a::b::f(...)`, `std::make_shared<T>(...)`
(call_expression
  function: (qualified_identifier
    name: [
      (identifier) @name
      (template_function name: (identifier) @name)
      (qualified_identifier name: [(identifier) @name (template_function name: (identifier) @name)])
    ])) @reference.call

; `new Widget(1)`, `new ns::Box<int>()`
(new_expression
  type: [
    (type_identifier) @name
    (template_type name: (type_identifier) @name)
    (qualified_identifier name: [(type_identifier) @name (template_type name: (type_identifier) @name)])
  ]) @reference.name

; Type names in type positions (not the names that definitions and template parameters introduce);
; `class S *p` (a class without a body) uses `S`.
[
  (declaration type: (type_identifier) @name)
  (field_declaration type: (type_identifier) @name)
  (parameter_declaration type: (type_identifier) @name)
  (optional_parameter_declaration type: (type_identifier) @name)
  (variadic_parameter_declaration type: (type_identifier) @name)
  (function_definition type: (type_identifier) @name)
  (type_descriptor type: (type_identifier) @name)
  (type_definition type: (type_identifier) @name)
  (template_type name: (type_identifier) @name)
  (qualified_identifier name: (type_identifier) @name)
  (base_class_clause (type_identifier) @name)
  (template_argument_list (type_identifier) @name)
  (dependent_type (type_identifier) @name)
  (for_range_loop type: (type_identifier) @name)
  (compound_literal_expression type: (type_identifier) @name)
  (friend_declaration (type_identifier) @name)
  (placeholder_type_specifier (type_identifier) @name)
  (requires_clause (type_identifier) @name)
  (constraint_conjunction (type_identifier) @name)
  (constraint_disjunction (type_identifier) @name)
  (struct_specifier name: (type_identifier) @name !body)
  (class_specifier name: (type_identifier) @name !body)
  (union_specifier name: (type_identifier) @name !body)
  (enum_specifier name: (type_identifier) @name !body)
] @reference.type
