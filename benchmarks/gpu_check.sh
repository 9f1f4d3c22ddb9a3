#!/usr/bin/env bash
# GPU check of the built-in engine and the scorer (at most about 8 minutes).
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine, from the repository root
#
# Needs: the project's environment with a CUDA build of torch (PYTHON, default
# .venv/bin/python, else python). No network: the model is a randomly initialised
# Llama-style model of about 1.1B parameters (TinyLlama's shape) built from a config on
# the spot, with a word-level tokenizer; vLLM is not used. Steps:
#   1. build the model (saved under $WORK, default a temporary directory);
#   2. the engine tests on the GPU (CANOPY_TEST_DEVICE=cuda: device loop vs CPU loop,
#      scorer on the GPU) plus the fast runtime/sampling/score tests;
#   3. benchmarks/bench_engines.py with that model on cuda: tokens/s of the built-in
#      engine and of generate (both with exact capture), the scorer's time as a fraction
#      of generation time.
# Prints the figures; nothing is written outside $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
WORK=${WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CANOPY_CACHE="$WORK/cache" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', ok, torch.cuda.get_device_name(0) if ok else ''); sys.exit(0 if ok else 'no CUDA device: this check needs one')"

echo "== 1. random ~1.1B Llama-style model -> $WORK/llama-1b"
timeout 120 "$PY" - "$WORK/llama-1b" <<'PYEOF'
import sys, time
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out, start = sys.argv[1], time.time()
vocab = 32000
cfg = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=5632,
                  num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                  max_position_embeddings=2048, bos_token_id=2, eos_token_id=1,
                  pad_token_id=0, tie_word_embeddings=False)
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg).float().eval()
model.generation_config.eos_token_id = 1
model.save_pretrained(out)
words = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
words.update({f"w{i}": i for i in range(4, vocab)})
core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                        bos_token="<bos>", unk_token="<unk>").save_pretrained(out)
n = sum(p.numel() for p in model.parameters())
print(f"built {n / 1e9:.2f}B parameters in {time.time() - start:.0f} s")
PYEOF

echo "== 2. engine tests on cuda"
CANOPY_TEST_DEVICE=cuda timeout 180 "$PY" -m pytest -q -m "not integration" \
    tests/test_runtime.py tests/test_score.py tests/test_sampling.py -p no:cacheprovider

echo "== 3. bench_engines.py on cuda (float32, then bfloat16)"
timeout 150 "$PY" benchmarks/bench_engines.py --model "$WORK/llama-1b" --device cuda \
    --prompts 4 --rollouts 16 --tokens 256 --top-k 100 --repeats 2 --score-batch 16
timeout 90 "$PY" benchmarks/bench_engines.py --model "$WORK/llama-1b" --device cuda \
    --dtype bfloat16 --prompts 4 --rollouts 16 --tokens 256 --top-k 100 --repeats 1
echo "gpu_check: done in $(( $(date +%s) - START )) s"
