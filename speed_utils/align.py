"""Generator alignment: junior SFT, senior DPO from teacher judgements, the data revisor (SPEED §3.2).

* 03 junior: SFT of the base generator on the seed data (prompt -> JSON), loss on the completion.
* 04 senior: the junior samples K outputs per held prompt (the "root data"); the teacher names
  the best and worst (temperature 0); DPO with the junior as reference.
* 05 revisor: the teacher revises root data on relevance, completeness and accuracy; the revisor
  is trained by SFT from the **base** model on (prompt + task + original) -> revision. Then a
  quality check on prompts held out from all training compares junior, senior and junior+revisor.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from . import assets, data_quality
from .embed import encoder_embedder
from .files import read_jsonl, write_jsonl
from .generate import GenRequest, base_model, open_generator
from .judge import JUDGE_MAX_TOKENS, calibrated_root
from .profiles import Config
from .prompts import Prompt, judge_prompt, revision_prompt
from .runs import RunPaths
from .schema import (
    REVISION_FIELD_CHARS,
    generator_schema,
    parse_example,
    parse_json,
    parse_judgement,
    parse_revision,
    response_format,
    revision_schema,
)
from .stats import wilson
from .teacher import Teacher
from .teacher_data import Deterministic, ask_teacher, seed_prompts
from .train import TrainResult, dpo, sft

JUDGE_REASON_CHARS = 300  # a token holds at least one character, so a reason that loops (the smoke
                          # teacher's did) cannot run the judgement into its token cap before "best"
                          # and "worst" are written


def judge_schema(k: int) -> dict:
    """Constrained-decoding schema for a judgement over ``k`` outputs (indices 0..k-1), its reason bounded."""
    index = {"type": "integer", "enum": list(range(k))}
    return {"type": "object", "required": ["reason", "best", "worst"], "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": JUDGE_REASON_CHARS}, "best": index, "worst": index}}


def as_completion(output: dict) -> str:
    """The SFT target for one example: its JSON, as the generators should write it."""
    return json.dumps(output, ensure_ascii=False)


# ---------------------------------------------------------------- 03 junior
def train_junior(cfg: Config, run: RunPaths) -> TrainResult:
    rows = [{"prompt": r["prompt"], "completion": as_completion(r["output"])} for r in read_jsonl(run.file("seed"))]
    if not rows:
        raise ValueError(f"{run.data / 'seed.jsonl'} holds no valid example; stage 02 must produce some")
    return sft(base_model(cfg), rows, run.file("junior"), cfg.junior, cfg.junior.max_length, cfg.run.seed)


# ---------------------------------------------------------------- 04 senior
def sample(cfg: Config, adapter, prompts: list[Prompt], n: int, temperature: float, desc: str,
           journal: Path | None = None) -> list[list[str]]:
    """``n`` samples per prompt from the base plus ``adapter``; finished batches go to ``journal``."""
    g = cfg.generation
    reqs = [GenRequest(p.text, n=n, temperature=temperature, top_p=cfg.senior.top_p, max_new_tokens=g.max_new_tokens,
                       seed=cfg.run.seed + i, json_schema=generator_schema(p.task_type, p.kind == "revise")
                       if g.structured_output else None) for i, p in enumerate(prompts)]
    log = journal.parent.parent / "logs" / "llama-generator.log" if journal else None
    with open_generator(cfg, adapter, log) as gen:
        return gen.generate(reqs, desc=desc, journal=journal)


def root_data(cfg: Config, run: RunPaths) -> list[dict]:
    """The junior's K samples for each held prompt (SPEED §3.2.3), written to ``root.jsonl``."""
    s = cfg.senior
    prompts = seed_prompts(cfg, read_jsonl(run.file("tasks")), s.n_prompts, purpose="senior")
    outs = sample(cfg, run.file("junior"), prompts, s.k_samples, s.temperature, "04 junior samples",
                  run.generation_journal)
    rows = [{"id": p.id, "task_type": p.task_type, "task": p.task, "topic": p.topic, "prompt": p.text, "outputs": o}
            for p, o in zip(prompts, outs)]
    write_jsonl(run.file("root"), rows)
    return rows


