"""Package metadata. `pip install -e .[dev]` installs everything the tests need."""

from setuptools import find_packages, setup

setup(
    name="llm_jax",
    version="0.1.0",
    description="Build a Llama-family language model from scratch in JAX/Flax, raw text to aligned model",
    python_requires=">=3.10",
    packages=find_packages(include=["llm_jax", "llm_jax.*"]),
    include_package_data=True,
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "grain==0.2.18",
        "sentencepiece==0.2.3",
        "tensorflow-datasets==4.9.10",
        "array-record==0.8.6",
        "numpy>=2.0,<2.5",
        "pyyaml==6.0.3",
        "tqdm==4.70.1",
        "safetensors==0.8.0",
        "tensorboardX==2.6.5",
        "matplotlib==3.11.2",
        "scipy==1.17.1",  # the experiments' confidence intervals, Welch's test and power
        "gcsfs==2026.10.1",  # gs:// paths: etils.epath's Cloud Storage backend (llm_jax/storage.py)
    ],
    extras_require={
        # torch is pinned: an unpinned torch pulls several GB of CUDA packages on a CPU machine.
        "hf": ["torch==2.13.0", "transformers==5.23.0"],
        # trl: its DPO and reward-model losses are what the post-training tests compare with;
        # peft: it loads the LoRA adapters `export-hf --peft` writes, in the LoRA tests.
        # gcp-storage-emulator: the Cloud Storage API server the gs:// tests run on localhost.
        "dev": ["pytest==9.2.0", "pytest-timeout==2.4.0", "torch==2.13.0", "transformers==5.23.0",
                "trl==1.16.0", "gcp-storage-emulator==2026.7.19", "peft==0.21.2"],
        # libtpu, jax 0.10.2's own (jax[tpu] pins it): JAX on a TPU VM, and anywhere `llm-jax
        # plan --slice` compiling the step for a TPU topology with no TPU present.
        "tpu": ["libtpu==0.0.42.1"],
        # lm-evaluation-harness, for `python -m llm_jax.eval.lm_eval_main` (llm_jax.eval.harness).
        "eval": ["lm-eval==0.4.13"],
        # `llm-jax curate`: datatrove's filters and dedup (spacy: its English word tokenizer,
        # xxhash: its dedup hashes, orjson: its JSONL stages) and a trained toxicity classifier
        # (scikit-learn pinned to the version its pickled model loads cleanly with).
        "data": [
            "datatrove==0.10.1",
            "spacy==3.8.18",
            "xxhash==3.8.2",
            "orjson==3.13.0",
            "alt-profanity-check==1.9.1",
            "scikit-learn==1.9.1",
            "importlib_resources==7.1.0",  # tfds imports it to download and prepare a dataset
            "ray==2.60.0",  # curate.executor=ray
        ],
    },
    entry_points={"console_scripts": ["llm-jax=llm_jax.cli:main"]},
)
