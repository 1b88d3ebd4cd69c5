"""Process group set-up and tear-down from the environment the launcher read.

How a multi-process run ends (``leave_distributed``), and why it does not simply return:
gloo runs every collective on worker threads of its own, and a worker, not the caller, drops
the last reference to the collective's tensors after ``wait()`` has returned. Dropping a
tensor that has a Python object needs the GIL. ``destroy_process_group`` does not stop those
workers while anything else still holds the group: device meshes do, and torch keeps meshes
in caches of its own (DTensor's sharding and topology caches) for the life of the process.
So when a rank goes straight from its last collective to interpreter shutdown, a worker can
still be waiting for the GIL once Python has begun to finalize; Python then ends that thread
with ``pthread_exit`` inside a C++ destructor, which is ``std::terminate``: SIGABRT,
"terminate called without an active exception", after every step was done (reproduced in
5 of 50 two-process runs on a loaded 2-core machine; gdb shows the stack
``~AsyncAllreduceWork -> decref_pyobject -> take_gil -> pthread_exit`` while the main
thread is in ``Py_FinalizeEx``). A barrier before the tear-down only makes that rarer.

A process that joined a process group therefore ends in ``exit_process``: it does what
interpreter shutdown would do for our files (joins non-daemon threads, runs the ``atexit``
handlers, flushes stdout and stderr) while Python is fully alive, then ends with
``os._exit``, which skips finalization, so no worker thread can be cut off inside a
destructor. Everything the run writes is closed before that point (metrics sinks,
checkpoints committed, W&B finished).
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
from typing import NoReturn

import torch
import torch.distributed as dist

from .env import ProcessEnv


def init_distributed(env: ProcessEnv, device: torch.device, *, timeout_s: int) -> None:
    """Join the job's default process group: NCCL on GPUs, gloo on CPUs.

    A single process (world size 1) gets no process group, so plain runs need no rendezvous.
    """
    if env.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _attempt_store(env, timeout)
    dist.init_process_group(
        backend=backend,
        init_method=None if store else f"tcp://{env.master_addr}:{env.master_port}",
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )


def _attempt_store(env: ProcessEnv, timeout: datetime.timedelta):
    """Under torchrun the elastic agent hosts the store, and it outlives worker restarts
    (``--max-restarts``). Keys of a dead attempt stay in it: restarted workers would read
    the old ranks' addresses and fail to connect. A prefix per attempt keeps them apart."""
    if not env.agent_store:
        return None
    base = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False,
                         timeout=timeout)
    return dist.PrefixStore(f"triforge/attempt_{env.restart_count}", base)


def leave_distributed(code: int, *, all_ranks_done: bool) -> int:
    """End this process's part in the job with exit status ``code``.

    Without a process group this just returns ``code``. Otherwise it destroys the groups
    and ends the process through ``exit_process`` (see the module docstring). With
    ``all_ranks_done`` (a finished or preempted run: every rank took the same decision) the
    ranks first meet in a barrier, so no rank tears down while a peer still talks to it; a
    rank that failed alone skips it rather than wait for peers that will not come.
    """
    if not dist.is_initialized():
        return code
    try:
        if all_ranks_done:
            dist.barrier()
        dist.destroy_process_group()
    except Exception as exc:  # a peer that died first: report it, keep our own status
        print(f"warning: process group tear-down failed: {exc}", file=sys.stderr)
        code = code or 1
    exit_process(code)


def exit_process(code: int) -> NoReturn:
    """Exit now with ``code``, doing first what interpreter shutdown does for user code, in
    its order: ``threading._shutdown`` runs threading's own exit hooks, which tell idle
    ``concurrent.futures`` pool workers (inductor's compile threads under trainer.compile)
    to finish, then joins every non-daemon thread; then the ``atexit`` functions. Joining
    the threads before those hooks waited forever on an idle pool worker."""
    threading._shutdown()
    atexit._run_exitfuncs()  # logging.shutdown, wandb, tempfile clean-up, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
