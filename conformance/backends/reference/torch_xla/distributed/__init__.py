"""`torch_xla.distributed`: only `xla_backend` is provided."""
