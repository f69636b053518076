"""Templates of NXS027 (source-fused-checkpoint), filled by `scaffold.rules.templates`; the spec it
names is inserted whole from templates/definitions/source_fused_linears.py."""

from .source_fused_linears import with_source_fused_linear


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
