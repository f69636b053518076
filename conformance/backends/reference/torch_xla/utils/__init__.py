"""`torch_xla.utils`: only `checkpoint` is provided."""
