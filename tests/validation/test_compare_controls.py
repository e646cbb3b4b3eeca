"""`runs compare` on groups of seed runs and the controls protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from moltune.cli.main import main
from moltune.validation.compare import compare_runs, compare_values, metric_value
from moltune.validation.controls import ControlProtocol, Variant, write_report


def _fake_run(path: Path, final_val: float, epochs: int = 4) -> Path:
    """A CSVLogger-format run folder whose val/loss ends at ``final_val``."""
    path.mkdir(parents=True)
    rows = ["epoch,step,train/loss_epoch,val/loss"]
    for e in range(epochs):
        v = final_val * (1 + 0.5 * (epochs - 1 - e))
        rows += [f"{e},{e},{v * 0.9},", f"{e},{e},,{v}"]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    return path


def test_compare_seed_groups_cli(tmp_path):
    a_vals, b_vals, c_vals = [1.00, 1.05, 0.97, 1.02], [1.40, 1.46, 1.38, 1.43], [1.01, 0.99, 1.04]
    for name, vals in (("a", a_vals), ("b", b_vals), ("c", c_vals)):
        for i, v in enumerate(vals):
            _fake_run(tmp_path / name / f"seed{i}", v)
    out = tmp_path / "cmp"
    rc = main(["runs", "compare", str(tmp_path / "a"), str(tmp_path / "b"), f"c={tmp_path}/c/seed*",
               "--metric", "val/loss", "--reference", "a", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "comparison.json").read_text())
    groups = {g["group"]: g for g in data["groups"]}
    assert groups["a"]["n"] == 4 and groups["c"]["n"] == 3
    assert groups["b"]["mean"] == pytest.approx(np.mean(b_vals))
    pairs = {p["a"]: p for p in data["pairs"]}
    ref_b = sps.ttest_ind(b_vals, a_vals, equal_var=False)
    ref_c = sps.ttest_ind(c_vals, a_vals, equal_var=False)
    assert pairs["b"]["p_value"] == pytest.approx(ref_b.pvalue)
    # Holm over two comparisons
    assert pairs["b"]["p_adjusted"] == pytest.approx(min(1, 2 * min(ref_b.pvalue, ref_c.pvalue)))
    assert pairs["b"]["verdict"] == "different" and pairs["b"]["hedges_g"] > 3
    assert pairs["c"]["verdict"] == "within seed-to-seed variance"
    for f in ("comparison.csv", "groups.csv", "comparison.md", "comparison.png"):
        assert (out / f).stat().st_size > 100
    assert "Hedges' g" in (out / "comparison.md").read_text()


def test_single_runs_are_too_small_to_decide(tmp_path):
    a, b = _fake_run(tmp_path / "a", 1.0), _fake_run(tmp_path / "b", 2.0)
    res = compare_runs([str(a), str(b)], "val/loss")
    assert res.pairs[0].verdict == "too small to decide"
    assert any("single run" in n for n in res.notes)


def test_checkpoint_is_valued_at_its_epoch(tmp_path):
    run = _fake_run(tmp_path / "r", 1.0, epochs=4)
    (run / "checkpoints").mkdir()
    ck = run / "checkpoints" / "epoch=1-step=1.ckpt"
    ck.write_bytes(b"")
    assert metric_value(ck, "val/loss").value == pytest.approx(1.0 * (1 + 0.5 * 2))
    assert metric_value(run, "val/loss", "min").value == pytest.approx(1.0)


def test_evaluation_json_takes_precedence(tmp_path):
    run = _fake_run(tmp_path / "r", 1.0)
    (run / "evaluation").mkdir()
    (run / "evaluation" / "metrics.json").write_text(json.dumps({"val/acceptance_flow": 0.31}))
    v = metric_value(run, "val/acceptance_flow")
    assert v.value == 0.31 and "evaluation" in v.source


def test_compare_values_all_pairs_bh():
    res = compare_values({"x": [1, 2, 3], "y": [2, 3, 4], "z": [7, 8, 9]}, correction="bh")
    assert len(res.pairs) == 3
    raw = [p.p_value for p in res.pairs]
    np.testing.assert_allclose([p.p_adjusted for p in res.pairs], sps.false_discovery_control(raw))


def _transport_like(seed: int, kind: str) -> dict:
    """Acceptance rates per seed: the trained flow beats the naive swap; identity == naive."""
    rng = np.random.default_rng(seed)
    base = {"trained": 0.35, "naive": 0.05, "identity": 0.05}[kind]
    return {"acceptance": base + 0.01 * rng.standard_normal()}


def test_controls_protocol_transport(tmp_path):
    seeds = [0, 1, 2, 3, 4]
    proto = ControlProtocol(
        metric="acceptance",
        variants=[
            Variant("trained flow", "reference", lambda s: _transport_like(s, "trained")),
            Variant("identity flow (naive swap)", "worse", lambda s: _transport_like(s, "identity")),
            Variant("naive swap, precomputed", "equal",
                    values=[_transport_like(s + 100, "trained")["acceptance"] for s in seeds]),
            Variant("claimed improvement", "better",
                    values=[_transport_like(s + 200, "trained")["acceptance"] for s in seeds]),
        ],
        seeds=seeds, higher_is_better=True)
    rep = proto.run()
    verdicts = {r.name: r.verdict for r in rep.results}
    assert verdicts["trained flow"] == "reference"
    assert verdicts["identity flow (naive swap)"] == "pass"
    assert verdicts["naive swap, precomputed"] == "pass"
    assert verdicts["claimed improvement"] == "fail"  # same distribution: not better
    assert not rep.passed
    ident = next(r for r in rep.results if r.name.startswith("identity"))
    ref_vals = [_transport_like(s, "trained")["acceptance"] for s in seeds]
    id_vals = [_transport_like(s, "identity")["acceptance"] for s in seeds]
    assert ident.p_value == pytest.approx(sps.ttest_ind(id_vals, ref_vals, equal_var=False).pvalue)
    paths = write_report(rep, tmp_path)
    md = paths["markdown"].read_text()
    assert "clearly worse than the reference" in md and "**pass**" in md and "FAIL" in md
    data = json.loads(paths["json"].read_text())
    assert data["passed"] is False and len(data["results"]) == 4
    assert paths["plot"].stat().st_size > 5000


def test_controls_ligand_film_lower_is_better_and_inconclusive():
    seeds = [1, 2, 3]
    proto = ControlProtocol(
        metric="val/loss", higher_is_better=False, seeds=seeds, margin=0.05,
        variants=[Variant("pretrained", "reference", values=[0.50, 0.52, 0.49]),
                  Variant("identity FiLM", "equal", values=[0.505, 0.515, 0.495]),
                  Variant("random FiLM", "worse", values=[2.1, 2.4, 1.9]),
                  Variant("one seed only", "worse", values=[3.0, math.nan, math.nan])])
    rep = proto.run()
    v = {r.name: (r.verdict, r.reason) for r in rep.results}
    assert v["identity FiLM"][0] == "pass" and "TOST" in v["identity FiLM"][1]
    assert v["random FiLM"][0] == "pass"
    assert v["one seed only"][0] == "inconclusive"
    paired = ControlProtocol("val/loss", proto.variants[:3], seeds, higher_is_better=False,
                             paired=True).run()
    rf = next(r for r in paired.results if r.name == "random FiLM")
    assert rf.p_value == pytest.approx(sps.ttest_rel([2.1, 2.4, 1.9], [0.50, 0.52, 0.49]).pvalue)


def test_paired_differences_without_spread_get_the_sign_flip_p_value():
    """Three seeds that all differ by exactly -0.25 (seen in a baselines run) are not p = 0:
    three signs alike is all they show, p = 2 / 2^3 = 0.25 (exact sign-flip test)."""
    proto = ControlProtocol(
        "valid_and_connected", seeds=[0, 1, 2], paired=True,
        variants=[Variant("pretrained", "reference", values=[0.50, 0.3125, 0.4375]),
                  Variant("identity FiLM", "equal", values=[0.50, 0.3125, 0.4375]),
                  Variant("fine-tuned", "worse", values=[0.25, 0.0625, 0.1875])])  # fmt: skip
    res = {r.name: r for r in proto.run().results}
    assert res["fine-tuned"].p_value == pytest.approx(0.25)
    assert res["identity FiLM"].p_value == 1.0


def test_control_protocol_rejects_bad_setup():
    from moltune.common.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        Variant("x", "sideways", values=[1.0])
    with pytest.raises(InvalidInputError):
        ControlProtocol("m", [Variant("a", "worse", values=[1.0])], [0])
    with pytest.raises(InvalidInputError):
        ControlProtocol("m", [Variant("a", "reference", values=[1.0, 2.0])], [0]).run()


def test_variant_from_run_folders(tmp_path):
    refs = [_fake_run(tmp_path / "ref" / f"s{i}", v) for i, v in enumerate([1.0, 1.02, 0.98])]
    bad = [_fake_run(tmp_path / "bad" / f"s{i}", v) for i, v in enumerate([2.0, 2.1, 1.9])]
    rep = ControlProtocol("val/loss", [Variant.from_runs("trained", "reference", refs, "val/loss"),
                                       Variant.from_runs("identity", "worse", bad, "val/loss")],
                          seeds=[0, 1, 2], higher_is_better=False).run()
    assert rep.results[1].values == [2.0, 2.1, 1.9] and rep.results[1].verdict == "pass"
