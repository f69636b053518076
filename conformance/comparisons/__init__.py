"""How checks judge what they measured: outputs and gradients against transformers, gradient
consolidation, diagnoses of a wrong forward or gradient, state dicts and adapters, and the error plots."""
