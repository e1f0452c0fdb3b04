"""The throughput benchmark runs and reports triples per second (tiny workload)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "discriminator_throughput.py"


def test_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("discriminator_throughput", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--n", "16", "--group-size", "4", "--scorers", "lexical,polar_server,learned", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["scorer"] for r in rows] == ["lexical", "polar_server", "learned"]
    assert all(r["cold_triples_per_s"] > 0 and r["warm_triples_per_s"] > 0 for r in rows)
    assert rows[-1]["update_triples_per_s"] > 0
