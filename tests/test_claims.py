"""Stage 11's intervals over seeds and the claims built on them (issue 31), on sweep points made up here."""
import json
import math
import zlib

import numpy as np
import pytest

from speed_utils import claims, sweep_results
from speed_utils.runs import RunPaths

N, TASKS = 120, ("STS12", "SICK-R")


def gold(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {t: rng.standard_normal(N) for t in TASKS}


def cosines(g: dict, rho: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {t: list(rho * v + math.sqrt(1 - rho * rho) * rng.standard_normal(N)) for t, v in g.items()}


def point(tmp_path, base: str, seed: int, readouts: dict[str, float], size: int = 16) -> dict:
    """A sweep point's run folder with stage 08's per-pair record: each readout correlates with gold at rho
    (the noise is the point's and readout's; its seeds differ by their rho alone)."""
    run = RunPaths(tmp_path / f"{base}@{seed}").make()
    g = gold()
    record = {"tasks": {t: {"gold": list(v), "revision": "local-x"} for t, v in g.items()},
              "models": {label: cosines(g, rho, zlib.crc32(f"{base}|{label}".encode())) for label, rho in readouts.items()}}
    run.file("sts_pairs").parent.mkdir(parents=True, exist_ok=True)
    run.file("sts_pairs").write_text(json.dumps(record))
    return {"point": f"{base}@{seed}", "base": base, "seed": seed, "run": str(run.root), "label": "dec",
            "readouts": {label: {} for label in readouts}, "train_examples": size}


def ablation(tmp_path, dec: dict[str, list[float]], mini: dict[str, list[float]]) -> list[dict]:
    """Points with per-seed correlations for the decoder ("dec") and MiniLM ("mini") readouts."""
    return [point(tmp_path, base, s, {"dec": dec[base][s], "mini": mini[base][s]})
            for base in dec for s in range(len(dec[base]))]


def test_a_readout_blind_to_the_data_gives_no_verdict_and_one_that_sees_it_does(tmp_path):
    same = [0.30, 0.32, 0.31]
    dec = {"senior+revisor": same, "senior": same, "junior+revisor": same, "junior": same, "shuffled": same}
    mini = {"senior+revisor": [0.90, 0.91, 0.90], "senior": [0.70, 0.71, 0.70], "junior+revisor": [0.50, 0.51, 0.50],
            "junior": [0.30, 0.31, 0.30], "shuffled": [0.05, 0.06, 0.05]}
    rows = ablation(tmp_path, dec, mini)
    iv = sweep_results.sweep_intervals("ablation", rows, seed=0)
    assert set(iv["readouts"]) == {"dec", "mini"} and iv["points"] == iv["readouts"]["dec"]["points"]
    assert iv["readouts"]["mini"]["points"]["senior+revisor"]["seeds"] == 3
    assert claims.sees_the_data(iv["readouts"]["dec"]) != "holds"
    assert claims.sees_the_data(iv["readouts"]["mini"]) == "holds"
    rows_out = claims.claims(RunPaths(tmp_path / "main"), {"ablation": iv})
    dpo = {r["readout"]: r for r in rows_out if r["claim"] == "DPO improves the generator" and r["readout"] != "data-quality rules"}
    assert dpo["dec"]["holds here"] == claims.BLIND
    assert dpo["mini"]["holds here"] == "holds" and dpo["mini"]["seeds"] == 3 and dpo["mini"]["detectable"] > 0
    order = {r["readout"]: r["holds here"] for r in rows_out if r["claim"] == "The ablation order of Table 2"}
    assert order == {"dec": claims.BLIND, "mini": "holds"}


def test_seeds_that_disagree_leave_the_claim_undecided(tmp_path):
    dec = {"senior+revisor": [0.7, 0.3, 0.7], "senior": [0.3, 0.7, 0.3], "junior+revisor": [0.5] * 3,
           "junior": [0.5] * 3, "shuffled": [-0.6] * 3}
    rows = ablation(tmp_path, dec, dec)
    iv = sweep_results.sweep_intervals("ablation", rows, seed=0)
    rev = next(r for r in claims.claims(RunPaths(tmp_path / "main"), {"ablation": iv})
               if r["claim"] == "The revisor improves the data" and r["readout"] == "dec")
    assert rev["holds here"] == "undecided at this scale" and rev["ci95"][0] < 0 < rev["ci95"][1]


def test_a_scaling_sweep_gets_a_seeded_slope_and_a_shuffled_control_no_size(tmp_path):
    rows = [point(tmp_path, f"n={n}", s, {"dec": rho + 0.01 * s}, size=n)
            for n, rho in ((4, 0.2), (16, 0.4)) for s in range(2)]
    rows += [point(tmp_path, "shuffled", s, {"dec": 0.05}, size=16) for s in range(2)]
    iv = sweep_results.sweep_intervals("scaling", rows, seed=0)
    assert iv["slope_per_decade"]["seeds"] == 2 and iv["slope_per_decade"]["value"] > 0
    assert set(iv["minus_shuffled"]) == {"n=4 - shuffled", "n=16 - shuffled"}
    assert set(iv["minus_first"]) == {"n=16 - n=4", "shuffled - n=4"}  # the first point is the first no control
    assert set(iv["between"]) == {"n=4 - n=16"}  # between data points only


def test_points_that_trained_for_different_steps_are_named():
    rows = [{"point": "a", "base": "a", "asked": 4, "train_examples": 4, "steps": 2, "synthetic_kept": 9},
            {"point": "b", "base": "b", "asked": 16, "train_examples": 16, "steps": 8, "synthetic_kept": 9}]
    assert any("different numbers of steps (2, 8)" in n for n in sweep_results.size_warnings("scaling", rows))
    seeded = [{**rows[0], "point": f"a@{s}"} for s in range(3)]
    assert not any("all trained on" in n for n in sweep_results.size_warnings("scaling", seeded))  # seeds: one size


def test_one_training_never_gives_a_verdict(tmp_path):
    rows = [point(tmp_path, "senior+revisor", 0, {"dec": 0.6}), point(tmp_path, "shuffled", 0, {"dec": 0.0})]
    iv = sweep_results.sweep_intervals("ablation", rows, seed=0)
    assert iv["minus_shuffled"]["senior+revisor - shuffled"]["seeds"] == 1
    assert claims.sees_the_data(iv).startswith("undecided: one training")
    assert pytest.approx(iv["points"]["senior+revisor"]["value"], abs=10) == 60


def test_a_claim_this_run_cannot_afford_points_to_the_study(tmp_path):
    rows = ablation(tmp_path, {"senior+revisor": [0.5, 0.52], "senior": [0.4, 0.41], "shuffled": [0.0, 0.01]},
                    {"senior+revisor": [0.5, 0.52], "senior": [0.4, 0.41], "shuffled": [0.0, 0.01]})
    got = claims.claims(RunPaths(tmp_path / "main"), {"ablation": sweep_results.sweep_intervals("ablation", rows)})
    dpo = [r for r in got if r["claim"] == "DPO improves the generator" and r["measured as"].startswith("stage 11")]
    assert dpo and all(r["holds here"] == "not measured" and claims.ELSEWHERE in r["measured as"] for r in dpo)
    scaling, = [r for r in got if r["claim"] == "Log-linear scaling with data"]
    assert claims.ELSEWHERE in scaling["measured as"]
    revisor = [r for r in got if r["claim"] == "The revisor improves the data" and r["measured as"].startswith("stage 11")]
    assert {r["holds here"] for r in revisor} <= {"holds", "undecided at this scale", claims.BLIND}  # measured here
