"""Stage 08's tasks and wrapper: local copies score a known toy model exactly as computed by hand."""
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from speed_utils import assets, evaluate, mteb_tasks
from speed_utils.mteb_encoder import InstructedEncoder

LOCAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mteb_local"
needs_local = pytest.mark.skipif(not LOCAL.is_dir(), reason="../shared/data/mteb_local is not beside the project")


class BagOfWords:
    """A known toy model: hashed bag of words, 512 dimensions, L2-normalised. Not trained on anything."""

    def __init__(self, lookup: dict[str, int] | None = None):
        self.lookup = lookup  # an oracle: text -> class, embedded as a one-hot

    def embed(self, text: str) -> np.ndarray:
        v = np.zeros(512)
        if self.lookup is not None:
            v[self.lookup[text]] = 1.0
            return v
        for w in text.lower().split():
            v[zlib.crc32(w.encode()) % 512] += 1.0
        return v / (np.linalg.norm(v) or 1.0)

    def encode(self, texts, **kw):
        return np.stack([self.embed(t) for t in texts]).astype(np.float32)  # as real models return

    def get_embedding_dimension(self):
        return 512

    def parameters(self):
        return iter([])


CONSTANT_AT_MOST = {"Banking77Classification": 5.0, "PangLeePolarityClassification": 50.0}  # one class for every text: chance


def run(task, model, tmp_path, instructions=False):
    enc = InstructedEncoder(model, "toy/bag-of-words", "v0", instructions, 64)
    rows = evaluate.evaluate_model(enc, [task], tmp_path, 64)
    return rows[0]["score"], enc


def cos(a, b):
    """Cosine in float32, as mteb computes it; bag-of-words similarities tie often, and float64 would
    order some ties differently."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1, dtype=np.float32)


@needs_local
@pytest.mark.parametrize("name,limit", [("STS12", 400), ("STS13", None), ("STS14", 400), ("STS15", 400), ("SICK-R", 400)])
def test_sts_local_task_gives_the_spearman_of_cosine(name, limit, tmp_path):
    task = mteb_tasks.file_task(name, LOCAL, limit=limit, seed=3)
    task.load_data()
    d = task.dataset["test"]
    m = BagOfWords()
    want = 100 * spearmanr(cos(m.encode(d["sentence1"]), m.encode(d["sentence2"])), d["score"]).statistic
    got, _ = run(mteb_tasks.file_task(name, LOCAL, limit=limit, seed=3), m, tmp_path)
    assert got == pytest.approx(want, abs=0.1)  # ties among bag-of-words cosines may order differently in torch
    assert task.metadata.name == name and task.metadata.dataset["revision"].startswith("local-")
    if name == "STS13":
        assert len(d) == 1500  # the whole MTEB test set
    if name == "STS15":
        assert all(s == s for s in d["score"])  # unscored lines were skipped


@needs_local
def test_pair_classification_reports_max_ap_at_least_the_cosine_ap(tmp_path):
    task = mteb_tasks.file_task("MSRParaphraseCorpus", LOCAL, limit=300, seed=1)
    task.load_data()
    d = task.dataset["test"]
    m = BagOfWords()
    cos_ap = 100 * average_precision_score(d["labels"], cos(m.encode(d["sentence1"]), m.encode(d["sentence2"])))
    got, _ = run(mteb_tasks.file_task("MSRParaphraseCorpus", LOCAL, limit=300, seed=1), m, tmp_path)
    assert cos_ap - 0.01 <= got <= 100 and len(d) == 300 and set(d["labels"]) == {0, 1}


@pytest.mark.parametrize("name,limit,n_classes", [pytest.param("Banking77Classification", 200, 77, marks=needs_local),
                                                   ("PangLeePolarityClassification", None, 2)])
def test_classification_separates_an_oracle_from_a_constant(name, limit, n_classes, tmp_path):
    folder = LOCAL if name in mteb_tasks.LOCAL else assets.data_folder(mteb_tasks.PROXY_ASSET)
    task = mteb_tasks.file_task(name, folder, limit=limit)
    task.load_data()
    lookup = {t: lab for split in task.dataset.values() for t, lab in zip(split["text"], split["label"])}
    oracle, _ = run(mteb_tasks.file_task(name, folder, limit=limit), BagOfWords(lookup), tmp_path / "a")
    constant, _ = run(mteb_tasks.file_task(name, folder, limit=limit), BagOfWords({t: 0 for t in lookup}), tmp_path / "b")
    assert oracle == 100.0 and len(set(lookup.values())) == n_classes
    assert constant <= CONSTANT_AT_MOST[name]


def test_lee_proxy_task_from_the_gensim_wheel(tmp_path):
    folder = assets.data_folder("gensim-test-data")
    task = mteb_tasks.file_task("LeeDocSTS", folder)
    task.load_data()
    d = task.dataset["test"]
    assert len(d) == 1225 and 0 <= min(d["score"]) and max(d["score"]) <= 1
    m = BagOfWords()
    want = 100 * spearmanr(cos(m.encode(d["sentence1"]), m.encode(d["sentence2"])), d["score"]).statistic
    got, _ = run(mteb_tasks.file_task("LeeDocSTS", folder), m, tmp_path)
    assert got == pytest.approx(want, abs=0.1)


def test_instructions_go_on_queries_only_for_retrieval():
    enc = InstructedEncoder(BagOfWords(), "toy/bow", "v0", True)
    assert enc.format(["q"], "SciFact", "Retrieval", "query") == [
        "Instruct: Given a scientific claim, retrieve documents that support or refute the claim\nQuery: q"]
    assert enc.format(["d"], "SciFact", "Retrieval", "document") == ["d"]
    assert enc.format(["s"], "STS13", "STS", None) == ["Instruct: Retrieve semantically similar text.\nQuery: s"]
    assert enc.format(["x"], "SomeNewTask", "Clustering", None)[0].startswith("Instruct: Identify the topic")
    plain = InstructedEncoder(BagOfWords(), "toy/bow", "v0", False)
    assert plain.format(["s"], "STS13", "STS", None) == ["s"]


@needs_local
def test_wrapper_passes_instructions_to_the_model_during_mteb(tmp_path):
    _, enc = run(mteb_tasks.file_task("STS13", LOCAL, limit=20), BagOfWords(), tmp_path, instructions=True)
    assert enc.seen and all(text.startswith("Instruct: Retrieve semantically similar text.\nQuery: ")
                            for _, _, text in enc.seen)


@needs_local
@pytest.mark.slow
def test_minilm_reproduces_its_published_score_on_the_local_sts13(tmp_path):
    """all-MiniLM-L6-v2 as released, through our wrapper and the local task, gives its MTEB leaderboard
    score on STS13 (results/reference/mteb_published.json): the local copy and the metric are MTEB's."""
    import json

    from speed_utils.embed import encoder_embedder

    published = json.loads((Path(__file__).resolve().parents[1] / "results/reference/mteb_published.json").read_text())
    model = encoder_embedder(assets.st_folder("all-minilm-l6-v2", online=False))
    enc = InstructedEncoder(model, "sentence-transformers/all-MiniLM-L6-v2", "local", False, 64)
    rows = evaluate.evaluate_model(enc, [mteb_tasks.file_task("STS13", LOCAL)], tmp_path, 64)
    assert rows[0]["score"] == pytest.approx(published["scores"]["STS13"], abs=0.05)


