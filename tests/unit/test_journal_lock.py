"""The journal's lock: a replay in another process never removes frames appended after it read."""

from __future__ import annotations

import threading
import time

from common.journal import Journal, _locked, read_journal


def test_an_append_during_a_replay_waits_and_lands_in_a_new_file(tmp_path):
    # Given: a journal with two frames, and a "replay" holding it locked from reading to removal
    journal = Journal(tmp_path / "sim~p.journal")
    journal.append([b"one", b"two"])
    read_by_replay: list[bytes] = []
    replay_has_read = threading.Event()

    def replay() -> None:
        with _locked(journal.path, "rb") as handle:
            read_by_replay.append(handle.read())
            replay_has_read.set()
            time.sleep(0.3)  # sending to Redis
            journal.path.unlink()

    replayer = threading.Thread(target=replay)
    replayer.start()
    replay_has_read.wait(5)

    # When: the owner appends while the replay holds the file
    journal.append([b"three"])
    replayer.join(5)

    # Then: the replay read only the first two frames, and the third is in a new file, not lost
    assert read_journal(journal.path) == ([b"three"], False)
    assert b"three" not in read_by_replay[0] and b"two" in read_by_replay[0]
