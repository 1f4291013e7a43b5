"""What one replica does about one agent: the drain-then-start rule, as a pure function.

Each running agent has a claim (a Lease naming the replica that runs it). A replica starts an agent's
worker only while it holds the claim, and releases the claim only after its worker has stopped: so the
old owner's worker is gone before the new owner's starts, and no agent ever has two workers. A claim
whose holder is dead (its member Lease expired) may be taken over: a dead replica runs nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    """The next step for one agent on this replica."""

    NOTHING = "nothing"
    """All is as it should be, or the owner is not known yet (keep what runs)."""
    CLAIM = "claim"
    """Create the claim (nobody holds it), then START."""
    TAKE_OVER = "take-over"
    """The holder is dead: make the claim ours, then START."""
    START = "start"
    """The claim is ours: start the worker."""
    WAIT = "wait"
    """A live replica holds the claim: wait until it releases it (its worker drains first)."""
    STOP = "stop"
    """Drain the worker here, then release the claim if it is still ours."""
    RELEASE = "release"
    """No worker runs here, but we hold the claim: release it."""


@dataclass(frozen=True)
class Situation:
    """What this replica knows about one agent."""

    me: str
    """This replica's member name."""
    owner: str | None
    """The agent's owner by assignment over the live members; None while membership is unknown."""
    wanted: bool
    """The operator wants a worker for the agent (valid, admitted, not suspended)."""
    running: bool
    """Its worker runs here."""
    holder: str | None
    """Who holds its claim; None when nobody does."""
    holder_live: bool
    """Whether that holder is a live member."""


def decide(s: Situation) -> Action:
    """The module's rule (see the module docstring)."""
    mine = s.owner == s.me and s.wanted
    if s.running:
        if s.owner is None and s.holder == s.me:
            return Action.NOTHING  # membership unknown for now: keep running what we hold
        return Action.NOTHING if mine and s.holder == s.me else Action.STOP
    if not mine:
        return Action.RELEASE if s.holder == s.me else Action.NOTHING
    if s.holder is None:
        return Action.CLAIM
    if s.holder == s.me:
        return Action.START
    return Action.WAIT if s.holder_live else Action.TAKE_OVER
