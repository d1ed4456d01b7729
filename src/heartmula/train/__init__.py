"""Trainers, one per model (transcriber, ...)."""
