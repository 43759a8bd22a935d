; Tags query for TSX (tree-sitter-typescript, language_tsx). Capture convention: see repo_index/parse.py.
; inherits: typescript
; Everything in typescript.scm, plus JSX component references (the TypeScript grammar has no JSX nodes).

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
