"""Chat templates (speed_utils.chat): a base without one (LLaMA-3-8B) trains and generates with one template."""
import json
import shutil

import pytest

from speed_utils import chat
from speed_utils.config import JuniorCfg, LoraCfg
from speed_utils.generate import GenRequest, Generator
from speed_utils.train import sft


@pytest.fixture(scope="module")
def no_template_lm(tiny_lm, tmp_path_factory):
    """The tiny Llama with its tokenizer's chat template taken out, as a base model's tokenizer ships."""
    out = tmp_path_factory.mktemp("base") / "lm"
    shutil.copytree(tiny_lm, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(out)


def test_a_tokenizer_without_a_template_gets_the_default_and_keeps_its_own_otherwise(no_template_lm, tiny_lm):
    from transformers import AutoTokenizer

    assert not AutoTokenizer.from_pretrained(no_template_lm).chat_template  # the case this module is for
    tok = chat.load_tokenizer(no_template_lm)
    assert tok.chat_template == chat.DEFAULT_TEMPLATE and tok.pad_token is not None
    text = chat.user_turn(tok, "Write one example.")
    assert text == f"{tok.bos_token or ''}<|im_start|>user\nWrite one example.{tok.eos_token}\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]  # how every engine tokenizes it: one BOS, if any
    assert ids.count(tok.bos_token_id) == (text.count(tok.bos_token) if tok.bos_token else 0)
    own = chat.load_tokenizer(tiny_lm)
    assert own.chat_template == AutoTokenizer.from_pretrained(tiny_lm).chat_template != chat.DEFAULT_TEMPLATE


@pytest.mark.slow
def test_training_records_its_template_and_generators_render_with_it(no_template_lm, tmp_path):
    rows = [{"prompt": f"Item {i}?", "completion": '{"label": "x"}'} for i in range(4)]
    res = sft(no_template_lm, rows, tmp_path / "junior", JuniorCfg(lr=1e-3, batch_size=4, epochs=1,
              lora=LoraCfg(r=4, alpha=8, dropout=0.0)), max_length=64)
    recorded = tmp_path / "junior" / chat.TEMPLATE_FILE
    assert res.steps == 1 and recorded.read_text() == chat.DEFAULT_TEMPLATE
    tok = chat.load_tokenizer(no_template_lm)
    trained_on = tok.apply_chat_template([{"role": "user", "content": "Item 0?"},
                                          {"role": "assistant", "content": '{"label": "x"}'}], tokenize=False)
    with Generator(no_template_lm, adapter=str(tmp_path / "junior"), backend="transformers") as gen:
        prompt = gen.chat_text("Item 0?")
        assert trained_on.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")
        assert gen.requests([GenRequest("Item 0?")])[0]["prompt"] == prompt
    # an adapter's recorded template wins over the base's, so a changed default never splits training and sampling
    recorded.write_text(chat.DEFAULT_TEMPLATE.replace("<|im_start|>", "<<turn>>"))
    assert "<<turn>>user" in chat.user_turn(chat.load_tokenizer(no_template_lm, tmp_path / "junior"), "q")
