"""A WeCom simulator good enough that the real WeComClient runs unchanged against it (as moto for AWS)."""
