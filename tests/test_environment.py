"""Each run records where it computed (fedreg.environment): the parts rule, the tags, and the report's
Environment section. A real run recording this machine and a resume in another environment are in
tests/test_resume_safety.py."""

from __future__ import annotations

import platform

import torch

from fedreg import environment
from fedreg_report import RunData, render_markdown
from fedreg_report.environments import environment_blocks, environments

A = {"torch": "2.14.1", "cpu": "Xeon A", "isa": "AVX512", "device": "cpu", "threads": "1"}
B = {**A, "cpu": "Xeon B", "isa": "AVX2"}


def test_this_process_is_described_with_the_values_torch_and_python_give():
    env = environment.current()
    assert set(env) == set(environment.KEYS)
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert env["isa"] == torch.backends.cpu.get_cpu_capability() and env["device"] == "cpu"
    assert env["threads"] == str(torch.get_num_threads())
    assert env["cpu"] == environment.cpu_model() and env["cpu"]
    line = environment.summary(env)
    assert line.startswith(f"torch {torch.__version__}, {env['cpu']} ({env['isa']}), cpu, ")


def test_a_run_gets_a_new_part_only_where_its_environment_changed():
    parts = environment.extend([], 0, A)
    assert parts == [{"from_round": 1, "env": A}]
    assert environment.extend(parts, 40, A) == parts  # resumed in the same environment
    moved = environment.extend(parts, 40, B)
    assert moved == [{"from_round": 1, "env": A}, {"from_round": 41, "env": B}]
    # a checkpoint that did not record its environment: the rounds before the resume are of unknown origin
    assert environment.extend([], 40, B) == [{"from_round": 1, "env": {}}, {"from_round": 41, "env": B}]


def test_tags_hold_the_latest_environment_and_every_part_when_they_differ():
    one = environment.tags(environment.extend([], 0, A))
    assert one == {f"fedreg.env.{k}": v for k, v in A.items()}
    assert environment.describe(one) == "torch 2.14.1, Xeon A (AVX512), cpu, 1 thread"
    two = environment.tags([{"from_round": 1, "env": {}}, {"from_round": 41, "env": B}])
    assert two["fedreg.env.isa"] == "AVX2"
    assert two[environment.PARTS_TAG] == (
        "from round 1: not recorded; from round 41: torch 2.14.1, Xeon B (AVX2), cpu, 1 thread"
    )
    assert environment.describe(two) == two[environment.PARTS_TAG]
    assert environment.of_tags(one) == A and environment.describe({}) == "not recorded"


def run(method: str, seed: int, env: dict) -> RunData:
    return RunData(
        run_id=f"{method}-{seed}",
        method=method,
        seed=seed,
        status="FINISHED",
        tags=environment.tags(environment.extend([], 0, env)) if env else {},
    )


def test_the_report_lists_each_environment_with_its_methods_and_warns_when_there_are_several():
    same = [run("a", 1, A), run("a", 2, A), run("b", 1, A)]
    text = render_markdown(environment_blocks(same, ["a", "b"]))
    assert "| torch 2.14.1, Xeon A (AVX512), cpu, 1 thread | a (1, 2); b (1) |" in text
    assert "Warning" not in text
    mixed = [*same, run("b", 2, B), run("c", 1, {})]
    assert [who for _, who in environments(mixed, ["a", "b", "c"])] == [
        {"a": [1, 2], "b": [1]},
        {"b": [2]},
        {"c": [1]},
    ]
    text = render_markdown(environment_blocks(mixed, ["a", "b", "c"]))
    assert "| torch 2.14.1, Xeon B (AVX2), cpu, 1 thread | b (2) |" in text
    assert "| not recorded | c (1) |" in text
    assert "Warning: the runs of this comparison computed in 3 environments" in text
