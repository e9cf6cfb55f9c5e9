"""fastad on several processes and machines, on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Every function takes ``group=None`` (the default process group) and must be called by every rank of
the group, in the same order. Results equal the single-process ops on the concatenation of the
shards (shards numbered in rank order). See the README's "Scale out" section.

- :func:`knn`: exact k-NN against a bank sharded across ranks (or queries split, shards on a ring).
- :func:`coreset`: greedy k-center over the union of the shards (exact: the same indices as
  :func:`fastad.ops.coreset` on the concatenated bank), or the composable approximation.
- :func:`mutual_scores`: MuSc's mutual scoring with the images split across ranks (a ring of blocks).

Failures: a rank that raises inside one of these calls, dies, or does not arrive makes every other
rank raise :class:`DistributedError` naming it, within :func:`get_timeout` seconds (set with
:func:`set_timeout` or ``FASTAD_DISTRIBUTED_TIMEOUT``); a rank that died (``os._exit``, SIGKILL, a
lost machine) is told apart from a live but late one by a heartbeat counter every rank keeps in the
c10d store (the message says "DIED" or "alive"); arguments that differ between ranks raise a
``ValueError`` on every rank before any work. With an NCCL group, CPU tensors (counts, keys) are moved
to the rank's current CUDA device for the exchange; the roll calls run on a gloo group.
"""
from ._comm import DistributedError, comm_stats, get_timeout, set_timeout
from .coreset import coreset
from .knn import knn
from .musc import lnamd_mutual_scores, mutual_scores
from .rows import all_rows, is_main_process, rows_by_index, shard, shard_range

__all__ = ["knn", "coreset", "mutual_scores", "lnamd_mutual_scores", "all_rows", "rows_by_index", "shard", "shard_range", "is_main_process", "DistributedError", "comm_stats", "get_timeout", "set_timeout"]
