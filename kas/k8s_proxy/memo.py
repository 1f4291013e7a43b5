"""Remember a pure function's result per key for the last input object seen (by identity, not equality)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class IdentityMemo(Generic[In, Out]):
    """`memo(key, x)` is `fn(x)`, computed again only when `x` is not the object seen last for `key`.

    For inputs that are replaced, never mutated, when they change (the agents document, an agent's
    configuration snapshot): every proxied request would otherwise parse them again. Each entry keeps a
    reference to its input, so that identity cannot pass to a new object while it is remembered. At most
    `max_keys` keys are kept (least recently used go first).
    """

    def __init__(self, fn: Callable[[In], Out], max_keys: int = 1) -> None:
        self._fn = fn
        self._max_keys = max_keys
        self._entries: OrderedDict[Hashable, tuple[In, Out]] = OrderedDict()

    def __call__(self, key: Hashable, value: In) -> Out:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is value:
            self._entries.move_to_end(key)
            return entry[1]
        result = self._fn(value)
        self._entries[key] = (value, result)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)
        return result
