"""The run state machine: which moves exist, and where a run lands after an edge.

The machine never runs gates and never touches the database: the service asks it whether a move is
legal, runs the edge's gates, and then fires ``succeed`` or ``fail`` with the verdict. Keeping it pure
means the rules can be read (and tested) without Docker or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from orchestrator.errors import BadInput, Conflict

if TYPE_CHECKING:
    from transitions import Machine


class State(StrEnum):
    DEVELOPMENT = "development"
    DEPLOY_STAGING = "deploy-staging"
    DEPLOY = "deploy"
    # Terminal: a newer run of the same app overtook this one while it waited for an environment.
    SUPERSEDED = "superseded"
    # Terminal: a person refused the edge that needed their approval (`orchestrator reject`). Not
    # development: a rejected commit is not one to retry, and CI must not loop on it.
    REJECTED = "rejected"

    @classmethod
    def parse(cls, raw: str) -> State:
        try:
            return cls(raw)
        except ValueError:
            known = ", ".join(s.value for s in cls)
            raise BadInput(f"unknown state {raw!r} (states: {known})") from None


@dataclass(frozen=True)
class Edge:
    """A forward move of a run between two states (``TO_STAGING``, ``TO_PROD``): its gates (``gates_for``)
    and the environments it holds (``EDGE_ENVIRONMENTS``) are looked up by it; ``trigger`` names it."""

    source: State
    dest: State

    @property
    def name(self) -> str:
        return f"{self.source}->{self.dest}"

    @property
    def trigger(self) -> str:
        return f"promote_to_{self.dest.name.lower()}"

    def __str__(self) -> str:
        return self.name


TO_STAGING = Edge(State.DEVELOPMENT, State.DEPLOY_STAGING)
TO_PROD = Edge(State.DEPLOY_STAGING, State.DEPLOY)
EDGES: tuple[Edge, ...] = (TO_STAGING, TO_PROD)


def edge_between(source: str, dest: str) -> Edge:
    """The edge a recorded transition moved along (its from/to states as stored)."""
    for edge in EDGES:
        if edge.source == State(source) and edge.dest == State(dest):
            return edge
    raise ValueError(f"no edge from {source} to {dest}")


STAGING = "staging"
PROD = "prod"
ENVIRONMENTS = (STAGING, PROD)


def parse_environment(raw: str) -> str:
    if raw not in ENVIRONMENTS:
        raise BadInput(f"unknown environment {raw!r} (environments: {', '.join(ENVIRONMENTS)})")
    return raw


# Environments an edge may touch, so two runs never build or swap the same environment at once.
# The prod edge rebuilds staging before it promotes, so it holds both.
EDGE_ENVIRONMENTS: dict[Edge, tuple[str, ...]] = {
    TO_STAGING: (STAGING,),
    TO_PROD: (STAGING, PROD),
}

_FAIL_TRIGGER = "fall_back"
_REJECT_TRIGGER = "reject"


class _Run:
    """The transitions model: only carries ``state``; the persisted run lives in the store."""

    state: str


class RunMachine:
    def __init__(self, state: State) -> None:
        # The transitions machine is made when a move is fired, not here: the states and edges above are
        # read by every command, the machine itself only by one that moves a run, and an edge asks
        # ``edge_to`` first and fires only once its gates are done, by when ``load_ahead`` (service/
        # advance.py) has imported the library while the edge waited on the engine (issue 12).
        self._model = _Run()
        self._model.state = state.value
        self._machine: Machine | None = None

    def _built(self) -> Machine:
        if self._machine is None:
            from transitions import Machine

            self._machine = Machine(
                model=self._model,
                states=[s.value for s in State],
                transitions=[
                    *({"trigger": e.trigger, "source": e.source.value, "dest": e.dest.value} for e in EDGES),
                    # A failed edge always lands in development, whichever edge it was.
                    {
                        "trigger": _FAIL_TRIGGER,
                        "source": [e.source.value for e in EDGES],
                        "dest": State.DEVELOPMENT.value,
                    },
                    # A refused approval ends the run where it waited, whichever edge it waited at.
                    {
                        "trigger": _REJECT_TRIGGER,
                        "source": [e.source.value for e in EDGES],
                        "dest": State.REJECTED.value,
                    },
                ],
                initial=self._model.state,
                auto_transitions=False,
            )
        return self._machine

    @property
    def state(self) -> State:
        return State(self._model.state)

    def allowed_targets(self) -> list[State]:
        return [e.dest for e in EDGES if e.source == self.state]

    def edge_to(self, target: State) -> Edge:
        for edge in EDGES:
            if edge.source == self.state and edge.dest == target:
                return edge
        allowed = ", ".join(s.value for s in self.allowed_targets()) or "none (the run is finished)"
        raise Conflict(f"cannot move from {self.state} to {target}; allowed from {self.state}: {allowed}")

    def succeed(self, edge: Edge) -> State:
        self._fire(edge.trigger)
        return self.state

    def fail(self) -> State:
        self._fire(_FAIL_TRIGGER)
        return self.state

    def next_edge(self) -> Edge | None:
        """The one edge out of the current state (None once the run is finished)."""
        return next((e for e in EDGES if e.source == self.state), None)

    def reject(self) -> State:
        self._fire(_REJECT_TRIGGER)
        return self.state

    def _fire(self, trigger: str) -> None:
        self._built()
        from transitions import MachineError

        try:
            self._model.trigger(trigger)  # type: ignore[attr-defined]
        except MachineError as exc:
            raise Conflict(f"illegal move from {self.state}: {exc.value}") from None
