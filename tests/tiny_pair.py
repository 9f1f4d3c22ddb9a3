"""A user's own pair, made offline: two small random-weight models saved as local folders
with a real tokenizer (SmolLM2's 49,152 tokens, read from the packaged GGUF file).

``base/`` has no chat template (a base model); ``sft/`` has SmolLM2's (an instruct
model). The models are Phi-architecture causal LMs (its output layer has a bias, so
the stop token gets a chosen probability and rollouts end at varied lengths) with
different seeds, stop biases and logit scales, so that the pair differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

STOP = "<|im_end|>"


def smollm2_tokenizer(folder: Path) -> Path:
    """Save SmolLM2's tokenizer (with its chat template) into ``folder``, once."""
    if not (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        from canopy.models import get_spec, gguf_path

        gguf = gguf_path(get_spec("smollm2-135m-instruct"))
        tmp = folder.with_name(folder.name + ".tmp")
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
        tmp.rename(folder)
    return folder


def tiny_phi(folder: Path, tokenizer: Path, *, seed: int, stop_bias: float, scale: float,
             chat_template: bool, vocab: int | None = None) -> Path:
    """A 1-layer random Phi model over ``tokenizer``'s ids saved in ``folder`` with that
    tokenizer (without its chat template unless ``chat_template``); ``vocab`` rows of
    the output layer (default: the tokenizer's size)."""
    import torch
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    stop = tok.convert_tokens_to_ids(STOP)
    torch.manual_seed(seed)
    config = PhiConfig(vocab_size=vocab or len(tok), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=stop, pad_token_id=stop,
                       tie_word_embeddings=False)
    model = PhiForCausalLM(config).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
        model.lm_head.bias.zero_()
        model.lm_head.bias[stop] = stop_bias
    model.generation_config.eos_token_id = stop
    model.save_pretrained(folder)
    for path in Path(tokenizer).iterdir():
        if chat_template or path.name != "chat_template.jinja":
            shutil.copy(path, folder / path.name)
    return folder


def make_pair(root: Path, tokenizer: Path) -> tuple[Path, Path]:
    """``root/base`` (raw prompts) and ``root/sft`` (chat template)."""
    base = tiny_phi(root / "base", tokenizer, seed=0, stop_bias=6.0, scale=10.0,
                    chat_template=False)
    sft = tiny_phi(root / "sft", tokenizer, seed=1, stop_bias=6.5, scale=15.0,
                   chat_template=True)
    return base, sft
