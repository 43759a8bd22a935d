; Tags query for Rust (tree-sitter-rust). Capture convention: see repo_index/parse.py.

; ---------------------------------------------------------------- definitions

; Free functions: at file level, in a `mod { }`, nested in a block. Functions of `impl` and
; `trait` blocks are methods (below).
(source_file
  (function_item
    name: (identifier) @name) @definition.function)

(mod_item
  body: (declaration_list
    (function_item
      name: (identifier) @name) @definition.function))

(block
  (function_item
    name: (identifier) @name) @definition.function)

(impl_item
  body: (declaration_list
    (function_item
      name: (identifier) @name) @definition.method))

(trait_item
  body: (declaration_list
    [
      (function_item name: (identifier) @name)
      (function_signature_item name: (identifier) @name)
    ] @definition.method))

; `extern "C" { fn f(); }`
(foreign_mod_item
  body: (declaration_list
    (function_signature_item
      name: (identifier) @name) @definition.function))

; `impl Trait for Type {`: no name of its own, so no tag, but its header line is in the outline.
(impl_item) @definition.impl

(struct_item
  name: (type_identifier) @name) @definition.class

(union_item
  name: (type_identifier) @name) @definition.class

(enum_item
  name: (type_identifier) @name) @definition.enum

(trait_item
  name: (type_identifier) @name) @definition.interface

(type_item
  name: (type_identifier) @name) @definition.type

(const_item
  name: (identifier) @name) @definition.constant

(static_item
  name: (identifier) @name) @definition.constant

; `macro_rules! m {` (no `body` field: the name node is the definition, so the outline shows one line)
(macro_definition
  name: (identifier) @name @definition.macro)

; `mod m { ... }` (inline module)
(mod_item
  name: (identifier) @name
  body: (_)) @definition.module

; ---------------------------------------------------------------- imports

; `use crate::a::b::C;`, `use std::io::{self, Read};`, `pub use self::x::*;`: the whole argument
(use_declaration
  argument: [
    (identifier)
    (scoped_identifier)
    (scoped_use_list)
    (use_list)
    (use_wildcard)
    (crate)
    (self)
    (super)
  ] @import.source) @import

; `use std::collections::HashMap as Map;`: the path, without the alias
(use_declaration
  argument: (use_as_clause
    path: (_) @import.source)) @import

; `extern crate alloc;`
(extern_crate_declaration
  name: (identifier) @import.source) @import

; `mod foo;` (a module whose body is in foo.rs or foo/mod.rs)
(mod_item
  name: (identifier) @import.submodule
  !body) @import

; ---------------------------------------------------------------- references

(call_expression
  function: (identifier) @name) @reference.call

; `x.method()`
(call_expression
  function: (field_expression
    field: (field_identifier) @name)) @reference.call

; `Type::new()`, `module::func()`
(call_expression
  function: (scoped_identifier
    name: (identifier) @name)) @reference.call

; `Type::new()` names Type (capitalised path: a type, not a module)
(call_expression
  function: (scoped_identifier
    path: (identifier) @name
    (#match? @name "^[A-Z]"))) @reference.type

; `parse::<T>()`, `x.collect::<Vec<_>>()`, `Vec::<u8>::new()`
(call_expression
  function: (generic_function
    function: [
      (identifier) @name
      (field_expression field: (field_identifier) @name)
      (scoped_identifier name: (identifier) @name)
    ])) @reference.call

(macro_invocation
  macro: [
    (identifier) @name
    (scoped_identifier name: (identifier) @name)
  ]) @reference.call

; Type identifiers in type positions (not the names that items and type parameters introduce).
[
  (type_item type: (type_identifier) @name)
  (impl_item trait: (type_identifier) @name)
  (impl_item type: (type_identifier) @name)
  (generic_type type: (type_identifier) @name)
  (generic_type_with_turbofish type: (type_identifier) @name)
  (scoped_type_identifier name: (type_identifier) @name)
  (type_arguments (type_identifier) @name)
  (type_binding type: (type_identifier) @name)
  (trait_bounds (type_identifier) @name)
  (where_predicate left: (type_identifier) @name)
  (higher_ranked_trait_bound (type_identifier) @name)
  (removed_trait_bound (type_identifier) @name)
  (abstract_type (type_identifier) @name)
  (dynamic_type (type_identifier) @name)
  (bounded_type (type_identifier) @name)
  (reference_type (type_identifier) @name)
  (pointer_type (type_identifier) @name)
  (array_type (type_identifier) @name)
  (tuple_type (type_identifier) @name)
  (bracketed_type (type_identifier) @name)
  (qualified_type (type_identifier) @name)
  (function_type (type_identifier) @name)
  (parameter type: (type_identifier) @name)
  (function_item return_type: (type_identifier) @name)
  (function_signature_item return_type: (type_identifier) @name)
  (closure_expression return_type: (type_identifier) @name)
  (field_declaration type: (type_identifier) @name)
  (ordered_field_declaration_list (type_identifier) @name)
  (let_declaration type: (type_identifier) @name)
  (const_item type: (type_identifier) @name)
  (static_item type: (type_identifier) @name)
  (const_parameter type: (type_identifier) @name)
  (type_cast_expression type: (type_identifier) @name)
  (struct_expression name: (type_identifier) @name)
  (struct_pattern type: (type_identifier) @name)
] @reference.type
