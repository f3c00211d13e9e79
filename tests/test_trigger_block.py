"""The trigger is a block: `type: schedule` in `blocks:`, at most one, the old key refused."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

from dataflow.config import load_dataflow
from dataflow.scheduler import BlockTrigger

from .test_config import GOOD, problems

TRIGGER_BLOCK = """\
  - name: trigger
    type: schedule
    cron: "0 6 * * MON"
    timezone: Asia/Kolkata
"""


def test_top_level_trigger_is_an_error_showing_the_block(tmp_path: Path) -> None:
    text = GOOD.replace(TRIGGER_BLOCK, "").replace(
        "template: earned_badges\n",
        'template: earned_badges\ntrigger:\n  weekly: {day: MON, at: "06:00"}\n'
        "  timezone: Asia/Kolkata\n",
    )
    assert problems(tmp_path, text) == [
        "flow.yaml:4: trigger: a top-level 'trigger' is no longer read; the trigger is a block: "
        'add to blocks: \'- {name: trigger, type: schedule, weekly: {day: MON, at: "06:00"}, '
        "timezone: Asia/Kolkata}'"
    ]


def test_at_most_one_trigger_and_none_means_on_demand(tmp_path: Path) -> None:
    two = GOOD + TRIGGER_BLOCK.replace("name: trigger", "name: trigger2")
    assert problems(tmp_path, two) == [
        "flow.yaml:32: blocks[4]: a dataflow has at most one trigger; blocks[3] is one already"
    ]
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD.replace(TRIGGER_BLOCK, ""))
    assert load_dataflow(path, env={"T_PASSWORD": "pw-value"}).trigger is None


def test_trigger_may_stand_first_and_is_not_an_ordering_problem(tmp_path: Path) -> None:
    text = GOOD.replace(TRIGGER_BLOCK, "").replace("blocks:\n", "blocks:\n" + TRIGGER_BLOCK)
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    flow = load_dataflow(path, env={"T_PASSWORD": "pw-value"})
    assert flow.trigger is not None
    assert flow.trigger.describe() == "cron[0 6 * * MON] Asia/Kolkata"


def test_scheduler_adapter_pickles_the_block_config_not_a_library_trigger(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(GOOD)
    trigger = load_dataflow(path, env={"T_PASSWORD": "pw-value"}).trigger
    assert trigger is not None
    adapted = BlockTrigger.of(trigger)
    state = adapted.__getstate__()
    assert state["type"] == "schedule" and state["config"]["cron"] == "0 6 * * MON"
    again = pickle.loads(pickle.dumps(adapted))
    assert again == adapted
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)  # a Sunday
    fire = again.get_next_fire_time(None, now)
    assert fire is not None and fire.isoformat() == "2026-11-23T06:00:00+05:30"
    try:
        BlockTrigger("no_such_trigger", {})
    except LookupError as exc:
        assert "no_such_trigger" in str(exc)
    else:
        raise AssertionError("an unknown trigger type must not be accepted")


def test_every_example_config_uses_the_trigger_block() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "configs").rglob("*.yaml")):
        text = path.read_text()
        assert "\ntrigger:" not in text, path
        assert "type: schedule" in text, path