def judge_orders(k: int, n_orders: int) -> list[tuple[str, list[int]]]:
    """The orders a list of ``k`` outputs is shown to the judge in: (prompt-id tag, the original index
    at each shown position). One order is the paper's judge; two add the reversed list."""
    orders = [("", list(range(k)))]
    if n_orders >= 2:
        orders.append(("r-", list(range(k))[::-1]))
    return orders


def agreed(verdicts: list[dict], n_orders: int) -> dict | None:
    """The pair of a list where every order names the same best output, in original indices: chosen is
    that output, rejected the first order's worst (every order then ranks chosen above it, since chosen
    is its best). None where an order is missing or the orders name different bests: a best picked by
    position moves with the order, so a judge that picks by position keeps nothing."""
    if len(verdicts) < n_orders:
        return None
    first = verdicts[0]
    return first if all(v["best"] == first["best"] for v in verdicts) else None


def judge_root(cfg: Config, run: RunPaths, teacher: Teacher, root: list[dict]) -> dict:
    """The teacher picks best and worst of each list (SPEED §3.2.3), in ``senior.judge_orders`` orders.

    With two orders (the list as sampled, then reversed) a pair is kept only where both judgements name
    the same best output (:func:`agreed`): a judge that picks by position keeps nothing (issue 16).
    Invalid or tied picks are rejected and counted; the judge's agreement with itself is reported.
    ``senior.judge: calibrated`` reads the preference from token probabilities instead (:mod:`speed_utils.judge`).
    """
    if cfg.senior.judge == "calibrated":
        return calibrated_root(cfg, run, teacher, root)
    k, n_orders = cfg.senior.k_samples, cfg.senior.judge_orders
    fmt = response_format("judgement", judge_schema(k)) if cfg.teacher.structured_output else None
    orders = judge_orders(k, n_orders)
    prompts, shown = [], {}
    for r in root:
        for tag, perm in orders:
            pid = f"judge-{tag}{r['id']}"
            prompts.append(Prompt(id=pid, kind="judge", task_type=r["task_type"], task=r["task"], topic=r["topic"],
                                  text=judge_prompt(r["prompt"], [r["outputs"][i] for i in perm])))
            shown[pid] = (r["id"], perm)
    kept, rejects = ask_teacher(teacher, "judge", prompts, Deterministic(JUDGE_MAX_TOKENS), cfg.run.seed, "04 teacher judges",
                                parse=lambda p, r: parse_judgement(r.content, k), schema=lambda p: fmt)
    verdicts: dict[str, list[dict]] = {}
    for p, _, parsed in kept:
        rid, perm = shown[p.id]
        j = parsed.value
        verdicts.setdefault(rid, []).append({"best": perm[j["best"]], "worst": perm[j["worst"]],
                                             "shown_best": j["best"], "reason": j["reason"]})
    prefs = []
    for row in root:
        if (v := agreed(verdicts.get(row["id"], []), n_orders)) is not None:
            prefs.append({"id": row["id"], "task_type": row["task_type"], "prompt": row["prompt"],
                          "chosen": row["outputs"][v["best"]], "rejected": row["outputs"][v["worst"]],
                          "best": v["best"], "worst": v["worst"], "reason": v["reason"], "orders": n_orders})
    write_jsonl(run.file("prefs"), prefs)
    write_jsonl(run.file("prefs_rejects"), rejects)
    complete = [v for v in verdicts.values() if len(v) == n_orders]
    return {"lists": len(root), "judgements": len(prompts), "orders": n_orders, "pairs": len(prefs),
            "rejected": len(rejects), "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
            "shown_first_named_best": round(sum(v["shown_best"] == 0 for vs in verdicts.values() for v in vs)
                                            / max(len(kept), 1), 3),
            "best_shown_position_counts": dict(Counter(v["shown_best"] for vs in verdicts.values() for v in vs)),
            **(self_agreement(complete) if n_orders > 1 else {})}


