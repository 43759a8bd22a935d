; Tags query for Java (tree-sitter-java). Capture convention: see repo_index/parse.py.

; ---------------------------------------------------------------- definitions

(class_declaration
  name: (identifier) @name) @definition.class

(record_declaration
  name: (identifier) @name) @definition.class

(interface_declaration
  name: (identifier) @name) @definition.interface

(annotation_type_declaration
  name: (identifier) @name) @definition.interface

(enum_declaration
  name: (identifier) @name) @definition.enum

(method_declaration
  name: (identifier) @name) @definition.method

(constructor_declaration
  name: (identifier) @name) @definition.method

; `record Point(int x, int y) { Point { ... } }`
(compact_constructor_declaration
  name: (identifier) @name) @definition.method

; `@interface Ann { String value() default ""; }`
(annotation_type_element_declaration
  name: (identifier) @name) @definition.method

; ---------------------------------------------------------------- imports

; `import com.foo.Bar;`, `import static com.foo.Bar.baz;`, `import com.foo.*;` (name "*")
(import_declaration
  [(scoped_identifier) (identifier)] @import.source
  (asterisk)? @import.name) @import

; ---------------------------------------------------------------- references

(method_invocation
  name: (identifier) @name) @reference.call

; `new Foo(...)`, `new Foo<>()`, `new a.b.Foo()`
(object_creation_expression
  type: [
    (type_identifier) @name
    (generic_type [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
    (scoped_type_identifier (type_identifier) @name .)
  ]) @reference.name

; Annotations `@Override`, `@Table(name = "x")`
(marker_annotation
  name: [(identifier) @name (scoped_identifier name: (identifier) @name)]) @reference.name

(annotation
  name: [(identifier) @name (scoped_identifier name: (identifier) @name)]) @reference.name

; Type identifiers in type positions (a type parameter's own name is a definition, not a use);
; of a qualified `a.b.Foo`, only `Foo`.
[
  (generic_type [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (type_arguments [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (wildcard [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (type_bound [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (superclass [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (type_list [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (throws [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (array_type [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (annotated_type [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (field_declaration [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (constant_declaration [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (local_variable_declaration [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (formal_parameter [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (spread_parameter [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (receiver_parameter [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (method_declaration [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (annotation_type_element_declaration [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (catch_type [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (resource [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (enhanced_for_statement [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (cast_expression [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (instanceof_expression [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (type_pattern [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (record_pattern_component [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (class_literal [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (method_reference [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
  (array_creation_expression [(type_identifier) @name (scoped_type_identifier (type_identifier) @name .)])
] @reference.type
