"""bench/gpu_check.py runs every section end to end (toy sizes, on the CPU) and writes its JSON and tables."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def test_every_section_runs_and_is_written(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "check"
    mod.main(
        ["--device", "cpu", "--quick", "--backbone", "tiny", "--out", str(out), "--skip", "compile", "tests"]
    )
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["errors"] == {}
    ex = data["sections"]["extraction"]
    assert {(v["precision"], v["attention"], v["posconv"]) for v in ex["variants"]} == {
        ("bf16", "sdpa", "fft"), ("bf16", "sdpa", "cudnn"), ("fp32", "sdpa", "fft"), ("bf16", "eager", "fft")}  # fmt: skip
    assert all(v["x_real_time"] > 0 for v in ex["variants"])
    b = ex["breakdown"]
    assert b["n_batches"] >= 1 and b["forward"] > 0 and b["cnn"] > 0
    runs = data["sections"]["training"]["runs"]
    assert {(r["stage"], r["precision"], r["posconv"]) for r in runs} == {
        (s, *p) for s in ("utterance", "gmp") for p in (("bf16", "cudnn"), ("bf16", "fft"), ("fp32", "cudnn"))}  # fmt: skip
    assert all(r["steps"] == 1 and r["step_s"] > 0 for r in runs)
    assert [r["ks"] for r in runs if r["stage"] == "gmp"][0] == [64, 512, 4096]  # the paper job's K
    num = data["sections"]["numerics"]
    assert num["all_ok"] and {c["stage"] for c in num["checks"]} == {"utterance", "gmp", "extraction"}
    conv = data["sections"]["posconv"]["rows"]
    assert {r["impl"] for r in conv} == {"cudnn bf16", "cudnn fp32", "fft fp32"}
    assert all(r["rel_error"] < 1e-5 for r in conv if r["impl"] != "cudnn bf16")
    md = (out / "gpu_check.md").read_text()
    assert "### Extraction" in md and "### Training" in md and "### bf16 against fp32" in md
