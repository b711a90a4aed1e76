"""The modules trained (or stepped) in this process: phases, variants and their options, precision, checkpoints."""
