"""Training with the clusterability loss: the loss itself (`loss`), `ClusterabilityMixin` for any `Trainer`
subclass (`mixin`), `ClusterableTrainer` (`trainer`), and data preparation and metrics for training scripts
(`data`, `metrics`)."""
