"""Reference implementation of the subset of neuronx-distributed that training models use.

Unlike the real package, importing it pulls in nothing but torch: each submodule is imported on demand.
"""
