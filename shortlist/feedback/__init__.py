"""The feedback loop: events, fold-in, the event bus back-ends, the live state stores, and the
consumer worker.
"""
