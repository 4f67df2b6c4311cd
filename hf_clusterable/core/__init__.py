"""The torch-only core: partitions (`partition`), clusterability scores (`score`) and spectral co-clustering
(`cocluster`). Nothing here imports transformers, peft, accelerate, datasets or huggingface_hub."""
