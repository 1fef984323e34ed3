"""Built-in hardware profiles (YAML); found by name with `--profile npu`."""
