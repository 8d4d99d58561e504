"""Does a chat template only copy message text into its output? Then one rendering per conversation is enough.

The renderer finds where each message's text lands by rendering it wrapped in sentinels. When the template only
outputs that text (directly, or joined to other strings), the rendering without sentinels is exactly the sentinel
rendering with its sentinels removed, and the second rendering can be skipped. Any other use of the text, or of a
message holding it, could behave differently with sentinels inside: a filter (`| trim`), a method (`.split()`), a
comparison, `| tojson` of a message, passing it to a macro, keeping it in a namespace. One such use anywhere, or a
construct this analysis does not know, and the template is rendered twice, as before. So the answer is conservative:
`True` only when every path of the text through the template is one of the few known to be safe.

Values are tracked through the template's syntax tree as TEXT (a string that may hold sentinels: `content`,
`reasoning_content`, a tool call's function `name`) or CONTAINER (the messages, a message, its tool calls), through
`set`, `for` and conditional expressions, until nothing new is learned.
"""
from __future__ import annotations

from typing import Any

from jinja2 import nodes

TEXT, CONTAINER = "text", "container"
CLEAN: frozenset[str] = frozenset()
TEXT_FIELDS = frozenset({"content", "reasoning_content", "thinking", "reasoning", "name"})
"""Keys whose values the renderer wraps in sentinels (transformers aliases reasoning as `thinking`/`reasoning`)."""
CONTAINER_FIELDS = frozenset({"tool_calls", "function"})
"""Keys whose values hold wrapped text further down."""
_SAFE_TESTS = frozenset({"defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "boolean",
                         "number", "integer", "float", "true", "false"})
_CONTAINER_FILTERS = {"length": CLEAN, "count": CLEAN, **dict.fromkeys(("first", "last", "reverse", "list"),
                                                                       frozenset({CONTAINER}))}
_METHODS = frozenset(dir(dict)) | frozenset(dir(list)) | frozenset(dir(str))


class _NotVerbatim(Exception):
    """A use of message text (or of a message) that sentinels could change."""


def copies_text_verbatim(environment: Any, template: str) -> bool:
    """True when `template` only outputs, concatenates, tests the truth or the type of message text, so rendering
    with sentinels and removing them gives the rendering without them."""
    try:
        tree = environment.parse(template)
    except Exception:  # noqa: BLE001 - a template that does not parse is rendered (and refused) the usual way
        return False
    names: dict[str, frozenset[str]] = {"messages": frozenset({CONTAINER})}
    try:
        for _ in range(10):
            before = dict(names)
            _Flow(names).statements(tree.body)
            if names == before:
                return True
    except _NotVerbatim:
        return False
    return False


