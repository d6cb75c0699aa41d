"""What a producer says about its journal: the end of an outage with the records it replayed, an
earlier run's journal found on disk (replayed, or left for ``simstream replay-journal``), and no
empty journal folder left behind."""

from __future__ import annotations

import logging

from common.events import fields_of
from consumer.ops.embedded_redis import free_port
from common.journal import journals_for
from common.keys import Keys
from producer import StreamProducer


def quick(url: str, namespace: str, simulation_id: str, journal_dir, **options) -> StreamProducer:
    """A producer that gives up on Redis after 0.1 s and retries its journal every 0.1 s."""
    return StreamProducer(simulation_id, url, namespace=namespace, journal_dir=str(journal_dir),
                          spill_after_s=0.1, journal_retry_interval_s=0.1, **options)


def warnings_named(caplog, event: str) -> list[dict]:
    """The fields of each warning that is the event ``event``."""
    return [fields_of(r)[1] for r in caplog.records if r.levelno == logging.WARNING and fields_of(r)[0] == event]


def producers_in_stream(redis_server, namespace: str, simulation_id: str) -> set[str]:
    """The producers whose entries (record batches) the stream holds."""
    from common.codec import describe

    client = redis_server.client()
    entries = client.xrange(Keys(namespace).stream(simulation_id))
    client.close()
    return {describe(fields[b"r"]).producer_id for _, fields in entries}


def test_the_end_of_an_outage_is_a_line_with_the_records_replayed_and_no_empty_folder_is_left(
        redis_server, namespace, simulation_id, tmp_path, caplog):
    # Given: a producer whose Redis goes away while it logs, so its records go to the journal
    journal_dir = tmp_path / ".simstream-journal"
    producer = quick(redis_server.url, namespace, simulation_id, journal_dir)
    assert producer.flush().all_in_redis
    redis_server.kill()
    for step in range(5):
        producer.log("agent_action", step_number=step, agent_id="a1", action_type="move")
    assert producer.flush(timeout_s=30).journaled == 5
    assert journal_dir.is_dir()

    # When: Redis comes back and the producer is closed
    caplog.set_level(logging.INFO)
    redis_server.restart()
    report = producer.close()

    # Then: one warning says the outage ended and how many journaled records were replayed
    assert report.all_in_redis and report.complete
    replayed = producer.stats()["replayed"]
    assert replayed >= 5  # the five actions (and the end record, if it was logged before the replay)
    [ended] = warnings_named(caplog, "producer.outage_ended")
    assert ended["simulation"] == simulation_id and ended["journaled_records_replayed"] == replayed
    # and the journal folder it created is gone once empty
    assert not journal_dir.exists()


def test_an_earlier_runs_journal_is_named_and_replayed_or_left_on_disk_as_configured(
        redis_server, namespace, simulation_id, tmp_path, caplog):
    # Given: an earlier run of the simulation that closed while no Redis answered: its journal is on disk
    journal_dir = tmp_path / "journal"
    earlier = quick(f"redis://127.0.0.1:{free_port()}/0", namespace, simulation_id, journal_dir)
    for step in range(3):
        earlier.log("agent_action", step_number=step, agent_id="a1", action_type="move")
    assert earlier.close(timeout_s=0.5).journaled == 5  # start, three actions, end
    [journal] = journals_for(journal_dir, simulation_id)
    caplog.set_level(logging.INFO)

    # When: a new run of the same simulation id starts with replay_earlier_journals=False
    kept = quick(redis_server.url, namespace, simulation_id, journal_dir, replay_earlier_journals=False)
    assert kept.close().all_in_redis

    # Then: a warning names the journal, its records and age, and says it was left on disk untouched
    [found] = warnings_named(caplog, "producer.earlier_journal_found")
    assert found["journal"] == str(journal) and found["records"] == 5 and isinstance(found["age_s"], int)
    assert found["action"] == f"left on disk: simstream replay-journal {journal}"
    assert journal.exists()
    assert producers_in_stream(redis_server, namespace, simulation_id) == {kept.producer_id}

    # When: another run starts with the default setting
    caplog.clear()
    replaying = quick(redis_server.url, namespace, simulation_id, journal_dir)
    assert replaying.close().all_in_redis

    # Then: the same warning says it is replayed into this run, and it was: its records are in the stream
    [found] = warnings_named(caplog, "producer.earlier_journal_found")
    assert found["journal"] == str(journal) and found["records"] == 5 and found["action"] == "replay into this run"
    assert producers_in_stream(redis_server, namespace, simulation_id) == {
        kept.producer_id, earlier.producer_id, replaying.producer_id}
    assert not journal_dir.exists()
