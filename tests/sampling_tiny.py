"""Tiny randomly initialised models and a word-level tokenizer for the sampling tests
(their one-thread setting is the autouse fixture in ``conftest.py``)."""

from __future__ import annotations

import torch

WORDS = ["<pad>", "<eos>", "<bos>"] + [chr(ord("a") + i) for i in range(13)]  # 16 ids
CHAT = ("{% for m in messages %}<bos> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}m {% endif %}")


def tiny_tokenizer(chat: bool = True):
    """Word-level tokenizer over :data:`WORDS` (pad 0, eos 1, bos 2), BOS prepended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                  bos_token="<bos>")
    if chat:
        tok.chat_template = CHAT
    return tok


def tiny_model(kind: str = "llama", vocab: int = 16, seed: int = 0, scale: float = 40.0,
               eos: int | list[int] = 1):
    """A 2-layer random causal LM (float32, eval). ``scale`` sharpens the logits."""
    torch.manual_seed(seed)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=256, bos_token_id=2, eos_token_id=eos,
                          pad_token_id=0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    elif kind == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig
        cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=8, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention"],
                               max_position_embeddings=256, bos_token_id=2,
                               eos_token_id=eos, pad_token_id=0)
        model = Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model = model.float().eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    model.generation_config.eos_token_id = eos
    return model
