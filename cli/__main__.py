"""`python -m llamatorch.cli ...` (and `torchrun --nproc-per-node N -m llamatorch.cli ...`)."""

from llamatorch.cli.app import main

main()
