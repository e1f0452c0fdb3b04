"""The policy model: loading and building it (`loading.py`), LoRA adapters (`lora.py`), chosen-token
log-probs without a full fp32 log-softmax (`logprobs.py`), GGUF -> Hugging Face conversion (`convert.py`,
`uniapl convert gguf`)."""
