"""`torch_xla.core`: only `xla_model` is provided."""
