"""DDP on 2 CPU processes (gloo): the runs are programs of their own (tests/scripts/, train.py)."""
