"""Reads that carry meaning: filters, ordering, keyset pagination."""
