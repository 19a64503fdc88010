"""Plumbing with no audio in it: atomic writes, folder locks, signals and time budgets of long jobs, the allocator."""
