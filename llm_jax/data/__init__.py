"""The data stage: raw text -> curated corpus -> tokenizer -> token batches.

    sources.py        where text comes from (files, JSONL, TFDS, the stdlib corpus)
    stdlib_corpus.py  the built-in offline corpus: the Python standard library
    curate.py         `llm-jax curate`: datatrove stages, resumable, with report.json
    curate_steps.py   our datatrove steps (reader, tallies, kind routing, shard writer)
    filters.py        the published filters by name; toxicity.py, the trained classifier
    curate_report.py  report.json from datatrove's per-task stats
    corpus.py         the curated corpus on disk (a TFDS dataset of ArrayRecord shards)
    tokenizer.py      `llm-jax tokenizer`: SentencePiece BPE, wrapper, Hugging Face export
    pretokenize.py    the corpus as token ids, for large runs
    pipeline.py       grain batches for the train step (`make_batch_iterator`)

Post-training data (SFT, DPO, reward model, PPO):

    records.py        JSONL records in, and the count of every one dropped (and why)
    chat_format.py    chat templates (ChatML, Llama 3, none) -> token ids and loss weights
    instructions.py   messages / Alpaca / seed tasks / prompt-completion records -> conversations
    preference.py     {prompt, chosen, rejected} and HH-RLHF dialogues -> preference pairs
    post_pipeline.py  grain batches of packed SFT rows, preference rows and prompt indices

Curation needs the `[data]` extra (datatrove and friends); reading a corpus, the tokenizer and
the pipeline need only the base install.
"""
