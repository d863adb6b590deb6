"""The invalidation lesson's seeded stream: repeatable, and the absent service never writes."""

from __future__ import annotations

from cachelab.children.fleet import seeded_stream
from cachelab.lab import Lab, LabSettings


def _stream(seed: int) -> tuple[list, list]:
    with Lab(LabSettings(seed=seed)) as lab:
        return seeded_stream(lab, n_keys=50, services=3, updates=30, away_updates=20,
                             reads_per_update=2)


def test_the_stream_is_the_seeds_and_only_connected_services_write_while_one_is_away() -> None:
    steps, away = _stream(7)
    assert (steps, away) == _stream(7)
    assert (steps, away) != _stream(8)
    assert len(steps) == 30 and len(away) == 20
    assert {s.writer for s in steps} == {0, 1, 2}
    assert {s.writer for s in away} <= {0, 1}  # the last service (index 2) is away
    assert all(1 <= s.item <= 50 and len(s.reads) == 2 for s in steps + away)
