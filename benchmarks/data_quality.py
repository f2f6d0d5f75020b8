"""Issue 31, item 3: the data-quality rules (speed_utils.data_quality) on a finished run's held-out outputs.

Stage 05 of every run writes ``data/quality.jsonl``: for each held-out prompt, the junior's, the senior's
and the revised junior's output. This reads them (also from runs made before stage 05 applied the rules,
whose prompt attributes it draws again from the run's seed, as stage 05 drew them), applies the rules
with MiniLM as the reference encoder, and prints each generator's rates with 95% Wilson intervals and the
paired differences (senior - junior, revised - junior) with bootstrap intervals over the prompts.

    .venv/bin/python benchmarks/data_quality.py results/reference/cpu-2026-11-26 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from common import machine, report

GENERATORS = {"junior": "junior", "senior": "senior", "junior_revised": "junior_revised"}


def attributes(row: dict, seed: int) -> dict:
    """The held-out prompt's sampled attributes (prompts.generation_prompt with purpose "heldout": they depend on
    the seed, the type and the index alone), where every counted one appears in the row's prompt text; else none
    (the instructions rule then does not apply)."""
    from speed_utils.prompts import generation_prompt

    m = re.match(r"heldout(\d+)-", row["id"])
    if not m:
        return {}
    attrs = generation_prompt(row["task_type"], int(m.group(1)), seed, purpose="heldout").attributes
    asked = [str(v) for k, v in attrs.items() if v is not None and k in ("query_length", "num_words", "unit")]
    return attrs if all(v in row.get("prompt", "") for v in asked) else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    from speed_utils import assets, data_quality
    import yaml
    from speed_utils.embed import encoder_embedder
    from speed_utils.files import read_jsonl

    run = a.run if (a.run / "quality.jsonl").exists() else a.run / "data"
    rows = list(read_jsonl(run / "quality.jsonl"))
    config = a.run / "config.yaml"
    seed = yaml.safe_load(config.read_text())["run"]["seed"] if config.exists() else 0  # older configs: any schema
    model = encoder_embedder(assets.st_folder("all-minilm-l6-v2", online=False))
    encode = lambda texts: model.encode(texts, convert_to_numpy=True)  # noqa: E731
    checked = {g: data_quality.check_generator(
        [{"prompt_id": r["id"], "task_type": r["task_type"], "raw": r[key], "attributes": attributes(r, seed),
          "task": None} for r in rows], encode) for g, key in GENERATORS.items()}
    table = data_quality.rate_table(checked)
    paired = data_quality.compare(checked, [("senior", "junior"), ("junior_revised", "junior")], seed)
    rules = [*data_quality.RULES, "sound"]
    print(f"{len(rows)} held-out prompts of {a.run}\n")
    print(f"{'rule':16s}" + "".join(f"{g:>26s}" for g in checked))
    for rule in rules:
        cells = [table[g][rule] for g in checked]
        text = ["-" if c["rate"] is None else "{:.2f} [{:.2f}, {:.2f}] n={}".format(c["rate"], c["lo"], c["hi"], c["n"])
                for c in cells]
        print(f"{rule:16s}" + "".join(f"{t:>26s}" for t in text))
    print()
    for name, diffs in paired.items():
        for rule in rules:
            d = diffs[rule]
            if d:
                print(f"{name:24s} {rule:14s} {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] n={d['n']}")
    out = {"run": str(a.run), "prompts": len(rows), "rates": table, "paired": paired}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    sound = paired.get("senior - junior", {}).get("sound")
    report("data quality: sound-row rate, senior minus junior", sound["value"] if sound else None,
           {**machine(), **out}, target="a rate difference whose interval excludes 0")


if __name__ == "__main__":
    main()
