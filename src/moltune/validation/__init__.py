"""Validation framework: red-flag monitors, diagnosis, overfitting, run comparison, controls.

Independent of the models it judges: it works on logged metrics, callbacks and checkpoints.
"""
