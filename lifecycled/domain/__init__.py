"""The pure core: records, states, actions, UPIDs, classification, backoff and plans.

Nothing in this package performs I/O or awaits; everything is data in, decisions out.
"""
