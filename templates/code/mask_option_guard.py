"""Templates of NXS014 (mask-option-guard), filled by `scaffold.rules.templates`."""


def refuse_mask_option(self, condition, message):
    """The check the base model's __init__ gets for a config switch that sets a mask option."""
    if {condition}:
        raise NotImplementedError({message})
