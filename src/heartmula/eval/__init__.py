"""Evaluation recipes and metrics. `heartmula.eval.lyrics` is the lyrics scoring recipe (WER / CER / PER)."""
