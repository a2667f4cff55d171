"""Reusable torch building blocks (selective scan, Mamba blocks, likelihoods, noise schedules, ...).

Importing this namespace imports torch; ``import scpredict`` does not import it.
"""
