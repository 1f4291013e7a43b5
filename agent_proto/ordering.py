"""Allowed message orderings of stream frames, read from the .proto annotations (PROTOCOL.md §4.3).

Why: GitLab's kas and agentk reject out-of-order frames (say, `data` before `header`) with
INVALID_ARGUMENT. Our kas and our agent must do the same, and must agree with each other, so the orderings
live in one place: the `first_allowed_field` / `next_allowed_field` options on the oneofs of
agent_proto/gitlab/agent/**/*.proto. This module turns them into a small state machine. -1 stands for the
end of the stream (the sender half-closed or the call ended).

Usage on receive: `v = OrderingValidator(HttpRequest, "message")`, then `v.accept(msg)` for every message
and `v.end()` at end of stream; both raise StreamOrderError, which callers map to INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from agent_proto.gitlab.agent.grpctool.automata import automata_pb2

EOF = -1
"""Pseudo field number for "end of stream" in the annotations."""
START = 0
"""Pseudo state before the first message (0 is never a valid field number)."""


class StreamOrderError(ValueError):
    """A stream frame (or the end of the stream) arrived where the protocol does not allow it."""


@dataclass(frozen=True, slots=True)
class Automaton:
    """The orderings of one oneof: which member numbers may follow each state."""

    oneof_full_name: str
    names: Mapping[int, str]
    transitions: Mapping[int, frozenset[int]]

    def allowed_after(self, state: int) -> frozenset[int]:
        """Member numbers (and possibly EOF) allowed after `state` (START or a member number)."""
        return self.transitions[state]

    def describe(self, state: int) -> str:
        """Human-readable state, e.g. "header (1)", "start", "EOF"."""
        if state == START:
            return "start"
        if state == EOF:
            return "EOF"
        return f"{self.names[state]} ({state})"


def _annotation(options: Message, extension: FieldDescriptor) -> frozenset[int]:
    # ListFields includes set extensions; it avoids the untyped Extensions[...] map of the stubs.
    return frozenset(
        int(n) for fd, values in options.ListFields() if fd.full_name == extension.full_name for n in values
    )


@cache
def automaton(message: Descriptor, oneof_name: str) -> Automaton:
    """Build (once) the automaton of `message`'s oneof from its annotations; ValueError if incomplete."""
    oneof = message.oneofs_by_name.get(oneof_name)
    if oneof is None:
        raise ValueError(f"{message.full_name} has no oneof {oneof_name!r}")
    names = {f.number: f.name for f in oneof.fields}
    transitions = {START: _annotation(oneof.GetOptions(), automata_pb2.first_allowed_field)}
    for f in oneof.fields:
        transitions[f.number] = _annotation(f.GetOptions(), automata_pb2.next_allowed_field)
    for state, allowed in transitions.items():
        if not allowed:
            where = f"{message.full_name}.{names.get(state, oneof_name)}"
            raise ValueError(f"{where} has no ordering annotation")
        if unknown := allowed - names.keys() - {EOF}:
            raise ValueError(f"{oneof.full_name} ordering names unknown fields {sorted(unknown)}")
    return Automaton(oneof.full_name, names, transitions)


class OrderingValidator:
    """Checks the frames of one stream, in order, against the annotated orderings."""

    def __init__(self, message_type: type[Message] | Descriptor, oneof_name: str) -> None:
        self._descriptor = message_type if isinstance(message_type, Descriptor) else message_type.DESCRIPTOR
        self._automaton = automaton(self._descriptor, oneof_name)
        self._oneof_name = oneof_name
        self._state = START

    @property
    def state(self) -> int:
        """START, the number of the last accepted member, or EOF after `end()`."""
        return self._state

    def allowed(self) -> frozenset[int]:
        """What may come next (member numbers, EOF = -1); empty after the end."""
        return frozenset() if self._state == EOF else self._automaton.allowed_after(self._state)

    def accept(self, msg: Message) -> str:
        """Record the next frame; returns the name of its set oneof member, for dispatch."""
        if msg.DESCRIPTOR is not self._descriptor:
            raise TypeError(f"expected {self._descriptor.full_name}, got {msg.DESCRIPTOR.full_name}")
        member: str | None = msg.WhichOneof(self._oneof_name)
        if member is None:
            raise StreamOrderError(f"no fields in the oneof group {self._automaton.oneof_full_name} is set")
        self._transition(self._descriptor.fields_by_name[member].number)
        return member

    def end(self) -> None:
        """Record the end of the stream; fails if the stream stopped half-way."""
        self._transition(EOF)

    def _transition(self, to: int) -> None:
        allowed = self.allowed()
        if to not in allowed:
            a = self._automaton
            listed = ", ".join(a.describe(n) for n in sorted(allowed, key=lambda n: (n == EOF, n)))
            raise StreamOrderError(
                f"transition from {a.describe(self._state)} to {a.describe(to)} is not allowed. "
                f"Allowed: [{listed}]"
            )
        self._state = to
