import json
from pathlib import Path

import pytest


def _find_data() -> Path | None:
    for base in Path(__file__).resolve().parents:
        candidate = base / "shared" / "data" / "ifeval"
        if candidate.is_dir():
            return candidate
    return None


DATA = _find_data()


def _jsonl(name):
    if DATA is None:  # the conformance data is part of the project: missing is a failure, not a skip
        pytest.fail("shared/data/ifeval not found in any parent folder of the tests")
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA is None:
        pytest.fail("shared/data/ifeval not found in any parent folder of the tests")
    return DATA


@pytest.fixture(scope="session")
def ifeval_data():
    inputs = {r["key"]: r for r in _jsonl("input_data.jsonl")}
    responses = _jsonl("gpt4_responses.jsonl")
    reference = {r["key"]: r for r in _jsonl("reference_verdicts.jsonl")}
    return inputs, responses, reference
