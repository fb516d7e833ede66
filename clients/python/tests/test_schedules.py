"""Schedules and indexed search through the SDK against a real 3-node cluster: a per-second
schedule creates instances as system:schedule and is listed, paused, resumed and deleted; a
list filtered on indexed data fields answers what matches; bad input is refused."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from conftest import unique

from lockstep import Client, InvalidArgument, UnknownSchedule

REVIEWS = """
workflow: sdk-reviews
data:
  type: object
  properties:
    team: { type: string }
    size: { type: number }
index: { team: string, size: number }
states:
  open: { initial: true }
  done: { terminal: true }
transitions:
  close: { from: open, to: done, allow: "true" }
"""


def _apply(admin: Client) -> None:
    # `index:` is accepted once the cluster's log format is raised (shortly after start).
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.apply_definition(REVIEWS)
            return
        except Exception as error:  # noqa: BLE001 - refused until the format is raised
            if "log format 11" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_schedule_creates_instances_and_is_managed(admin: Client) -> None:
    _apply(admin)
    name = unique("pulse").lower()
    created = admin.create_schedule(
        name,
        workflow="sdk-reviews",
        cron="* * * * * *",
        time_zone="Europe/Berlin",
        data={"team": "{schedule}", "size": 1},
        overlap="allow",
        catch_up_window=timedelta(seconds=30),
    )
    assert created.name == name and created.next is not None and not created.paused
    assert created.catch_up_window == timedelta(seconds=30)
    assert created.data == {"team": "{schedule}", "size": 1}
    deadline = time.monotonic() + 20
    while admin.schedule(name).fired < 2:
        assert time.monotonic() < deadline, "two ticks did not fire within 20 s"
        time.sleep(0.2)
    paused = admin.pause_schedule(name, "enough")
    assert paused.paused and paused.paused_reason == "enough"
    assert paused.last_outcome == "created" and paused.last_detail
    mine = list(admin.iter_instances("sdk-reviews"))
    made = [i for i in mine if i.data.get("team") == name]
    assert len(made) == paused.fired
    assert all(i.created_by == "system:schedule" for i in made)
    assert name in [s.name for s in admin.schedules()]
    assert not admin.resume_schedule(name).paused
    assert admin.delete_schedule(name).name == name
    with pytest.raises(UnknownSchedule):
        admin.schedule(name)
    with pytest.raises(InvalidArgument, match="five fields"):
        admin.create_schedule(unique("bad").lower(), workflow="sdk-reviews", cron="61 * * * *")
    with pytest.raises(ValueError, match="catch_up_max"):
        admin.create_schedule(unique("bad").lower(), workflow="sdk-reviews", cron="@daily", catch_up_max=0)


def test_lists_filter_on_indexed_data_fields(admin: Client) -> None:
    _apply(admin)
    team = unique("team")
    ids = {size: admin.create_instance("sdk-reviews", {"team": team, "size": size}).instance_id for size in (1, 5, 9)}
    page = admin.list_instances("sdk-reviews", where=[("team", "=", team), ("size", ">=", 5)])
    assert {i.id for i in page.instances} == {ids[5], ids[9]}
    assert page.uncovered_versions == ()
    with pytest.raises(InvalidArgument, match="index:"):
        admin.list_instances("sdk-reviews", where=[("nope", "=", 1)])
    with pytest.raises(TypeError, match="tuple"):
        admin.list_instances("sdk-reviews", where=["team=x"])  # type: ignore[list-item]
