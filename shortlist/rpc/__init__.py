"""gRPC plumbing shared by every service: server building, security, telemetry, input checks,
logging. Imports nothing else of the package.
"""
