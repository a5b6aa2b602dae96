"""scripts/reproduce/accuracy_parity.py: the summary is the runs' own metrics, an interrupted comparison
resumes instead of retraining, and a bad --run says what it expects."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_args

pytestmark = pytest.mark.slow  # subprocesses or compilation: outside the inner loop

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce" / "accuracy_parity.py"
TINY = tiny_args(num_steps=1, batch_size=16, lr=None, leak_mem=None, train_samples=40,
                 test_samples=30)


def run(args):
    env = {"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1", "BNTT_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_summary_matches_the_runs_and_a_second_call_resumes(tmp_path):
    args = ["--num_epochs", "2", "--run", "multistep:fp32:0", "--run", "multistep:fp32:1",
            "--run", "reference:fp32:0", "--out_dir", str(tmp_path / "runs"),
            "--json", str(tmp_path / "parity.json"), "--", *TINY]
    first = run(args)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "parity.json").read_text())
    finals = {}
    for r in summary["runs"]:
        rows = [json.loads(line) for line in
                (tmp_path / "runs" / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert r["final_top1"] == rows[-1]["test_top1"] and r["epochs"] == 2
        assert r["train_img_s"] == sum(x["train_images"] for x in rows) / sum(x["epoch_seconds"] for x in rows)
        assert rows[0]["train_images"] == 32  # two full batches of 16 out of 40
        finals[r["name"]] = r["final_top1"]
    groups = {(g["engine"], g["precision"]): g for g in summary["groups"]}
    pair = [finals["multistep_fp32_seed0"], finals["multistep_fp32_seed1"]]
    assert groups["multistep", "fp32"]["mean_top1"] == statistics.fmean(pair)
    assert groups["multistep", "fp32"]["std_top1"] == statistics.stdev(pair)
    assert groups["reference", "fp32"]["runs"] == 1 and groups["reference", "fp32"]["std_top1"] is None
    # the reference and the multistep engine compute the same function: same seed, same result
    assert finals["reference_fp32_seed0"] == finals["multistep_fp32_seed0"]

    second = run(args)  # every run already finished: resumed, nothing retrained
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("nothing to do") == 3
    assert json.loads((tmp_path / "parity.json").read_text())["runs"] == summary["runs"]

    # --report trains nothing: it summarizes the folders there are and names the missing ones
    report = run([*args[:args.index("--")], "--run", "multistep:fp32:7", "--report",
                  "--json", str(tmp_path / "report.json")])
    assert report.returncode == 0, report.stderr
    assert "multistep_fp32_seed7: no metrics.jsonl, left out" in report.stdout
    assert not (tmp_path / "runs" / "multistep_fp32_seed7").exists()
    assert json.loads((tmp_path / "report.json").read_text()) == summary


def test_bad_run_spec_is_one_clear_error(tmp_path):
    result = run(["--run", "fused:fp16:0", "--out_dir", str(tmp_path)])
    assert result.returncode == 2
    assert "expected ENGINE:PRECISION:SEED" in result.stderr and "Traceback" not in result.stderr
