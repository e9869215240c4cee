"""Where inference puts a checkpoint: a mesh over every device of every process, and each
parameter in its shards on it, so that no model has to fit one device or one host.

The mesh comes from `mesh.*` settings given on the command line (default: fsdp over all
devices), not from the checkpoint's config: a model trained on one slice is often sampled or
evaluated on another.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm_jax.config import Config, ConfigError, from_dict, parse_overrides
from llm_jax.model.heads import init_train_params
from llm_jax.parallel.mesh import make_mesh, mesh_shape
from llm_jax.parallel.rules import Rules, axis_rules
from llm_jax.parallel.sharding import batch_sharding, logical_to_shardings


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: Mesh
    rules: Rules

    @property
    def rows(self) -> NamedSharding:
        """[batch, length] inputs, split over the data-parallel axes."""
        return batch_sharding(self.mesh, self.rules)

    @property
    def row_values(self) -> NamedSharding:
        """[batch] inputs, split as the rows are."""
        return NamedSharding(self.mesh, PartitionSpec(self.rows.spec[0]))

    @property
    def batch_multiple(self) -> int:
        """Batches are padded to a multiple of this: the devices the batch axis is split over."""
        axes = self.rows.spec[0] if self.rows.spec else None
        axes = (axes,) if isinstance(axes, str) else axes or ()
        return math.prod(self.mesh.shape[axis] for axis in axes)


def inference_mesh_overrides(overrides: Sequence[str]) -> Config:
    """A default config carrying only the given `mesh.*` settings; other keys are refused
    (the model is the checkpoint's and cannot change)."""
    nested = parse_overrides(overrides)
    others = sorted(set(nested) - {"mesh"})
    if others:
        raise ConfigError(f"only mesh.* settings can be given here, not {others[0]}.*: the "
                          "model and its settings are the checkpoint's")
    return from_dict(nested)


def place(config: Config, overrides: Sequence[str] = ()) -> tuple[Config, Placement]:
    """(the checkpoint's config with the inference mesh, that mesh and its rules)."""
    mesh_config = inference_mesh_overrides(overrides).mesh
    sizes = mesh_shape(mesh_config, jax.device_count())
    if sizes["pipe"] != 1:
        raise ConfigError(f"mesh.pipe={mesh_config.pipe}: generation and scoring run no "
                          "pipeline schedule; use mesh.data, mesh.fsdp and mesh.tensor")
    # The train batch is not ours: size it so that only the model's divisibility is checked.
    train = dataclasses.replace(config.train,
                                batch_size=sizes["data"] * sizes["fsdp"] * sizes["expert"],
                                microbatches=1)
    config = dataclasses.replace(config, mesh=mesh_config, train=train)
    return config, Placement(make_mesh(config), axis_rules(mesh_config.rules))


def param_shardings(config: Config, placement: Placement) -> Any:
    """Each parameter's `NamedSharding` from its logical axes (as training derives them)."""
    boxed = jax.eval_shape(lambda: init_train_params(config, jax.random.key(0)))
    return logical_to_shardings(boxed, placement.mesh, placement.rules)

