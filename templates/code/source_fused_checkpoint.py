"""Templates of NXS027 (source-fused-checkpoint), filled by `scaffold.rules.templates`; the spec it
names is inserted whole from templates/definitions/source_fused_linears.py."""

from .source_fused_linears import with_source_fused_linear
from .transposed_linears import with_transposed_source_fused_linear


def source_fused_spec(self, source, parts, sizes, bias):
    """The constructor's statement that maps the checkpoint's fused linear `source` onto its parts."""
    # transformers' checkpoint holds these projections as one linear, split along its output features:
    # its tensor is split into them when loading and joined back when saving.
    self.specs = with_source_fused_linear(self.specs, {source}, {parts}, {sizes}, bias={bias})


def source_fused_interleaved_spec(self, source, parts, sizes, bias, groups):
    """The same for a linear whose parts are interleaved in `groups` groups (per head `[q k v]`)."""
    # transformers' checkpoint holds these projections as one linear whose output features interleave
    # them group by group: its tensor is de-interleaved into them when loading and interleaved again
    # when saving.
    self.specs = with_source_fused_linear(
        self.specs, {source}, {parts}, {sizes}, bias={bias}, groups={groups}
    )


def transposed_spec(self, source, parts, sizes, bias):
    """The same for a linear the checkpoint stores transposed (transformers' `Conv1D`: `[in, out]`)."""
    # transformers' checkpoint holds this linear as a Conv1D, its weight transposed (input features first):
    # the tensor is transposed (and split into the parts) when loading and transposed back when saving.
    self.specs = with_transposed_source_fused_linear(self.specs, {source}, {parts}, {sizes}, bias={bias})


def transposed_interleaved_spec(self, source, parts, sizes, bias, groups):
    """The same for a transposed linear whose parts are interleaved in `groups` groups."""
    # transformers' checkpoint holds these projections as one Conv1D, its weight transposed (input features
    # first) and its output features interleaving them group by group: the tensor is transposed and
    # de-interleaved when loading, interleaved and transposed back when saving.
    self.specs = with_transposed_source_fused_linear(
        self.specs, {source}, {parts}, {sizes}, bias={bias}, groups={groups}
    )


def refuse_indivisible_groups(self, groups, message):
    """The constructor's check, after the per-rank head counts, that the forward's cut of each rank's
    projections into `groups` groups (the source's own, kept as it is) falls on whole heads."""
    # The forward cuts each rank's projections into the source's groups: every group must hold whole heads.
    if self.num_heads % {groups} or self.num_key_value_heads % {groups}:
        raise NotImplementedError({message})
