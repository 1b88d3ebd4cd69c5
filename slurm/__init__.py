"""SLURM jobs: the batch script template and ``triforge-submit`` / ``triforge-status``.

No training logic lives here. The script starts the same ``triforge.launcher.train`` as any
other launch, in one of two ways (``slurm.launch``):

- ``torchrun`` (default): one task per node runs ``torchrun``, which starts the node's
  processes and meets the other nodes in a c10d rendezvous on the first node. Use it on GPU
  clusters: it is the layout the PyTorch tooling expects (the script runs it with
  ``--max-restarts=0``: a failure ends the job, a preemption requeues it).
- ``srun``: one task per training process; the launcher reads ``SLURM_PROCID``,
  ``SLURM_NTASKS`` and ``SLURM_LOCALID`` itself. Use it where Slurm must place and bind each
  process (``--gpu-bind``, ``--cpu-bind``), or where torchrun cannot run.

Preemption: Slurm's notice (``--signal=USR1@N``, or ``scancel --signal=USR1``) makes the
run commit a checkpoint and exit 75; the script requeues the job itself, at most
``slurm.max_requeues`` times, and the requeued job resumes from that checkpoint.
"""
