"""train.py and evaluate.py as a user runs them: flags, presets through the command line, errors, runs, resumes."""
