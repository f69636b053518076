"""Templates of NXS004 (thread-trn-config), filled by `scaffold.rules.templates`."""

from ..config import TrainingNeuronConfig


def trn_config_parameter(trn_config: TrainingNeuronConfig):
    """The parameter every constructor that builds parallel layers or SP norms takes, after the config."""


def trn_config_stored(self, trn_config):
    """Right after the parent constructor runs: later rules read `self.trn_config` in the forwards."""
    self.trn_config = trn_config
