"""Sharing clustered models: the model card rendered from `templates/clusterable_model_card.md` (`card`), and the
checked, one-commit push of a saved folder (`push`)."""
