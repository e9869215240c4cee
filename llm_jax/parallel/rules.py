"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

Parameters use `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`, `expert`;
activations use the `act_*` names, so the same dimension can be sharded differently in a weight
(FSDP shards `embed`) and in an activation (which is sharded over the batch instead).
`mesh.rules` in the config overrides entries, e.g. `mesh.rules="act_length:tensor,vocab:none"`.
"""

from __future__ import annotations

from llm_jax.config import ConfigError

MESH_AXES = ("data", "pipe", "fsdp", "context", "expert", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("act_batch", ("data", "fsdp", "expert")),  # the expert axis is data-parallel elsewhere
    ("act_length", "context"),  # context parallelism: each device a slice of the sequence
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("expert", "expert"),  # expert parallelism: each device holds its experts' weights
    ("layers", "pipe"),
    ("pipe_stage", "pipe"),
    ("opt_embed", ("fsdp", "data")),  # `embed` of the optimizer moments under optimizer.zero1
)


def parse_rule_overrides(text: str) -> dict[str, str | tuple[str, ...] | None]:
    """`"name:axis+axis,other:none"` -> {name: (axis, axis), other: None}."""
    overrides: dict[str, str | tuple[str, ...] | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, target = item.partition(":")
        if not sep:
            raise ConfigError(f"mesh.rules entry '{item}' must look like logical_name:mesh_axis")
        axes = tuple(a for a in target.split("+") if a and a.lower() != "none")
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ConfigError(f"mesh.rules entry '{item}' names unknown mesh axis {unknown[0]}; "
                              f"mesh axes are {', '.join(MESH_AXES)}")
        overrides[name] = None if not axes else axes[0] if len(axes) == 1 else axes
    return overrides


def axis_rules(overrides: str = "") -> Rules:
    """The default rules with `mesh.rules` applied on top."""
    rules = dict(DEFAULT_RULES)
    for name, target in parse_rule_overrides(overrides).items():
        if name not in rules:
            raise ConfigError(f"mesh.rules names unknown logical axis '{name}'; "
                              f"logical axes are {', '.join(rules)}")
        rules[name] = target
    return tuple(rules.items())
