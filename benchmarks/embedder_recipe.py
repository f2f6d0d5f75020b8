"""Search for the stage 07 recipe with which SmolLM2-135M (last-token pooling) learns from a run's own
synthetic data (issue 16, point 1).

Every candidate trains on the run's ``synthetic.jsonl`` alone and is chosen on a **dev** split that is
no reported test set:

* ``dev_lee``: LeeDocSTS (gensim's 50 news documents, 1,225 human-scored pairs; not an MTEB task and not
  in the ``cpu`` profile's stage 08), Spearman ×100 of cosine;
* ``dev_seed_mrr``: the teacher's seed pairs of the same run (``seed.jsonl``, which the ``cpu`` embedder
  never trains on): mean reciprocal rank ×100 of each query's positive among all positives and negatives.

With ``--test``, the stage 08 samples of STS12–15 and SICK-R (the same seeded 250-pair samples, the same
instructions) are scored too, for the chosen candidates only; the report keeps them apart.
Each result is one JSON line appended to ``--out``, so an interrupted search resumes where it stopped.

Usage: python benchmarks/embedder_recipe.py --run results/runs/cpu --out /tmp/recipe.jsonl \\
           --candidate '{"lr": 1e-4, "epochs": 2}' --candidate '{"lr": 5e-4, "epochs": 8, "batch_size": 8}' [--test]
A candidate's keys are EmbedderCfg fields (lr, epochs, batch_size, mini_batch_size, temperature,
max_length, warmup_steps, lora) plus ``full`` (full fine-tuning instead of LoRA) and ``seed`` (the training
seed: row order and LoRA initialisation, as ``run.seed`` sets them in stage 07). ``--run`` takes a run
folder or a flat snapshot (``results/reference/<name>``, where ``synthetic.jsonl`` and ``seed.jsonl`` lie
at the top).

The recipe's spread (issue 31, item 5): ``--seeds 5`` trains every candidate with seeds 0-4 and prints,
per candidate, each seed's scores and the lowest test average's distance from the median (the target:
within 5 points).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
TEST_TASKS = ("STS12", "STS13", "STS14", "STS15", "SICK-R")


def encode(st, texts: list[str]) -> dict[str, np.ndarray]:
    """Each distinct text once, L2-normalised, as stage 08 encodes them."""
    uniq = list(dict.fromkeys(texts))
    vecs = st.encode(uniq, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return dict(zip(uniq, vecs))


def sts_score(st, task_name: str, rows: list[dict]) -> float:
    """Spearman ×100 of cosine against gold, with the task's E5 instruction on both sides (as stage 08)."""
    from scipy.stats import spearmanr

    from speed_utils.embed import query_text
    from speed_utils.mteb_tasks import instruction_for

    inst = instruction_for(task_name, "STS")
    fmt = {t: query_text(inst, t) for r in rows for t in (r["sentence1"], r["sentence2"])}
    emb = encode(st, list(fmt.values()))
    cos = [float(emb[fmt[r["sentence1"]]] @ emb[fmt[r["sentence2"]]]) for r in rows]
    return 100 * float(spearmanr([r["score"] for r in rows], cos).statistic)


def seed_mrr(st, rows: list[dict]) -> float:
    """MRR ×100 of each instructed query's positive among every positive and negative of the set."""
    from speed_utils.embed import query_text

    docs = list(dict.fromkeys([r["positive"] for r in rows] + [r["negative"] for r in rows if r.get("negative")]))
    queries = [query_text(r["instruction"], r["query"]) for r in rows]
    emb = encode(st, queries + docs)
    d = np.stack([emb[t] for t in docs])
    rr = []
    for q, r in zip(queries, rows):
        sims = d @ emb[q]
        rr.append(1.0 / (1 + int((sims > sims[docs.index(r["positive"])]).sum())))
    return 100 * float(np.mean(rr))


def task_rows(name: str, limit: int | None, seed: int) -> list[dict]:
    from speed_utils import assets, mteb_tasks

    local = os.environ.get("SPEED_REPRO_MTEB_LOCAL") or ROOT.parent / "shared" / "data" / "mteb_local"
    folder = assets.data_folder(mteb_tasks.PROXY_ASSET) if name in mteb_tasks.PROXY else Path(local)
    task = mteb_tasks.file_task(name, folder, limit, seed)
    task.load_data()
    return list(task.dataset["test"])


def model(candidate: dict, untrained: bool = False):
    """SmolLM2-135M as stage 07 builds it; fp32 weights for full fine-tuning (bf16 autocast trains them)."""
    import torch

    from speed_utils import assets, embed

    path = assets.hf_folder("smollm2-135m-instruct", online=False)
    st = embed.decoder_embedder(path, candidate.get("max_length", 256))
    if candidate.get("full") and not untrained:
        st = st.to(torch.float32)
    return st


def evaluate_all(st, data: dict, test: bool) -> dict:
    out = {"dev_lee": round(sts_score(st, "LeeDocSTS", data["lee"]), 2),
           "dev_seed_mrr": round(seed_mrr(st, data["seed"]), 2)}
    if test:
        out["test"] = {t: round(sts_score(st, t, data[t]), 2) for t in TEST_TASKS}
        out["test_avg"] = round(float(np.mean(list(out["test"].values()))), 2)
    return out


