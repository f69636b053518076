"""Templates of NXS028 (optional-input-guard), filled by `scaffold.rules.templates`."""


def refuse_optional_input(self, condition, message):
    """The check the base model's __init__ gets for a config flag under which it builds an input the
    generated model was read without."""
    if {condition}:
        raise NotImplementedError({message})
