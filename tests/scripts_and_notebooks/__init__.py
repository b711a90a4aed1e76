"""The notebooks, and the scripts in benchmarks/."""
