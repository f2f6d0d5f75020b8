"""The model wrapper mteb evaluates (SPEED §4.1: E5-style instructions on queries), apart from
:mod:`speed_utils.evaluate` because importing mteb takes seconds (the stage's summary and the report read evaluate without it)."""
from __future__ import annotations

from mteb.models.abs_encoder import AbsEncoder

from .embed import query_text
from .mteb_tasks import ASYMMETRIC, instruction_for


class InstructedEncoder(AbsEncoder):
    """A sentence-transformers model for mteb, adding E5-style instructions.

    With ``use_instructions``, texts become ``Instruct: {task instruction}\\nQuery: {text}``, except
    documents of retrieval and reranking tasks, which stay bare. Embeddings are L2-normalised.
    """

    def __init__(self, model, name: str, revision: str, use_instructions: bool, batch_size: int = 32):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.model = model
        self.use_instructions = use_instructions
        self.batch_size = batch_size
        self.seen: list[tuple[str, str | None, str]] = []  # (task, prompt type, first text), for tests
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": name, "revision": revision, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": use_instructions, "framework": ["Sentence Transformers", "PyTorch"],
            "embed_dim": model.get_embedding_dimension(),
            "n_parameters": sum(p.numel() for p in model.parameters())})

    def format(self, texts: list[str], task_name: str, task_type: str, prompt_type) -> list[str]:
        is_doc = prompt_type is not None and getattr(prompt_type, "value", prompt_type) == "document"
        if not self.use_instructions or (task_type in ASYMMETRIC and is_doc):
            return texts
        inst = instruction_for(task_name, task_type)
        return [query_text(inst, t) for t in texts]

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [t for batch in inputs for t in batch["text"]]
        texts = self.format(texts, task_metadata.name, task_metadata.type, prompt_type)
        if texts:
            self.seen.append((task_metadata.name, getattr(prompt_type, "value", prompt_type), texts[0]))
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
