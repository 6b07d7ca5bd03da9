"""Mutation checks: the fixed mutant set (fixed.py, run by `python -m
tools.mutants`) and the full cosmic-ray run (tools/mutants/full.py)."""
