"""Composite parallel modules (`neuronx_distributed.modules`)."""
