"""A judge that yields pairs (issue 31, item 4): the teacher's preference read from its token probabilities,
averaged over every position each candidate is shown in.

SPEED's judge (§3.2.3) names the best and worst of k outputs once. A small judge names the first
output it is shown far more often than chance (82% of judgements in the reference run), so a single
order records position, and the two-order judge of issue 16 kept 2 lists of 5. Here every list is
shown in its k rotations (each candidate once at each position). From each judgement the probability
the judge gives to every shown index as "best" is read at the token that writes the index (OpenAI's
``top_logprobs``, which llama.cpp's server also returns), mapped back to the candidates, and averaged
over the rotations. A judge that picks by position gives every candidate the same average; one that
prefers a candidate wherever it stands gives it the most. A pair (best, worst by that average) is kept
where the averaged margin reaches ``senior.judge_margin``.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from .files import write_jsonl
from .profiles import Config
from .prompts import Prompt, judge_prompt
from .runs import RunPaths
from .schema import parse_judgement, response_format
from .stats import wilson
from .teacher import Reply, Teacher
from .teacher_data import Deterministic, ask_teacher

JUDGE_MAX_TOKENS = 400
TOP_LOGPROBS = 10  # alternatives per token: enough to hold every index of a list of up to 10
REASON_CHARS = 120
_BEST_KEY = re.compile(r'"best"\s*:\s*$')
_INDEX = re.compile(r"^\s*(\d+)")


def calibrated_schema(k: int) -> dict:
    """Best first, so its index is written before any reason can talk the judge into one."""
    index = {"type": "integer", "enum": list(range(k))}
    return {"type": "object", "required": ["best", "worst", "reason"], "additionalProperties": False,
            "properties": {"best": index, "worst": index, "reason": {"type": "string", "maxLength": REASON_CHARS}}}


def rotations(k: int) -> list[list[int]]:
    """The k cyclic shifts of a list: ``perm[shown position] = candidate``; each candidate once at each position."""
    return [[(shift + pos) % k for pos in range(k)] for shift in range(k)]


def best_distribution(reply: Reply, k: int) -> list[float] | None:
    """The judge's probability for each shown index as "best", renormalised over the indices 0..k-1 among
    the alternatives of the token that writes it; None where the reply has no such token."""
    text = ""
    for tok in reply.logprobs or []:
        if _BEST_KEY.search(text) and _INDEX.match(tok["token"]):
            mass = [0.0] * k
            for alt, logprob in tok["top"]:
                m = _INDEX.match(alt)
                if m and int(m.group(1)) < k and alt.strip() == m.group(1):
                    mass[int(m.group(1))] += math.exp(logprob)
            total = sum(mass)
            return [p / total for p in mass] if total > 0 else None
        text += tok["token"]
    return None


def preference(judged: Sequence[tuple[list[int], list[float]]], k: int) -> list[float]:
    """Each candidate's probability of being named best, averaged over the rotations it was judged in."""
    total = [0.0] * k
    for perm, dist in judged:
        for pos, cand in enumerate(perm):
            total[cand] += dist[pos]
    return [t / len(judged) for t in total]


def pick(pref: Sequence[float], margin: float) -> tuple[int, int, float] | None:
    """(best, worst, margin) where the best candidate's average exceeds the worst's by at least ``margin``
    (ties go to the lower index, so the pick is deterministic); None where it does not."""
    best = max(range(len(pref)), key=lambda i: (pref[i], -i))
    worst = min(range(len(pref)), key=lambda i: (pref[i], i))
    gap = pref[best] - pref[worst]
    return (best, worst, gap) if best != worst and gap >= margin and gap > 0 else None


def calibrated_root(cfg: Config, run: RunPaths, teacher: Teacher, root: list[dict]) -> dict:
    """Stage 04's judge with ``senior.judge: calibrated``: every list in its k rotations, the preference
    read from token probabilities and averaged, a pair kept where the margin clears ``senior.judge_margin``."""
    k, margin = cfg.senior.k_samples, cfg.senior.judge_margin
    fmt = response_format("judgement", calibrated_schema(k)) if cfg.teacher.structured_output else None
    prompts, shown = [], {}
    for r in root:
        for shift, perm in enumerate(rotations(k)):
            pid = f"judge-rot{shift}-{r['id']}"
            prompts.append(Prompt(id=pid, kind="judge", task_type=r["task_type"], task=r["task"], topic=r["topic"],
                                  text=judge_prompt(r["prompt"], [r["outputs"][i] for i in perm])))
            shown[pid] = (r["id"], perm)
    kept, rejects = ask_teacher(teacher, "judge", prompts, Deterministic(JUDGE_MAX_TOKENS), cfg.run.seed,
                                "04 teacher judges (rotations)", parse=lambda p, r: parse_judgement(r.content, k),
                                schema=lambda p: fmt, top_logprobs=TOP_LOGPROBS)
    judged: dict[str, list[tuple[list[int], list[float]]]] = {}
    reasons: dict[str, dict[int, str]] = {}  # list -> output -> the reason of a judgement that named it best
    no_probs = 0
    for p, reply, parsed in kept:
        rid, perm = shown[p.id]
        dist = best_distribution(reply, k)
        if dist is None:
            no_probs += 1
            continue
        judged.setdefault(rid, []).append((perm, dist))
        reasons.setdefault(rid, {}).setdefault(perm[parsed.value["best"]], str(parsed.value.get("reason", "")))
    prefs, margins, firsts, same = [], [], [], 0
    complete = {rid: js for rid, js in judged.items() if len(js) == k}
    for row in root:
        js = complete.get(row["id"])
        if js is None:
            continue
        pref = preference(js, k)
        tops = {perm[max(range(k), key=lambda i: d[i])] for perm, d in js}
        same += len(tops) == 1
        firsts += [d[0] for _, d in js]
        got = pick(pref, margin)
        margins.append(max(pref) - min(pref))
        if got is not None:
            best, worst, gap = got
            prefs.append({"id": row["id"], "task_type": row["task_type"], "prompt": row["prompt"],
                          "chosen": row["outputs"][best], "rejected": row["outputs"][worst], "best": best,
                          "worst": worst, "margin": round(gap, 4), "preference": [round(x, 4) for x in pref],
                          "reason": reasons.get(row["id"], {}).get(best, ""), "judge": "calibrated", "rotations": k})
    write_jsonl(run.file("prefs"), prefs)
    write_jsonl(run.file("prefs_rejects"), rejects)
    n = len(complete)
    return {"judge": "calibrated", "lists": len(root), "judgements": len(prompts), "rotations": k, "pairs": len(prefs),
            "pairs_share": round(len(prefs) / len(root), 3) if root else None, "margin_threshold": margin,
            "rejected": len(rejects), "no_token_probabilities": no_probs,
            "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
            "lists_judged_in_every_rotation": n,
            # the judge's agreement with itself: its most likely best is the same candidate in every rotation
            "self_agreement": round(same / n, 3) if n else None,
            "self_agreement_ci95": [round(x, 3) for x in wilson(same, n)],
            "chance_self_agreement": round(k ** (1 - k), 3),
            # position bias: the probability the judge put on the first shown output (1/k: none)
            "first_shown_mass": round(sum(firsts) / len(firsts), 3) if firsts else None,
            "mean_margin": round(sum(margins) / len(margins), 3) if margins else None}


__all__ = ["calibrated_root", "calibrated_schema", "rotations", "best_distribution", "preference", "pick"]
