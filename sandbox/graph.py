"""One simulation step as a LangGraph state machine.

::

    perceive ──► recommend ──► simulate_users (one Send per group of users, per arm)
        ▲                             │
        │                             ▼
        └──── (next step) ◄── feedback ◄── log
                                  │
                                 END

``interrupt_after=["feedback"]`` stops the graph after every step, and the runner invokes it with
``durability="exit"``, so the checkpointer writes exactly one checkpoint per simulation step.
The state carries the typed payloads of :mod:`sandbox.payloads` (slates, tasks, outcomes); each
node is one call into :class:`~sandbox.runtime.SimulationRuntime`, which does the work.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from vragent.sandbox.payloads import Slate, TaskOutcome, UserTask
from vragent.sandbox.runtime import SimulationRuntime


def add_or_reset(old: list | None, new: list | None) -> list:
    """Reducer: ``None`` clears the list, anything else is appended."""
    return [] if new is None else (old or []) + new


class StepState(TypedDict, total=False):
    """What the checkpoint holds; between steps, only the step counters."""

    step: int
    n_steps: int
    slates: dict[str, list[Slate]]  # arm -> its users' slates
    outcomes: Annotated[list[TaskOutcome], add_or_reset]
    perceived: int


class TaskState(TypedDict):
    """The input of one fan-out branch."""

    task: UserTask


def build_step_graph(rt: SimulationRuntime, checkpointer: Any = None):
    """Compile the step graph over a runtime.

    Args:
        rt: the runtime whose methods do each node's work.
        checkpointer: a LangGraph checkpointer (the runner passes a ``SqliteSaver``).

    Returns:
        The compiled graph.
    """

    def perceive(state: StepState) -> dict:
        return {"perceived": rt.perceive(state["step"]), "outcomes": None}

    def recommend(state: StepState) -> dict:
        return {"slates": rt.recommend(state["step"])}

    def fan_out(state: StepState) -> list[Send] | str:
        tasks = rt.tasks(state["step"], state.get("slates") or {})
        return [Send("simulate_users", TaskState(task=t)) for t in tasks] or "log"

    def simulate_users(branch: TaskState) -> dict:
        return {"outcomes": [rt.decide(branch["task"])]}

    def log(state: StepState) -> dict:
        rt.log(state["step"], state.get("outcomes") or [])
        return {}

    def feedback(state: StepState) -> dict:
        rt.feedback(state["step"])
        # Clear the bulky per-step data so the checkpoint stays small.
        return {"step": state["step"] + 1, "slates": {}, "outcomes": None}

    def next_step(state: StepState) -> str:
        return "perceive" if state["step"] < state["n_steps"] else END

    g = StateGraph(StepState)
    g.add_node("perceive", perceive)
    g.add_node("recommend", recommend)
    g.add_node("simulate_users", simulate_users)
    g.add_node("log", log)
    g.add_node("feedback", feedback)
    g.add_edge(START, "perceive")
    g.add_edge("perceive", "recommend")
    g.add_conditional_edges("recommend", fan_out, ["simulate_users", "log"])
    g.add_edge("simulate_users", "log")
    g.add_edge("log", "feedback")
    g.add_conditional_edges("feedback", next_step, ["perceive", END])
    return g.compile(checkpointer=checkpointer, interrupt_after=["feedback"])
