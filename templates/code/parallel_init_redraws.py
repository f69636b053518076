"""Templates of NXS015 (parallel-init-redraws), filled by `scaffold.rules.templates`; the helpers they call
are inserted whole from templates/definitions/parallel_redraws.py."""

from .parallel_redraws import full_parameter, full_weights


def redraw_layers(layer, statement):
    """A statement of `_init_weights` that re-draws a tensor-parallel layer it names (`init_weight(module.Wo,
    std)`), run on the layer's full weights (the rule passes every layer the statement names)."""
    with full_weights({layer}):
        {statement}  # noqa: B018 (a statement placeholder)


def redraw_parameter(parameter, body):
    """The body of a `named_parameters()` loop's branch that re-draws the parameter it names (`parameter`,
    renamed to the loop's), on the parameter's full tensor."""
    with full_parameter(parameter) as parameter:
        {body}  # noqa: B018 (a statement placeholder)
    return parameter


def init_parts(module, parts, statement):
    """A statement of `_init_weights` that initialised the source's fused linear, run on each layer the
    generated module holds in its place (the split parts, or the layer the rules fused them into again):
    each part is drawn as the whole source linear was, on its full weights."""
    for part in {parts}:
        if hasattr({module}, part):
            with full_weights(getattr({module}, part)):
                {statement}  # noqa: B018 (a statement placeholder)


def part_of(module, part):
    """What stands for `<module>.<source linear>` in a statement `init_parts` repeats."""
    return getattr({module}, part)
