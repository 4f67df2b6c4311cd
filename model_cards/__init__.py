"""Model card templates, shipped inside the wheel as `hf_clusterable.model_cards` (see `[tool.setuptools]`)."""
