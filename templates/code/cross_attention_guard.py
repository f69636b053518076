"""Templates of NXS017 (cross-attention-guard), filled by `scaffold.rules.templates`."""


def refuse_cross_attention(self, condition, message):
    """The check a constructor gets for the config switch that built cross-attention modules."""
    if {condition}:
        raise NotImplementedError({message})
