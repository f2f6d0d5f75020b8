"""Adoption: a run takes over the stages a finished run (a donor) already made with the same config and
inputs, so that sweep points, a study and a resumed run never train or ask the teacher twice."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .files import atomic_write_json, read_jsonl, remove, sha256_path, write_jsonl
from .profiles import Config
from .registry import STAGES, expected_marker, marker_matches
from .runs import RunPaths, read_manifest


def adopt_stages(run_paths: RunPaths, cfg: Config, donors: list[RunPaths], until: int, log=print) -> list[int]:
    """Link into ``run_paths`` every stage a donor run already made with the same config and inputs.

    A stage is adopted when a donor's done marker has this point's config hash and input hashes and
    its outputs are intact; its outputs are symlinked and its marker copied (with ``adopted_from``),
    so the runner then skips it. Nothing is retrained and no teacher call is repeated.
    """
    adopted = []
    for n in sorted(k for k in STAGES if k <= until):
        stage = STAGES[n]
        if marker_matches(run_paths, cfg, stage)[0]:
            continue
        want = expected_marker(run_paths, cfg, stage)
        for donor in donors:
            if not donor.marker(n).exists():
                continue
            mark = json.loads(donor.marker(n).read_text())
            if (mark.get("config_hash"), mark.get("inputs")) != (want["config_hash"], want["inputs"]):
                continue
            if any(not (donor.root / rel).exists() or sha256_path(donor.root / rel) != h
                   for rel, h in mark.get("outputs", {}).items()):
                continue
            for rel in mark["outputs"]:
                target = run_paths.root / rel
                remove(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink((donor.root / rel).resolve(), target)
            manifest = read_manifest(run_paths)
            donor_files = read_manifest(donor)["files"]
            manifest["files"].update({rel: donor_files[rel] for rel in mark["outputs"] if rel in donor_files})
            atomic_write_json(run_paths.manifest, manifest)
            atomic_write_json(run_paths.marker(n), {**mark, "adopted_from": str(donor.root)})
            adopted.append(n)
            log(f"  stage {n:02d} {stage.name}: adopted from {donor.root}")
            break
    return adopted


def adopt_run(run_paths: RunPaths, cfg: Config, donors: list[RunPaths], until: int, log=print) -> list[int]:
    """:func:`adopt_stages` for a whole run. The teacher calls of the adopted stages come with them: a run
    without a ledger gets the donor's ledger rows of those stages (so stage 10's cost and the claims table
    count them, never a call made twice), and stage 10 itself can then be adopted when they are all of it."""
    adopted = adopt_stages(run_paths, cfg, donors, until, log)
    if adopted and not run_paths.ledger.exists():
        source = RunPaths(Path(json.loads(run_paths.marker(adopted[0]).read_text())["adopted_from"]))
        names = {f"{n:02d}_{STAGES[n].name}" for n in adopted}
        rows = [r for r in read_jsonl(source.ledger) if r.get("stage") in names] if source.ledger.exists() else []
        if rows:
            write_jsonl(run_paths.ledger, rows)
            adopted += adopt_stages(run_paths, cfg, donors, until, log)  # stage 10 hashes the ledger
    return sorted(set(adopted))


__all__ = ["adopt_stages", "adopt_run"]
