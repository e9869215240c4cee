"""Evaluation: perplexity and bits per byte, multiple choice, GSM8K, lm-evaluation-harness."""