def run_candidate(candidate: dict, rows: list[dict], data: dict, test: bool) -> dict:
    """Train one candidate (``candidate["seed"]``: the training seed, default 0) and score it."""
    from speed_utils import embed, evaluate
    from speed_utils.config import EmbedderCfg, LoraCfg

    if candidate.get("untrained"):
        t0 = time.monotonic()
        return {"candidate": candidate, **evaluate_all(model(candidate, untrained=True), data, test),
                "seconds": round(time.monotonic() - t0, 1)}
    fields = {k: v for k, v in candidate.items() if k in EmbedderCfg.model_fields and k not in ("lora", "seed")}
    lora = LoraCfg(**candidate.get("lora", {}))
    ec = EmbedderCfg(**{"lr": 1e-4, "batch_size": 32, "mini_batch_size": 8, "max_length": 256, "epochs": 2,
                        "warmup_steps": 2, "gradient_checkpointing": False, **fields}, lora=lora)
    if ec.mini_batch_size and ec.mini_batch_size > ec.batch_size:
        ec = ec.model_copy(update={"mini_batch_size": ec.batch_size})
    st = model(candidate)
    with tempfile.TemporaryDirectory() as d:
        res = embed.train(st, rows, Path(d) / "m", ec, name="smollm2-135m-instruct", lora=not candidate.get("full"),
                          seed=int(candidate.get("seed", 0)))
        trained = evaluate.load_candidate(evaluate.Candidate("trained", "trained", str(Path(d) / "m"), "encoder", True),
                                          ec.max_length)  # as stage 08 loads it
        scores = evaluate_all(trained, data, test)
    return {"candidate": candidate, **scores, "steps": res.steps, "train_seconds": res.train_seconds,
            "seconds": res.seconds, "final_loss": res.losses[-1][1] if res.losses else None, "dtype": res.dtype}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "results/runs/cpu"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidate", action="append", default=[], help="a JSON object; repeatable")
    ap.add_argument("--test", action="store_true", help="also score the stage 08 test samples")
    ap.add_argument("--limit", type=int, default=250, help="pairs per test task (stage 08's sample)")
    ap.add_argument("--seeds", type=int, default=0, help="train every candidate with seeds 0..N-1 and print the spread")
    a = ap.parse_args()
    if a.seeds:
        a.candidate = [json.dumps({**json.loads(c), "seed": s}) for c in a.candidate for s in range(a.seeds)]

    from speed_utils.embed import training_rows
    from speed_utils.runs import RunPaths
    from speed_utils.files import read_jsonl
    from speed_utils.schema import to_training_example

    run = RunPaths(Path(a.run))
    flat = not (run.data / "synthetic.jsonl").exists() and (Path(a.run) / "synthetic.jsonl").exists()
    data_dir = Path(a.run) if flat else run.data  # a snapshot keeps its data files at the top
    rows = list(read_jsonl(data_dir / "synthetic.jsonl")) if flat else training_rows(run, ["synthetic"])
    seed = [{"id": r["id"], **to_training_example(r["task_type"], r["task"], r["output"])}
            for r in read_jsonl(data_dir / "seed.jsonl")]
    data = {"lee": task_rows("LeeDocSTS", None, 0), "seed": seed}
    if a.test:
        data.update({t: task_rows(t, a.limit, 0) for t in TEST_TASKS})
    out = Path(a.out)
    done = {json.dumps(json.loads(l)["candidate"], sort_keys=True) for l in out.read_text().splitlines()} if out.exists() else set()
    print(f"{len(rows)} synthetic training rows, {len(seed)} seed dev pairs; {machine()}", flush=True)
    for c in map(json.loads, a.candidate):
        key = json.dumps({**c, **({"test": True} if a.test else {})}, sort_keys=True)
        if key in done:
            continue
        r = run_candidate(c, rows, data, a.test)
        r["candidate"] = json.loads(key)
        r["peak_rss_mb"] = round(peak_rss_mb())
        with out.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)
    if a.seeds:
        spread(out, a.test)


def spread(out: Path, test: bool) -> None:
    """Per candidate (seed aside): each seed's score, the median, and the lowest one's distance below it."""
    by: dict[str, list[dict]] = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        c = {k: v for k, v in r["candidate"].items() if k != "seed"}
        by.setdefault(json.dumps(c, sort_keys=True), []).append(r)
    metric = "test_avg" if test else "dev_lee"
    print(f"\nspread over seeds ({metric}; the target: the lowest within 5 points of the median)")
    for c, rs in by.items():
        vals = [r[metric] for r in sorted(rs, key=lambda r: r["candidate"].get("seed", 0)) if metric in r]
        if not vals:
            continue
        med = float(np.median(vals))
        print(f"{c}: seeds {', '.join(f'{v:.2f}' for v in vals)}; median {med:.2f}, lowest {min(vals):.2f} "
              f"({med - min(vals):.2f} below; {'within' if med - min(vals) <= 5 else 'NOT within'} 5)")


if __name__ == "__main__":
    main()
