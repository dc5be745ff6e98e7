"""Reference model of omniad_edge: a small Qwen2.5-VL trained on synthetic defects (torch; not shipped to devices)."""
