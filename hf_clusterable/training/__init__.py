"""Training with the clusterability loss: the loss itself (`loss`), `ClusterableTrainer` (`trainer`), and data
preparation and metrics for training scripts (`data`, `metrics`)."""