class _Flow:
    """One pass over the template, widening `names` (variable -> kinds) and raising _NotVerbatim on a risky use."""

    def __init__(self, names: dict[str, frozenset[str]]):
        self.names = names

    # --- statements ------------------------------------------------------------------------------------------------
    def statements(self, body: list[nodes.Node]) -> None:
        for node in body:
            self.statement(node)

    def statement(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if CONTAINER in self.kinds(child):
                    raise _NotVerbatim("a message is written as a whole")
        elif isinstance(node, nodes.If):
            self.kinds(node.test)
            self.statements(node.body)
            for branch in node.elif_:
                self.statement(branch)
            self.statements(node.else_)
        elif isinstance(node, nodes.For):
            items = self.kinds(node.iter)
            if TEXT in items or (node.recursive and items):
                raise _NotVerbatim("text is iterated")
            self.bind(node.target, frozenset({CONTAINER}) if items else CLEAN)
            if node.test is not None:
                self.kinds(node.test)
            self.statements(node.body)
            self.statements(node.else_)
        elif isinstance(node, nodes.Assign):
            self.bind(node.target, self.kinds(node.node))
        elif isinstance(node, nodes.AssignBlock):
            self.statements(node.body)
            self.bind(node.target, frozenset({TEXT}))  # what the block wrote, which may hold text
            if node.filter is not None:
                raise _NotVerbatim("a block is filtered")
        elif isinstance(node, nodes.With):
            for target, value in zip(node.targets, node.values):
                self.bind(target, self.kinds(value))
            self.statements(node.body)
        elif isinstance(node, (nodes.Scope, nodes.ScopedEvalContextModifier)):
            self.statements(node.body)
        elif isinstance(node, nodes.Macro):
            self.statements(node.body)  # tainted arguments are refused where the macro is called
        elif isinstance(node, nodes.CallBlock):  # also transformers' {% generation %} block
            self.kinds(node.call)
            self.statements(node.body)
        elif isinstance(node, nodes.ExprStmt):
            self.kinds(node.node)
        elif isinstance(node, (nodes.Continue, nodes.Break)):
            pass
        else:  # includes, imports, filter blocks, extension statements: not analysed
            raise _NotVerbatim(f"{type(node).__name__} is not analysed")

    def bind(self, target: nodes.Node, kinds: frozenset[str]) -> None:
        if isinstance(target, nodes.Name):
            self.names[target.name] = self.names.get(target.name, CLEAN) | kinds
        elif isinstance(target, nodes.Tuple):
            for item in target.items:
                self.bind(item, kinds)
        elif kinds:  # a namespace attribute (`ns.x = ...`) would carry text out of sight
            raise _NotVerbatim("text is stored in a namespace")

    # --- expressions -----------------------------------------------------------------------------------------------
    def kinds(self, node: nodes.Node | None) -> frozenset[str]:
        """What `node` may evaluate to (TEXT, CONTAINER, or nothing to watch), checking how it uses its parts."""
        if node is None or isinstance(node, (nodes.Const, nodes.TemplateData)):
            return CLEAN
        if isinstance(node, nodes.Name):
            return self.names.get(node.name, CLEAN)
        if isinstance(node, (nodes.Getattr, nodes.Getitem)):
            return self.access(node)
        if isinstance(node, nodes.Call):
            return self.call(node)
        if isinstance(node, nodes.Filter):
            return self.filter(node)
        if isinstance(node, nodes.Test):
            if self.kinds(node.node) and node.name not in _SAFE_TESTS:
                raise _NotVerbatim(f"text is tested with `is {node.name}`")
            self.clean(node.args, node.kwargs)
            return CLEAN
        if isinstance(node, nodes.Compare):
            if _is_emptiness_test(node):
                self.kinds(node.expr)  # still checks what the operand itself does
                self.kinds(node.ops[0].expr)
            else:
                self.clean([node.expr, *(op.expr for op in node.ops)])
            return CLEAN
        if isinstance(node, nodes.Not):
            self.kinds(node.node)  # truth is the same with sentinels: empty text is never wrapped
            return CLEAN
        if isinstance(node, (nodes.And, nodes.Or)):
            return self.kinds(node.left) | self.kinds(node.right)
        if isinstance(node, nodes.CondExpr):
            self.kinds(node.test)
            return self.kinds(node.expr1) | self.kinds(node.expr2)
        if isinstance(node, nodes.Add):
            return self.kinds(node.left) | self.kinds(node.right)
        if isinstance(node, nodes.Concat):
            parts = [self.kinds(n) for n in node.nodes]
            if any(CONTAINER in p for p in parts):
                raise _NotVerbatim("a message is turned into a string")
            return frozenset().union(*parts)
        if isinstance(node, (nodes.List, nodes.Tuple)):
            return frozenset({CONTAINER}) if any(self.kinds(n) for n in node.items) else CLEAN
        if isinstance(node, nodes.Dict):
            tainted = any(self.kinds(p.key) or self.kinds(p.value) for p in node.items)
            return frozenset({CONTAINER}) if tainted else CLEAN
        if isinstance(node, nodes.Slice):
            self.clean([node.start, node.stop, node.step])
            return CLEAN
        # arithmetic (`%` formats strings), unary minus, anything else: fine only on values without text
        self.clean(list(node.iter_child_nodes()))
        return CLEAN

    def access(self, node: nodes.Getattr | nodes.Getitem) -> frozenset[str]:
        base = self.kinds(node.node)
        if isinstance(node, nodes.Getattr):
            key: Any = node.attr
        else:
            key = node.arg.value if isinstance(node.arg, nodes.Const) else None
            if key is None:
                self.clean([node.arg])
        if TEXT in base:
            raise _NotVerbatim("text is indexed or has a method called")
        if CONTAINER not in base:
            if isinstance(node.node, nodes.Name) and node.node.name == "loop" and key in ("previtem", "nextitem"):
                raise _NotVerbatim("loop.previtem / loop.nextitem")
            return CLEAN
        if isinstance(key, str):
            if key in TEXT_FIELDS:
                return frozenset({TEXT})
            if key in CONTAINER_FIELDS:
                return frozenset({CONTAINER})
            if key in _METHODS:
                raise _NotVerbatim(f"a message's method `{key}`")
            return CLEAN  # role, type, id, arguments, tools: never wrapped
        return frozenset({CONTAINER})  # an element or a slice of the messages (or of a message's tool calls)

    def call(self, node: nodes.Call) -> frozenset[str]:
        if isinstance(node.node, (nodes.Getattr, nodes.Getitem)) and self.kinds(node.node.node):
            raise _NotVerbatim("a method of text or of a message is called")
        self.kinds(node.node)
        self.clean(node.args, node.kwargs, [node.dyn_args, node.dyn_kwargs])
        return CLEAN

    def filter(self, node: nodes.Filter) -> frozenset[str]:
        base = self.kinds(node.node)
        self.clean(node.args, node.kwargs, [node.dyn_args, node.dyn_kwargs])
        if not base:
            return CLEAN
        if base == {TEXT} and node.name == "string":
            return base
        if base == {CONTAINER} and node.name in _CONTAINER_FILTERS:
            return _CONTAINER_FILTERS[node.name]
        raise _NotVerbatim(f"text or a message goes through `| {node.name}`")

    def clean(self, *groups: list) -> None:
        """These parts (arguments, operands) must hold no text and no message."""
        for group in groups:
            for item in group:
                value = item.value if isinstance(item, nodes.Keyword) else item
                if value is not None and self.kinds(value):
                    raise _NotVerbatim("text or a message is passed on")


def _is_emptiness_test(node: nodes.Compare) -> bool:
    """`x == ''` or `x != ''`: the same answer with sentinels, since empty text is never wrapped."""
    if len(node.ops) != 1 or node.ops[0].op not in ("eq", "ne"):
        return False
    sides = (node.expr, node.ops[0].expr)
    return any(isinstance(side, nodes.Const) and side.value == "" for side in sides)
