"""One model over several processes with torch.distributed (torchrun, or `--tp N` / `--dp N`).

- runtime.py: the process groups (gloo on CPUs, NCCL on GPUs) and the forward's collectives;
- shard.py: which slice of each tensor a rank loads (tensor parallelism);
- tensor_parallel.py: the all-reduce after row-parallel products, the vocabulary all-gather;
- remote.py: rank 0 leads (runs the command), the others repeat its engine calls;
- data_parallel.py: perplexity with the chunks shared out, one model copy per rank;
- launch.py: spawning the ranks, and ending the run when one of them dies.
"""
