"""One prompt's run state, and ComfyUI's view of a prompt graph: execution order and cache signatures."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class PromptInterruptedError(Exception):
    """The prompt was interrupted while ``node_id`` was its current node."""


class _Run:
    """One prompt while it executes."""

    def __init__(self, item: list[Any], slot: int) -> None:
        self.item = item
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs = item
        self.client_id: str | None = self.extra_data.get("client_id")
        self.slot = slot
        self.interrupt = asyncio.Event()
        self.executed: list[str] = []
        self.messages: list[list[Any]] = []
        self.progress: dict[str, dict[str, Any]] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.last_node: str | None = None
        self.events_sent = 0
        self.drop_after = 0
        self.started = time.monotonic()


class _ExecutionList:
    """ComfyUI's ExecutionList (graph.py) without lazy inputs or async nodes: same order of execution."""

    def __init__(self, prompt: dict[str, Any], is_output, is_cached) -> None:
        self.prompt, self.is_output, self.is_cached = prompt, is_output, is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, bool]] = {}

    def add_node(self, root: str) -> None:
        stack, links = [root], []
        while stack:
            node_id = stack.pop()
            if node_id in self.pending:
                continue
            self.pending[node_id] = True
            self.block_count[node_id] = 0
            self.blocking[node_id] = {}
            for value in self.prompt[node_id]["inputs"].values():
                if is_link(value) and value[0] in self.prompt and not self.is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], node_id))
        for from_id, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = True
                    self.block_count[to_id] += 1

    def next(self) -> str | None:
        """The node to run next (ComfyUI's ux_friendly_pick_node), or None on a dependency cycle."""
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for node_id in ready:
            if self.is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self.is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(self.is_output(b2) for b in self.blocking[node_id] for b2 in self.blocking[b]):
                return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1


def _signatures(prompt: dict[str, Any]) -> dict[str, str]:
    """A cache key per node: class, constant inputs and (recursively) what is linked in; ids don't matter."""
    memo: dict[str, str] = {}

    def sig(node_id: str, trail: tuple[str, ...] = ()) -> str:
        if node_id in memo:
            return memo[node_id]
        if node_id in trail:  # a cycle: unique, never cached
            return f"cycle:{node_id}"
        node = prompt[node_id]
        parts = []
        for name, value in sorted(node.get("inputs", {}).items()):
            if is_link(value) and value[0] in prompt:
                parts.append([name, sig(value[0], (*trail, node_id)), value[1]])
            else:
                parts.append([name, value])
        text = json.dumps([node.get("class_type"), parts], sort_keys=True, default=str)
        memo[node_id] = hashlib.sha1(text.encode()).hexdigest()
        return memo[node_id]

    return {node_id: sig(node_id) for node_id in prompt}


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None
