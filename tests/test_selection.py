"""Selectors with state: the contract lists state_dict/load_state_dict, and round_robin's place in its cycle
is checkpointed so that a resumed run continues the cycle."""

from __future__ import annotations

from fedreg import checkpoint
from fedreg.components import Selector
from fedreg.testing import _tiny_run
from fedreg_standard.selection import RoundRobin

RR = {"federation.selection": "round_robin", "federation.clients_per_round": 3}


def recording(run) -> list[list[int]]:
    """The clients ``run``'s selector picks, round by round."""
    picked: list[list[int]] = []
    select = run.selector.select

    def record(*args, **kwargs):
        chosen = select(*args, **kwargs)
        picked.append(list(chosen))
        return chosen

    run.selector.select = record
    return picked


def test_selector_state_methods_are_in_the_contract():
    assert Selector.contract[-2:] == ("state_dict", "load_state_dict")
    assert RoundRobin.implemented_hooks() == ["select", "state_dict", "load_state_dict"]


def test_round_robin_cycles_and_resume_continues_the_cycle(tmp_path, one_thread):
    whole = _tiny_run({**RR, "federation.rounds": 4}, (), None, None)
    want = recording(whole)
    whole.run()
    assert want == [[0, 1, 2], [3, 0, 1], [2, 3, 0], [1, 2, 3]]  # 4 clients, 3 a round

    first = _tiny_run({**RR, "federation.rounds": 2}, (), None, None)
    first.checkpoint_file = tmp_path / "ck.pt"
    first.run()
    ck = checkpoint.load(tmp_path / "ck.pt")
    assert ck["round"] == 2 and ck["components"]["selection"] == {"next": 2}

    resumed = _tiny_run({**RR, "federation.rounds": 4}, (), None, None)
    resumed.resume = ck
    got = recording(resumed)
    res = resumed.run()
    assert got == want[2:]  # rounds 3 and 4 continue the cycle, not restart it at client 0
    assert [row["round"] for row in res.history] == [1, 2, 3, 4]
