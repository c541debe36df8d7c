"""Experiments: the registry of experiment IDs (section/variant) and the table reproduction."""
