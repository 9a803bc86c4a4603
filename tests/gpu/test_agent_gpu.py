"""The agent inside real training runs on a real GPU: the bill against analytic counts, torch's
own statistics and NVML; the rules it keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REPORT = Path(__file__).resolve().parent / "train_report.py"
GPT2 = 124_439_808
GiB = 1 << 30


def env(tmp_path: Path) -> dict[str, str]:
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(run)}


def report(tmp_path: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "vramtop", "run", "--agent-interval", "0.05", "--",
           sys.executable, str(REPORT), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env(tmp_path))
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(lines[0][len("REPORT "):])
    print(json.dumps({k: data[k] for k in ("bill_now", "bill_peak", "torch", "nvml_process_used")}, indent=1))
    return data


def close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(b)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return report(tmp_path_factory.mktemp("gpt2"), "--steps", "10")


def test_agent_figures_equal_torch_memory_stats(gpt2):
    stats = gpt2["agent"]["devices"][0]["stats"]
    assert stats["allocated"] == gpt2["torch"]["allocated"]
    assert stats["reserved"] == gpt2["torch"]["reserved"]
    assert stats["allocated_peak"] == gpt2["torch"]["max_allocated"]
    assert gpt2["agent"]["devices"][0]["uuid"] == gpt2["nvml_gpu_uuid"]


def test_census_matches_the_analytic_count(gpt2):
    census = gpt2["agent"]["devices"][0]["census"]
    params = 4 * GPT2  # fp32 master weights under bf16 autocast
    assert close(census["parameters_trainable"], params, 0.01)
    assert census["parameters_frozen"] == 0
    assert close(census["optimizer_state"], 2 * params, 0.01)  # AdamW: exp_avg, exp_avg_sq
    assert close(census["gradients_peak"], params, 0.01)
    assert census["complete"], census["seen"]
    assert "AdamW" in census["seen"] and "GPT2LMHeadModel" in census["seen"]
    # bf16 autocast with fp32 weights: the agent saw autocast, and no 16-bit parameters.
    assert gpt2["agent"]["autocast"] is True and census["parameters_16bit"] == 0
    assert gpt2["agent"]["world_size"] is None


def test_bill_adds_up_to_the_nvml_per_process_figure(gpt2):
    bill = gpt2["bill_now"]
    parts = [bill[k] for k in ("parameters_trainable", "parameters_frozen", "gradients", "optimizer_state",
                               "other_persistent", "activations", "cache", "non_pytorch")]
    assert all(p is not None for p in parts), bill
    assert close(sum(parts), gpt2["nvml_process_used"], 0.01)
    assert 0 < bill["non_pytorch"] < 3 * GiB  # the CUDA context and libraries, not tensors
    assert bill["cache"] >= 0
    # Gradients freed by zero_grad(set_to_none=True) are not still billed: the derived
    # activations stay (about) non-negative.
    assert bill["activations"] > -0.01 * bill["allocated"]


def test_step_peak_is_the_allocators_peak_and_activations_reconcile(gpt2):
    exact = [s for s in gpt2["steps_seen"].values() if s["exact"]]
    assert exact, gpt2["steps_seen"]
    # The peak rose during a step the agent saw, and that step's peak is torch's own.
    assert max(s["peak_allocated"] for s in exact) == gpt2["torch"]["max_allocated"]
    assert gpt2["agent"]["devices"][0]["peak_step"] in {int(k) for k in gpt2["steps_seen"]}
    peak = gpt2["bill_peak"]
    assert peak["allocated"] == gpt2["torch"]["max_allocated"]
    counted_analytic = 4 * GPT2 * 4  # params + grads + AdamW's two moments, fp32
    expected = gpt2["torch"]["max_allocated"] - counted_analytic
    # What the bill calls activations at the peak (plus what persists besides the counted
    # categories) against torch's own peak minus the analytic categories.
    assert close(peak["activations"] + peak["other_persistent"], expected, 0.03)
    assert peak["activations"] > 0


def test_gradient_checkpointing_shows_the_activation_drop(gpt2, tmp_path):
    ckpt = report(tmp_path, "--steps", "6", "--checkpointing")
    base_act = gpt2["bill_peak"]["activations"]
    ckpt_act = ckpt["bill_peak"]["activations"]
    print(f"activations at peak: {base_act / GiB:.2f} GiB -> {ckpt_act / GiB:.2f} GiB with checkpointing")
    assert ckpt_act < 0.6 * base_act
    assert ckpt["torch"]["max_allocated"] < gpt2["torch"]["max_allocated"]
    # Transformers says whether checkpointing is on, and the agent passes it on.
    assert ckpt["agent"]["checkpointing"] is True and gpt2["agent"]["checkpointing"] is False


def test_lora_shows_frozen_and_trainable_parameters_apart(tmp_path):
    lora = report(tmp_path, "--steps", "8", "--lora")
    census = lora["agent"]["devices"][0]["census"]
    assert close(census["parameters_frozen"], 4 * lora["analytic"]["frozen_params"], 0.01)
    assert close(census["parameters_trainable"], 4 * lora["analytic"]["trainable_params"], 0.02)


def run_python(tmp_path: Path, code: str) -> str:
    result = subprocess.run([sys.executable, "-m", "vramtop", "run", "--", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=env(tmp_path))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_agent_never_initialises_cuda_for_a_program_that_does_not(tmp_path):
    out = run_python(tmp_path, "import time, torch, vramtop.agent as a\n"
                               "assert a.current() is not None\n"
                               "time.sleep(2); print('INIT', torch.cuda.is_initialized())\n")
    assert "INIT False" in out
    assert not list((tmp_path / "xdg").rglob("*.sock"))


def test_agent_never_resets_the_programs_peak(tmp_path):
    out = run_python(tmp_path, (
        "import time, torch\n"
        "x = torch.empty(2 << 30, dtype=torch.uint8, device='cuda'); del x\n"
        "m = torch.nn.Linear(256, 256).cuda(); o = torch.optim.AdamW(m.parameters())\n"
        "for _ in range(50):\n"
        "    m(torch.randn(64, 256, device='cuda')).sum().backward(); o.step(); o.zero_grad()\n"
        "time.sleep(1.5)\n"
        "print('PEAK', torch.cuda.max_memory_allocated() >= (2 << 30))\n"))
    assert "PEAK True" in out
