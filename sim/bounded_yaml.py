"""YAML for scene files: `yaml.SafeLoader` with bounds, so that no document can exhaust the stack or memory.

On top of safe loading (plain data only, nothing executed) the loader refuses a key given twice
in one mapping, nesting deeper than `limits.SCENE_DEPTH`, a document of more than
`limits.SCENE_NODES` values once every alias is expanded (an alias bomb is a few lines that
expand to billions of values), a recursive alias, and a value its type cannot hold (an integer
of more digits than Python converts, a date like 2001-13-45). Each refusal is a `BoundError`
with the position of the node and the usual "expected ..., got ..." halves.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from . import limits
from .limits import brief, cut

_MERGE = "tag:yaml.org,2002:merge"


class BoundError(yaml.YAMLError):
    """A document outside the loader's bounds, at `mark` (a yaml Mark)."""

    def __init__(self, mark: yaml.Mark, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")
        self.mark, self.expected, self.got = mark, expected, got


class BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with the module's bounds; use through `safe_load`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it with aliases expanded, once composed

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            target = self.anchors.get(self.peek_event().anchor)
            if target is not None and id(target) not in self._sizes:
                raise BoundError(self.peek_event().start_mark, "no alias inside its own anchor", "a recursive alias")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > limits.SCENE_DEPTH:
                raise BoundError(self.peek_event().start_mark, f"at most {limits.SCENE_DEPTH} levels of nesting",
                                 "deeper nesting")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > limits.SCENE_NODES:
            raise BoundError(node.start_mark, f"at most {limits.SCENE_NODES} values with aliases expanded",
                             "more (an alias bomb?)")
        self._sizes[id(node)] = size
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:  # e.g. int() of 5,000 digits, a 13th month
            kind = node.tag.rsplit(":", 1)[-1]
            raise BoundError(node.start_mark, f"a valid {kind}", f"{brief(node.value)} ({cut(str(err))})") from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if seen is not key_node.start_mark:
                raise BoundError(key_node.start_mark, "each key once in a mapping",
                                 f"{brief(key)} again (first on line {seen.line + 1})")
        return super().construct_mapping(node, deep)


def safe_load(text: str) -> Any:
    """The single document in `text`, as `yaml.safe_load` reads it, within the module's bounds.

    Raises BoundError beyond them, yaml.YAMLError for bad YAML."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