def self_agreement(complete: list[list[dict]]) -> dict:
    """How often the judge named the same outputs in every order of a list (of the lists judged in all)."""
    same_best = sum(all(v["best"] == vs[0]["best"] for v in vs) for vs in complete)
    same_both = sum(all((v["best"], v["worst"]) == (vs[0]["best"], vs[0]["worst"]) for v in vs) for vs in complete)
    n = len(complete)
    return {"lists_judged_in_every_order": n, "same_best_every_order": same_best,
            "same_best_and_worst_every_order": same_both,
            "self_agreement": round(same_best / n, 3) if n else None,  # on the best: what keeps a pair
            "self_agreement_ci95": [round(x, 3) for x in wilson(same_best, n)]}


def train_senior(cfg: Config, run: RunPaths) -> TrainResult:
    """DPO from the junior on the kept pairs. Where the judge agreed with itself on no list (two orders),
    DPO has nothing to learn from: the senior is the junior, unchanged, and the result says so."""
    pairs = list(read_jsonl(run.file("prefs")))
    if not pairs and cfg.senior.judge == "calibrated":
        return unchanged_junior(run, f"no list's averaged preference margin reached senior.judge_margin "
                                     f"{cfg.senior.judge_margin}: DPO on no pair leaves the junior as it is")
    if not pairs and cfg.senior.judge_orders > 1:
        return unchanged_junior(run, "no list was judged alike in both orders: DPO on no pair leaves the junior as it is")
    if not pairs:
        raise ValueError(f"{run.data / 'prefs.jsonl'} holds no preference pair: every judgement was rejected")
    return dpo(base_model(cfg), run.file("junior"), pairs, run.file("senior"), cfg.senior,
               cfg.senior.max_length, cfg.run.seed)


def unchanged_junior(run: RunPaths, why: str) -> TrainResult:
    """The senior adapter as a copy of the junior's (written whole, then renamed into place)."""

    t0 = time.monotonic()
    out, tmp = run.file("senior"), run.adapters / "senior.part"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run.file("junior"), tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"WARNING: {why}", file=sys.stderr, flush=True)  # stderr: the quiet terminal shows it
    return TrainResult(adapter=str(out), path="lora", steps=0, seconds=round(time.monotonic() - t0, 1),
                       trainable_params=0, extra={"reward_margins": [], "unchanged_junior": why})


# ---------------------------------------------------------------- 05 revisor
def revise_root(cfg: Config, run: RunPaths, teacher: Teacher) -> dict:
    """The teacher revises junior root data (SPEED §3.2.4): one output per (prompt, sample index)."""
    root = list(read_jsonl(run.file("root")))
    picks = [(r, j) for j in range(cfg.senior.k_samples) for r in root][: cfg.revisor.n_examples]
    prompts = [Prompt(id=f"rev-{r['id']}-{j}", kind="revise", task_type=r["task_type"], task=r["task"], topic=r["topic"],
                      text=revision_prompt(r["prompt"], r["task"], r["outputs"][j])) for r, j in picks]
    structured = cfg.teacher.structured_output
    kept, rejects = ask_teacher(
        teacher, "revision", prompts, Deterministic(cfg.generation.max_new_tokens + 200), cfg.run.seed, "05 teacher revises",
        parse=lambda p, r: parse_revision(p.task_type, r.content, r.finish_reason),
        schema=lambda p: response_format("revision", revision_schema(p.task_type, REVISION_FIELD_CHARS))
        if structured else None)
    source = {f"rev-{r['id']}-{j}": (r, j) for r, j in picks}
    rows = []
    for p, _, parsed in kept:
        r, j = source[p.id]
        rows.append({"id": p.id, "task_type": p.task_type, "task": p.task, "prompt": r["prompt"],
                     "original": r["outputs"][j], "revisor_input": p.text,
                     "reason": parsed.value["reason"], "revision": parsed.value["revision"]})
    write_jsonl(run.file("revisions"), rows)
    write_jsonl(run.file("revision_rejects"), rejects)
    return {"asked": len(prompts), "revisions": len(rows), "rejected": len(rejects),
            "reject_reasons": dict(Counter(r["reason"] for r in rejects))}


