"""The zoo command-line app."""
