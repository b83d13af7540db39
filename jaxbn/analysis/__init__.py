"""Analyses of trained models: transferability, representation similarity, filters."""
