"""Helpers for testing ladle plugins: the conformance kit and a pytest plugin."""
