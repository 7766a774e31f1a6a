"""benchmarks/gpu.py runs end to end at a tiny size on the CPU (the GPU run itself is not a test)."""
import json
from pathlib import Path

import forked

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "g.json"
    r = forked.run([str(BENCH), "--device", "cpu", "--tiny", "--quick", "--methods", "wanda,sparsegpt", "--patterns",
                    "unstructured,2:4", "--json", str(out)],
                   env={"POLYPRUNE_PROGRESS": "0", "PATH": "/usr/bin:/bin", **_pythonpath()})
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert [x["run"] for x in rep["runs"]] == ["wanda unstructured", "wanda 2:4", "sparsegpt unstructured",
                                               "sparsegpt 2:4", "wanda unstructured", "wanda unstructured (tiny-small)"]
    assert rep["runs"][-2]["placement"].startswith("onloading")
    assert rep["runs"][-1]["placement"] == "streamed from disk onto cpu"
    assert all(x["x_dense"] > 0 and 0.49 < x["sparsity"] < 0.51 for x in rep["runs"])
    assert rep["agreement_vs_cpu_fp32"] == {"wanda float32 on cpu": 1.0, "sparsegpt float32 on cpu": 1.0}
    assert "| wanda 2:4 | all on device |" in r.stdout


def test_gpu_benchmark_without_gpu_says_so():
    r = forked.run([str(BENCH), "--device", "cuda", "--tiny"], env={"PATH": "/usr/bin:/bin", **_pythonpath()})
    import torch
    if not torch.cuda.is_available():
        assert r.returncode == 1 and "no CUDA device is visible; use --device cpu" in r.stderr


def _pythonpath():
    import os
    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
