"""Generation with a KV cache: sampling, batched decoding, tokenizers and chat prompts."""
