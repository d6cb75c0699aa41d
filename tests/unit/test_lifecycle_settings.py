"""Settings of read-your-writes and abandoned simulations, and the heartbeat's age rule."""

from __future__ import annotations

import pytest

from common.errors import ConfigurationError
from common.heartbeat import producer_idle_ms
from common.settings import ConsumerSettings, ProducerSettings


def test_the_producers_group_comes_from_the_environment_like_the_consumers(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_GROUP", "readers")
    assert ProducerSettings.from_env().group == ConsumerSettings.from_env().group == "readers"
    assert ProducerSettings.from_env(group="mine").group == "mine"


def test_consumer_durations_come_from_the_environment_and_zero_is_a_value(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_ABANDONED_AFTER_S", "2.5")
    monkeypatch.setenv("SIMSTREAM_WAIT_FOR_SIMULATION_S", "0")
    settings = ConsumerSettings.from_env()
    assert settings.abandoned_after_s == 2.5 and settings.wait_for_simulation_s == 0.0
    assert ConsumerSettings.from_env(wait_for_simulation_s=7).wait_for_simulation_s == 7


def test_wrong_durations_are_configuration_errors_naming_the_setting(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_ABANDONED_AFTER_S", "soon")
    with pytest.raises(ConfigurationError, match="SIMSTREAM_ABANDONED_AFTER_S='soon'"):
        ConsumerSettings.from_env()
    with pytest.raises(ConfigurationError, match="abandoned_after_s"):
        ConsumerSettings(abandoned_after_s=0)
    with pytest.raises(ConfigurationError, match="wait_for_simulation_s"):
        ConsumerSettings(wait_for_simulation_s=-1)
    with pytest.raises(ConfigurationError, match="persist_timeout_s"):
        ProducerSettings(persist_timeout_s=0)
    with pytest.raises(ConfigurationError, match="group_wait_s"):
        ProducerSettings(group_wait_s=-1)


@pytest.mark.parametrize("meta, newest_entry, expected", [
    ({"heartbeat": "9000"}, "5000-0", 1_000),   # the heartbeat wins over the newest entry
    ({}, "5000-3", 5_000),                      # an older producer's stream: the newest entry's age
    ({"heartbeat": "junk"}, "7000-0", 3_000),   # not a heartbeat of ours: the newest entry
    ({}, None, None),                           # nothing to judge by
    ({}, "0-0", None),                          # an empty stream a consumer created
    ({"heartbeat": "11000"}, None, 0),          # a heartbeat from a node whose clock is ahead
])
def test_producer_idle_time_is_the_heartbeats_age_else_the_newest_entrys(meta, newest_entry, expected):
    assert producer_idle_ms(meta, newest_entry, now_ms=10_000) == expected
