"""The paper's example tasks, apart from the library: the ClusterNet and modular-addition models (`models`), their
data and metrics (`modular_addition`, `datasets`), offline weights and text (`offline`), and the demo (`demo`).

Importable, but nothing here is registered anywhere by import: call `models.register_auto_classes()` to load
ClusterNet checkpoints through the Auto classes.
"""
