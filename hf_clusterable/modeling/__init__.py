"""Model-level clustering: which matrices of a model are clustered and how each is read (`targets`), their weights
however they are distributed (`distributed`), partitions for a whole model (`clusters`), scores (`measure`), block
heatmaps (`plot`) and loading a model by name (`loading`)."""
