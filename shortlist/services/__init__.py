"""The four gRPC servicers (gateway, retrieval, ranking, feedback), the stage adapters the gateway
calls (in process or over gRPC), and process launch. `python -m shortlist.services NAME` runs
one.
"""
