"""``moltune demo`` end to end with a tiny simulation time, and its step list."""

import json
import subprocess
import sys

import numpy as np

from moltune import demo
from moltune.physics.ptdata import load_pt_data


def test_demo_cli_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "moltune.cli.main", "demo", "--out", str(out), "--time-ps", "2",
         "--flow-steps", "3"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "peptide.pdb", "energy_stats.json", "report.md",
                 "plots/ramachandran.png", "plots/energy_histograms.png", "pt/pt_data.npz"):  # fmt: skip
        assert (out / name).is_file(), name
    stats = json.loads((out / "energy_stats.json").read_text())
    temps = [t["temperature_K"] for t in stats["temperatures"]]
    assert temps == [300.0, 450.0, 670.0, 1000.0]
    assert all(t["n_frames"] == 20 for t in stats["temperatures"])
    means = [t["mean_kjmol"] for t in stats["temperatures"]]
    assert means[0] < means[-1] and -600 < means[0] < -420  # cold below hot, physical range
    assert len(stats["pairs"]) == 3 and all(p["attempts"] == 10 for p in stats["pairs"])
    data = load_pt_data(out / "pt")
    assert data.n_frames == 20 and np.isfinite(np.stack(data.energy_kjmol)).all()
    report = (out / "report.md").read_text()
    assert "| 300 | 20 |" in report and "plots/ramachandran.png" in report
    assert "time_ps: 2.0" in (out / "config.yaml").read_text()
    # the short transport-flow training: its own run folder, acceptances in the report
    flow_metrics = (out / "flow" / "metrics.csv").read_text()
    assert "val/acceptance_flow" in flow_metrics
    assert (out / "flow" / "checkpoints" / "last.ckpt").is_file()
    assert "## Transport flow (300 K <-> 450 K)" in report and "through the flow" in report


def test_steps_can_be_added(tmp_path, monkeypatch):
    calls = []
    steps = list(demo.STEPS)
    monkeypatch.setattr(demo, "STEPS", steps)
    # replace the expensive steps by recording ones; keep the real report step
    demo.add_step("build peptide", lambda ctx: calls.append("build"))
    demo.add_step("parallel tempering", lambda ctx: calls.append("pt"))
    demo.add_step("analysis", lambda ctx: ctx.report.append("## analysis\n"))
    demo.add_step("transport flow", lambda ctx: calls.append("flow"))
    demo.add_step("train a short flow", lambda ctx: ctx.report.append("## flow\n"))
    assert [n for n, _ in steps][-3:] == ["transport flow", "train a short flow", "report"]
    ctx = demo.run_demo(tmp_path / "run", demo.DemoConfig(time_ps=1.0))
    assert calls == ["build", "pt", "flow"]
    text = ctx.run.report.read_text()
    assert text.index("## analysis") < text.index("## flow")
