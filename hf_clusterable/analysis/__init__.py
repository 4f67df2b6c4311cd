"""Are a clustered model's clusters really separate, do they specialise, are its circuits smaller? Held-out tasks
(`tasks`), the cut test and cluster ablation (`ablation`), effective circuit sizes (`circuits`), the report
(`report`) and `analyze`, which runs them all."""
