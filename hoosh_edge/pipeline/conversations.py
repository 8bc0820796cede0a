"""Short memory of voice conversations: the last turns of each, so "and tomorrow?" follows on.

Home Assistant sends each turn on a new connection with its ``conversation_id``; the turns are
kept here in RAM (a restart forgets them, as Home Assistant's own agent does), bounded three
ways: turns per conversation, conversations (the least recently used go first) and idle time.
A conversation belongs to the peer that began it: the key includes its address.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class ConversationMemory:
    """The last ``max_turns`` (user, assistant) pairs of up to ``max_conversations``."""

    def __init__(self, *, max_conversations: int = 64, max_turns: int = 6, idle_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_conversations = max_conversations
        self.max_turns = max_turns
        self.idle_s = idle_s
        self.clock = clock
        self._turns: OrderedDict[tuple[str, str], tuple[float, list[tuple[str, str]]]] = (
            OrderedDict()
        )

    def messages(self, peer: str, conversation: str | None) -> list[dict[str, Any]]:
        """The chat messages of the turns so far (none for an unknown or expired one)."""
        if not conversation or self.max_turns < 1:
            return []
        self._expire()
        entry = self._turns.get((peer, conversation))
        if entry is None:
            return []
        out: list[dict[str, Any]] = []
        for user, assistant in entry[1]:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return out

    def add(self, peer: str, conversation: str | None, user: str, assistant: str) -> None:
        """Remember one finished turn."""
        if not conversation or self.max_turns < 1:
            return
        key = (peer, conversation)
        _, turns = self._turns.pop(key, (0.0, []))
        turns = [*turns, (user, assistant)][-self.max_turns :]
        self._turns[key] = (self.clock(), turns)
        while len(self._turns) > self.max_conversations:
            self._turns.popitem(last=False)

    def _expire(self) -> None:
        cutoff = self.clock() - self.idle_s
        while self._turns:
            key, (at, _) = next(iter(self._turns.items()))
            if at >= cutoff:
                return
            del self._turns[key]

    def __len__(self) -> int:
        return len(self._turns)