def train_revisor(cfg: Config, run: RunPaths) -> TrainResult:
    """SFT from the base model, not the junior; target = {"reason", "revision"} as the teacher gave."""
    rows = [{"prompt": r["revisor_input"], "completion": json.dumps({"reason": r["reason"], "revision": r["revision"]},
                                                                    ensure_ascii=False)}
            for r in read_jsonl(run.file("revisions"))]
    if not rows:
        raise ValueError(f"{run.data / 'revisions.jsonl'} holds no revision: every teacher revision was rejected")
    return sft(base_model(cfg), rows, run.file("revisor"), cfg.revisor, cfg.revisor.max_length, cfg.run.seed)


# ---------------------------------------------------------------- quality check
def validity(task_type: str, text: str | None) -> dict:
    return {"valid_json": parse_json(text).ok, "schema_valid": parse_example(task_type, text).ok}


def quality_check(cfg: Config, run: RunPaths, teacher: Teacher) -> dict:
    """Junior vs senior vs junior+revisor on held-out prompts: validity and a position-swapped judge."""
    q = cfg.quality
    prompts = seed_prompts(cfg, read_jsonl(run.file("tasks")), q.n_prompts, purpose="heldout")
    junior = [o[0] for o in sample(cfg, run.file("junior"), prompts, 1, q.temperature, "05 junior",
                                   run.generation_journal)]
    senior = [o[0] for o in sample(cfg, run.file("senior"), prompts, 1, q.temperature, "05 senior",
                                   run.generation_journal)]
    rev_prompts = [Prompt(id=f"q-rev-{p.id}", kind="revise", task_type=p.task_type, task=p.task, topic=p.topic,
                          text=revision_prompt(p.text, p.task, o)) for p, o in zip(prompts, junior)]
    revised_raw = [o[0] for o in sample(cfg, run.file("revisor"), rev_prompts, 1, 0.0, "05 revisor",
                                        run.generation_journal)]
    revised = [json.dumps(r.value["revision"]) if (r := parse_revision(p.task_type, t)).ok else t
               for p, t in zip(prompts, revised_raw)]

    # pairwise: the judge sees (junior, senior) and (senior, junior); senior wins a trial if picked best
    pair_prompts, order = [], []
    for p, j, s in zip(prompts, junior, senior):
        for first_is_senior in (False, True):
            outs = [s, j] if first_is_senior else [j, s]
            pair_prompts.append(Prompt(id=f"q-pair-{p.id}-{int(first_is_senior)}", kind="judge", task_type=p.task_type,
                                       text=judge_prompt(p.text, outs), task=p.task, topic=p.topic))
            order.append(first_is_senior)
    fmt = response_format("judgement", judge_schema(2)) if cfg.teacher.structured_output else None
    kept, rejects = ask_teacher(teacher, "quality", pair_prompts, Deterministic(JUDGE_MAX_TOKENS), cfg.run.seed, "05 teacher compares",
                                parse=lambda p, r: parse_judgement(r.content, 2), schema=lambda p: fmt)
    senior_first = dict(zip((p.id for p in pair_prompts), order))
    verdict = pairwise_tally([(p.id.rsplit("-", 1)[0], senior_first[p.id], parsed.value["best"]) for p, _, parsed in kept])

    rows = []
    for p, j, s, r in zip(prompts, junior, senior, revised):
        rows.append({"id": p.id, "task_type": p.task_type, "prompt": p.text, "junior": j, "senior": s,
                     "junior_revised": r, **{f"{name}_{k}": v for name, text in
                                             (("junior", j), ("senior", s), ("revised", r))
                                             for k, v in validity(p.task_type, text).items()}})
    checked = quality_rules(cfg, prompts, {"junior": junior, "senior": senior, "junior_revised": revised})
    for row, *per_gen in zip(rows, *(checked[g] for g in checked)):
        row["rules"] = {g: {k: v for k, v in c.items() if k not in ("prompt_id", "task_type")} for g, c in zip(checked, per_gen)}
    write_jsonl(run.file("quality"), rows)
    table = {name: {k: round(sum(row[f"{name}_{k}"] for row in rows) / max(len(rows), 1), 3)
                    for k in ("valid_json", "schema_valid")} for name in ("junior", "senior", "revised")}
    rules = {"rates": data_quality.rate_table(checked),
             "paired": data_quality.compare(checked, [("senior", "junior"), ("junior_revised", "junior")], cfg.run.seed)}
    return {"prompts": len(prompts), "validity": table, "rules": rules,
            "senior_vs_junior": {**verdict, "judge_rejects": len(rejects)}}


