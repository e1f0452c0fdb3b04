"""stages[0].cache: an identical first stage is copied from the cache, not trained again, and the run ends
exactly where a run that trained it ends; any change to the stage's config or to uniapl's source is a miss."""

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import TINY
from uniapl.cli import main
from uniapl.training import stage_cache

ARGS = ["configs/quickstart.yaml", *TINY, "stages.0.overrides.train.steps=3", "stages.0.overrides.train.sft_batch_size=4"]


def _run(out, *extra):
    assert main(["train", *ARGS, f"output_dir={out}", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _weights(out, stage):
    return load_file(str(out / stage / "final" / "model.safetensors"))


def _rows(out, stage):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timing = lambda k: k.startswith("time/") or "seconds" in k  # noqa: E731 - wall-clock metrics
    return [{k: v for k, v in r.items() if not timing(k)} for r in rows if r["stage"] == stage]


def test_second_run_copies_the_warmup_and_ends_identically(tmp_path):
    first = _run(tmp_path / "a")
    assert first["stages"][0]["cache"]["hit"] is False
    key = first["stages"][0]["cache"]["key"]
    entry = stage_cache.cache_root() / "stages" / key
    assert (entry / "final" / "model.safetensors").is_file() and (entry / "key.json").is_file()

    second = _run(tmp_path / "b")
    s0 = second["stages"][0]
    assert s0["cache"] == {"hit": True, "key": key, "path": str(entry), "wall_seconds": first["stages"][0]["wall_seconds"]}
    assert s0["final_checkpoint"] == str(tmp_path / "b" / "stage-0-warmup" / "final")
    assert not (tmp_path / "b" / "stage-0-warmup" / "checkpoints").exists()  # nothing was trained
    for stage in ("stage-0-warmup", "stage-1-unified"):
        a, b = _weights(tmp_path / "a", stage), _weights(tmp_path / "b", stage)
        assert all((a[k] - b[k]).abs().max().item() < 1e-6 for k in a), stage
    assert second["eval"] == first["eval"]
    assert [e["eval"] for e in second["stages"]] == [e["eval"] for e in first["stages"]]
    for stage in ("warmup", "unified"):
        ra, rb = _rows(tmp_path / "a", stage), _rows(tmp_path / "b", stage)
        assert len(ra) == len(rb) > 0
        for x, y in zip(ra, rb):
            assert x.keys() == y.keys(), stage
            assert [k for k in x if x[k] != pytest.approx(y[k], abs=1e-5)] == [], stage

    # a resumed run of the copied stage does not copy or train it again
    assert main(["train", *ARGS, f"output_dir={tmp_path / 'b'}", "resume=true"]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["eval"] == first["eval"]


def test_a_changed_stage_or_source_is_a_miss(tmp_path, monkeypatch):
    first = _run(tmp_path / "a")
    changed = _run(tmp_path / "b", "stages.0.overrides.train.learning_rate=2e-3")
    assert changed["stages"][0]["cache"]["hit"] is False and changed["stages"][0]["cache"]["key"] != first["stages"][0]["cache"]["key"]
    # a later stage's change leaves the first stage's key as it is
    later = _run(tmp_path / "c", "train.learning_rate=5e-4")
    assert later["stages"][0]["cache"] == {**later["stages"][0]["cache"], "hit": True, "key": first["stages"][0]["cache"]["key"]}
    monkeypatch.setattr(stage_cache, "source_digest", lambda: "another uniapl")
    assert _run(tmp_path / "d")["stages"][0]["cache"]["hit"] is False


def test_cache_off_and_only_first_stage(tmp_path, capsys):
    off = _run(tmp_path / "a", "stages.0.cache=false")
    assert "cache" not in off["stages"][0] and not (stage_cache.cache_root() / "stages").exists()
    assert main(["train", *ARGS, f"output_dir={tmp_path / 'b'}", "stages.1.cache=true"]) == 2
    assert "stages.1.cache" in capsys.readouterr().err
