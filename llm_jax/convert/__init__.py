"""Hugging Face Llama interop: config and weight mapping, import and export."""
