"""Pure units: no data files, no training; the pieces a model is made of, and what needs no model at all."""
