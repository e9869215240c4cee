"""Inference on a mesh across processes: 2 processes x 4 devices (`llm-jax launch`, gloo
collectives) give what 1 process x 8 devices gives, for `generate`, `eval` and `export-hf`;
only process 0 prints; the lm-eval adapter's scores do not depend on how the parameters are
sharded (one process, sharded vs unsharded: lm-eval's own command line under several
processes would have each rank print its own table)."""

import io
import json
import random

import jax
import numpy as np
import pytest

from checkpoint_factory import WORDS, imported_checkpoint

from llm_jax.cli import main
from llm_jax.eval.encoding import encode_pair
from llm_jax.eval.loglikelihood import Scorer
from llm_jax.infer.loading import load_model
from llm_jax.parallel.launch import launch

TWO_HOSTS = dict(processes=2, devices=4, timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return imported_checkpoint(tmp_path_factory.mktemp("mp"))[0]


def launched(argv: list[str]) -> list[str]:
    """Process 0's lines of a 2 x 4 launch, after checking that process 1 printed none of
    them (beyond start-up lines both print, as gloo's)."""
    out = io.StringIO()
    assert launch(argv, **TWO_HOSTS, out=out) == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    mine = [line.removeprefix("[process 0] ") for line in lines
            if line.startswith("[process 0] ")]
    others = {line.removeprefix("[process 1] ") for line in lines
              if line.startswith("[process 1] ")}
    printed = [line for line in mine if line in others and not line.startswith("[Gloo]")]
    assert not printed, printed
    return [line for line in mine if not line.startswith("[Gloo]")]


def json_of(lines: list[str]) -> dict:
    start = lines.index("{")
    return json.loads("\n".join(lines[start:lines.index("}", start) + 1]))


def test_generate_is_token_identical_across_processes(ckpt, capsys):
    argv = ["generate", "--checkpoint", str(ckpt), "--prompt", "w5 w9 w33", "--prompt", "w7",
            "--max-new-tokens", "12"]
    assert main(argv) == 0  # 1 process x 8 devices, fsdp=8
    single = capsys.readouterr().out.splitlines()
    assert len(single) == 4 and len(single[1].split()) > 3
    assert launched(argv + ["mesh.data=2", "mesh.fsdp=4"])[-4:] == single


def test_eval_numbers_equal_across_processes(ckpt, tmp_path, capsys):
    rng = random.Random(0)
    (tmp_path / "doc.txt").write_text(" ".join(rng.choice(WORDS[3:]) for _ in range(300)))
    (tmp_path / "mc.jsonl").write_text("".join(
        json.dumps({"query": f"w{3 + i} w{9 + i}", "choices": [f"w{i + 20}", f"w{i + 40} w5"],
                    "gold": i % 2}) + "\n" for i in range(6)))
    runs = [["--data", str(tmp_path / "doc.txt"), "--window", "64", "--batch-size", "4"],
            ["--task", "multiple_choice", "--data", str(tmp_path / "mc.jsonl")]]
    for args in runs:
        argv = ["eval", "--checkpoint", str(ckpt), *args]
        assert main(argv) == 0
        single = json.loads(capsys.readouterr().out)
        several = json_of(launched(argv))
        assert several.keys() == single.keys()
        for key, value in single.items():
            if isinstance(value, float):
                assert several[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            else:
                assert several[key] == value, key
    assert single["examples"] == 6


def test_export_is_byte_identical_across_processes(ckpt, tmp_path):
    assert main(["export-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "one")]) == 0
    lines = launched(["export-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "two"),
                      "mesh.data=2", "mesh.fsdp=4"])
    assert sum(line.startswith("exported ") for line in lines) == 1
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    assert "model.safetensors" in one and one == two


def test_parameters_are_sharded_over_the_mesh_and_never_whole_on_one_device(ckpt):
    model = load_model(ckpt, ["mesh.data=2", "mesh.fsdp=4"])
    embedding = model.params["embed"]["embedding"]
    assert dict(model.placement.mesh.shape) == {"data": 2, "pipe": 1, "fsdp": 4, "context": 1,
                                                "expert": 1, "tensor": 1}
    assert {shard.data.shape for shard in embedding.addressable_shards} == {(101, 16)}
    assert len(embedding.sharding.device_set) == 8


def test_mesh_settings_are_checked(ckpt, capsys):
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "w5", "model.d_model=8"]) == 2
    assert "only mesh.* settings" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "x", "mesh.fsdp=3"]) == 2
    assert "mesh.fsdp=3" in capsys.readouterr().err


def test_lm_eval_loglikelihoods_do_not_depend_on_the_sharding(ckpt):
    pytest.importorskip("lm_eval", reason="lm-eval is the [eval] extra: pip install -e .[eval]")
    from lm_eval.api.instance import Instance

    from llm_jax.eval.harness import LlmJaxLM

    requests = [Instance("loglikelihood", {}, (f"w{3 + i} w7", f" w{10 + i} w4"), i)
                for i in range(5)]
    sharded = LlmJaxLM(str(ckpt), batch_size=4, **{"mesh.data": 2, "mesh.fsdp": 4})
    assert len(jax.tree.leaves(sharded.model.params)[0].sharding.device_set) == 8
    whole = Scorer(sharded.model.config.model, jax.device_get(sharded.model.params), batch_size=4)
    expected = whole.score([encode_pair(sharded.tokenizer, *r.args) for r in requests])
    ours = sharded.loglikelihood(requests)
    np.testing.assert_allclose([s for s, _ in ours], [s.logprob for s in expected], rtol=1e-6)
    assert [g for _, g in ours] == [s.is_greedy for s in expected]