def quality_rules(cfg: Config, prompts: list[Prompt], outputs: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Issue 31's data-quality rules on each generator's outputs for the same held-out prompts, with the
    profile's baseline embedder (MiniLM) as the reference encoder that ranks positives above hard negatives."""
    encode = None
    if cfg.models.baseline_embedder:

        model = encoder_embedder(assets.st_folder(cfg.models.baseline_embedder, online=cfg.use_hub()))
        encode = lambda texts: model.encode(texts, convert_to_numpy=True)  # noqa: E731
    return {g: data_quality.check_generator(
        [{"prompt_id": p.id, "task_type": p.task_type, "raw": text, "attributes": p.attributes, "task": p.task}
         for p, text in zip(prompts, texts)], encode) for g, texts in outputs.items()}


def pairwise_tally(trials: list[tuple[str, bool, int]]) -> dict:
    """Senior vs junior from (prompt id, senior shown first, index the judge named best) trials.

    Every order is one trial: ``win_rate`` with its 95% Wilson interval. Because each prompt is asked in
    both orders, the judge's position bias shows too: how often it named the first output best, and per
    prompt whether it preferred the same model in both orders or flipped with the order. The debiased
    verdict, ``consistent_win_rate``, counts only the prompts whose two orders named the same model."""
    wins = sum((best == 0) == first for _, first, best in trials)
    lo, hi = wilson(wins, len(trials))
    senior_won: dict[str, dict[bool, bool]] = {}
    for pid, first, best in trials:
        senior_won.setdefault(pid, {})[first] = (best == 0) == first
    both = [v for v in senior_won.values() if len(v) == 2]
    senior_both, junior_both = sum(all(v.values()) for v in both), sum(not any(v.values()) for v in both)
    decided = senior_both + junior_both
    return {"wins": wins, "trials": len(trials), "win_rate": round(wins / len(trials), 3) if trials else None,
            "ci95": [round(lo, 3), round(hi, 3)],
            "first_named_best": round(sum(best == 0 for _, _, best in trials) / len(trials), 3) if trials else None,
            "prompts_senior_both_orders": senior_both, "prompts_junior_both_orders": junior_both,
            "prompts_split_by_order": sum(v[True] != v[False] for v in both),
            # the order-debiased verdict (issue 16): only prompts whose two orders agree count
            "consistent_win_rate": round(senior_both / decided, 3) if decided else None,
            "consistent_ci95": [round(x, 3) for x in wilson(senior_both, decided)]}


__all__ = ["train_junior", "root_data", "judge_root", "judge_orders", "agreed", "train_senior", "revise_root", "train_revisor",
           "quality_check", "pairwise_tally", "wilson"]
