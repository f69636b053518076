"""Conformance kit: backends, the rank launcher, checks and reports for generated training models."""