@needs_local
def test_sts_intervals_come_from_mtebs_saved_pairs(tmp_path):
    """The point of each interval is mteb's own score, recomputed from the per-pair similarities mteb saved;
    the same model against itself differs by exactly 0; results cached without pairs are evaluated again."""
    tasks = [mteb_tasks.file_task(n, LOCAL, limit=120, seed=2) for n in ("STS12", "SICK-R", "MSRParaphraseCorpus")]
    folders, scores = {}, {}
    for label in ("a", "b"):
        enc = InstructedEncoder(BagOfWords(), f"toy/{label}", "v0", False, 64)
        folders[label] = tmp_path / label / "predictions"
        scores[label] = {r["task"]: r["score"] for r in evaluate.evaluate_model(enc, tasks, tmp_path / label, 64,
                                                                                  folders[label])}
    record = evaluate.sts_pair_record(tasks, folders)
    assert set(record["tasks"]) == {"STS12", "SICK-R"} and len(record["models"]["b"]["STS12"]) == 120
    rows = {(r["label"], r["task"]): r for r in evaluate.sts_intervals(record, reference="a")}
    for t in ("STS12", "SICK-R"):
        got = rows[("a", t)]
        assert got["value"] == pytest.approx(scores["a"][t], abs=0.01) and got["lo"] < got["value"] < got["hi"]
    assert ("a", "MSRParaphraseCorpus") not in rows  # intervals for STS tasks only
    avg = rows[("a", evaluate.STS_AVERAGE)]
    assert avg["value"] == pytest.approx((scores["a"]["STS12"] + scores["a"]["SICK-R"]) / 2, abs=0.01)
    same = rows[("b", f"{evaluate.STS_AVERAGE} - a")]
    assert (same["value"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)

    for f in folders["a"].iterdir():
        f.unlink()
    enc = InstructedEncoder(BagOfWords(), "toy/a", "v0", False, 64)
    evaluate.evaluate_model(enc, tasks, tmp_path / "a", 64, folders["a"])
    assert {s for s, *_ in enc.seen} == {"STS12", "SICK-R"}  # cached MSRP untouched; the STS pairs recomputed
    assert evaluate.prediction_file(folders["a"], tasks[0]).exists()
