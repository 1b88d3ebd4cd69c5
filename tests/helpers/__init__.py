"""Helpers shared by test modules (a test file imports these, never another test file)."""
