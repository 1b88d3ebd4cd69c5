"""The job's device meshes: one world mesh over ``MESH_DIMS`` and a mesh per role.

Built once by the launcher (``build_meshes``) and handed down as arguments: code that
needs a group receives the role mesh it needs, never a module global.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .dims import MESH_DIMS, ROLE_DIMS, ParallelDims


@dataclass(frozen=True)
class RoleMeshes:
    world: DeviceMesh  # every MESH_DIMS dimension, sizes of 1 included
    dp: DeviceMesh  # ranks that read different data
    fsdp: DeviceMesh  # dense FSDP: 1-D dp_shard x cp, or 2-D (dp_replicate, that) for HSDP
    loss: DeviceMesh  # dp x cp: where loss sums and target counts add up
    ep: DeviceMesh  # expert parallelism
    expert_fsdp: DeviceMesh  # experts' FSDP shards
    pp: DeviceMesh
    tp: DeviceMesh
    cp: DeviceMesh


def build_meshes(dims: ParallelDims, device_type: str) -> RoleMeshes:
    """Every mesh of the layout ``dims``; all ranks call this together (it creates groups)."""
    world = init_device_mesh(device_type, tuple(dims.mesh_shape().values()),
                             mesh_dim_names=MESH_DIMS)
    roles = {role: _flatten(world, role, names) for role, names in ROLE_DIMS.items()}
    if dims.dp_replicate > 1:  # HSDP: replicate across groups, shard within
        roles["fsdp"] = DeviceMesh._concatenate([world["dp_replicate"], roles["fsdp"]])
    return RoleMeshes(world=world, pp=world["pp"], tp=world["tp"], cp=world["cp"], **roles)


def _flatten(world: DeviceMesh, role: str, names: tuple[str, ...]) -> DeviceMesh:
    return world[names[0]] if len(names) == 1 else world[names]._flatten(mesh_dim_name=role)
