"""Inference side of spix: the inference step, pictures and soft layers, output files, the Ray Data job, the gallery."""
