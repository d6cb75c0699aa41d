"""RedisBufferedDataLogger offers the reference logger's methods with the same signatures.

The reference signatures are written down here from the reference simulation's logger (see the
project's notes on its schema), independent of the code under test. Parameter names, kinds and
defaults must be equal; annotations are not compared (they are documentation, not protocol).
simstream's own extensions are keyword-only parameters with defaults after the reference ones
(listed in EXTENSIONS), so every call the reference accepts is accepted the same way.
"""

from __future__ import annotations

import inspect

import pytest

from producer import RedisBufferedDataLogger


class ReferenceLogger:
    """The reference ``DataLogger`` protocol, plus its database's ``update_agent_death``."""

    def log_agent_action(self, step_number, agent_id, action_type, action_target_id=None, reward=None,
                         details=None, module_type=None, module_id=None, action_taken=None,
                         action_taken_mapped=None): ...

    def log_health_incident(self, step_number, agent_id, health_before, health_after, cause, details=None): ...

    def log_agent(self, agent_id, birth_time, agent_type, position, initial_resources, starting_health,
                  genome_id=None, generation=0, action_weights=None): ...

    def log_agents_batch(self, agent_data_list): ...

    def log_step(self, step_number, agent_states, resource_states, metrics): ...

    def log_resource(self, resource_id, initial_amount, position): ...

    def flush_all_buffers(self): ...

    def flush_if_needed(self): ...

    def discard_pending_agents(self, agent_ids) -> int: ...

    def log_interaction_edge(self, step_number, source_type, source_id, target_type, target_id,
                             interaction_type, action_type=None, details=None): ...

    def log_reproduction_event(self, step_number, parent_id, offspring_id, success, parent_resources_before,
                               parent_resources_after, offspring_initial_resources, failure_reason,
                               parent_generation, offspring_generation, parent_position): ...

    def update_agent_death(self, agent_id, death_time, cause="starvation"): ...


PROTOCOL = [name for name in vars(ReferenceLogger) if not name.startswith("_")]
EXTENSIONS = {"flush_all_buffers": ("wait_persisted", "timeout_s")}


def _shape(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_protocol_lists_every_method_of_the_reference():
    assert len(PROTOCOL) == 12 and "discard_pending_agents" in PROTOCOL


@pytest.mark.parametrize("method", PROTOCOL)
def test_each_logger_method_has_the_reference_signature(method):
    ours = _shape(getattr(RedisBufferedDataLogger, method))
    reference = _shape(getattr(ReferenceLogger, method))
    extra = ours[len(reference):]
    assert ours[:len(reference)] == reference
    assert tuple(name for name, _, _ in extra) == EXTENSIONS.get(method, ())
    assert all(kind is inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty
               for _, kind, default in extra)


def test_discard_pending_agents_returns_an_int():
    assert inspect.signature(RedisBufferedDataLogger.discard_pending_agents).return_annotation in (int, "int")
