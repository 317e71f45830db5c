"""Tests of the built-in batchers."""
